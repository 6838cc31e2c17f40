"""What storing fakes like real images changes: leave-one-generator-out AUC with float fakes and with stored ones.

Generators output floats; a forger stores a fake as integers of the scale of the image it replaces, so its
normalised values lie on the real image's grid of levels (:func:`detectors.models.views.store_like`). This builds
the views of ``bench_detection.py`` twice from the same corpus and seeds, once with the generators' floats and
once stored (the default since 2026-12-05), and for each detector architecture and held-out family trains a model
without that family (``--steps``) and measures its AUC against the family on the evaluation views, clean and after
JPEG 75. A detector that tells float fakes from real images by values no stored image holds loses AUC on stored
fakes when clean, not after JPEG (which leaves no grid anyway).

    nice python benchmarks/bench_detection_storage.py        # --archs ensemble,classical --steps 300

Prints a table and saves ``benchmarks/results/bench_detection_storage.json``.
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

import torch
from _shared import corpus_or_sample

from detectors.models import create_detector
from detectors.models.evaluation import evaluate_views
from detectors.models.training import train_detector
from detectors.models.views import FAMILIES, build_views, select, split_calibration

OUTPUT = Path(__file__).resolve().parent / "results" / "bench_detection_storage.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="Corpus directory (default: the sample corpus, built in /tmp).")
    parser.add_argument("--archs", default="ensemble,classical")
    parser.add_argument("--held-out", default="vae,gan,diffusion", help="Families to hold out, one model each.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    archs = [a for a in args.archs.split(",") if a]
    held_out = [f for f in args.held_out.split(",") if f]
    results: dict[str, Any] = {"steps": args.steps, "seed": args.seed, "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                             time.gmtime())}
    with corpus_or_sample(args.corpus) as corpus:
        for stored in (False, True):
            mode = "stored" if stored else "float"
            train, _ = build_views(corpus, families=FAMILIES, splits=("train",), seed=args.seed, store_fakes=stored)
            evaluation, _ = build_views(corpus, families=FAMILIES, splits=("val", "test"), seed=args.seed + 1,
                                        max_per_frame=10, store_fakes=stored)
            fit, calib = split_calibration(train, seed=args.seed)
            for arch in archs:
                for family in held_out:
                    others = [f for f in FAMILIES if f != family]
                    start = time.perf_counter()
                    detector = create_detector(arch, preset="small", seed=args.seed)
                    train_detector(detector, select(fit, families=others), select(calib, families=others),
                                   steps=args.steps, seed=args.seed)
                    figures = evaluate_views(detector, select(evaluation, families=[family]))
                    row = {cond: figures["conditions"][cond]["families"][family]["auc"] for cond in ("clean", "jpeg75")}
                    results.setdefault(arch, {}).setdefault(family, {})[mode] = row
                    print(f"{arch:10s} held out {family:10s} {mode:6s} AUC clean {row['clean']:.3f}, "
                          f"JPEG 75 {row['jpeg75']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\nleave-one-generator-out AUC, float fakes -> stored fakes (clean | after JPEG 75)")
    for arch in archs:
        for family in held_out:
            f, s = results[arch][family]["float"], results[arch][family]["stored"]
            print(f"{arch:10s} {family:10s} {f['clean']:.3f} -> {s['clean']:.3f} | "
                  f"{f['jpeg75']:.3f} -> {s['jpeg75']:.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
