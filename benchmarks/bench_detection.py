"""Detector accuracy and speed: leave-one-generator-out, laundering, an unseen modality, localisation, files/s.

Protocol (whole source images held out everywhere; see detectors/models/views.py):

* Views are crops (``--view-size``, default 128 px) of the normalised frames of the sample corpus (or
  ``--corpus``), at native resolution; each real view gets an aligned fake per generator family (VAE
  reconstruction, GAN high-pass swap, diffusion SDEdit, local tamper with mask) and unpaired samples are added.
* Training views come from the corpus's **train** split: three quarters of its sources fit the model, the other
  quarter calibrates it (Platt) and sets its thresholds at 1 % FPR on their real views. **Evaluation** views come
  from the **val and test** splits only (other patients / images), drawn denser (``--eval-per-frame``).
* ``bundle``: the shipped (or ``--bundle``) model on the evaluation views, clean / JPEG q=75 / 0.5x resize.
* ``logo``: for each family F, a model of the same preset trained (``--steps``) without F, evaluated on real
  versus F: AUC and TPR at its own threshold; the same after JPEG 75 and 0.5x resize. With ``tamper`` held out
  the tamper head has never seen an edit, so its AUC is what the synthetic score and the untrained head give.
* ``unseen_modality``: a model trained without ``--unseen-modality`` (default US); its false-positive rate on
  the real evaluation views of that modality at its threshold (and the shipped bundle's, which saw it).
* ``localisation``: pixel AUC of the tamper heatmap against the edit masks (bundle, evaluation views).
* ``speed``: ``--speed-files`` 512 x 512 16-bit DICOM files through :meth:`verifier.checker.Checker.check_all` with
  the detector check only (file read, decode, normalise, patches, both models), 1 and 2 worker processes; and
  the detector's time per frame for frame sides 256 to 2048 (cost bounded by ``max_patches``).

Targets from the issue: LOGO AUC >= 0.97 and TPR >= 0.85 at 1 % FPR; AUC >= 0.93 after JPEG 75 / 0.5x resize;
unseen-modality FPR <= 3 %; >= 20 files/s for 512 x 512 16-bit images. Figures are printed and saved as JSON
(default ``benchmarks/results/bench_detection.json``); ``--model-card`` writes them as Markdown.

    nice -n 10 python benchmarks/bench_detection.py --steps 600 \
        --model-card detectors/checkpoints/detector/MODEL_CARD.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from _shared import corpus_or_sample

from detectors.models import DEFAULT_BUNDLE, create_detector, load_bundle
from detectors.models.evaluation import evaluate_views
from detectors.models.training import (
    DEFAULT_MIN_MEMBER_GAIN,
    MIN_CALIBRATION_AUC,
    SAMPLING,
    cross_fit_detector,
    head_separation,
    raw_view_scores,
    train_detector,
)
from detectors.models.views import FAMILIES, View, build_views, select, split_calibration

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "bench_detection.json"
TARGETS = {"logo_auc": 0.97, "logo_tpr": 0.85, "laundered_auc": 0.93, "unseen_fpr": 0.03, "files_per_s": 20.0}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(preset: str, fit: Sequence[View], calib: Sequence[View], steps: int, seed: int, cross_fit: int,
           sampling: str = "view") -> Any:
    """An ensemble trained like the bundle: on ``fit`` and calibrated on ``calib``, or with ``cross_fit`` folds
    trained on both and calibrated on out-of-fold scores (stacked as `train detector` stacks them)."""
    def make() -> Any:
        return create_detector("ensemble", preset=preset, seed=seed)

    if cross_fit:
        detector, _ = cross_fit_detector(make, [*fit, *calib], folds=cross_fit, steps=steps, seed=seed,
                                         min_member_gain=DEFAULT_MIN_MEMBER_GAIN, sampling=sampling)
        return detector
    detector = make()
    train_detector(detector, fit, calib, steps=steps, seed=seed, sampling=sampling)
    return detector


def logo(preset: str, fit: list[View], calib: list[View], evaluation: list[View], steps: int, seed: int,
         families: Sequence[str], cross_fit: int = 0, sampling: str = "view") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family in families:
        others = [f for f in families if f != family]
        start = time.perf_counter()
        detector = _train(preset, select(fit, families=others), select(calib, families=others), steps, seed,
                          cross_fit, sampling)
        out[family] = evaluate_views(detector, select(evaluation, families=[family]))
        out[family]["train_seconds"] = round(time.perf_counter() - start, 1)
        clean = out[family]["conditions"]["clean"]["families"][family]
        _log(f"LOGO {family}: AUC {clean['auc']:.3f}, TPR {clean['tpr_at_threshold']:.3f} "
             f"({out[family]['train_seconds']:.0f}s)")
    return out


def unseen_modality(preset: str, fit: list[View], calib: list[View], evaluation: list[View], steps: int,
                    seed: int, modality: str, bundle: Any, cross_fit: int = 0,
                    sampling: str = "view") -> dict[str, Any]:
    detector = _train(preset, select(fit, exclude_modalities=[modality]), select(calib, exclude_modalities=[modality]),
                      steps, seed, cross_fit, sampling)
    reals = [v for v in evaluation if v.is_real and v.modality == modality]
    if not reals:
        return {"modality": modality, "error": "no real evaluation views of this modality"}
    out: dict[str, Any] = {"modality": modality, "real_views": len(reals),
                           "sources": len({v.source_id for v in reals})}
    out["held_out_model"] = _fpr(detector, reals)
    out["bundle"] = _fpr(bundle, reals)
    _log(f"unseen modality {modality}: FPR {out['held_out_model']['fpr_any']:.3f} ({len(reals)} real views)")
    return out


def calibration_check(model: Any, calib: Sequence[View]) -> dict[str, Any]:
    """How well ``model``'s raw scores separate the calibration views as they are built now (the held-out quarter
    of the train split's sources, fakes stored like their real views): the figure calibration gates a head on."""
    separation = head_separation(raw_view_scores(model, calib), calib)
    return {
        "real_views": sum(v.is_real for v in calib),
        "sources": len({v.source_id for v in calib if v.is_real}),
        "synthetic_auc": separation["synthetic"],
        "tamper_auc": separation["tamper"],
        "min_auc": MIN_CALIBRATION_AUC,
    }


def _fpr(model: Any, reals: Sequence[View]) -> dict[str, Any]:
    """False-positive rates of ``model``'s thresholds on real views."""
    reports = [model.detect(v.pixels) for v in reals]
    return {
        "model_tag": model.config.tag or "(not saved)",
        "fpr_synthetic": float(np.mean([r.synthetic_score >= r.threshold for r in reports])),
        "fpr_tamper": float(np.mean([r.tamper_score >= r.tamper_threshold for r in reports])),
        "fpr_any": float(np.mean([r.synthetic_score >= r.threshold or r.tamper_score >= r.tamper_threshold
                                  for r in reports])),
    }


def _write_dicoms(directory: Path, n: int, side: int = 512) -> list[Path]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    source = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    base = source.pixel_array.astype(np.int32)
    reps = (side // base.shape[0] + 1, side // base.shape[1] + 1)
    tiled = np.tile(base, reps)[:side, :side]
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        ds = source.copy()
        pixels = np.clip(tiled + rng.integers(-20, 21, tiled.shape), 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = side, side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = directory / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def speed(n_files: int, bundle_dir: Path | None) -> dict[str, Any]:
    from provenance.trust import TrustPolicy
    from verifier.checker import Check, Checker
    from verifier.detection import DetectorSetup

    out: dict[str, Any] = {"files": n_files, "side": 512, "bits": 16}
    trust = TrustPolicy.unsafe_trust_everything()
    setup = DetectorSetup(model=bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_dicoms(Path(tmp), n_files)
        for workers in (1, 2):
            # Warm-up in the parent for 1 worker (model load once); forked workers load their own copy.
            if workers == 1:
                list(Checker(checks=frozenset({Check.DETECTOR}), trust=trust, detector=setup).check_all(paths[:2]))
            start = time.perf_counter()
            results = list(Checker(checks=frozenset({Check.DETECTOR}), trust=trust, detector=setup).check_all(
                paths, workers=workers))
            elapsed = time.perf_counter() - start
            scored = sum(r.to_dict()["synthetic_score"] is not None for r in results)
            out[f"workers_{workers}"] = {"seconds": round(elapsed, 2), "files_per_s": round(n_files / elapsed, 1),
                                         "scored": scored}
            _log(f"speed, {workers} worker(s): {n_files / elapsed:.1f} files/s")
    detector = setup.load()
    sizes = {}
    for side in (256, 512, 1024, 2048):
        frame = np.random.default_rng(side).random((side, side), dtype=np.float32)
        detector.detect(frame)
        start = time.perf_counter()
        for _ in range(3):
            report = detector.detect(frame)
        sizes[str(side)] = {"ms_per_frame": round((time.perf_counter() - start) / 3 * 1000, 1),
                            "patches": report.patches_scored}
    out["per_frame_by_side"] = sizes
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _auc(entry: dict[str, Any]) -> str:
    """An AUC with its 95 % interval over source images, as ``0.867 [0.71, 0.98]``."""
    ci = entry.get("auc_ci95")
    return _fmt(entry["auc"]) + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def markdown(results: dict[str, Any]) -> str:
    """The model card: what the bundle is, how it was trained, and every figure of this run."""
    bundle = results["bundle"]
    cfg = results["bundle_config"]
    training = cfg["training"]
    folds = training["calibration"].get("cross_fit", {}).get("folds")
    calibrated_on = (
        f"calibrated on out-of-fold scores of the same {training['calibration']['sources']} sources ({folds} folds "
        f"of whole sources, each scored by a model trained on the other folds; "
        f"{training['calibration']['real']} real views)" if folds else
        f"calibrated on {training['calibration']['sources']} other sources ({training['calibration']['real']} real "
        "views)")
    lines = [
        "# Detector model card (`detectors/checkpoints/detector/`)",
        "",
        f"- Model tag: `{cfg['tag']}`; architecture `{cfg['arch']}` (members: CNN "
        f"`{cfg['arch_args'].get('cnn', {}).get('backbone')}` with stem stride "
        f"{cfg['arch_args'].get('cnn', {}).get('stem_stride')}, one input channel, from scratch; classical spectrum "
        "and noise-residual features"
        + (" and their change when the patch loses its finest scale"
           if cfg["arch_args"].get("classical", {}).get("self_reference") else "")
        + ", logistic regression"
        + (f"; tamper segmentation, dilated convolutions of width {cfg['arch_args']['segment'].get('width')} "
           "trained on the edit masks pixel by pixel, alone on the tamper head"
           if "segment" in cfg["arch_args"] else "")
        + f"; weights {cfg['arch_args'].get('weights')}); patch "
        f"{cfg['patch_size']} px at native resolution, at most {cfg['max_patches']} patches and {cfg['max_frames']} "
        f"frames per image, input quantised to {cfg['quantize_bits']} bits after the modality-aware normalisation.",
        "- Thresholds (calibrated probabilities, Platt on "
        + ("out-of-fold scores" if folds else "held-out sources")
        + f", at {cfg['target_fpr']:.0%} FPR on their real views): synthetic {cfg['threshold']:.4f}, tamper "
        f"{cfg['tamper_threshold']:.4f}"
        + (f" (1.0: the head separated real from fake at AUC below {training['calibration']['min_auc']} there, "
           f"so it never flags: {', '.join(training['calibration']['disabled'])})"
           if training["calibration"].get("disabled") else "")
        + ".",
        f"- Training: {training['steps']} steps, batch {training['batch_size']}, seed {training['seed']}, laundering "
        f"augmentation probability {training['augment']}"
        + (", every source drawn equally often" if training.get("sampling") == "source" else "")
        + f"; fitted on {training['fit_sources']} sources "
        f"({training['fit_views']}), {calibrated_on}. Generators: "
        + "; ".join(f"{k}: {v.get('digest', '')[:12] or v.get('note')}"
                    + (f" ({v.get('steps')} steps)" if v.get("steps") else "")
                    for k, v in training["data"]["generators"].items())
        + f". Corpus manifest sha256 `{training['data']['manifest_sha256'][:16]}…`, train split only.",
        "",
        f"Measured by `python benchmarks/bench_detection.py` ({results['when']}, {results['machine']}). Evaluation "
        f"views: {bundle['real_views']} real views of {bundle['real_sources']} sources of the val and test splits "
        "(never seen in training or calibration), plus their fakes. These are few sources: read the figures as "
        "indicative, with wide error bars.",
        "",
        "## Shipped bundle, all families trained",
        "",
        "AUC in source: the mean over evaluation sources of the AUC of a source's real views against the fakes made "
        "from them; paired wins: how often a fake scores above the very real view it was made from "
        "(`detectors/models/evaluation.py`). Far above the pooled AUC, they mean that real images' scores shift "
        "from source to source more than a fake shifts them. In brackets: the AUC's 95 % interval from a bootstrap "
        "over source images.",
        "",
        "| condition | family | n | AUC | AUC in source | paired wins | TPR at threshold | FPR on real | pixel AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for condition, values in bundle["conditions"].items():
        for family, e in values["families"].items():
            fpr = values["fpr_tamper"] if family == "tamper" else values["fpr_synthetic"]
            lines.append(f"| {condition} | {family} | {e['n']} | {_auc(e)} | {_fmt(e.get('within_source_auc'))} "
                         f"| {_fmt(e.get('paired_win_rate'))} | {_fmt(e['tpr_at_threshold'])} | {_fmt(fpr)} "
                         f"| {_fmt(e.get('pixel_auc'))} |")
    if "bundle_on_calibration_views" in results:
        c = results["bundle_on_calibration_views"]
        lines += ["", f"On the calibration views as built now ({c['real_views']} real views of {c['sources']} held-out "
                  f"train sources, fakes stored like their real views) the bundle's raw scores separate at AUC "
                  f"{_fmt(c['synthetic_auc'])} (synthetic) and {_fmt(c['tamper_auc'])} (tamper); calibration gives "
                  f"a head below {c['min_auc']} threshold 1.0."]
    if folds:
        per_fold = training["calibration"]["cross_fit"]["per_fold"]
        auc_of = training["calibration"]["auc"]
        lines += ["", f"Out-of-fold calibration scores (from the bundle's training record) separate at AUC "
                  f"{_fmt(auc_of['synthetic'])} (synthetic) and {_fmt(auc_of['tamper'])} (tamper); per fold"
                  + (" (the preset's weights)" if training["calibration"].get("stacking") else "") + ": "
                  + ", ".join(f"{_fmt(f['auc']['synthetic'])} / {_fmt(f['auc']['tamper'])} ({f['sources']} sources)"
                              for f in per_fold)
                  + f". Calibration gives a head below {training['calibration']['min_auc']} threshold 1.0."]
        stacking = training["calibration"].get("stacking")
        if stacking:
            weights = stacking.get("weights") or {}
            lines[-1] += (" The synthetic head's weights were fitted on the members' out-of-fold scores (non-negative "
                          "logistic regression): " + ", ".join(
                              f"{name} {weights.get(name, 0.0):.2f} (alone: AUC {_fmt(value)})"
                              for name, value in stacking["member_auc"].items()) + ".")
    if "logo" in results:
        how = f", {results['logo_cross_fit']}-fold cross-fitted" if results.get("logo_cross_fit") else ""
        if results.get("logo_sampling") == "source":
            how += ", every source drawn equally often"
        lines += ["", f"## Leave one generator out ({results['logo_steps']} steps per model{how}; targets: AUC ≥ 0.97, "
                  "TPR ≥ 0.85; laundered AUC ≥ 0.93; in brackets the clean AUC's 95 % interval over source images)", "",
                  "| held-out family | AUC clean | AUC in source (clean) | TPR clean | AUC JPEG 75 | TPR JPEG 75 | "
                  "AUC 0.5x | TPR 0.5x | FPR real (clean) |", "|---|---|---|---|---|---|---|---|---|"]
        for family, ev in results["logo"].items():
            c = ev["conditions"]
            row = [family]
            for cond in ("clean", "jpeg75", "resize0.5"):
                e = c[cond]["families"][family]
                row += [_auc(e) if cond == "clean" else _fmt(e["auc"])]
                if cond == "clean":
                    row += [_fmt(e.get("within_source_auc"))]
                row += [_fmt(e["tpr_at_threshold"])]
            fpr = c["clean"]["fpr_tamper"] if family == "tamper" else c["clean"]["fpr_synthetic"]
            lines.append("| " + " | ".join([*row, _fmt(fpr)]) + " |")
    if "unseen_modality" in results:
        u = results["unseen_modality"]
        if "error" not in u:
            lines += ["", f"## Unseen modality ({u['modality']}; target FPR ≤ 3 %)", "",
                      f"Real {u['modality']} views of the evaluation splits: {u['real_views']} of {u['sources']} "
                      "sources.", "", "| model | FPR synthetic | FPR tamper | FPR either |", "|---|---|---|---|"]
            for name in ("held_out_model", "bundle"):
                m = u[name]
                label = f"trained without {u['modality']}" if name == "held_out_model" else "shipped bundle (saw it)"
                lines.append(f"| {label} | {_fmt(m['fpr_synthetic'])} | {_fmt(m['fpr_tamper'])} | "
                             f"{_fmt(m['fpr_any'])} |")
    if "speed" in results:
        s = results["speed"]
        lines += ["", f"## Speed ({s['files']} files of 512 x 512, 16 bits; target ≥ 20 files/s)", "",
                  f"- `check_paths` with the detector check: {s['workers_1']['files_per_s']} files/s with 1 worker, "
                  f"{s['workers_2']['files_per_s']} files/s with 2 (one torch thread each).",
                  "- Per frame (detector only): "
                  + ", ".join(f"{side} px {v['ms_per_frame']} ms ({v['patches']} patches)"
                              for side, v in s["per_frame_by_side"].items())
                  + " — cost grows with pixels up to the patch bound, then stays flat."]
    trained_on, evaluated_on = cfg["training"].get("data", {}), results["evaluation_data"]
    lines += ["", "## Known limits", "",
              f"- Tiny training set ({trained_on.get('sources', '?')} train sources, "
              f"{trained_on.get('real_views', '?')} real views); few evaluation sources ({evaluated_on['sources']}, "
              f"{evaluated_on['real_views']} real views).",
              "- Generators are the in-house small models; detecting them says little about other generators.",
              "- Views are crops of at most 128 px; whole large images are scored on a bounded patch sample.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="Corpus directory (default: the sample corpus, built in /tmp).")
    parser.add_argument("--bundle", type=Path, default=None, help="Bundle to evaluate (default: the shipped one).")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=600, help="CNN steps of each LOGO / unseen-modality model.")
    parser.add_argument("--view-size", type=int, default=128)
    parser.add_argument("--eval-per-frame", type=int, default=10, help="Most evaluation views per frame.")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--unseen-modality", default="US")
    parser.add_argument("--speed-files", type=int, default=60)
    parser.add_argument("--skip-logo", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="With --skip-logo: take the LOGO and unseen-modality figures from this earlier JSON.")
    parser.add_argument("--cross-fit", type=int, default=0,
                        help="Train the LOGO / unseen-modality models with K-fold out-of-fold calibration, as "
                        "`medverify train detector --cross-fit K` does (0: a held-out quarter of the sources).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling", choices=SAMPLING, default="view",
                        help="How the LOGO / unseen-modality models draw training views (as `train detector`).")
    parser.add_argument("--generator-checkpoints", type=Path, default=None,
                        help="Folder of generator checkpoints <family>/ (default: the shipped ones).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--model-card", type=Path, default=None, help="Also write the figures as Markdown here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    started = time.perf_counter()
    with corpus_or_sample(args.corpus) as corpus:
        # Always built: the LOGO models train on them, and the bundle is checked on their calibration quarter.
        _log("building training views (train split)...")
        train_views, _ = build_views(corpus, families=families, splits=("train",), view_size=args.view_size,
                                     seed=args.seed, checkpoints=args.generator_checkpoints)
        _log("building evaluation views (val and test splits)...")
        eval_views, eval_desc = build_views(corpus, families=families, splits=("val", "test"),
                                            view_size=args.view_size, seed=args.seed + 1,
                                            max_per_frame=args.eval_per_frame,
                                            checkpoints=args.generator_checkpoints)
    fit, calib = split_calibration(train_views, seed=args.seed) if train_views else ([], [])
    bundle = load_bundle(args.bundle)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)",
        "bundle_config": bundle.config.to_dict(),
        "evaluation_data": eval_desc,
        "targets": TARGETS,
    }
    _log(f"evaluating the bundle {bundle.config.tag} on {len(eval_views)} views...")
    results["bundle"] = evaluate_views(bundle, eval_views)
    if args.skip_logo and args.reuse is not None:
        earlier = json.loads(args.reuse.read_text())
        for key in ("logo_steps", "logo_cross_fit", "logo_sampling", "logo", "unseen_modality"):
            if key in earlier:
                results[key] = earlier[key]
        results["reused_from"] = {"file": args.reuse.name, "when": earlier.get("when")}
        unseen = results.get("unseen_modality", {})
        if "bundle" in unseen:  # the earlier run measured another bundle: measure this one on the same modality
            reals = [v for v in eval_views if v.is_real and v.modality == unseen["modality"]]
            unseen["bundle"] = _fpr(bundle, reals)
    if calib and not bundle.config.training.get("calibration", {}).get("cross_fit"):
        # (A cross-fitted bundle was trained on these views too: its record holds the out-of-fold figure.)
        results["bundle_on_calibration_views"] = calibration_check(bundle, calib)
    if not args.skip_logo:
        results["logo_steps"] = args.steps
        results["logo_cross_fit"] = args.cross_fit
        results["logo_sampling"] = args.sampling
        results["logo"] = logo(args.preset, fit, calib, eval_views, args.steps, args.seed, families, args.cross_fit,
                               args.sampling)
        results["unseen_modality"] = unseen_modality(args.preset, fit, calib, eval_views, args.steps, args.seed,
                                                     args.unseen_modality.upper(), bundle, args.cross_fit,
                                                     args.sampling)
    if not args.skip_speed:
        results["speed"] = speed(args.speed_files, args.bundle or DEFAULT_BUNDLE)
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    card = markdown(results)
    print(card)
    if args.model_card is not None:
        args.model_card.write_text(card)
    _log(f"saved {args.output} ({results['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
