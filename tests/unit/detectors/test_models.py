"""Contract tests over every registered detector (timm-style), plus preprocessing, calibration and bundles."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from detectors.data.reader import read_image
from detectors.generators import create_generator
from detectors.models import (
    DetectionReport,
    Detector,
    ModelError,
    UnknownDetectorError,
    create_detector,
    frame_patches,
    list_detectors,
    load_bundle,
    prepare_frames,
    render_heatmap,
    save_bundle,
)
from detectors.models.augment import export_8bit, jpeg, launder, resize
from detectors.models.cnn import inference_copy
from detectors.models.ensemble import EnsembleDetector
from detectors.models.evaluation import auc, evaluate_views, source_bootstrap_auc, within_source
from detectors.models.frames import FrameSet, TrainingImage
from detectors.models.training import (
    PatchStream,
    calibrate_scores,
    cross_fit_detector,
    raw_view_scores,
    stack_weights,
    threshold_at_fpr,
    threshold_at_fpr_by_source,
    train_detector,
)
from detectors.models.views import View, source_folds

torch.set_num_threads(1)

DETECTORS = list_detectors()


def phantom(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    """A smooth 'anatomy' plus fine sensor noise and 12-bit steps, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.4 + 0.2 * np.sin(xx / (5 + seed % 4)) * np.cos(yy / 7) + 0.03 * rng.standard_normal((h, w))
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 12)
        img += 0.2 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    return np.round(np.clip(img, 0, 1) * 4095) / 4095


def tiny_views(n: int = 8, *, split: str = "train", offset: int = 0) -> list[View]:
    """Real phantoms, 'synthetic' fakes (blurred: what a VAE does) and real tamper edits (the in-house tamper's
    injections and removals; a copy-move leaves no trace these tiny members can learn)."""
    tamper = create_generator("tamper", config="tiny", seed=0, copymove_probability=0.0)
    views: list[View] = []
    for i in range(n):
        real_px = phantom(offset + i).astype(np.float32)
        real = View(pixels=real_px, family="real", source_id=f"s{offset + i}", modality="MR", split=split)
        blurred = cv2.GaussianBlur(real_px, (0, 0), 1.2)
        edited, mask = tamper.paired_fake_with_mask(real_px, seed=i)
        views += [
            real,
            View(pixels=blurred, family="vae", source_id=real.source_id, modality="MR", split=split, partner=real),
            View(pixels=edited, family="tamper", source_id=real.source_id, modality="MR", split=split, mask=mask,
                 partner=real),
        ]
    return views


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Detector, Path]]:
    """Every registered detector, tiny preset, trained a few steps and calibrated, saved as a bundle."""
    out = {}
    fit, calib = tiny_views(8), tiny_views(6, split="val", offset=100)
    for name in DETECTORS:
        detector = create_detector(name, preset="tiny", seed=0)
        train_detector(detector, fit, calib, steps=4, batch_size=8, seed=0)
        directory = tmp_path_factory.mktemp(f"bundle-{name}")
        save_bundle(detector, directory)
        out[name] = (detector, directory)
    return out


def test_registry_and_factory() -> None:
    assert {"cnn", "classical", "ensemble", "segment"} <= set(DETECTORS)
    with pytest.raises(UnknownDetectorError, match="registered"):
        create_detector("nope")
    with pytest.raises(ModelError, match="preset"):
        create_detector("cnn", preset="huge")
    with pytest.raises(ModelError, match="patch_size"):
        create_detector("classical", preset="tiny", patch_size=20)


@pytest.mark.parametrize("name", DETECTORS)
def test_contract_any_size_bit_depth_and_frames(name: str, trained: dict[str, tuple[Detector, Path]]) -> None:
    detector, _ = trained[name]
    cfg = detector.config
    assert cfg.tag.startswith(f"{name}-") and 0.0 <= cfg.threshold <= 1.0 and 0.0 <= cfg.tamper_threshold <= 1.0
    assert set(cfg.calibration) == {"synthetic", "tamper"}
    for shape in [(20, 30), (64, 64), (301, 97), (3, 40, 50), (9, 33, 33)]:
        image = np.random.default_rng(len(shape)).random(shape, dtype=np.float32)
        report = detector.detect(image)
        assert 0.0 <= report.synthetic_score <= 1.0 and 0.0 <= report.tamper_score <= 1.0
        assert report.model_tag == cfg.tag and report.threshold == cfg.threshold
        assert report.frames_scored == min(shape[0] if len(shape) == 3 else 1, cfg.max_frames)
        assert 1 <= report.patches_scored
        if not detector.IMAGE_LEVEL:  # image-level members score every tile; patch members a bounded number
            assert report.patches_scored <= cfg.max_patches * report.frames_scored
        assert report.pixel_heatmap().shape == report.frame_shape
        json.dumps(report.to_dict())
        with pytest.raises(TypeError):
            bool(report)
    # The same pixels give the same scores (bounded sampling is deterministic).
    image = phantom(3, 200, 150)
    assert detector.detect(image).synthetic_score == detector.detect(image).synthetic_score


@pytest.mark.parametrize("name", DETECTORS)
def test_bundle_round_trip_and_digest(name: str, trained: dict[str, tuple[Detector, Path]], tmp_path: Path) -> None:
    detector, directory = trained[name]
    loaded = load_bundle(directory)
    assert loaded.config.tag == detector.config.tag and loaded.config.to_dict() == detector.config.to_dict()
    image = phantom(5, 90, 70)
    a, b = detector.detect(image), loaded.detect(image)
    assert a.synthetic_score == pytest.approx(b.synthetic_score, abs=1e-6)
    assert a.tamper_score == pytest.approx(b.tamper_score, abs=1e-6)
    record = json.loads((directory / "config.json").read_text())
    assert record["config"]["training"]["fit_sources"] == 8 and len(record["digest"]) == 64
    # Flip one byte of the weights: the digest check refuses them before parsing.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((directory / "config.json").read_bytes())
    weights = bytearray((directory / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (bad / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelError, match="digest"):
        load_bundle(bad)
    with pytest.raises(ModelError, match="not a detector bundle"):
        load_bundle(tmp_path / "missing")



def test_cnn_inference_copy_is_the_trained_net_and_follows_new_weights(
        trained: dict[str, tuple[Detector, Path]]) -> None:
    detector = load_bundle(trained["cnn"][1])
    patches = np.stack([phantom(s, 32, 32) for s in range(6)]).astype(np.float32)
    x = torch.from_numpy(patches)[:, None]
    with torch.inference_mode():
        expected = detector.model.eval()(x).numpy()
    assert np.allclose(detector.patch_logits(patches), expected, atol=1e-4)  # the inference copy, now made
    # Its batch norms are folded into the convolutions (the activations stay), and the net itself is untouched.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference_copy(detector.model).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.model.modules())
    # New weights replace the copy too: a stale one would still answer with the old net.
    other = create_detector("cnn", preset="tiny", seed=1)
    detector.load_state_arrays(other.state_arrays())
    with torch.inference_mode():
        expected = other.model.eval()(x).numpy()
    assert np.allclose(detector.patch_logits(patches), expected, atol=1e-4)

def test_dicom_input_uses_config_normalisation(dicom_sample: dict[str, Path],
                                               trained: dict[str, tuple[Detector, Path]]) -> None:
    detector, _ = trained["classical"]
    image = read_image(dicom_sample["CT_small.dcm"])
    frames = prepare_frames(image, detector.config)
    assert len(frames) == 1 and 0.0 <= frames[0].min() and frames[0].max() <= 1.0
    levels = np.unique(frames[0])  # quantised to the config's bit depth
    assert np.allclose(levels * 4095, np.round(levels * 4095), atol=1e-3)
    report = detector.detect(image)
    png = render_heatmap(report, frames[report.heatmap_frame])
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == report.frame_shape


def test_patches_are_bounded_and_cover_small_frames() -> None:
    big = np.random.default_rng(0).random((2000, 1500), dtype=np.float32)
    patches, positions, (ys, xs) = frame_patches(big, 64, 32)
    assert patches.shape == (32, 64, 64) and len(positions) == 32 and (len(ys), len(xs)) == (32, 24)
    assert len(set(positions)) == 32
    # A small frame: padded to the patch size, half-overlapping patches (all of them fit the bound).
    small, positions, (ys, xs) = frame_patches(np.ones((10, 70), np.float32), 32, 8)
    assert small.shape == (4, 32, 32) and ys == [0] and xs == [0, 16, 32, 38] and positions[-1] == (0, 38)


def test_threshold_at_fpr() -> None:
    scores = np.linspace(0, 1, 200)
    t = threshold_at_fpr(scores, 0.01)
    assert (scores >= t).mean() <= 0.01 and (scores >= t).sum() == 2
    assert threshold_at_fpr([0.3, 0.3, 0.3], 0.01) > 0.3
    with pytest.raises(ModelError):
        threshold_at_fpr([], 0.01)


def test_threshold_by_source_holds_the_target_over_resampled_patients() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(400)
    one_each = [f"p{i}" for i in range(400)]
    plain = threshold_at_fpr(scores, 0.01)
    by_source = threshold_at_fpr_by_source(scores, one_each, 0.01, confidence=0.9)
    assert by_source >= plain and float((scores >= by_source).mean()) <= 0.01
    assert threshold_at_fpr_by_source(scores, one_each, 0.01, confidence=0.99) >= by_source
    # One patient of forty holds the ten highest scores (2.5 % of the views): the plain rule lets four of them
    # through; resampling patients sees that patient drawn twice or more in a tenth of the draws, when at most
    # two of its views may pass.
    clustered = np.concatenate([rng.random(390) * 0.9, 0.95 + rng.random(10) * 0.04])
    patients = [f"p{i % 39}" for i in range(390)] + ["outlier"] * 10
    assert float((clustered >= threshold_at_fpr(clustered, 0.01)).mean()) > 0.005
    high = threshold_at_fpr_by_source(clustered, patients, 0.01, confidence=0.9)
    assert high > threshold_at_fpr(clustered, 0.01) and int((clustered >= high).sum()) <= 2
    with pytest.raises(ModelError, match="one source per real score"):
        threshold_at_fpr_by_source(scores, one_each[:-1], 0.01, confidence=0.9)


def test_laundering_keeps_range_and_mask_follows() -> None:
    image = phantom(1, 80, 60).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[20:30, 10:20] = True
    for out in (jpeg(image, 75), export_8bit(image, 0.1, 0.9)):
        assert out.shape == image.shape and 0.0 <= out.min() and out.max() <= 1.0
    small, small_mask = resize(image, 0.5, mask)
    assert small.shape == (40, 30) and small_mask is not None and small_mask.sum() == 25
    for seed in range(10):
        out, m = launder(image, mask, np.random.default_rng(seed))
        assert m is not None and m.shape == out.shape and np.isfinite(out).all()


def test_stream_pairs_real_and_fake_patches() -> None:
    stream = PatchStream(tiny_views(3), patch_size=32, batch_size=16, seed=0, augment=0.0)
    batch = next(stream)
    assert batch.patches.shape == (16, 32, 32)
    assert batch.synthetic[1::2].sum() == 0 and batch.tamper[1::2].sum() == 0  # every second patch is real
    assert set(np.unique(batch.synthetic[::2])) <= {0.0, 1.0}


def test_stream_draws_every_source_equally_often_when_asked() -> None:
    """One source with twenty views beside three with one each: drawn by view (the default), it fills most pairs;
    drawn by source, about a quarter. Unpaired samples, which belong to no source, keep their share."""
    def flat(value: float) -> npt.NDArray[np.float32]:
        return np.full((40, 40), value, np.float32)

    views: list[View] = []
    for source, (value, count) in {"big": (0.2, 20), "a": (0.4, 1), "b": (0.6, 1), "c": (0.8, 1)}.items():
        for _ in range(count):
            real = View(pixels=flat(value), family="real", source_id=source, modality="MR", split="train")
            views += [real, View(pixels=flat(value), family="vae", source_id=source, modality="MR", split="train",
                                 partner=real)]
    views += [View(pixels=flat(0.95), family="vae", source_id=f"unpaired:vae:{k}", modality="MR", split="train")
              for k in range(2)]

    def shares(**sampling: str) -> tuple[float, float]:
        stream = PatchStream(views, patch_size=32, batch_size=32, seed=3, augment=0.0, **sampling)
        fakes = np.concatenate([next(stream).patches[::2, 0, 0] for _ in range(40)])
        return float(np.mean(np.isclose(fakes, 0.2, atol=1e-3))), float(np.mean(np.isclose(fakes, 0.95, atol=1e-3)))

    big_by_view, unpaired_by_view = shares(sampling="view")
    big_by_source, unpaired_by_source = shares(sampling="source")
    assert shares() == (big_by_view, unpaired_by_view)  # the default
    assert big_by_view > 0.7 and 0.15 < big_by_source < 0.35
    assert 0.03 < unpaired_by_view < 0.15 and 0.03 < unpaired_by_source < 0.15
    with pytest.raises(ModelError, match="sampling"):
        PatchStream(views, patch_size=32, sampling="patient")


def test_classical_separates_blur_after_training() -> None:
    """The classical model must learn the blur that a VAE reconstruction leaves (held-out sources)."""
    detector = create_detector("classical", preset="tiny", seed=0)
    fit = [v for v in tiny_views(10) if v.family != "tamper"]
    calib = [v for v in tiny_views(6, split="val", offset=50) if v.family != "tamper"]
    train_detector(detector, fit, calib, steps=1, batch_size=32, seed=0)
    # No tampered views to calibrate on: that head can never flag a file; the synthetic head can.
    assert detector.config.tamper_threshold == 1.0 and detector.config.threshold < 1.0
    assert detector.config.training["calibration"]["disabled"] == ["tamper"]
    test = [v for v in tiny_views(6, split="test", offset=200) if v.family != "tamper"]
    result = evaluate_views(detector, test, conditions={"clean": lambda image, mask: (image, mask)})
    assert result["conditions"]["clean"]["families"]["vae"]["auc"] > 0.9
    assert auc([0.1, 0.2], [0.3, 0.4]) == 1.0 and auc([0.5], [0.5]) == 0.5 and auc([], [1]) is None


def test_two_sided_physics_flags_a_family_that_departs_the_other_way() -> None:
    """Trained on blurred fakes only ("smoother than real"), the signed regression calls a fake that is *rougher*
    than real (an unseen generator's excess fine-scale noise) more real than real; the two-sided one, reading
    departures from its group's real images, flags it. Both still flag the family they saw."""
    fit = [v for v in tiny_views(12) if v.family != "tamper"]
    test_reals = [phantom(300 + i).astype(np.float32) for i in range(8)]
    rng = np.random.default_rng(7)
    rough = [np.clip(px + 0.05 * rng.standard_normal(px.shape), 0, 1).astype(np.float32) for px in test_reals]
    smooth = [cv2.GaussianBlur(px, (0, 0), 1.2) for px in test_reals]
    aucs = {}
    for two_sided in (False, True):
        detector = create_detector("physics", preset="tiny", seed=0, arch_args={"two_sided": two_sided})
        detector.fit_images([TrainingImage(v.pixels, int(v.family != "real"), v.group) for v in fit])
        saved = detector.state_arrays()
        detector.load_state_arrays(saved)  # what a bundle round trip does

        def score(images: list[np.ndarray], detector: Detector = detector) -> list[float]:
            return [detector.score_frames(FrameSet.of(px, detector.config, group="MR/native")).synthetic
                    for px in images]

        aucs[two_sided] = (auc(score(test_reals), score(smooth)), auc(score(test_reals), score(rough)))
    assert aucs[False][0] > 0.9 and aucs[True][0] > 0.9
    assert aucs[False][1] < 0.5 < 0.9 < aucs[True][1]


def test_within_source_figures_compare_fakes_with_the_reals_of_their_own_source() -> None:
    """Two sources whose real images score far apart: every fake beats the reals of its own source (within-source
    AUC 1), yet the pooled AUC is low because source B's reals outscore source A's fakes."""
    pixels = np.zeros((8, 8), np.float32)

    def view(family: str, source: str, partner: View | None = None) -> View:
        return View(pixels=pixels, family=family, source_id=source, modality="CT", split="test", partner=partner)

    a1, a2, b1, b2 = view("real", "A"), view("real", "A"), view("real", "B"), view("real", "B")
    views = [a1, a2, b1, b2, view("vae", "A", a1), view("vae", "A", a2), view("vae", "B", b1),
             view("vae", "unpaired:vae:0"), view("gan", "A", a1)]
    scores = [0.1, 0.2, 0.8, 0.9, 0.3, 0.15, 0.95, 0.0, 0.05]
    pooled = auc(scores[:4], scores[4:7])
    assert pooled is not None and pooled < 0.75
    value, sources, wins = within_source(views, scores, "vae")
    # Source A: reals 0.1, 0.2 vs fakes 0.3, 0.15 -> 3 of 4 pairs; source B: 1.0. Unpaired samples are left out.
    assert sources == 2 and value == pytest.approx((0.75 + 1.0) / 2)
    assert wins == pytest.approx(2 / 3)  # 0.3 > 0.1 and 0.95 > 0.8, but 0.15 < 0.2
    assert within_source(views, scores, "gan") == (0.0, 1, 0.0)
    assert within_source(views, scores, "diffusion") == (None, 0, None)



def test_auc_interval_resamples_whole_sources() -> None:
    separated = source_bootstrap_auc([("A", 0.1), ("A", 0.2), ("B", 0.3)], [("A", 0.8), ("B", 0.9)])
    assert separated == (1.0, 1.0)
    # Source B's fakes score below its reals: its draws pull the AUC to 0, source A's to 1. Many views per source
    # do not narrow the interval, since they are not independent.
    reals = [("A", 0.1)] * 20 + [("B", 0.9)] * 20
    fakes = [("A", 0.5)] * 20 + [("B", 0.4)] * 20
    low, high = source_bootstrap_auc(reals, fakes, rounds=400) or (None, None)
    assert low == 0.0 and high == 1.0
    assert source_bootstrap_auc([("A", 0.1)], [("A", 0.5)]) is None


def test_stream_masks_mark_the_edited_pixels_of_tamper_patches_only() -> None:
    stream = PatchStream(tiny_views(4), patch_size=32, batch_size=32, seed=1, augment=0.0)
    seen = 0
    for _ in range(5):
        batch = next(stream)
        assert batch.masks is not None and batch.masks.shape == batch.patches.shape
        assert batch.masks[1::2].sum() == 0  # real patches: nothing edited
        for i in range(0, len(batch.patches), 2):
            changed = np.abs(batch.patches[i] - batch.patches[i + 1]) > 1e-6
            if batch.synthetic[i] == 1:  # a blurred 'VAE' patch: changed everywhere, edited nowhere
                assert batch.masks[i].sum() == 0
            elif batch.tamper[i] == 1:  # the edit changed pixels inside its mask only, and the mask is there
                assert batch.masks[i].sum() > 0 and not (changed & (batch.masks[i] == 0)).any()
                seen += 1
    assert seen > 0


def test_segment_member_localises_edits_on_held_out_sources() -> None:
    """Trained on the pixels of the in-house tamper edits, the segmentation member must find them in images of
    other sources: pixel AUC of its heatmap against the masks, and tampered images above their real partners."""
    detector = create_detector("segment", preset="tiny", seed=0)
    fit = [v for v in tiny_views(12) if v.family != "vae"]
    calib = [v for v in tiny_views(6, split="val", offset=50) if v.family != "vae"]
    train_detector(detector, fit, calib, steps=150, batch_size=16, seed=0, augment=0.0)
    test = [v for v in tiny_views(8, split="test", offset=200) if v.family != "vae"]
    result = evaluate_views(detector, test, conditions={"clean": lambda image, mask: (image, mask)})
    tamper = result["conditions"]["clean"]["families"]["tamper"]
    assert tamper["pixel_auc"] > 0.9 and tamper["paired_win_rate"] > 0.7  # untrained: 0.5 and 0.5
    assert tamper["auc_ci95"] is not None and 0.0 <= tamper["auc_ci95"][0] <= tamper["auc_ci95"][1] <= 1.0
    assert detector.detect(test[0].pixels).synthetic_score == detector.detect(test[2].pixels).synthetic_score
    # The heatmap is per pixel: the calibrated map of the scored frame, never above the image's tamper score.
    report = detector.detect(test[1].pixels)
    assert "pixel_map" not in vars(report)  # laid out over the frame only when asked for
    assert report.pixel_patches is not None and len(report.pixel_patches) == len(report.pixel_origins)
    assert report.pixel_map is not None and report.pixel_map.shape == report.frame_shape
    assert report.pixel_heatmap() is report.pixel_map
    assert np.nanmax(report.pixel_map) <= report.tamper_score + 1e-6
    assert detector.detect(test[0].pixels).pixel_map is not None
    assert create_detector("classical", preset="tiny").detect(test[1].pixels).pixel_map is None
    # Inference runs a copy with the batch norms folded into the convolutions: the same function as the trained net.
    x = torch.from_numpy(np.stack([v.pixels for v in test[:4]]))[:, None]
    with torch.inference_mode():
        expected, fast = detector.model(x), detector.model.for_inference()(x)
    assert fast.shape == expected.shape and torch.allclose(fast, expected, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.model.for_inference().modules())



def test_segment_scores_a_frame_against_its_own_typical_response() -> None:
    absolute = create_detector("segment", preset="tiny", seed=3, arch_args={"relative_quantile": None})
    relative = create_detector("segment", preset="tiny", seed=3, arch_args={"relative_quantile": 0.9})
    patches = np.stack([phantom(s, 32, 32) for s in range(5)]).astype(np.float32)
    logits, pixels = absolute.patch_outputs(patches)
    rel_logits, rel_pixels = relative.patch_outputs(patches)
    assert pixels is not None and rel_pixels is not None
    offset = np.quantile(pixels, 0.9)
    assert np.allclose(rel_pixels, pixels - offset, atol=1e-5)  # the frame's 90th percentile is its zero
    assert np.allclose(rel_logits[:, 1], logits[:, 1] - offset, atol=1e-5)
    assert np.allclose(rel_logits[:, 0], 0.0)
    # The same patches in a frame with other content: the zero moves with the frame, so their scores do too.
    louder, _ = relative.patch_outputs(np.concatenate([patches, np.clip(patches * 3.0, 0, 1)]))
    assert not np.allclose(louder[: len(patches), 1], rel_logits[:, 1])
    with pytest.raises(ModelError, match="relative_quantile"):
        create_detector("segment", preset="tiny", arch_args={"relative_quantile": 1.5})


def test_segment_patch_loss_is_optional_and_trains_the_patch_maximum() -> None:
    stream = PatchStream([v for v in tiny_views(6) if v.family != "vae"], patch_size=32, batch_size=16, seed=2,
                         augment=0.0)
    plain = create_detector("segment", preset="tiny", seed=0)
    assert "patch_loss" not in plain.fit(stream, steps=2)
    weighted = create_detector("segment", preset="tiny", seed=0, arch_args={"mil_weight": 3.0})
    probe = next(stream).patches
    before = weighted.patch_outputs(probe)[0]
    metrics = weighted.fit(stream, steps=2)
    assert metrics["patch_loss"] > 0 and not np.allclose(weighted.patch_outputs(probe)[0], before)

def test_ensemble_weighs_each_member_on_its_own_heads() -> None:
    ensemble = create_detector("ensemble", preset="tiny", seed=0, arch_args={
        "members": ["classical", "segment"], "preset": "tiny",
        "weights": {"synthetic": [1.0, 5.0], "tamper": [0.0, 2.0]}})
    classical, segment = ensemble.members["classical"], ensemble.members["segment"]
    # The segmentation member has no synthetic opinion: its synthetic weight is dropped, not normalised in.
    assert np.allclose(ensemble.weights, [[1.0, 0.0], [0.0, 1.0]])
    patches = np.stack([phantom(i, 32, 32) for i in range(3)]).astype(np.float32)
    out = ensemble.patch_logits(patches)
    assert np.allclose(out[:, 0], classical.patch_logits(patches)[:, 0], atol=1e-6)
    assert np.allclose(out[:, 1], segment.patch_logits(patches)[:, 1], atol=1e-6)
    # The image's scores are the weighted member scores; the heatmap comes from the member with the tamper weight.
    image = phantom(7, 80, 80)
    syn, tam, info = ensemble.raw_scores(image)
    assert np.isclose(syn, classical.raw_scores(image)[0]) and np.isclose(tam, segment.raw_scores(image)[1])
    shown = info["scores"].patch_frames[0][4]
    assert shown is not None and np.allclose(shown, segment.raw_scores(image)[2]["scores"].patch_frames[0][4])
    plain = create_detector("ensemble", preset="tiny", arch_args={"members": ["cnn", "classical"], "weights": [1, 1]})
    assert plain.detect(image).pixel_map is None
    with pytest.raises(ModelError, match="synthetic head"):
        create_detector("ensemble", preset="tiny", arch_args={"members": ["segment"], "weights": [1.0]})
    with pytest.raises(ModelError, match="one non-negative number per member"):
        create_detector("ensemble", preset="tiny", arch_args={"members": ["classical", "segment"],
                                                               "weights": {"synthetic": [1.0], "tamper": [1.0]}})


def test_a_loaded_ensemble_builds_no_member_without_weight_and_saves_it_unchanged(
    trained: dict[str, tuple[Detector, Path]], tmp_path: Path
) -> None:
    detector = load_bundle(trained["ensemble"][1])  # a copy: the fixture's detector stays as trained
    assert isinstance(detector, EnsembleDetector)
    detector.set_weights("synthetic", [0.0, 1.0])  # the tiny preset's cnn, classical (segment has no opinion)
    saved = tmp_path / "restacked"
    record = save_bundle(detector, saved)
    loaded = load_bundle(saved)
    assert isinstance(loaded, EnsembleDetector)
    # Scoring never builds the CNN (nor imports what it needs): it weighs nothing on either head.
    image = phantom(4, 96, 96)
    assert loaded.detect(image).synthetic_score == pytest.approx(detector.detect(image).synthetic_score, abs=1e-6)
    assert "cnn" not in loaded._built and "cnn" in loaded._dormant
    # Saved again without being built, its weights are the very arrays it was loaded with.
    again = save_bundle(loaded, tmp_path / "again")
    assert again["digest"] == record["digest"] and again["config"]["tag"] == record["config"]["tag"]
    # Asked for (out-of-fold stacking reads every member), it is built with those weights.
    cnn = loaded.members["cnn"]
    assert "cnn" in loaded._built and "cnn" not in loaded._dormant
    expected = {k: v for k, v in detector.state_arrays().items() if k.startswith("cnn.")}
    built = cnn.state_arrays()
    assert expected and built.keys() == expected.keys()
    assert all(np.array_equal(built[k], v) for k, v in expected.items())


def test_classical_self_reference_features_measure_what_the_finest_scale_holds() -> None:
    """The self-reference half is the change of each feature when the patch loses its finest scale: large for a
    patch with acquisition noise, small for a smooth (generated-looking) one. Bundles made before it load without."""
    from detectors.models.classical import down_up, model_features, patch_features

    noisy = np.stack([phantom(i) for i in range(4)]).astype(np.float32)
    smooth = np.stack([cv2.GaussianBlur(x, (0, 0), 1.2) for x in noisy])
    plain = patch_features(noisy, 12)
    both = model_features(noisy, 12, True)
    assert both.shape == (4, 2 * plain.shape[1]) and np.allclose(both[:, : plain.shape[1]], plain)
    assert np.allclose(both[:, plain.shape[1] :], plain - patch_features(down_up(noisy), 12))
    lap_log_std = 2  # mean, log std, then the Laplacian's log std
    drop_noisy = both[:, plain.shape[1] + lap_log_std]
    drop_smooth = model_features(smooth, 12, True)[:, plain.shape[1] + lap_log_std]
    assert (drop_noisy > drop_smooth + 0.5).all()
    assert create_detector("classical", preset="small").mean.shape == (2 * plain.shape[1],)
    old = create_detector("classical", preset="small", arch_args={"self_reference": False})
    assert old.mean.shape == (plain.shape[1],)


def test_source_folds_keep_sources_whole_and_balanced() -> None:
    views = tiny_views(7) + [View(pixels=phantom(90 + i).astype(np.float32), family="vae",
                                  source_id=f"unpaired:{i}", modality="MR", split="train") for i in range(6)]
    parts = source_folds(views, 3, seed=4)
    assert sorted(id(v) for part in parts for v in part) == sorted(id(v) for v in views)  # a partition
    owners: dict[str, int] = {}
    for k, part in enumerate(parts):
        for view in part:
            assert owners.setdefault(view.source_id, k) == k  # a source (and its fakes) in one fold only
    real_sources = [len({v.source_id for v in part if v.is_real}) for part in parts]
    assert sorted(real_sources) == [2, 2, 3]
    assert [[id(v) for v in part] for part in source_folds(views, 3, seed=4)] == [[id(v) for v in p] for p in parts]
    assert [[id(v) for v in part] for part in source_folds(views, 3, seed=5)] != [[id(v) for v in p] for p in parts]
    with pytest.raises(ValueError, match="at least 8 real sources"):
        source_folds(views, 8)
    with pytest.raises(ValueError, match="two folds"):
        source_folds(views, 1)


def test_cross_fit_calibrates_on_out_of_fold_scores_and_trains_on_everything() -> None:
    """Each view's calibration score comes from a model trained without its source; the final model is trained on
    every source. Rebuilding the out-of-fold scores by hand gives the same calibration."""
    views = [v for v in tiny_views(9) if v.family != "tamper"]

    def make() -> Detector:
        return create_detector("classical", preset="tiny", seed=0)

    stages: list[str] = []
    detector, record = cross_fit_detector(make, views, folds=3, steps=1, batch_size=32, seed=0,
                                          on_stage=stages.append)
    assert stages == ["fold 1/3", "fold 2/3", "fold 3/3", "final"]
    assert record["fit_sources"] == 9 and record["calibration"]["sources"] == 9
    assert record["calibration"]["real"] == 9 and record["calibration"]["synthetic"] == 9
    assert [f["sources"] for f in record["calibration"]["cross_fit"]["per_fold"]] == [3, 3, 3]
    assert detector.config.training == record and detector.config.tamper_threshold == 1.0

    raw = np.full((len(views), 2), np.nan)
    for held in source_folds(views, 3, seed=0):
        model = make()
        train_detector(model, [v for v in views if v not in held], held, steps=1, batch_size=32, seed=0)
        for view, row in zip(held, raw_view_scores(model, held), strict=True):
            raw[next(i for i, v in enumerate(views) if v is view)] = row
    expected = make()
    calibrate_scores(expected, raw, views)
    assert detector.config.calibration == pytest.approx(expected.config.calibration)
    # The final model differs from every fold model: its own in-sample scores are not the ones calibrated on.
    assert not np.allclose(raw_view_scores(detector, views), raw)
    with pytest.raises(ModelError, match="one pair of raw scores per view"):
        calibrate_scores(make(), raw[:-1], views)


def test_cross_fit_stacks_ensemble_weights_on_out_of_fold_scores() -> None:
    """A cross-fitted ensemble's synthetic weights come from its members' out-of-fold scores; a member that would
    need a negative weight gets 0, and the ensemble's raw score is the weighted sum of its members' scores."""
    views = [v for v in tiny_views(8) if v.family != "tamper"]
    signal = np.array([0.0 if v.is_real else 1.0 for v in views])
    noise = np.random.default_rng(0).standard_normal(len(views))
    # Member b is the noise in member a: a regression would subtract it (a negative weight), so it is dropped.
    weights, record = stack_weights(np.stack([signal + noise, noise], axis=1), views, ["a", "b"])
    assert weights == [1.0, 0.0] and record["weights"] == {"a": 1.0, "b": 0.0}
    assert record["member_auc"]["a"] < 1.0
    both, _ = stack_weights(np.stack([signal + noise, signal - noise], axis=1), views, ["a", "b"])
    assert both is not None and min(both) > 0.3 and sum(both) == pytest.approx(1.0)
    assert stack_weights(np.stack([-signal, -signal - noise], axis=1), views, ["a", "b"])[0] is None
    # min_gain: a member must earn its run time. Two complementary members (together they separate perfectly)
    # both stay; a near-copy of another member adds nothing and is dropped, with the reason on record.
    kept, record = stack_weights(np.stack([signal + noise, signal - noise], axis=1), views, ["a", "b"], min_gain=0.005)
    assert kept is not None and min(kept) > 0.3 and record["dropped"] == {}
    twin = signal + noise + 0.01 * np.random.default_rng(1).standard_normal(len(views))
    alone, record = stack_weights(np.stack([signal + noise, twin], axis=1), views, ["a", "twin"], min_gain=0.005)
    assert alone is not None and sorted(alone) == [0.0, 1.0] and len(record["dropped"]) == 1
    assert "under min_gain 0.005" in next(iter(record["dropped"].values()))

    def make() -> Detector:
        return create_detector("ensemble", preset="tiny", seed=0)

    detector, record = cross_fit_detector(make, views, folds=2, steps=2, batch_size=8, seed=0)
    stacking = record["calibration"]["stacking"]["synthetic"]  # the tamper head has one member: nothing to stack
    assert set(stacking["member_auc"]) == {"cnn", "classical"}
    given = detector.config.arch_args["weights"]["synthetic"]
    assert given[2] == 0.0 and sum(given) == pytest.approx(1.0)
    assert stacking["weights"] is None or given[:2] == pytest.approx(list(stacking["weights"].values()))
    image = views[0].pixels
    members = detector.member_synthetic_scores([image])[0]
    assert detector.raw_scores(image)[0] == pytest.approx(float(np.dot(given[:2], members)), abs=1e-4)
    kept, _ = cross_fit_detector(make, views, folds=2, steps=2, batch_size=8, seed=0, stack=False)
    assert kept.config.arch_args["weights"]["synthetic"] == [0.5, 0.5, 0.0]
    assert "stacking" not in kept.config.training["calibration"]


def test_training_refuses_a_source_in_both_sets() -> None:
    views = tiny_views(2)
    with pytest.raises(ModelError, match="both"):
        train_detector(create_detector("classical", preset="tiny"), views, views, steps=1)


def test_report_is_frozen() -> None:
    report = DetectionReport(synthetic_score=0.1, tamper_score=0.2, threshold=0.5, tamper_threshold=0.5,
                             model_tag="x", heatmap=np.zeros((1, 1), np.float32), patch_size=32,
                             patch_positions=((0, 0),), frame_shape=(32, 32))
    with pytest.raises(AttributeError):
        report.synthetic_score = 1.0  # type: ignore[misc]


def test_fakes_are_stored_on_the_grid_of_the_real_view() -> None:
    """Generators output floats; an archive stores integers of the real image's scale. A fake stored like its real
    view takes only values of that view's grid (here: 12-bit CT values through a window, clipped at both ends)."""
    from detectors.models.views import store_like, value_grid

    rng = np.random.default_rng(0)
    hu = rng.integers(-1100, 1200, (64, 64))
    real = np.clip((hu + 160) / 400.0, 0.0, 1.0).astype(np.float32)  # a W400 window: steps of 1/400
    step, anchor = value_grid(real)  # type: ignore[misc]
    assert step == pytest.approx(1 / 400) and 0 < anchor < 1
    fake = np.clip(real + rng.normal(0, 0.01, real.shape), 0, 1).astype(np.float32)
    stored = store_like(fake, real)
    assert stored.dtype == np.float32 and stored.shape == fake.shape
    inside = stored[(stored > 0) & (stored < 1)].astype(np.float64)
    assert np.allclose(np.round((inside - anchor) * 400) / 400 + anchor, inside, atol=1e-5)
    assert np.abs(stored - fake).max() <= 0.5 / 400 + 1e-6  # rounded, not moved further
    assert len(np.unique(fake)) > 4 * len(np.unique(stored))  # the float fake held values no stored image has
    flat = np.full((8, 8), 0.5, np.float32)  # no grid to read: left as it is
    assert value_grid(flat) is None and np.array_equal(store_like(fake[:8, :8], flat), fake[:8, :8])


def test_make_fakes_stores_fakes_unless_asked_for_the_floats() -> None:
    """``store_fakes=False`` (a study of storage, no longer a benchmark) keeps the generator's floats."""
    from detectors.models.views import make_fakes, value_grid

    class Noisy:  # a generator's paired_fake/sample interface: the real view plus float noise
        def paired_fake(self, real: np.ndarray, seed: int = 0) -> np.ndarray:
            return np.clip(real + np.random.default_rng(seed).normal(0, 0.01, real.shape), 0, 1)

        def sample(self, n: int, seed: int = 0, size: int = 32) -> np.ndarray:
            return np.random.default_rng(seed).random((n, size, size))

    rng = np.random.default_rng(1)
    real = View(pixels=(rng.integers(1, 255, (32, 32)) / 256.0).astype(np.float32), family="real", source_id="s",
                modality="MR", split="train")
    step, anchor = value_grid(real.pixels)  # type: ignore[misc]
    for store in (True, False):
        fakes = make_fakes([real], {"gan": Noisy()}, unpaired_fraction=1.0, store_fakes=store)
        assert len(fakes) == 2
        for fake in fakes:
            on_grid = np.allclose(np.round((fake.pixels - anchor) / step) * step + anchor, fake.pixels, atol=1e-5)
            assert on_grid is store


def test_train_bundle_takes_a_bundles_members_and_weights() -> None:
    from detectors.models.recipe import Recipe, train_bundle

    recipe = Recipe(preset="tiny", steps=4, batch_size=8, cross_fit=0, families=("vae", "tamper"))
    chosen = {"members": ["classical", "segment"], "weights": {"synthetic": [1.0, 0.0], "tamper": [0.25, 0.75]}}
    detector, record = train_bundle(tiny_views(8), recipe, families=["tamper"], arch_args=chosen)
    assert isinstance(detector, EnsembleDetector) and list(detector.members) == ["classical", "segment"]
    assert np.allclose(detector.weights, [[1.0, 0.0], [0.25, 0.75]])
    assert record["data"]["arch_args"] == chosen and record["data"]["families"] == ["tamper"]
    assert "vae" not in record["fit_views"] and record["fit_views"]["tamper"] > 0  # vae was left out


def test_the_shipped_bundle_scores_without_importing_torch() -> None:
    """Torch is most of a command's start-up; the shipped bundle's weighted members are numpy models, so loading
    it and scoring an image must not import it (the CNN and segmentation modules load only when asked for)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from detectors.models import load_bundle, list_detectors\n"
            "d = load_bundle()\n"
            "r = d.detect(np.random.default_rng(0).random((128, 128), dtype=np.float32))\n"
            "assert 0.0 <= r.synthetic_score <= 1.0\n"
            "assert {'cnn', 'segment'} <= set(list_detectors())\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_boosted_trees_score_as_scikit_learn_and_survive_a_bundle_round_trip() -> None:
    """The flat arrays a bundle keeps give scikit-learn's own decision values; damaged arrays are refused."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.utils.class_weight import compute_sample_weight

    from detectors.models.boosting import DEFAULTS, Forest, fit_forest

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 6))
    y = ((x[:, 0] > 0.5) & (x[:, 1] < 0) | (x[:, 2] > 1.2)).astype(int)  # an interaction a line cannot draw
    forest = fit_forest(x, y, seed=1, trees=40)
    reference = GradientBoostingClassifier(
        init="zero", n_estimators=40, max_depth=int(DEFAULTS["depth"]), learning_rate=DEFAULTS["rate"],
        subsample=DEFAULTS["subsample"], min_samples_leaf=int(DEFAULTS["min_leaf"]), random_state=1,
    ).fit(x, y, sample_weight=compute_sample_weight("balanced", y))
    test = rng.standard_normal((200, 6))
    np.testing.assert_allclose(forest.decision(test), reference.decision_function(test), rtol=1e-6, atol=1e-9)
    assert auc(forest.decision(test)[~_truth(test)], forest.decision(test)[_truth(test)]) > 0.9
    again = Forest.from_arrays(forest.arrays("t"), "t", n_features=6)
    np.testing.assert_array_equal(again.decision(test), forest.decision(test))
    broken = forest.arrays("t")
    broken["t.left"] = np.where(broken["t.left"] >= 0, broken["t.left"] + 1000, -1)
    with pytest.raises(ModelError, match="outside"):
        Forest.from_arrays(broken, "t", n_features=6)
    with pytest.raises(ModelError, match="outside"):
        Forest.from_arrays(forest.arrays("t"), "t", n_features=2)
    with pytest.raises(ModelError, match="lack"):
        Forest.from_arrays({k: v for k, v in forest.arrays("t").items() if k != "t.value"}, "t", n_features=6)
    with pytest.raises(ModelError, match="unknown booster"):
        fit_forest(x, y, leaves=3)


def _truth(x: np.ndarray) -> np.ndarray:
    return ((x[:, 0] > 0.5) & (x[:, 1] < 0)) | (x[:, 2] > 1.2)


def test_boosted_physics_member_keeps_its_scores_through_save_and_load() -> None:
    """The physics member with boosted trees and fold-wise references flags held-out blurred fakes, and a loaded
    copy scores exactly as the trained one."""
    fit = [v for v in tiny_views(12) if v.family != "tamper"]
    settings = {"booster": {"trees": 30, "min_leaf": 2}, "reference_folds": 3, "twins": 0.5}
    detector = create_detector("physics", preset="tiny", seed=0, arch_args=settings)
    metrics = detector.fit_images([TrainingImage(v.pixels, int(v.family != "real"), v.group, source=v.source_id)
                                   for v in fit])
    assert metrics["trees"] == 30
    copy = create_detector("physics", preset="tiny", seed=0, arch_args=dict(detector.config.arch_args))
    copy.load_state_arrays(detector.state_arrays())
    reals = [phantom(400 + i).astype(np.float32) for i in range(8)]
    smooth = [cv2.GaussianBlur(px, (0, 0), 1.2) for px in reals]

    def score(det: Detector, images: list[np.ndarray]) -> list[float]:
        return [det.score_frames(FrameSet.of(px, det.config, group="MR/native")).synthetic for px in images]

    assert score(copy, reals + smooth) == score(detector, reals + smooth)
    assert auc(score(detector, reals), score(detector, smooth)) > 0.9
    without_trees = {k: v for k, v in detector.state_arrays().items() if not k.startswith("physics.trees.")}
    with pytest.raises(ModelError, match="boosted trees lack"):
        copy.load_state_arrays(without_trees)


def test_boosted_classical_synthetic_head_round_trips() -> None:
    """With ``booster``, the classical member's synthetic head is boosted trees on its two-sided departures; a loaded
    copy gives the same patch logits, and a bundle without the trees is refused."""
    settings = {"booster": {"trees": 20, "min_leaf": 5}}
    detector = create_detector("classical", preset="tiny", seed=0, arch_args=settings)
    fit = [v for v in tiny_views(10) if v.family != "tamper"]
    calib = [v for v in tiny_views(6, split="val", offset=50) if v.family != "tamper"]
    train_detector(detector, fit, calib, steps=1, batch_size=32, seed=0)
    assert detector.forest is not None and detector.forest.trees == 20
    copy = create_detector("classical", preset="tiny", seed=0, arch_args=dict(detector.config.arch_args))
    copy.load_state_arrays(detector.state_arrays())
    patches = np.stack([v.pixels[:32, :32] for v in tiny_views(3, split="test", offset=300)])
    np.testing.assert_array_equal(copy.patch_logits(patches), detector.patch_logits(patches))
    without = {k: v for k, v in detector.state_arrays().items() if not k.startswith("classical.trees.")}
    with pytest.raises(ModelError, match="boosted trees lack"):
        copy.load_state_arrays(without)
