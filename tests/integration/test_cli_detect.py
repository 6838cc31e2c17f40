"""``medverify train detector``, ``medverify evaluate`` and ``medverify verify --checks detector`` end to end,
on the sample corpus (installed test images) with a tiny bundle trained by the CLI itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import jsonl, run_cli

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detectors.data import build_sample_corpus

    out = tmp_path_factory.mktemp("detect") / "corpus"
    build_sample_corpus(out)
    return out


@pytest.fixture(scope="module")
def bundle(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ensemble trained, calibrated and saved by the CLI (a few steps: the plumbing, not the accuracy)."""
    import torch

    from verifier.cli import main

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("detect") / "bundle"
    code = main(["train", "detector", "--corpus", str(corpus), "--generators", "vae,inject", "--preset", "tiny",
                 "--steps", "3", "--batch-size", "8", "--view-size", "48", "--threads", "1", "--cross-fit", "0",
                 "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_a_bundle_with_its_record(bundle: Path) -> None:
    from detectors.models.bundle import bundle_tag

    record = json.loads((bundle / "config.json").read_text())
    config = record["config"]
    assert record["format"] == "medverify-detector/1" and config["arch"] == "ensemble"
    assert config["tag"] == bundle_tag("ensemble", record["digest"], config)
    # The tag names a behaviour, not only the weights: the same weights with another threshold get another tag.
    assert bundle_tag("ensemble", record["digest"], {**config, "threshold": 0.5}) != config["tag"]
    assert bundle_tag("ensemble", record["digest"], {**config, "training": {}}) == config["tag"]
    training = config["training"]
    assert training["steps"] == 3 and training["seed"] == 0
    assert set(training["data"]["generators"]) == {"vae", "tamper"}  # the generators behind the families
    assert training["data"]["generators"]["vae"]["digest"]  # the shipped VAE checkpoint made the fakes
    assert training["data"]["recipe"]["families"] == ["vae", "inject"] and training["data"]["recipe"]["view_size"] == 48
    # Calibration used other sources of the train split than fitting.
    assert training["calibration"]["real"] > 0 and training["calibration"]["sources"] >= 1
    assert set(config["calibration"]) == {"synthetic", "tamper"} and 0 <= config["threshold"] <= 1


def test_train_cross_fit_calibrates_on_every_source(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--cross-fit K: the final model is fitted on every source of the train split and calibrated on out-of-fold
    scores of all of them; K=1 is refused before any work."""
    out = tmp_path / "bundle"
    code, stdout, _err = run_cli(capsys, "train", "detector", "--corpus", corpus, "--generators", "vae",
                                 "--preset", "tiny", "--arch", "classical", "--steps", "1", "--view-size", "48",
                                 "--threads", "1", "--cross-fit", "2", "--out", out)
    assert "views of the train split" in stdout
    assert code == 0, _err
    training = json.loads((out / "config.json").read_text())["config"]["training"]
    calibration = training["calibration"]
    assert calibration["cross_fit"]["folds"] == 2 and len(calibration["cross_fit"]["per_fold"]) == 2
    assert calibration["sources"] == training["fit_sources"] == sum(
        f["sources"] for f in calibration["cross_fit"]["per_fold"])
    assert "out-of-fold scores (2 folds)" in " ".join(stdout.split())
    code, _out, err = run_cli(capsys, "train", "detector", "--corpus", corpus, "--cross-fit", "1",
                              "--out", tmp_path / "never")
    assert code == 2 and "at least 2 folds" in err and not (tmp_path / "never").exists()


def test_evaluate_reports_per_family(bundle: Path, corpus: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _err = run_cli(capsys, "evaluate", "--corpus", corpus, "--model", bundle, "--format", "json")
    assert code == 0
    result = json.loads(out)
    assert set(result["conditions"]) == {"clean", "jpeg75", "resize0.5"}
    clean = result["conditions"]["clean"]
    assert set(clean["families"]) == {"vae", "inject"}
    assert 0.0 <= clean["families"]["vae"]["auc"] <= 1.0 and clean["fpr_synthetic"] is not None
    assert "pixel_auc" in clean["families"]["inject"]
    # False positives are counted on real views of patients the bundle never saw, native and 8-bit apart.
    assert clean["fpr"]["views"] == result["real_views"] > 0 and clean["fpr"]["patients"] >= 2
    assert set(clean["forms"]) <= {"native", "8bit"} and "native" in clean["forms"]
    vae = clean["families"]["vae"]  # each held-out source's reals against the fakes made from them
    assert vae["within_sources"] >= 1 and 0.0 <= vae["within_source_auc"] <= 1.0
    assert 0.0 <= vae["paired_win_rate"] <= 1.0
    low, high = vae["auc_ci95"]  # a bootstrap over the held-out sources
    assert 0.0 <= low <= high <= 1.0
    assert result["data"]["splits"] == ["test", "val"]
    from verifier.cli import _common

    # A wide terminal, so that no cell is wrapped; then back to the width rich finds itself (monkeypatch would
    # restore the width it read, fixing it for every later test).
    _common.console.width = 160
    try:
        code, out, _err = run_cli(capsys, "evaluate", "--corpus", corpus, "--model", bundle)
    finally:
        _common.console.width = None  # type: ignore[assignment]
    assert code == 0 and "95% CI (patients)" in out and f"{low:.2f}-{high:.2f}" in out


def test_verify_with_detector(
    bundle: Path, keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detectors.data import sample_dicom_files

    files = {p.name: p for _pkg, p in sample_dicom_files()}
    ct, mr = files["CT_small.dcm"], files["MR_small.dcm"]
    heatmaps = tmp_path / "heatmaps"
    code, out, _err = run_cli(capsys, "verify", ct, mr, "--checks", "signature,detector", "--model", bundle,
                              "--heatmaps", heatmaps, "-f", "jsonl")
    assert code in (0, 1)
    lines = jsonl(out)
    tag = json.loads((bundle / "config.json").read_text())["config"]["tag"]
    for line in lines:
        assert 0.0 <= line["synthetic_score"] <= 1.0 and 0.0 <= line["tamper_score"] <= 1.0
        assert line["detector"]["model_tag"] == tag and 0.0 <= line["detector"]["threshold"] <= 1.0
        assert Path(line["detector"]["heatmap"]).is_file()
        assert any(r.startswith("detector:") for r in line["reasons"])
    # The tiny preset has the segmentation member; each heatmap PNG covers its image (128 and 64 px here).
    import cv2

    members = json.loads((bundle / "config.json").read_text())["config"]["arch_args"]["members"]
    assert "segment" in members
    sides = sorted(cv2.imread(line["detector"]["heatmap"]).shape[:2] for line in lines)
    assert sides == [(64, 64), (128, 128)]
    # The audit record keeps the detection report and the model tag.
    code, out, _err = run_cli(capsys, "audit", "list", "--format", "jsonl")
    records = jsonl(out)
    assert records and all(r["model_tag"] == tag for r in records)
    assert all(r["detection_report"]["synthetic_score"] is not None for r in records)
    # A DICOM object without pixels gets one result with the reason, no scores, no crash.
    from pydicom.data import get_testdata_file

    plan = str(get_testdata_file("rtplan.dcm"))
    code, out, _err = run_cli(capsys, "verify", plan, "--checks", "signature,detector", "--model", bundle,
                              "-f", "jsonl", "--no-audit")
    (line,) = jsonl(out)
    assert line["verdict"] == "NO_EVIDENCE" and line["synthetic_score"] is None
    assert "no pixel data" in line["detector"]["error"]
    assert any("could not be scored" in r for r in line["reasons"])
    # Signature-only output keeps the fields, empty.
    code, out, _err = run_cli(capsys, "verify", ct, "--checks", "signature", "-f", "jsonl", "--no-audit")
    (line,) = jsonl(out)
    assert line["synthetic_score"] is None and line["detector"] is None
    # --model without the detector check is refused with a clear error.
    code, _out, err = run_cli(capsys, "verify", ct, "--checks", "signature", "--model", bundle, "--no-audit")
    assert code == 2 and "detector check" in err


def test_signature_only_verify_never_imports_torch(keyed_home: Path) -> None:
    from detectors.data import sample_dicom_files

    ct = {p.name: p for _pkg, p in sample_dicom_files()}["CT_small.dcm"]
    script = (
        "import sys\nfrom verifier.cli import main\n"
        f"code = main(['verify', {str(ct)!r}, '--checks', 'signature', '--no-audit', '-f', 'jsonl'])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ}, check=False)
    assert done.stdout.strip().splitlines()[-1] in ("NO-TORCH 0", "NO-TORCH 1"), done.stderr[-2000:]


def test_workers_forked_after_an_in_process_detector_check_do_not_hang(bundle: Path) -> None:
    """A process that ran the detector itself (a one-worker scan, with torch's default threads) and then forks
    workers: they inherit the loaded model but not torch's OpenMP threads, and hung in their first convolution
    until workers got one thread each (found by bench_scan, which scans with 1 then 2 workers in one process)."""
    from detectors.data import sample_dicom_files

    found = {p.name: p for _pkg, p in sample_dicom_files()}
    files = [found[n] for n in ("CT_small.dcm", "MR_small.dcm") if n in found] * 4
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from provenance.trust import TrustPolicy\n"
        "from verifier.checker import Checker, parse_checks\n"
        "from verifier.detection import DetectorSetup\n"
        "torch.set_num_threads(2)\n"
        f"files = [Path(p) for p in {[str(p) for p in files]!r}]\n"
        f"setup = DetectorSetup(model=Path({str(bundle)!r}))\n"
        "checker = Checker(checks=parse_checks('detector'), trust=TrustPolicy.unsafe_trust_everything(), "
        "detector=setup)\n"
        "first = list(checker.check_all(files[:1]))\n"
        "rest = list(checker.check_all(files, workers=2))\n"
        "print('scored', sum(r.to_dict()['synthetic_score'] is not None for r in first + rest))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("check_all with 2 workers hung after the detector ran in the parent process")
    assert done.stdout.strip().splitlines()[-1] == f"scored {len(files) + 1}", done.stderr[-2000:]
