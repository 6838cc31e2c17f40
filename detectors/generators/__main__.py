"""``python -m detectors.generators``: export training frames, and train from them on any torch device.

``medverify train generator`` is the normal way to train (it reads a corpus, which needs pydicom and the rest of
the application). This entry point needs only torch, numpy, OpenCV and safetensors, so it also runs on a machine
with an accelerator and nothing else installed::

    python -m detectors.generators export --corpus CORPUS --out frames.npz          # where the corpus is
    python -m detectors.generators train diffusion --frames frames.npz --out DIR --device cuda --steps 40000 \\
        --set batch_size=64

``export`` writes the normalised frames of a split and their description (the same ``corpus_frames`` call as
``medverify train generator``); ``train`` fits a preset (``--set FIELD=JSON`` overrides fields) on them and
writes a checkpoint whose training record carries the corpus description and the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import numpy.typing as npt
import torch

from detectors.generators import PatchSampler, TrainProgress, create_generator, list_generators
from detectors.generators.config import parse_overrides


def save_frames(path: Path, frames: Sequence[npt.NDArray[np.float32]], description: dict[str, Any]) -> None:
    """Frames (2-D float32 in [0, 1]) and their description in one ``.npz``."""
    arrays = {f"frame_{i:05d}": np.asarray(f, dtype=np.float32) for i, f in enumerate(frames)}
    arrays["description"] = np.frombuffer(json.dumps(description).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def load_frames(path: Path) -> tuple[list[npt.NDArray[np.float32]], dict[str, Any]]:
    """The frames and description written by :func:`save_frames` (no pickle is read)."""
    with np.load(path, allow_pickle=False) as data:
        frames = [data[k].astype(np.float32) for k in sorted(data.files) if k.startswith("frame_")]
        description = json.loads(bytes(data["description"]).decode()) if "description" in data.files else {}
    return frames, description


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detectors.generators", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a corpus split's normalised frames to an .npz")
    ex.add_argument("--corpus", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--split", default="train", choices=("train", "val", "test", "all"))
    tr = sub.add_parser("train", help="train a generator on exported frames and save a checkpoint")
    tr.add_argument("name", choices=list_generators())
    tr.add_argument("--frames", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--config", default="small")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON")
    tr.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint (its config)")
    tr.add_argument("--steps", type=int, default=None)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--log-every", type=int, default=500)
    tr.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    tr.add_argument("--sampling-only", action="store_true", help="save only the weights that sampling uses")
    tr.add_argument("--whole", type=float, default=0.0,
                    help="share of crops that are whole frames shrunk to the patch size (anatomy layout)")
    args = parser.parse_args(argv)

    if args.command == "export":
        from detectors.generators.data import corpus_frames

        frames, description = corpus_frames(args.corpus, split=None if args.split == "all" else args.split)
        save_frames(args.out, frames, description)
        print(f"wrote {len(frames)} frames ({description['modalities']}) to {args.out}")
        return 0

    torch.set_num_threads(args.threads)
    frames, description = load_frames(args.frames)
    if args.resume is not None:
        gen = create_generator(args.name, checkpoint=args.resume)
    else:
        gen = create_generator(args.name, config=args.config, seed=args.seed, **parse_overrides(args.overrides))
    total = gen.config.steps if args.steps is None else args.steps
    print(
        f"{args.name}: {gen.parameter_count:,} parameters, {len(frames)} frames, {total} steps on {args.device}",
        flush=True,
    )

    def report(p: TrainProgress) -> None:
        losses = " ".join(f"{k} {v:.4f}" for k, v in p.losses.items())
        print(
            f"{args.name} step {p.step}/{p.total_steps} {losses} {p.steps_per_s:.1f} steps/s eta {p.eta_s:.0f}s",
            flush=True,
        )

    start = time.perf_counter()
    gen.fit(
        PatchSampler(frames, gen.config.image_size, whole_fraction=args.whole),
        steps=total,
        seed=args.seed,
        progress=report,
        progress_every=args.log_every,
        data_description=description,
        device=args.device,
        time_limit_s=None if args.minutes is None else args.minutes * 60,
    )
    info = gen.save(args.out, sampling_only=args.sampling_only)
    print(
        f"{args.name}: saved {args.out} sha256 {info.digest} after {gen.training_record['steps']} steps, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
