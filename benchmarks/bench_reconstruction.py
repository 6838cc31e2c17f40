"""Would a reconstruction-distance member (AEROBLADE, DIRE) help? How closely the in-house VAE reproduces held-out
real views and each family's fakes, and what it costs.

For a sample of the held-out views of ``bench_detection.py`` (same corpus, recipe and cache: patients the shipped
bundle never saw), each view goes through the shipped VAE (encoder mean, decoder; what its ``vae`` fakes are) and
two distances are taken: the log mean absolute difference, and the fine band of the difference (image minus a
sigma-1 blur) relative to the view's own fine band, so that a noisy image is not called far for its noise. A fake
that the VAE made sits on its manifold and comes back nearly unchanged; the question is whether *other* generators'
fakes do too. Per family: AUC of "closer than real" (signed) and of "further from the real median in either
direction" (two-sided, as the physics member reads its features), and TPR at 1 % FPR of the held-out reals, with
the seconds per view. Nothing here is trained; the answer decides whether the member is worth its run time.

    nice python benchmarks/bench_reconstruction.py --corpus ~/.cache/medverify/corpora/real \
        --cache ~/.cache/medverify/views --per-family 60 --reals 150
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import torch

from detectors.generators import VAEGenerator
from detectors.models import DEFAULT_BUNDLE, load_bundle
from detectors.models.evaluation import auc, tpr_at_fpr
from detectors.models.recipe import Recipe, evaluation_views

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_reconstruction.json"
DEFAULT_CACHE = Path(os.environ.get("MEDVERIFY_HOME", Path.home() / ".medverify")) / "cache" / "views"
FAMILIES = ("vae", "gan", "sr", "diffusion")


def _fine(x: np.ndarray) -> np.ndarray:
    return x - cv2.GaussianBlur(x, (0, 0), 1.0)


def distances(vae: VAEGenerator, pixels: np.ndarray) -> tuple[float, float]:
    """(log mean |x - VAE(x)|, log of the difference's fine band over the view's own fine band)."""
    x = pixels.astype(np.float32)
    diff = x - vae.paired_fake(x)
    fine = float(np.log(np.abs(_fine(diff)).mean() + 1e-6) - np.log(np.abs(_fine(x)).mean() + 1e-6))
    return float(np.log(np.abs(diff).mean() + 1e-6)), fine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="Corpus directory (medverify corpus build).")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="Folder of cached views.")
    parser.add_argument("--vae", type=Path, default=REPO_ROOT / "detectors" / "checkpoints" / "vae")
    parser.add_argument("--reals", type=int, default=150, help="Held-out real views sampled (default 150).")
    parser.add_argument("--per-family", type=int, default=60, help="Fakes sampled per family (default 60).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = load_bundle(DEFAULT_BUNDLE).config.training or {}
    values = dict(record.get("data", {}).get("recipe") or {})
    values["families"] = tuple(values.get("families") or Recipe().families)
    recipe = Recipe(**{k: v for k, v in values.items() if k in Recipe.__dataclass_fields__})
    views, _ = evaluation_views(args.corpus, recipe, cache=args.cache)
    rng = np.random.default_rng(args.seed)
    picked: list[int] = []
    for family, n in (("real", args.reals), *((f, args.per_family) for f in FAMILIES)):
        rows = [i for i, v in enumerate(views) if v.family == family]
        picked += [int(i) for i in rng.choice(rows, min(n, len(rows)), replace=False)]
    vae = VAEGenerator.load(args.vae)
    start = time.perf_counter()
    scored = [(views[i].family, *distances(vae, views[i].pixels)) for i in picked]
    per_view = (time.perf_counter() - start) / len(picked)
    side = int(np.mean([views[i].pixels.shape[0] for i in picked]))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                               f"{os.cpu_count()} cores, 1 torch thread, load {os.getloadavg()[0]:.1f}",
                               "views": len(picked), "view_side": side, "seconds_per_view": per_view,
                               "distances": {}}  # fmt: skip
    print(f"{len(picked)} held-out views of about {side} px: {per_view:.3f} s each through the VAE")
    for column, name in ((1, "log_l1"), (2, "fine_ratio")):
        real = np.array([r[column] for r in scored if r[0] == "real"])
        centre = float(np.median(real))
        rows: dict[str, Any] = {}
        for family in FAMILIES:
            fake = np.array([r[column] for r in scored if r[0] == family])
            rows[family] = {
                "n": len(fake),
                "auc_closer": auc(-real, -fake),
                "tpr_at_1pct_closer": tpr_at_fpr(-real, -fake, 0.01),
                "auc_two_sided": auc(np.abs(real - centre), np.abs(fake - centre)),
                "tpr_at_1pct_two_sided": tpr_at_fpr(np.abs(real - centre), np.abs(fake - centre), 0.01),
            }
            r = rows[family]
            print(f"{name:>10} {family:>9}: AUC closer {r['auc_closer']:.3f} (TPR@1% {r['tpr_at_1pct_closer']:.2f}),"
                  f" two-sided {r['auc_two_sided']:.3f} (TPR@1% {r['tpr_at_1pct_two_sided']:.2f})")
        results["distances"][name] = rows
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
