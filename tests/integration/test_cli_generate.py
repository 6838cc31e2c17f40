"""`medverify generate`: every file is valid DICOM, declared synthetic, signed by a generator key and audited."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import TEST_KEY_PASSPHRASE, dciodvfy_errors, require_tool

from detectors.data.normalize import normalization_range
from detectors.data.reader import read_image
from provenance.declaration import read_declaration
from verifier.cli import main


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE trained for a few steps on real frames (seconds on a CPU)."""
    import torch

    from detectors.generators import create_generator

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    frame = ds.pixel_array.astype(np.float32)
    frame = (frame - frame.min()) / (frame.max() - frame.min())
    model = create_generator("vae", config="tiny", seed=0)
    model.fit([frame, frame[::-1].copy()], steps=3)
    out = tmp_path_factory.mktemp("ckpt") / "vae"
    model.save(out)
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDVERIFY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDVERIFY_KEY_PASSPHRASE", TEST_KEY_PASSPHRASE)
    return tmp_path / "home"


def test_generate_unpaired_and_paired(
    home: Path, tmp_path: Path, vae_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synthetic"
    real = get_testdata_file("MR_small.dcm")
    assert (
        main(
            [
                "generate",
                "vae",
                "--checkpoint",
                str(vae_checkpoint),
                "-n",
                "2",
                "--size",
                "96",
                "-o",
                str(out),
                "--modality",
                "CT",
                "--seed",
                "10",
            ]
        )
        == 0
    )
    assert main(["generate", "vae", "--checkpoint", str(vae_checkpoint), "--from", str(real), "-o", str(out)]) == 0
    assert main(["generate", "tamper", "--from", str(real), "-o", str(out), "--seed", "3"]) == 0
    files = sorted(out.glob("*.dcm"))
    assert [f.name for f in files] == [
        "tamper_mr_000003.dcm",
        "vae_ct_000010.dcm",
        "vae_ct_000011.dcm",
        "vae_mr_000000.dcm",
    ]
    capsys.readouterr()

    # Every file is declared synthetic, names its audit record, and verifies as signed by the generator key;
    # the default policy quarantines declared synthetic images, so verify reports a finding (exit 1).
    assert main(["verify", "--format", "jsonl", "--no-audit", str(out)]) == 1
    lines = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert main(["audit", "list", "--format", "jsonl"]) == 0
    records = {r["id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    for path in files:
        ds = pydicom.dcmread(path)
        declaration = read_declaration(ds)
        assert declaration is not None and declaration.generator == path.name.split("_")[0]
        record = records[declaration.audit_id]
        assert record["event"] == "generate" and record["sop_instance_uid"] == ds.SOPInstanceUID
        assert record["details"]["seed"] == declaration.seed
        assert (lines[path.name]["verdict"], lines[path.name]["action"]) == ("DECLARED_SYNTHETIC", "quarantine")
        signature = lines[path.name]["signature"]
        assert signature["status"] == "VALID" and signature["signatures"][0]["role"] == "generator"
        assert signature["uncovered"] == []
    unpaired = pydicom.dcmread(out / "vae_ct_000010.dcm")
    assert (unpaired.Rows, unpaired.Columns) == (96, 96)
    assert "SourceImageSequence" not in unpaired
    paired = pydicom.dcmread(out / "vae_mr_000000.dcm")
    assert paired.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(real).SOPInstanceUID
    # A paired fake is stored on its source's scale (the range the detectors' normalisation read from it: MR_small's
    # window), not stretched over 12 bits; the watermark may step a little past the range's ends.
    source = read_image(Path(real))
    low, high = normalization_range(source.frames, source.modality, window=source.window)
    tampered = pydicom.dcmread(out / "tamper_mr_000003.dcm")
    for fake in (paired, tampered):
        values, slack = fake.pixel_array.astype(np.float64), 0.05 * (high - low)
        assert max(low, 0.0) - slack <= values.min() and values.max() <= high + slack
        assert float(fake.WindowCenter) == pytest.approx((low + high) / 2, abs=0.01)
    assert np.ptp(tampered.pixel_array) > 0.5 * (high - max(low, 0.0))  # the source's content on its scale

    # Real peers agree: dciodvfy finds no errors and dcmsign verifies against our CA.
    ca = tmp_path / "ca.pem"
    assert main(["keys", "export-cert", "ca", "-o", str(ca)]) == 0
    for path in files:
        assert pydicom.dcmread(path).SyntheticData == "YES"
        assert dciodvfy_errors(path) == []
        sign = subprocess.run(
            [require_tool("dcmsign"), "--verify", "+cf", str(ca), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert sign.returncode == 0 and "Verification : OK" in sign.stdout + sign.stderr


def test_generate_refuses_bad_requests(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "nonsense", "-o", str(tmp_path)]) == 2
    assert "unknown generator" in capsys.readouterr().err
    assert main(["generate", "vae", "-o", str(tmp_path), "--checkpoint", str(tmp_path / "absent")]) == 2
    assert main(["generate", "tamper", "-o", str(tmp_path), "--modality", "XX"]) == 2
    assert list(tmp_path.glob("*.dcm")) == []
