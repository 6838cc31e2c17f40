"""Generator realism: how easily real 64 x 64 crops are told apart from each in-house generator's output.

Run from the repository root: ``python benchmarks/bench_generators.py [--corpus DIR] [--n-patches 256]``.
For every registered generator (shipped checkpoint under ``detectors/checkpoints/<name>/`` when present,
otherwise a short in-benchmark training run of the ``small`` preset, ``--train-steps``), it draws unpaired
samples and paired fakes of real crops, and measures both the same way:

* ``auc``: cross-validated ROC AUC of one fixed logistic regression on 17 patch statistics (intensity mean, std
  and percentiles, gradient energy, radial spectral energy ratios, noise-residual std after a 3 x 3 median)
  separating real from generated patches. 0.5 means indistinguishable to this classifier; 1.0 means separable.
* ``swd``: sliced Wasserstein distance (intensity units, [0, 1] scale, x 1000) between the distributions of 8 x 8
  pixel neighbourhoods of real and generated patches, at native and half resolution.

Lower is better for both. A ``real (control)`` row compares two independent draws of real crops: the floor of
the AUC and of the unpaired SWD at this sample size (paired fakes share content with their real crops, so the
paired SWD's floor is 0: compare it between generators only).
Tamper is measured on paired fakes only, on a 32 x 32 window around the edit
(its mask plus context), against the same window of the untampered crop. The script writes a labelled PNG grid
per generator and an overview to ``benchmarks/results/generators/`` and the figures to
``benchmarks/results/bench_generators.json``; look at the grids, the figures alone do not say a sample looks
like the modality.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import numpy.typing as npt
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors.data import Corpus, build_sample_corpus
from detectors.generators import Generator, create_generator, list_generators
from detectors.generators.data import corpus_frames
from detectors.generators.training import PatchSampler

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CORPUS = Path.home() / ".cache" / "medverify" / "corpora" / "sample"
DEFAULT_CHECKPOINTS = ROOT / "detectors" / "checkpoints"
PATCH = 64
TAMPER_WINDOW = 32
FEATURE_NAMES = (
    "mean", "std", "p01", "p10", "p50", "p90", "p99", "iqr",
    "log_grad_energy", "log_lap_energy", "band_1_8", "band_8_4", "band_4_2", "band_2_1",
    "log_residual_std", "residual_kurtosis", "zero_fraction",
)
Array = npt.NDArray[np.float32]


# ---------------------------------------------------------------------------------------------------- data


def real_frames(corpus: Path, wanted: str) -> tuple[list[Array], str]:
    """Normalised frames of the held-out splits (val + test), or of every split when those lack a modality
    that the train split has: the generators learn the train mix, so a held-out set of other modalities would
    measure the modality gap, not realism."""
    train_modalities = {f.entry.modality for f in Corpus.load(corpus).iter_frames("train")}
    if wanted == "heldout":
        frames: list[Array] = []
        modalities: set[str] = set()
        for split in ("val", "test"):
            got, desc = _frames_or_none(corpus, split)
            frames += got
            modalities |= set(desc.get("modalities", {}))
        if frames and train_modalities <= modalities:
            return frames, "val+test"
        missing = ", ".join(sorted(train_modalities - modalities))
        print(f"held-out splits lack {missing or 'frames'}: real crops come from all splits")
        wanted = "all"
    frames, _ = corpus_frames(corpus, split=None if wanted == "all" else wanted)  # type: ignore[arg-type]
    return frames, wanted


def _frames_or_none(corpus: Path, split: str) -> tuple[list[Array], dict[str, Any]]:
    try:
        return corpus_frames(corpus, split=split)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - an empty split is fine here
        return [], {}


def crops(sampler: PatchSampler, n: int, seed: int) -> Array:
    """``n`` random crops in [0, 1], drawn as the generators' training draws them (area-weighted, flips)."""
    batch = sampler.batch(n, np.random.default_rng(seed))
    return ((batch[:, 0].numpy() + 1.0) * 0.5).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- metrics


def patch_features(patches: Array) -> npt.NDArray[np.float64]:
    """The fixed statistics of each (H, W) patch; the same function for every generator."""
    n, h, w = patches.shape
    yy, xx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(yy**2 + xx**2) / 0.5  # 1.0 = Nyquist
    bands = [(radius > lo) & (radius <= hi) for lo, hi in ((0, 1 / 8), (1 / 8, 1 / 4), (1 / 4, 1 / 2), (1 / 2, 2))]
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    eps = 1e-8
    for i, p in enumerate(patches.astype(np.float32)):
        q = np.percentile(p, [1, 10, 25, 50, 75, 90, 99])
        gy, gx = np.gradient(p.astype(np.float64))
        lap = cv2.Laplacian(p, cv2.CV_32F, ksize=1)
        power = np.abs(np.fft.fft2(p - p.mean())) ** 2
        total = power.sum() + eps
        residual = (p - cv2.medianBlur(p, 3)).astype(np.float64)
        rstd = residual.std()
        kurt = ((residual - residual.mean()) ** 4).mean() / (rstd**4 + eps)
        out[i] = (
            p.mean(), p.std(), q[0], q[1], q[3], q[5], q[6], q[4] - q[2],
            np.log(np.mean(gx**2 + gy**2) + eps), np.log(np.mean(lap.astype(np.float64) ** 2) + eps),
            *(power[b].sum() / total for b in bands),
            np.log(rstd + eps), np.log1p(kurt), float((p <= 1 / 4096).mean()),
        )
    return out


def classifier_auc(real: Array, fake: Array, seed: int) -> tuple[float, float]:
    """Mean and std of the 5-fold ROC AUC of a standardised logistic regression, real (0) vs fake (1)."""
    x = np.concatenate([patch_features(real), patch_features(fake)])
    y = np.concatenate([np.zeros(len(real)), np.ones(len(fake))])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_score(model, x, y, cv=folds, scoring="roc_auc")
    return float(scores.mean()), float(scores.std())


def _neighbourhoods(patches: Array, k: int, per_patch: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    n, h, w = patches.shape
    ys = rng.integers(0, h - k + 1, size=(n, per_patch))
    xs = rng.integers(0, w - k + 1, size=(n, per_patch))
    out = np.empty((n * per_patch, k * k), dtype=np.float64)
    for i in range(n):
        for j in range(per_patch):
            out[i * per_patch + j] = patches[i, ys[i, j] : ys[i, j] + k, xs[i, j] : xs[i, j] + k].ravel()
    return out


def sliced_wasserstein(real: Array, fake: Array, seed: int, *, k: int = 8, projections: int = 256) -> dict[str, float]:
    """SWD (x 1000) between the k x k pixel-neighbourhood distributions at native and half resolution.

    The neighbourhood positions and the projection directions come from ``seed`` alone, so every generator is
    measured along the same directions.
    """
    result: dict[str, float] = {}
    for label, scale in (("swd_native", 1), ("swd_half", 2)):
        a, b = real, fake
        if scale > 1:
            def down(x: Array, s: int = scale) -> Array:
                size = (x.shape[2] // s, x.shape[1] // s)
                return np.stack([cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in x]).astype(np.float32)
            a, b = down(a), down(b)
        per = max(1, 8192 // len(a))
        # The same positions for both sets (equal counts make the 1-D distance a sorted difference).
        da = _neighbourhoods(a, k, per, np.random.default_rng(seed))
        db = _neighbourhoods(b, k, per, np.random.default_rng(seed + 1))
        m = min(len(da), len(db))
        da, db = da[:m], db[:m]
        dirs = np.random.default_rng(seed + 2).standard_normal((k * k, projections))
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa, pb = np.sort(da @ dirs, axis=0), np.sort(db @ dirs, axis=0)
        result[label] = float(np.abs(pa - pb).mean() * 1000.0)
    result["swd"] = (result["swd_native"] + result["swd_half"]) / 2
    return result


def measure(real: Array, fake: Array, seed: int) -> dict[str, float]:
    auc, auc_std = classifier_auc(real, fake, seed)
    return {"auc": round(auc, 4), "auc_std": round(auc_std, 4),
            **{k: round(v, 3) for k, v in sliced_wasserstein(real, fake, seed).items()}, "n": len(real)}


def tamper_windows(real: Array, fake: Array, masks: npt.NDArray[np.bool_]) -> tuple[Array, Array]:
    """The TAMPER_WINDOW square centred on each edit (mask centroid, clamped inside the patch), real and fake."""
    s = TAMPER_WINDOW
    out_r, out_f = [], []
    for r, f, m in zip(real, fake, masks, strict=True):
        ys, xs = np.nonzero(m)
        cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (r.shape[0] // 2, r.shape[1] // 2)
        y0 = min(max(0, cy - s // 2), r.shape[0] - s)
        x0 = min(max(0, cx - s // 2), r.shape[1] - s)
        out_r.append(r[y0 : y0 + s, x0 : x0 + s])
        out_f.append(f[y0 : y0 + s, x0 : x0 + s])
    return np.stack(out_r), np.stack(out_f)


# ---------------------------------------------------------------------------------------------------- generators


def load_or_train(
    name: str, *, checkpoints: Path, train_steps: int, config: str, seed: int, corpus: Path,
    log: Callable[[str], None],
) -> tuple[Generator | None, dict[str, Any]]:
    """The shipped checkpoint when there is one, else a quick training run (cached under results/), else None."""
    shipped = checkpoints / name
    if (shipped / "checkpoint.json").exists():
        gen = create_generator(name, checkpoint=shipped)
        return gen, {"source": "shipped checkpoint", "path": str(shipped), "digest": gen.digest,
                     "config": gen.config.to_dict(), "training": gen.training_record}
    if train_steps <= 0:
        return None, {"source": "skipped: no checkpoint and --train-steps 0"}
    frames, description = corpus_frames(corpus)  # train split only
    key = hashlib.sha256(f"{description['manifest_sha256']}:{config}:{train_steps}:{seed}".encode()).hexdigest()[:12]
    cache = RESULTS / "generators" / "quick_checkpoints" / f"{name}-{config}-{train_steps}-{key}"
    if (cache / "checkpoint.json").exists():
        gen = create_generator(name, checkpoint=cache)
        log(f"{name}: reusing the quick-trained checkpoint {cache.relative_to(ROOT)}")
    else:
        gen = create_generator(name, config=config, seed=seed)
        start = time.perf_counter()
        gen.fit(frames, steps=train_steps, seed=seed, data_description=description,
                progress=lambda p: log(f"{name}: step {p.step}/{p.total_steps} "
                                       + " ".join(f"{k} {v:.4f}" for k, v in p.losses.items())),
                progress_every=max(1, train_steps // 4))
        log(f"{name}: trained {train_steps} steps in {time.perf_counter() - start:.0f} s")
        gen.save(cache)
    return gen, {"source": f"quick in-benchmark training ({config} preset, {train_steps} steps)",
                 "path": str(cache), "digest": gen.digest, "config": gen.config.to_dict(),
                 "training": gen.training_record}


# ---------------------------------------------------------------------------------------------------- speed


def training_speed(frames: list[Array], *, threads: int, reps: int, seconds: float) -> dict[str, dict[str, float]]:
    """Training steps/s of each ``small`` preset and of the issue's reference (a width-32 DCGAN at batch 32, 7
    steps/s on a quiet 2-core machine), timed in turn ``reps`` times for about ``seconds`` each, so that a busy
    machine slows all of them alike; the quiet estimate is 7 x the speed relative to the reference."""
    from detectors.generators import GANConfig

    torch.set_num_threads(threads)
    sampler = PatchSampler(frames, PATCH)
    gens: dict[str, Generator] = {"reference DCGAN": create_generator("gan", config=GANConfig())}
    for name in ("vae", "gan", "diffusion"):
        gens[name] = create_generator(name, config="small")
    done = dict.fromkeys(gens, 0)
    spent = dict.fromkeys(gens, 0.0)
    for gen in gens.values():
        gen.fit(sampler, steps=2, seed=0)  # warm-up
    for rep in range(reps):
        for name, gen in gens.items():
            result = gen.fit(sampler, steps=10**6, seed=rep, time_limit_s=seconds)
            done[name] += result.steps
            spent[name] += result.elapsed_s
    rates = {name: done[name] / spent[name] for name in gens}
    ref = rates["reference DCGAN"]
    out: dict[str, dict[str, float]] = {}
    for name, gen in gens.items():
        quiet = 7.0 * rates[name] / ref
        out[name] = {"steps_per_s": round(rates[name], 3), "relative": round(rates[name] / ref, 3),
                     "quiet_steps_per_s": round(quiet, 2), "preset_steps": gen.config.steps,
                     "quiet_minutes": round(gen.config.steps / quiet / 60, 1)}
    return out


# ---------------------------------------------------------------------------------------------------- images


def _to_u8(p: Array, window: tuple[float, float], zoom: int) -> npt.NDArray[np.uint8]:
    lo, hi = window
    img = np.clip((p - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    img8 = np.round(img * 255).astype(np.uint8)
    img8 = cv2.resize(img8, (p.shape[1] * zoom, p.shape[0] * zoom), interpolation=cv2.INTER_NEAREST)
    out: npt.NDArray[np.uint8] = cv2.cvtColor(img8, cv2.COLOR_GRAY2BGR)
    return out


def _label(canvas: npt.NDArray[np.uint8], text: str, org: tuple[int, int], scale: float = 0.5,
           color: tuple[int, int, int] = (255, 255, 255)) -> None:
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def grid(
    rows: Sequence[tuple[str, Array, npt.NDArray[np.bool_] | None]], title: str, window: tuple[float, float],
    *, zoom: int = 2, label_width: int = 150,
) -> npt.NDArray[np.uint8]:
    """Rows of tiles (label, patches, optional masks drawn as red outlines) under a title bar."""
    gap = 4
    tile = PATCH * zoom
    cols = max(len(r[1]) for r in rows)
    width = label_width + cols * (tile + gap)
    header = 40
    canvas = np.full((header + len(rows) * (tile + gap), width, 3), 40, dtype=np.uint8)
    _label(canvas, title, (8, 26), 0.6)
    for i, (name, patches, masks) in enumerate(rows):
        y = header + i * (tile + gap)
        for j, line in enumerate(name.split("\n")):
            _label(canvas, line, (8, y + 24 + 20 * j), 0.5)
        for j, p in enumerate(patches):
            x = label_width + j * (tile + gap)
            img = _to_u8(p, window, zoom * PATCH // p.shape[0])
            if masks is not None and masks[j].any():
                big = cv2.resize(masks[j].astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(img, contours, -1, (0, 0, 255), 1)
            canvas[y : y + tile, x : x + tile] = img
    return canvas


# ---------------------------------------------------------------------------------------------------- main


def _fmt(m: dict[str, float] | None) -> str:
    if not m:
        return f"{'-':>13} {'-':>7}"
    return f"{m['auc']:.3f}+-{m['auc_std']:.3f} {m['swd']:7.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="AUC 0.5 and SWD at the control's level: indistinguishable.")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="corpus directory (default: the sample corpus, built there if missing)")
    parser.add_argument("--n-patches", type=int, default=256, help="real crops and fakes per generator (256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=300,
                        help="steps of quick training for generators without a shipped checkpoint; 0 skips them")
    parser.add_argument("--config", default="small", help="preset for quick training (small; 64 px patches)")
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                        help="directory of shipped checkpoints, <dir>/<name>/ (detectors/checkpoints)")
    parser.add_argument("--real-split", choices=("heldout", "all", "train"), default="heldout",
                        help="where real crops come from; heldout falls back to all when it misses a modality")
    parser.add_argument("--generators", nargs="*", default=None, help="subset of generators (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_generators.json")
    parser.add_argument("--images", type=Path, default=RESULTS / "generators", help="where the PNGs go")
    parser.add_argument("--speed", action="store_true",
                        help="only time the small presets' training against the reference DCGAN, then exit")
    parser.add_argument("--speed-seconds", type=float, default=20.0, help="seconds per timed turn (20)")
    args = parser.parse_args(argv)
    if args.n_patches < 20:
        parser.error("--n-patches must be at least 20 (5-fold cross-validation)")
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    corpus: Path = args.corpus.expanduser()
    if not (corpus / "manifest.json").exists():
        if args.corpus != DEFAULT_CORPUS:
            parser.error(f"{corpus}: not a corpus directory")
        log(f"building the sample corpus in {corpus}")
        build_sample_corpus(corpus)
    names = args.generators or list_generators()
    n, seed = args.n_patches, args.seed
    if args.speed:
        train, _ = corpus_frames(corpus)
        speed = training_speed(train, threads=args.threads, reps=3, seconds=args.speed_seconds)
        print(f"{'preset':<16} {'steps/s':>8} {'x ref':>6} {'quiet steps/s':>14} {'steps':>6} {'quiet min':>9}")
        for name, row in speed.items():
            print(f"{name:<16} {row['steps_per_s']:>8.3f} {row['relative']:>6.3f} {row['quiet_steps_per_s']:>14.2f} "
                  f"{row['preset_steps']:>6} {row['quiet_minutes']:>9.1f}")
        print("quiet estimate = 7 steps/s x speed relative to the reference DCGAN, timed in turn on this machine")
        path = args.output.with_name("bench_generators_speed.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                    "threads": args.threads, "load_average": os.getloadavg(), "speed": speed},
                                   indent=1) + "\n", encoding="utf-8")
        print(f"saved {path}")
        return 0

    frames, real_split = real_frames(corpus, args.real_split)
    sampler = PatchSampler(frames, PATCH)
    real = crops(sampler, n, seed)
    control = crops(sampler, n, seed + 1)
    window = (float(np.percentile(real, 0.5)), float(np.percentile(real, 99.5)))
    log(f"real crops: {n} of {PATCH}x{PATCH} from {len(frames)} frames ({real_split}); display window "
        f"[{window[0]:.3f}, {window[1]:.3f}]")

    results: dict[str, Any] = {"control": {"unpaired": measure(real, control, seed)}}
    provenance: dict[str, Any] = {}
    args.images.mkdir(parents=True, exist_ok=True)
    overview_rows: list[tuple[str, Array, npt.NDArray[np.bool_] | None]] = [("real", real[:8], None)]
    pngs: list[str] = []
    show = 8
    for name in names:
        gen, info = load_or_train(name, checkpoints=args.checkpoints, train_steps=args.train_steps,
                                  config=args.config, seed=seed, corpus=corpus, log=log)
        provenance[name] = info
        if gen is None:
            log(f"{name}: {info['source']}")
            continue
        if gen.config.image_size != PATCH:
            log(f"{name}: trained on {gen.config.image_size} px patches; sampled at {PATCH} px")
        entry: dict[str, Any] = {"source": info["source"]}
        start = time.perf_counter()
        paired_pairs = [gen.paired_fake_with_mask(r, seed=seed * 100_003 + i) for i, r in enumerate(real)]
        paired = np.stack([p for p, _ in paired_pairs]).astype(np.float32)
        masks = np.stack([m for _, m in paired_pairs])
        entry["paired_s"] = round(time.perf_counter() - start, 1)
        rows: list[tuple[str, Array, npt.NDArray[np.bool_] | None]] = [("real crops", real[show : 2 * show], None)]
        if name == "tamper":
            wr, wf = tamper_windows(real, paired, masks)
            entry["paired"] = measure(wr, wf, seed)
            # The floor for this window: the same positions in the second draw of real crops.
            results["control"]["tamper_window"] = measure(wr, tamper_windows(control, control, masks)[0], seed)
            entry["paired"]["mask_fraction"] = round(float(masks.mean()), 4)
            entry["paired"]["window"] = TAMPER_WINDOW
            rows += [("real", real[:show], None), ("tampered\n(red = mask)", paired[:show], masks[:show]),
                     ("tampered", paired[:show], None),
                     ("real", real[2 * show : 3 * show], None),
                     ("tampered\n(red = mask)", paired[2 * show : 3 * show], masks[2 * show : 3 * show]),
                     ("tampered", paired[2 * show : 3 * show], None)]
            overview_rows.append((name, paired[:show], masks[:show]))
        else:
            start = time.perf_counter()
            samples = gen.sample(n, seed=seed + 1000, size=PATCH)
            entry["sample_s"] = round(time.perf_counter() - start, 1)
            entry["unpaired"] = measure(real, samples, seed)
            entry["paired"] = measure(real, paired, seed)
            rows += [("samples", samples[:show], None), ("samples", samples[show : 2 * show], None),
                     ("samples", samples[2 * show : 3 * show], None),
                     ("real", real[:show], None), ("paired fake", paired[:show], None),
                     ("real", real[2 * show : 3 * show], None), ("paired fake", paired[2 * show : 3 * show], None)]
            overview_rows.append((f"{name}\nsamples", samples[:show], None))
            overview_rows.append((f"{name}\npaired", paired[:show], None))
        results[name] = entry
        title = f"{name}: {info['source']}"
        path = args.images / f"{name}_grid.png"
        cv2.imwrite(str(path), grid(rows, title, window))
        pngs.append(str(path))
        log(f"{name}: unpaired {_fmt(entry.get('unpaired'))} | paired {_fmt(entry.get('paired'))} -> {path}")

    overview = args.images / "overview.png"
    cv2.imwrite(str(overview), grid(overview_rows, "real crops (top) and each generator's output", window))
    pngs.append(str(overview))

    print()
    print(f"{'generator':<11} {'unpaired AUC':>13} {'SWD':>7}   {'paired AUC':>13} {'SWD':>7}   source")
    print(f"{'real ctrl':<11} {_fmt(results['control']['unpaired'])}   {_fmt(results['control'].get('tamper_window'))}"
          f"   second draw of real crops (paired column: at the tamper windows); paired SWD's floor is 0")
    for name in names:
        e = results.get(name)
        if e is None:
            print(f"{name:<11} {'':>13} {'':>7}   {'':>13} {'':>7}   {provenance[name]['source']}")
            continue
        paired_note = f" (on the {TAMPER_WINDOW} px edit window)" if name == "tamper" else ""
        print(f"{name:<11} {_fmt(e.get('unpaired'))}   {_fmt(e.get('paired'))}   {e['source']}{paired_note}")
    print("AUC: 5-fold CV ROC AUC of a logistic regression on patch statistics (0.5 = indistinguishable); "
          "SWD: sliced Wasserstein x1000 on 8x8 neighbourhoods. Lower is better.")

    report = {
        "benchmark": "bench_generators",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": args.threads,
        "corpus": str(corpus), "real_split": real_split, "real_frames": len(frames),
        "n_patches": n, "patch": PATCH, "seed": seed, "train_steps": args.train_steps,
        "features": list(FEATURE_NAMES), "display_window": [round(w, 4) for w in window],
        "results": results, "generators": provenance, "images": pngs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"saved {args.output} and {len(pngs)} PNGs in {args.images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
