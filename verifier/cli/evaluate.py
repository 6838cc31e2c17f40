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


@app.command(help="Evaluate a detector bundle on patients of a corpus it never saw: AUC, TPR at its threshold, "
             "false-positive rate on real images (native and 8-bit apart), localisation; clean, after JPEG 75 "
             "and after a 0.5x resize.")
def evaluate(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus directory (with manifest.json).")],
    model: Annotated[
        Path | None, typer.Option("--model", help="Detector bundle directory (default: the shipped bundle).")
    ] = None,
    generators: Annotated[
        str | None, typer.Option("--generators", help="Families (default: those the bundle was trained on).")
    ] = None,
    generator_checkpoints: Annotated[
        Path | None,
        typer.Option("--generator-checkpoints", help="Folder of generator checkpoints (default: the shipped ones)."),
    ] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Folder that keeps the views and fakes made (default: the cache folder's views/).")] = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads.")] = 1,
) -> int:
    """Print the figures per family of fakes on the val and test splits, made as the bundle's recipe says."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from detectors.errors import DetectorsError
    from detectors.models import load_bundle
    from detectors.models.evaluation import evaluate_views
    from detectors.models.recipe import Recipe, evaluation_views

    torch.set_num_threads(threads)
    if output_format not in ("text", "json"):
        raise InputError("--format must be text or json")
    if not corpus.is_dir():
        raise InputError(f"--corpus {corpus}: not a directory")
    try:
        detector = load_bundle(model)
        recipe = Recipe(**_recipe_of(detector.config.training))
        if generators:
            recipe = Recipe(**{**recipe.to_dict(), "families": tuple(f.strip() for f in generators.split(","))})
        views, description = evaluation_views(corpus, recipe, checkpoints=generator_checkpoints,
                                              cache=cache or _common.settings().cache_dir / "views")
        result = evaluate_views(detector, views)
    except (DetectorsError, ValueError, TypeError) as exc:
        message = exc.diagnostics() if isinstance(exc, DetectorsError) else str(exc)
        raise InputError(message) from exc
    result["data"] = description
    if output_format == "json":
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return 0
    _print(result)
    return 0


def _recipe_of(training: Any) -> dict[str, Any]:
    """The recipe a bundle was trained with (bundles made before recipes: the defaults)."""
    recipe = dict(training.get("data", {}).get("recipe", {})) if isinstance(training, dict) else {}
    if "families" in recipe:
        recipe["families"] = tuple(recipe["families"])
    return recipe


def _print(result: dict[str, Any]) -> None:
    _common.console.print(
        f"model {escape(result['model_tag'])}: threshold {result['threshold']:.4f}, tamper threshold "
        f"{result['tamper_threshold']:.4f}; {result['real_views']} real views of {result['real_sources']} "
        "patient groups of the val and test splits",
        highlight=False,
    )
    table = Table("condition", "form", "family", "n", "AUC", "95% CI (patients)", "TPR@thr", "TPR@1%", "FPR real",
                  "pixel AUC")
    for condition, values in result["conditions"].items():
        blocks = [("all", values), *sorted(values.get("forms", {}).items())]
        for form, block in blocks:
            fpr = block["fpr"]
            table.add_row(condition, form, "real", str(fpr["views"]), "", "", "", "",
                          f"{_fmt(fpr['rate'])} ({fpr['flagged']})", "")
            for family, entry in block["families"].items():
                ci = entry.get("auc_ci95")
                table.add_row(condition, form, family, str(entry["n"]), _fmt(entry["auc"]),
                              "-" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}", _fmt(entry["tpr_at_threshold"]),
                              _fmt(entry.get("tpr_at_1pct_fpr")), "", _fmt(entry.get("pixel_auc")))
    _common.console.print(table)
