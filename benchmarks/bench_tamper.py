"""Tamper detection and localisation: the segmentation member against the shipped bundle's tamper head.

Protocol (whole source images held out, as in ``bench_detection.py``): real views of the sample corpus's
**train** split and their in-house tamper edits (inject a lesion / inpaint one away, with masks) train a
``segment`` member (``--steps``, pixel-wise loss on the masks); three quarters of the train sources fit it, the
other quarter calibrates it. Evaluation: the real views of the **val and test** splits and their edits. Per model:

* image AUC of ``tamper_score`` (real views against edited ones), and the same within each source;
* paired wins: how often an edited view scores above the very real view it was made from;
* pixel AUC of the heatmap against the edit masks;
* whether calibration left the head able to flag (threshold below 1.0; needs AUC >= 0.8 on the held-out sources).

Figures are printed and saved as JSON (default ``benchmarks/results/bench_tamper.json``).

    python benchmarks/bench_tamper.py --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from _shared import corpus_or_sample

from detectors.models import create_detector, load_bundle
from detectors.models.evaluation import evaluate_views
from detectors.models.training import train_detector
from detectors.models.views import build_views, split_calibration

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_tamper.json"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _figures(model: Any, views: Sequence[Any]) -> dict[str, Any]:
    result = evaluate_views(model, views)
    out: dict[str, Any] = {"model_tag": result["model_tag"], "tamper_threshold": result["tamper_threshold"]}
    for condition, values in result["conditions"].items():
        e = values["families"]["tamper"]
        out[condition] = {k: e[k] for k in ("n", "auc", "auc_ci95", "within_source_auc", "paired_win_rate",
                                             "pixel_auc", "tpr_at_threshold")}
        out[condition]["fpr_real"] = values["fpr_tamper"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="Corpus directory (default: the sample corpus, built in /tmp).")
    parser.add_argument("--bundle", type=Path, default=None, help="Bundle to compare with (default: the shipped).")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--arch-args", type=json.loads, default={},
                        help='JSON merged into the segment preset\'s arch_args, e.g. \'{"mil_weight": 3.0}\'.')
    parser.add_argument("--view-size", type=int, default=128)
    parser.add_argument("--eval-per-frame", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with corpus_or_sample(args.corpus) as corpus:
        _log("building tamper views...")
        train_views, _ = build_views(corpus, families=["tamper"], splits=("train",), view_size=args.view_size,
                                     seed=args.seed)
        eval_views, eval_desc = build_views(corpus, families=["tamper"], splits=("val", "test"),
                                            view_size=args.view_size, seed=args.seed + 1,
                                            max_per_frame=args.eval_per_frame)
    fit, calib = split_calibration(train_views, seed=args.seed)
    segment = create_detector("segment", preset="small", seed=args.seed, arch_args=args.arch_args)
    start = time.perf_counter()
    record = train_detector(segment, fit, calib, steps=args.steps, seed=args.seed)
    train_s = time.perf_counter() - start
    _log(f"segment trained in {train_s:.0f}s; calibration AUC {record['calibration']['auc']['tamper']}")
    bundle = load_bundle(args.bundle)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "evaluation_data": eval_desc,
        "segment": {"steps": args.steps, "arch_args": dict(segment.config.arch_args),
                    "train_seconds": round(train_s, 1),
                    "calibration": record["calibration"], **_figures(segment, eval_views)},
        "bundle": _figures(bundle, eval_views),
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{eval_desc['real_views']} real views of {eval_desc['sources']} held-out sources, and their edits")
    print("| model | condition | AUC | 95 % CI (sources) | AUC in source | paired wins | pixel AUC | can flag |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("segment", "bundle"):
        r = results[name]
        extra = "".join(f", {k} {v}" for k, v in args.arch_args.items())
        label = f"segment ({args.steps} steps{extra})" if name == "segment" else f"bundle {r['model_tag']}"
        for condition in ("clean", "jpeg75", "resize0.5"):
            e = r[condition]
            ci = "-" if e["auc_ci95"] is None else f"{e['auc_ci95'][0]:.2f}-{e['auc_ci95'][1]:.2f}"
            cells = ["-" if v is None else f"{v:.3f}"
                     for v in (e["auc"], e["within_source_auc"], e["paired_win_rate"], e["pixel_auc"])]
            cells.insert(1, ci)
            flag = "yes" if r["tamper_threshold"] < 1.0 else "no"
            print(f"| {label} | {condition} | {' | '.join(cells)} | {flag} |")
    _log(f"saved {args.output} ({results['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
