"""``medverify evaluate``: measure a detector bundle on held-out sources of a corpus."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from verifier.cli import _common, app
from verifier.errors import InputError

__all__ = ["evaluate"]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command(help="Evaluate a detector bundle on held-out corpus sources: AUC, TPR at its threshold, FPR, "
             "localisation; clean, after JPEG 75 and after a 0.5x resize.")
def evaluate(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus directory (with manifest.json).")],
    model: Annotated[
        Path | None, typer.Option("--model", help="Detector bundle directory (default: the shipped bundle).")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Splits to evaluate on (comma-separated; training uses only train).")
    ] = "val,test",
    generators: Annotated[
        str | None, typer.Option("--generators", help="Families (default: those the bundle was trained on).")
    ] = None,
    view_size: Annotated[int, typer.Option("--view-size", min=32, help="Side of the crops taken from frames.")] = 128,
    generator_checkpoints: Annotated[
        Path | None,
        typer.Option("--generator-checkpoints", help="Folder of generator checkpoints (default: the shipped ones)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of views and fakes.")] = 1,
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = 1,
) -> int:
    """Print the figures per generator family. The views come only from the chosen splits (whole sources)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from detectors.errors import DetectorsError
    from detectors.models import load_bundle
    from detectors.models.evaluation import evaluate_views
    from detectors.models.views import FAMILIES, build_views

    torch.set_num_threads(threads)
    if output_format not in ("text", "json"):
        raise InputError("--format must be text or json")
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits or any(s not in ("train", "val", "test") for s in splits):
        raise InputError("--split takes train, val and/or test")
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    try:
        detector = load_bundle(model)
        trained = detector.config.training.get("data", {}).get("generators", {})
        if generators:
            families = [f.strip() for f in generators.split(",") if f.strip()]
        else:
            families = [f for f in FAMILIES if f in trained] or list(FAMILIES)
        views, description = build_views(corpus, families=families, splits=splits,  # type: ignore[arg-type]
                                          view_size=view_size, seed=seed, checkpoints=generator_checkpoints)
        result = evaluate_views(detector, views)
    except (DetectorsError, ValueError) as exc:
        message = exc.diagnostics() if isinstance(exc, DetectorsError) else str(exc)
        raise InputError(message) from exc
    result["data"] = description
    if output_format == "json":
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return 0
    _common.console.print(
        f"model {escape(result['model_tag'])}: threshold {result['threshold']:.4f}, tamper threshold "
        f"{result['tamper_threshold']:.4f}; {result['real_views']} real views of {result['real_sources']} "
        f"source(s) in split {escape(split)}",
        highlight=False,
    )
    table = Table("condition", "family", "n", "AUC", "95% CI (sources)", "AUC in source", "TPR@thr", "FPR real",
                  "pixel AUC")
    for condition, values in result["conditions"].items():
        for family, entry in values["families"].items():
            fpr = values["fpr_tamper"] if family == "tamper" else values["fpr_synthetic"]
            ci = entry.get("auc_ci95")
            table.add_row(condition, family, str(entry["n"]), _fmt(entry["auc"]),
                          "-" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}", _fmt(entry.get("within_source_auc")),
                          _fmt(entry["tpr_at_threshold"]), _fmt(fpr),
                          _fmt(entry.get("pixel_auc")))
    _common.console.print(table)
    return 0
