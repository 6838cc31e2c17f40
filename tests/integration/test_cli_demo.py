"""`medverify demo` on a fresh home: keys created on first use, every case gets its expected answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from verifier.cli import main


def test_demo_runs_unattended_on_a_fresh_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDVERIFY_HOME", str(home))
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE", raising=False)
    monkeypatch.setenv("COLUMNS", "160")
    code = main(["demo", "--workdir", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    # Keys were created on first use, with a generated passphrase file that only the owner can read.
    passphrase = home / "keys" / "passphrase"
    assert passphrase.stat().st_mode & 0o777 == 0o600
    assert passphrase.read_text().strip() not in out + err
    for verdict in ("NO_EVIDENCE", "AUTHENTIC", "TAMPERED", "MALFORMED", "DECLARED_SYNTHETIC"):
        assert verdict in out
    assert "(0010,4000)" in out
    # The shipped detector's opinion of three files, each with a heatmap, as an informational table.
    assert "the detector's opinion" in out and "ensemble-" in out
    assert len(list((tmp_path / "demo" / "heatmaps").glob("*.png"))) == 3
    if shutil.which("dcmsign"):
        assert "FAILED" in out and "OK" in out
        # A signed file with one pixel bit flipped fails in dcmsign too (its first signature no longer verifies).
        flipped = [line for line in out.splitlines() if "_one_pixel_bit_flipped.dcm" in line]
        assert len(flipped) == 2 and all("FAILED" in line for line in flipped), flipped

    # The files it wrote verify the same way through the ordinary command, and each check left an audit record.
    code = main(["verify", "--format", "jsonl", str(tmp_path / "demo")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(line["path"]).name: line for line in lines}
    assert by_name["CT_small_signed.dcm"]["signature"]["status"] == "VALID"
    assert (by_name["CT_small_signed.dcm"]["verdict"], by_name["CT_small_signed.dcm"]["action"]) == (
        "AUTHENTIC",
        "accept",
    )
    assert by_name["MR_small_lesion_injected.dcm"]["verdict"] == "DECLARED_SYNTHETIC"
    assert by_name["CT_small_one_pixel_bit_flipped.dcm"]["signature"]["status"] == "INVALID"
    assert by_name["CT_small_element_added.dcm"]["signature"]["uncovered"] == [
        {"tag": "(0010,4000)", "keyword": "PatientComments"}
    ]
    assert all(line["audit_id"] is not None for line in lines)
    assert code == 1
    # The laundered GAN sample: no signature, no declaration, only the watermark says what it is; every check runs
    # by default, so the ordinary command finds it.
    stripped = tmp_path / "demo" / "gan_sample_tags_stripped.dcm"
    assert by_name[stripped.name]["verdict"] == "DECLARED_SYNTHETIC"
    assert any("recovered from watermark" in reason for reason in by_name[stripped.name]["reasons"])
    assert main(["verify", "--format", "jsonl", "--checks", "signature", str(stripped)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["verdict"] == "NO_EVIDENCE"  # without the watermark check nothing shows


def test_demo_caption_says_which_heads_can_flag() -> None:
    """The caption under the detector table follows the bundle: a head with threshold 1.0 never flags, and says
    where its calibration failed (held-out sources, or out-of-fold scores of a cross-fitted bundle)."""
    import dataclasses

    from detectors.models import create_detector
    from verifier.cli.demo import _detector_caption

    config = create_detector("classical", preset="tiny").config
    held_out = {"calibration": {"min_auc": 0.8}}
    both = dataclasses.replace(config, threshold=1.0, tamper_threshold=1.0, training=held_out)
    assert "flags nothing" in _detector_caption(both) and "held out for its calibration" in _detector_caption(both)
    cross_fitted = {"calibration": {"min_auc": 0.8, "cross_fit": {"folds": 4}}}
    one = dataclasses.replace(config, threshold=0.93, tamper_threshold=1.0, training=cross_fitted)
    caption = _detector_caption(one)
    assert "Its tamper threshold is 1.0" in caption and "out-of-fold" in caption and "flags nothing" not in caption
    assert "at most 1% of the real calibration images" in caption
    none = dataclasses.replace(config, threshold=0.9, tamper_threshold=0.95, training=cross_fitted)
    assert "1.0" not in _detector_caption(none) and "Each is set" in _detector_caption(none)
