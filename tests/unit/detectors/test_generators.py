"""Contract tests run over every registered generator (timm-style), plus checkpoint integrity."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
import pytest
import torch

from detectors.generators import (
    PRESET_NAMES,
    CheckpointError,
    Generator,
    GeneratorConfigError,
    GeneratorInputError,
    TamperGenerator,
    TrainProgress,
    UnknownGeneratorError,
    create_generator,
    generator_class,
    list_generators,
    read_checkpoint,
    sha256_file,
)
from detectors.generators.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from detectors.generators.training import PatchSampler, content_positions

torch.set_num_threads(1)

GENERATORS = list_generators()


def phantom(seed: int, h: int = 48, w: int = 48) -> np.ndarray:
    """A smooth body outline with a few round structures and mild noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w), np.float32)
    img[((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1] = 0.45
    for _ in range(4):
        cy, cx = rng.uniform(0.3, 0.7, 2) * [h, w]
        r = rng.uniform(0.05, 0.15) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0.2, 0.9)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


FRAMES = [phantom(i) for i in range(3)] + [phantom(9, 24, 40)]  # one smaller than the patch: upsampled


@pytest.fixture(scope="module", params=GENERATORS)
def trained(request: pytest.FixtureRequest) -> Generator:
    """A ``tiny`` generator trained for its few configured steps (shared by the tests of one generator)."""
    gen = create_generator(request.param, config="tiny", seed=0)
    seen: list[TrainProgress] = []
    result = gen.fit(FRAMES, seed=1, progress=seen.append, progress_every=2)
    assert result.steps == gen.config.steps and seen[-1].step == gen.config.steps
    assert all(np.isfinite(v) for v in result.metrics.values()) and result.metrics
    assert seen[-1].eta_s == 0.0
    return gen


def test_registry() -> None:
    assert {"vae", "gan", "diffusion", "tamper"} <= set(GENERATORS)
    for name in GENERATORS:
        cls = generator_class(name)
        assert cls.name == name and cls.paired_method
        for preset in PRESET_NAMES:
            assert cls.config_class.preset(preset).image_size >= 16
    with pytest.raises(UnknownGeneratorError, match="registered: diffusion"):
        create_generator("nope")
    with pytest.raises(GeneratorConfigError):
        create_generator("vae", config="huge")
    with pytest.raises(GeneratorConfigError):
        create_generator("vae", config="tiny", width=-1)
    with pytest.raises(GeneratorConfigError):
        create_generator("vae", config="tiny", no_such_field=1)


def test_sample_contract(trained: Generator) -> None:
    out = trained.sample(2, seed=3)
    size = trained.config.image_size
    assert out.shape == (2, size, size) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    big = trained.sample(1, seed=3, size=size * 2 + 8)  # clinical size by the stated method
    assert big.shape == (1, size * 2 + 8, size * 2 + 8) and 0.0 <= big.min() <= big.max() <= 1.0
    np.testing.assert_array_equal(out, trained.sample(2, seed=3))
    assert trained.sample(0).shape == (0, size, size)


def test_paired_fake_contract(trained: Generator) -> None:
    real = phantom(42, 40, 56)  # non-square, not a multiple of the down-sampling
    fake, mask = trained.paired_fake_with_mask(real, seed=5)
    assert fake.shape == real.shape and fake.dtype == np.float32 and mask.shape == real.shape
    assert 0.0 <= fake.min() <= fake.max() <= 1.0
    assert np.abs(fake - real).mean() > 1e-3, "the paired fake must differ from the real image"
    assert np.corrcoef(fake.ravel(), real.ravel())[0, 1] > 0.3, "the paired fake must share the real content"
    assert mask.any()
    changed = np.abs(fake - real) > 1e-6
    assert changed[mask].sum() >= 0.95 * changed.sum(), "changes must lie inside the mask"
    np.testing.assert_array_equal(fake, trained.paired_fake(real, seed=5))
    with pytest.raises(GeneratorInputError):
        trained.paired_fake(real * 3.0)
    with pytest.raises(GeneratorInputError):
        trained.paired_fake(np.zeros((2, 8, 8), np.float32))


def test_tamper_modes() -> None:
    gen = create_generator("tamper", config="tiny")
    assert isinstance(gen, TamperGenerator)
    real = phantom(3, 64, 64)
    for mode in ("inject", "remove", "copymove"):
        result = gen.tamper(real, seed=2, mode=mode)
        changed = result.image != real
        assert result.mode == mode and result.mask.any() and changed.any()
        assert not changed[~result.mask].any()
        assert result.mask.mean() < 0.25, "a local edit"
    telea = create_generator("tamper", config="tiny", inpaint_method="telea", match_noise=False).tamper(
        real, seed=2, mode="remove")
    assert telea.mask.any() and not (telea.image != real)[~telea.mask].any()
    ring = cv2.dilate(telea.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~telea.mask
    lo, hi = real[ring].min(), real[ring].max()
    assert lo - 0.02 <= telea.image[telea.mask].min() and telea.image[telea.mask].max() <= hi + 0.02, "a plausible fill"


def test_removal_carries_the_images_own_noise_and_copy_move_blends_a_copy() -> None:
    rng = np.random.default_rng(0)
    real = np.clip(phantom(5, 128, 128) + rng.normal(0, 0.03, (128, 128)).astype(np.float32), 0, 1)
    fine = lambda a: a - cv2.GaussianBlur(a, (0, 0), 1.0)  # noqa: E731
    smooth = create_generator("tamper", config="small", match_noise=False).tamper(real, seed=4, mode="remove")
    noisy = create_generator("tamper", config="small").tamper(real, seed=4, mode="remove")
    assert np.array_equal(smooth.mask, noisy.mask)
    around = fine(real)[cv2.dilate(noisy.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~noisy.mask]
    assert fine(smooth.image)[smooth.mask].std() < 0.5 * around.std()
    assert 0.6 * around.std() < fine(noisy.image)[noisy.mask].std() < 1.6 * around.std()
    moved = create_generator("tamper", config="small").tamper(real, seed=4, mode="copymove")
    ys, xs = np.nonzero(moved.mask)
    assert not (moved.image != real)[~moved.mask].any() and moved.mask.any()
    # The pasted region holds a copy of another region's fine texture (Poisson blending keeps its gradients).
    best = 0.0
    for dy in range(-100, 101):
        for dx in range(-100, 101):
            sy, sx = ys - dy, xs - dx
            if abs(dy) + abs(dx) < 8 or sy.min() < 0 or sx.min() < 0 or sy.max() >= 128 or sx.max() >= 128:
                continue
            a, b = fine(moved.image)[ys, xs], fine(real)[sy, sx]
            best = max(best, float(np.corrcoef(a, b)[0, 1]))
    assert best > 0.8


def test_training_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        gen = create_generator("gan", config="tiny", seed=7)
        gen.fit(FRAMES, seed=3, steps=3)
        runs.append(gen.sample(2, seed=1))
    np.testing.assert_array_equal(runs[0], runs[1])
    other = create_generator("gan", config="tiny", seed=7)
    other.fit(FRAMES, seed=4, steps=3)
    assert not np.array_equal(other.sample(2, seed=1), runs[0])


def test_checkpoint_round_trip(trained: Generator, tmp_path: Path) -> None:
    info = trained.save(tmp_path / "ckpt")
    assert info.digest == sha256_file(tmp_path / "ckpt" / WEIGHTS_FILE) == trained.digest
    doc = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert doc["name"] == trained.name and doc["digest"] == info.digest
    assert doc["config"] == json.loads(json.dumps(trained.config.to_dict()))
    assert doc["training"]["seed"] == 1 and doc["training"]["steps"] == trained.config.steps
    assert info.seed == 1

    loaded = create_generator(trained.name, checkpoint=tmp_path / "ckpt")
    assert loaded.config == trained.config and loaded.digest == info.digest
    np.testing.assert_array_equal(loaded.sample(2, seed=9), trained.sample(2, seed=9))
    real = phantom(5)
    np.testing.assert_array_equal(loaded.paired_fake(real, seed=1), trained.paired_fake(real, seed=1))

    # The weights file is plain safetensors: no pickle opcodes, a JSON header.
    blob = (tmp_path / "ckpt" / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    json.loads(blob[8 : 8 + header_len])
    # Nor a pickle (its first bytes are a little-endian length; which error pickle raises depends on them).
    with pytest.raises((pickle.UnpicklingError, ValueError, EOFError)):
        pickle.loads(blob)

    with pytest.raises(CheckpointError, match="not 'other'"):
        read_checkpoint(tmp_path / "ckpt", expected_name="other")
    with pytest.raises(GeneratorConfigError):
        create_generator(trained.name, checkpoint=tmp_path / "ckpt", config="tiny")


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    gen = create_generator("vae", config="tiny")
    gen.save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match the checkpoint digest"):
        create_generator("vae", checkpoint=tmp_path / "ckpt")
    (tmp_path / "ckpt" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        create_generator("vae", checkpoint=tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_generator("vae", checkpoint=tmp_path / "missing")


def test_pickle_in_place_of_weights_is_refused(tmp_path: Path) -> None:
    gen = create_generator("gan", config="tiny")
    info = gen.save(tmp_path / "ckpt")
    payload = pickle.dumps({"g.net.0.weight": [1.0]})
    (tmp_path / "ckpt" / WEIGHTS_FILE).write_bytes(payload)
    doc = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    import hashlib

    doc["digest"] = hashlib.sha256(payload).hexdigest()  # even with a matching digest
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(doc))
    assert doc["digest"] != info.digest
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        create_generator("gan", checkpoint=tmp_path / "ckpt")


def test_cli_train_generator(tmp_path: Path) -> None:
    from detectors.data import build_corpus
    from verifier.cli import main

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), (phantom(i, 72, 80) * 255).astype(np.uint8))
    build_corpus([tmp_path], tmp_path / "corpus", modality="OT")
    out = tmp_path / "ckpt"
    argv = ["train", "generator", "gan", "--corpus", str(tmp_path / "corpus"), "--config", "tiny"]
    assert main([*argv, "--split", "all", "--steps", "3", "--out", str(out), "--threads", "1", "--seed", "4"]) == 0
    gen = create_generator("gan", checkpoint=out)
    assert gen.training_record["steps"] == 3 and gen.training_record["seed"] == 4
    assert gen.training_record["data"]["frames"] == 3
    assert torch.get_num_threads() == 1
    sampling = tmp_path / "sampling"
    extra = ["--steps", "2", "--out", str(sampling), "--threads", "1", "--device", "cpu", "--minutes", "5"]
    assert main([*argv, "--split", "all", *extra, "--sampling-only"]) == 0
    stored = {k.split(".", 1)[0] for k in read_checkpoint(sampling)[1]}
    assert stored == {"g_ema"} and create_generator("gan", checkpoint=sampling).training_record["device"] == "cpu"
    assert main([*argv, "--split", "all", "--device", "no-such-device"]) == 2
    assert main(["train", "generator", "nope", "--corpus", str(tmp_path / "corpus")]) == 2
    assert main(["train", "generator", "gan", "--corpus", str(tmp_path / "missing")]) == 2
    assert main([*argv, "--split", "everything"]) == 2


def test_diffusion_strength() -> None:
    gen = create_generator("diffusion", config="tiny")
    real = phantom(1)
    mild = gen.sdedit(real, strength=0.1, seed=0)
    strong = gen.sdedit(real, strength=0.9, seed=0)
    assert mild.shape == real.shape and np.abs(mild - real).mean() < np.abs(strong - real).mean()
    np.testing.assert_array_equal(gen.sdedit(real, seed=3), gen.paired_fake(real, seed=3))
    with pytest.raises(GeneratorInputError):
        gen.sdedit(real, strength=1.5)
    gen.ddim_steps = 2
    assert gen.sample(1, seed=0).shape == (1, 32, 32)
    gen.ddim_steps = 1
    with pytest.raises(GeneratorInputError):
        gen.sample(1)


def test_shipped_checkpoints_load() -> None:
    root = Path(__file__).resolve().parents[3] / "detectors" / "checkpoints"
    shipped = sorted(p for p in root.glob("*") if (p / CONFIG_FILE).is_file()) if root.is_dir() else []
    for directory in shipped:
        info, _ = read_checkpoint(directory)
        assert (directory / WEIGHTS_FILE).stat().st_size <= 10 * 1024 * 1024
        gen = create_generator(info.name, checkpoint=directory)
        out = gen.sample(1, seed=0)
        assert out.shape == (1, gen.config.image_size, gen.config.image_size) and np.isfinite(out).all()


def _crop_stats(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-crop standard deviation and fraction of pixels above the background (0) + margin, in [0, 1] units."""
    x = (batch[:, 0].numpy().astype(np.float64) + 1.0) * 0.5
    return x.std(axis=(1, 2)), (x > 0.05).mean(axis=(1, 2))


def test_patch_sampler_never_returns_flat_crops() -> None:
    rng = np.random.default_rng(0)
    body = np.zeros((160, 200), np.float32)  # mostly air, a textured block in one corner
    body[100:150, 20:70] = np.clip(0.5 + rng.normal(0, 0.1, (50, 50)), 0, 1)
    blank = np.full((96, 96), 0.0, np.float32)  # a frame with no content at all is never used
    sampler = PatchSampler([body, blank], 32)
    assert sampler.content_aware and sampler.description["frames_with_content"] == 1
    std, content = _crop_stats(sampler.batch(400, np.random.default_rng(1)))
    assert std.min() >= sampler.min_std and content.min() >= sampler.min_content
    # The plain uniform sampler on the same frames returns mostly air: the filter is what removes it.
    uniform = PatchSampler([body, blank], 32, min_std=0, min_content=0)
    std_u, _ = _crop_stats(uniform.batch(400, np.random.default_rng(1)))
    assert (std_u < 0.02).mean() > 0.5
    # Seeded and deterministic.
    again = PatchSampler([body, blank], 32)
    assert torch.equal(sampler.batch(16, np.random.default_rng(5)), again.batch(16, np.random.default_rng(5)))


def test_patch_sampler_terminates_on_constant_frames() -> None:
    sampler = PatchSampler([np.full((64, 80), 0.3, np.float32), np.zeros((40, 40), np.float32)], 32)
    assert not sampler.content_aware
    batch = sampler.batch(64, np.random.default_rng(0))
    assert batch.shape == (64, 1, 32, 32) and torch.isfinite(batch).all()
    with pytest.raises(GeneratorInputError):
        PatchSampler(FRAMES, 32, min_content=1.5)


def test_content_positions_match_brute_force() -> None:
    frame = np.zeros((30, 36), np.float32)
    frame[8:20, 5:30] = np.random.default_rng(3).uniform(0.2, 1.0, (12, 25)).astype(np.float32)
    s, min_std, min_content, margin = 8, 0.05, 0.5, 0.05
    found = set(content_positions(frame, s, min_std=min_std, min_content=min_content, background_margin=margin))
    expected = set()
    cols = frame.shape[1] - s + 1
    for y in range(frame.shape[0] - s + 1):
        for x in range(cols):
            crop = frame[y : y + s, x : x + s].astype(np.float64)
            if crop.std() >= min_std and (crop > frame.min() + margin).mean() >= min_content:
                expected.add(y * cols + x)
    assert found == expected and expected


def test_sampling_only_checkpoint(trained: Generator, tmp_path: Path) -> None:
    trained.save(tmp_path / "full")
    trained.save(tmp_path / "sampling", sampling_only=True)
    sizes = [(tmp_path / d / WEIGHTS_FILE).stat().st_size for d in ("full", "sampling")]
    assert sizes[1] <= sizes[0]
    stored = {k.split(".", 1)[0] for k in read_checkpoint(tmp_path / "sampling")[1]}
    assert stored == set(trained.sampling_modules()) | set(trained.optional_modules())
    loaded = create_generator(trained.name, checkpoint=tmp_path / "sampling")
    np.testing.assert_array_equal(loaded.sample(2, seed=4), trained.sample(2, seed=4))
    real = phantom(5)
    np.testing.assert_array_equal(loaded.paired_fake(real, seed=1), trained.paired_fake(real, seed=1))
    loaded.fit(FRAMES, steps=1, seed=0)  # the modules it lacked were filled: it trains on


def test_checkpoint_missing_sampling_weights_is_refused(tmp_path: Path) -> None:
    gen = create_generator("diffusion", config="tiny")
    gen.save(tmp_path / "ckpt")
    info, tensors = read_checkpoint(tmp_path / "ckpt")
    from detectors.generators.checkpoint import write_checkpoint

    unet_only = {k: v for k, v in tensors.items() if k.startswith("unet.")}
    write_checkpoint(tmp_path / "bad", name="diffusion", tensors=unet_only, config=info.config, training=info.training)
    with pytest.raises(CheckpointError, match="lacks the ema"):
        create_generator("diffusion", checkpoint=tmp_path / "bad")


def test_fit_time_limit() -> None:
    gen = create_generator("vae", config="tiny")
    seen: list[TrainProgress] = []
    result = gen.fit(FRAMES, steps=10**6, seed=0, time_limit_s=0.3, progress=seen.append, progress_every=10**6)
    assert 1 <= result.steps < 10**6 and gen.training_record["steps"] == result.steps
    assert seen and seen[-1].step == result.steps
    with pytest.raises(GeneratorInputError):
        gen.fit(FRAMES, steps=1, time_limit_s=0)


def test_gan_legacy_dcgan_config_still_builds_and_trains() -> None:
    from detectors.generators import GANConfig

    cfg = GANConfig(image_size=32, width=8, z_channels=8, steps=2, batch_size=4)  # pre-option checkpoints
    assert cfg.upsample == "transposed" and cfg.ema_decay == 0 and cfg.loss == "nonsaturating"
    gen = create_generator("gan", config=cfg)
    assert "g_ema" not in gen.modules
    gen.fit(FRAMES, seed=0)
    assert gen.sample(1, seed=0).shape == (1, 32, 32)


def test_train_from_exported_frames(tmp_path: Path) -> None:
    from detectors.data import build_corpus
    from detectors.generators.__main__ import load_frames
    from detectors.generators.__main__ import main as generators_main

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), (phantom(i, 72, 80) * 255).astype(np.uint8))
    build_corpus([tmp_path], tmp_path / "corpus", modality="OT")
    frames_file = tmp_path / "frames.npz"
    export = ["export", "--corpus", str(tmp_path / "corpus"), "--out", str(frames_file), "--split", "all"]
    assert generators_main(export) == 0
    frames, description = load_frames(frames_file)
    assert len(frames) == 3 and description["frames"] == 3 and all(f.dtype == np.float32 for f in frames)
    argv = ["train", "diffusion", "--frames", str(frames_file), "--out", str(tmp_path / "ckpt"), "--config", "tiny"]
    assert generators_main([*argv, "--steps", "2", "--set", "batch_size=2", "--sampling-only"]) == 0
    gen = create_generator("diffusion", checkpoint=tmp_path / "ckpt")
    assert gen.config.batch_size == 2 and gen.training_record["steps"] == 2
    assert gen.training_record["data"]["manifest_sha256"] == description["manifest_sha256"]
    assert gen.training_record["device"] == "cpu"


def test_vae_latent_prior_is_fitted_saved_and_optional(tmp_path: Path) -> None:
    """After training, the VAE's unpaired samples come from a prior fitted to its encoded training crops; the
    prior is saved (also sampling-only) and a checkpoint from before it still loads, sampling standard-normal
    latents."""
    gen = create_generator("vae", config="tiny", seed=0)
    assert gen.prior is None  # type: ignore[attr-defined]
    gen.fit(FRAMES, seed=1)
    prior = gen.prior  # type: ignore[attr-defined]
    assert prior is not None and gen.training_record["prior"]["components"] == gen.config.prior_components  # type: ignore[attr-defined]
    gen.save(tmp_path / "with", sampling_only=True)
    loaded = create_generator("vae", checkpoint=tmp_path / "with")
    assert loaded.prior is not None  # type: ignore[attr-defined]
    assert np.array_equal(loaded.sample(2, seed=4, size=40), gen.sample(2, seed=4, size=40))
    # A checkpoint written before the prior existed: no prior tensors, and a config without its fields.
    info, tensors = read_checkpoint(tmp_path / "with")
    from detectors.generators.checkpoint import write_checkpoint

    old_config = {k: v for k, v in info.config.items() if not k.startswith("prior_")}
    old_tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    write_checkpoint(tmp_path / "old", name="vae", tensors=old_tensors, config=old_config,
                     training={k: v for k, v in info.training.items() if k != "prior"})  # fmt: skip
    old = create_generator("vae", checkpoint=tmp_path / "old")
    assert old.prior is None  # type: ignore[attr-defined]
    assert old.sample(1, seed=0, size=32).shape == (1, 32, 32)
    # Fitting the prior alone (0 steps on the loaded checkpoint) keeps the weights and the step count.
    steps = old.training_record["steps"]
    before = old.sample(1, seed=0, size=32)
    old.fit(FRAMES, steps=0, seed=2)
    assert old.prior is not None and old.training_record["steps"] == steps  # type: ignore[attr-defined]
    assert not np.array_equal(before, old.sample(1, seed=0, size=32))


def test_latent_field_prior_reproduces_cross_covariance() -> None:
    """Sampled fields keep the direction of the fitted cross-covariance (a channel that is another one shifted
    sideways stays shifted that way, not mirrored) and the lag-0 variance. (Longer lags come out weaker: the
    covariance is tapered so that it stays positive definite.)"""
    from scipy.ndimage import gaussian_filter

    from detectors.generators.latent_prior import LatentPrior, fit_field_mixture

    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.standard_normal((300, 32, 32)), (0, 1.0, 1.0))
    fields = np.stack([base[:, 4:28, 4:28], base[:, 4:28, 2:26]], axis=1).astype(np.float32)  # channel 1 = 0 shifted
    weights, means, cov = fit_field_mixture(fields, components=1, radius=3)
    prior = LatentPrior(2, 1, 3)
    prior.set(weights, means, cov)
    drawn = prior.sample(300, 24, 24, torch.Generator().manual_seed(1)).numpy()
    _w, _m, cov2 = fit_field_mixture(drawn, components=1, radius=3)
    row, row2 = cov[0, 0, 1, 3], cov2[0, 0, 1, 3]  # cross-covariance along x at dy = 0
    assert int(np.argmax(row)) == 5  # the fitted peak at dx = +2
    assert int(np.argmax(row2)) > 3 and row2[4:].sum() > 4 * row2[:3].sum()  # drawn: on the same side
    assert abs(cov2[0, 0, 0, 3, 3] - cov[0, 0, 0, 3, 3]) < 0.15 * cov[0, 0, 0, 3, 3]
