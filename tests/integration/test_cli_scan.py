"""``medverify scan`` end to end through ``verifier.cli.main`` and as a real process that is killed and restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from testkit import TEST_KEY_PASSPHRASE, jsonl
from testkit import run_cli as run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(keyed_home: Path) -> Path:
    """A home whose key store has the default key plus the 'rsa' (generator) and 'second' (acquisition) keys."""
    return keyed_home


def copies(root: Path, n: int, *, name: str = "CT_small.dcm", prefix: str = "im") -> list[Path]:
    ds = pydicom.dcmread(get_testdata_file(name))
    out = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        path = root / f"s{i % 3}" / f"{prefix}{i:04d}"  # no extension: found by content
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        out.append(path)
    return out


def flip_pixel(path: Path) -> None:
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    data[len(data) // 3] ^= 0x10
    ds.PixelData = bytes(data)
    ds.save_as(path)


@pytest.fixture
def archive(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """Unsigned copies, one signed by an acquisition key, one signed then tampered, and files that are not DICOM."""
    root = tmp_path / "archive"
    unsigned = copies(root, 4)
    signed, tampered = copies(root / "signed", 2, prefix="sig")
    code, out, err = run(capsys, "sign", "--in-place", "--key", "second", signed, tampered)
    assert code == 0, out + err
    flip_pixel(tampered)
    (root / "report.dcm").write_text("a text file with a DICOM name")
    (root / "s0" / "empty").write_bytes(b"")
    (root / "outside-link").symlink_to(tmp_path, target_is_directory=True)
    return {"root": root, "unsigned": unsigned[0], "signed": signed, "tampered": tampered}


def test_jsonl_lines_exit_code_and_incremental(archive: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = archive["root"]
    code, out, err = run(capsys, "scan", root, "--format", "jsonl", "--workers", "2")
    assert code == 1, out + err  # the tampered file is rejected
    lines = jsonl(out)
    assert len(lines) == 6  # report.dcm, the empty file and everything behind the symlink are not scanned
    by_path = {line["path"]: line for line in lines}
    for key in ("path", "sop_instance_uid", "verdict", "action", "reasons", "synthetic_score", "tamper_score",
                "signature", "watermark", "audit_id"):  # fmt: skip
        assert all(key in line for line in lines), key
    assert all(isinstance(line["audit_id"], int) for line in lines)
    assert len({line["audit_id"] for line in lines}) == 6
    assert by_path[str(archive["signed"])]["verdict"] == "AUTHENTIC"
    assert by_path[str(archive["signed"])]["signature"]["status"] == "VALID"
    assert by_path[str(archive["tampered"])]["verdict"] == "TAMPERED"
    assert by_path[str(archive["tampered"])]["action"] == "reject"
    assert by_path[str(archive["unsigned"])]["signature"]["status"] == "UNSIGNED"
    assert all(line["watermark"] is None or "present" in line["watermark"] for line in lines)
    assert "scan summary" in err and "files/s" in err

    # Nothing changed: nothing is checked, but the tampered file is still in the archive, and the exit code and
    # output say so night after night (an alert on the exit code must not fire once and never again).
    code, out, err = run(capsys, "scan", root, "--format", "jsonl", "--incremental")
    assert code == 1, err
    assert "6 unchanged since the last scan (skipped)" in err
    [carried] = jsonl(out)
    assert carried["path"] == str(archive["tampered"]) and carried["checked"] is False
    assert (carried["verdict"], carried["action"]) == ("TAMPERED", "reject")
    assert carried["audit_id"] == by_path[str(archive["tampered"])]["audit_id"]
    assert re.search(r"not accepted \(checked \+ not checked\)\s*│\s*1\s*│", err), err
    # --new-only: the old behaviour, only what this run checked counts.
    code, out, err = run(capsys, "scan", root, "--format", "jsonl", "--incremental", "--new-only")
    assert (code, out) == (0, ""), err

    flip_pixel(archive["unsigned"])  # changed content: checked again (still unsigned, so accepted)
    code, out, err = run(capsys, "scan", root, "--format", "jsonl", "--incremental")
    assert code == 1, err
    assert [(line["path"], line["checked"]) for line in jsonl(out)] == [
        (str(archive["unsigned"]), True),
        (str(archive["tampered"]), False),
    ]
    assert "5 unchanged" in err

    # The tampered file is replaced by a good copy: the next scan checks it and the archive is clean again.
    archive["tampered"].write_bytes(archive["signed"].read_bytes())
    code, out, err = run(capsys, "scan", root, "--format", "jsonl", "--incremental")
    assert code == 0, out + err
    assert [line["path"] for line in jsonl(out)] == [str(archive["tampered"])]


def test_incremental_scan_checks_again_what_another_judge_would_judge_differently(
    archive: dict[str, Path], openssl_pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A change of --checks, of the trust store (a certificate trusted, a key revoked) or of the site policy makes
    an incremental scan check the unchanged files again, and say why; a file rewritten with its old size and mtime
    is found with --rehash."""
    root = archive["root"]
    base = ("scan", root, "--format", "jsonl", "--incremental", "--checks", "signature")
    assert run(capsys, *base)[0] == 1

    def checked(*extra: str | Path) -> tuple[int, list[str], str]:
        code, out, err = run(capsys, *base, *extra)
        return code, [line["path"] for line in jsonl(out) if line["checked"]], err

    assert checked()[1] == []
    code, paths, err = checked("--checks", "signature,watermark")  # the later --checks wins
    assert len(paths) == 6 and "(6 unchanged, checked again: checks changed)" in err, err
    code, paths, err = checked()
    assert len(paths) == 6 and "checks changed" in err  # back to signature only: judged differently again

    assert run(capsys, "keys", "trust", openssl_pki / "ca.pem")[0] == 0
    code, paths, err = checked()
    assert len(paths) == 6 and "trust store and revocations" in err, err
    assert code == 1 and checked()[1] == []

    assert run(capsys, "keys", "revoke", "second")[0] == 0  # the key that signed the two signed files
    code, out, err = run(capsys, *base)
    assert "trust store and revocations" in err
    by_path = {line["path"]: line for line in jsonl(out) if line["checked"]}
    assert by_path[str(archive["signed"])]["signature"]["signatures"][0]["status"] == "REVOKED"
    assert by_path[str(archive["signed"])]["action"] != "accept"  # was AUTHENTIC and accepted before the revocation

    policy = tmp_path / "policy.toml"
    policy.write_text('version = "site-2"\n[actions]\nNO_EVIDENCE = "flag"\n')
    code, paths, err = checked("--policy", policy)
    assert len(paths) == 6 and "site policy" in err, err
    code, out, err = run(capsys, *base, "--policy", policy)
    assert code == 1 and all(line["checked"] is False for line in jsonl(out))
    assert {line["path"] for line in jsonl(out)} >= {str(archive["unsigned"])}  # flagged now, and still reported

    # Same size, same mtime, other content: invisible to the stat, found by --rehash.
    target = archive["unsigned"]
    st = target.stat()
    flip_pixel(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    assert checked("--policy", policy)[1] == []
    code, paths, err = checked("--policy", policy, "--rehash")
    assert paths == [str(target)] and "same size and mtime but new content" in err, err


def test_text_output_lists_only_files_not_accepted(
    archive: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "scan", archive["root"], "--no-audit")
    assert code == 1
    assert str(archive["tampered"]) in out and "TAMPERED" in out
    assert str(archive["signed"]) not in out and str(archive["unsigned"]) not in out
    assert "verdict TAMPERED" in err and "skipped: not DICOM" in err


def test_bad_options_exit_2(archive: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "scan", archive["root"], "--no-audit", "--incremental")[0] == 2
    assert run(capsys, "scan", archive["root"], "--format", "xml")[0] == 2
    assert run(capsys, "scan", archive["root"] / "missing")[0] == 2
    code, _, err = run(capsys, "scan", archive["root"], "--checks", "nonsense")
    assert code == 2 and "unknown check" in err


def _scan_rows(db: Path) -> tuple[list[Any], list[Any]]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT id, root, status FROM scan_runs ORDER BY id")).all()
            recs = conn.execute(
                sa.text("SELECT id, path, details FROM audit_records WHERE event = 'scan' ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    return runs, recs


def test_sigkilled_scan_resumes_without_losing_or_repeating_a_file(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "big"
    files = copies(root, 400)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "scan", str(root),
            "--checks", "signature"]  # resuming is what is tested here: the fastest check  # fmt: skip
    proc = subprocess.Popen(
        [*argv, "--format", "jsonl", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first batch is recorded: the scan is under way
        assert first, "the scan printed nothing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    runs, recs = _scan_rows(home / "audit.db")
    assert [(r.root, r.status) for r in runs] == [(str(root), "running")]
    assert 0 < len(recs) < len(files), "the kill did not land mid-way"
    killed_at = len(recs)

    done = subprocess.run([*argv, "--format", "jsonl"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resuming unfinished scan run #{runs[0].id}" in done.stderr
    assert f"{killed_at} already recorded by the resumed run" in done.stderr
    assert len(done.stdout.splitlines()) == len(files) - killed_at

    runs, recs = _scan_rows(home / "audit.db")
    assert [(r.root, r.status) for r in runs] == [(str(root), "finished")]
    per_path = Counter(r.path for r in recs if json.loads(r.details)["scan"]["run"] == runs[0].id)
    assert set(per_path) == {str(f) for f in files}
    assert set(per_path.values()) == {1}
    code, out, _ = run(capsys, "audit", "verify")
    assert code == 0, out


def test_scan_runs_the_watermark_check_in_its_workers(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A marked file whose signature was stripped is found by a scan; an unmarked copy is not (2 workers)."""
    import warnings

    import numpy as np

    from provenance.keys import KeyStore
    from provenance.watermark import embed

    name = "693_UNCR.dcm"  # 512x512 CT from pydicom-data: large enough for the mark
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = get_testdata_file(name)
    if source is None:
        pytest.skip(f"{name} needs pydicom-data (the 'data' extra)")
    key = KeyStore(home / "keys", lambda: TEST_KEY_PASSPHRASE.encode()).watermark_key()
    root = tmp_path / "wm-archive"
    root.mkdir()
    ds = pydicom.dcmread(source)
    ds.save_as(root / "plain")
    pixels = ds.pixel_array
    ds.PixelData = np.asarray(embed(pixels, key, 77, bits_stored=int(ds.BitsStored)), dtype=pixels.dtype).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(root / "marked")
    for i in range(3):  # enough files for the work to be split between the two workers
        ds.SOPInstanceUID = generate_uid()
        pydicom.dcmread(source).save_as(root / f"plain{i}")
    code, out, err = run(
        capsys, "scan", root, "--checks", "signature,watermark", "--workers", "2", "--format", "jsonl"
    )
    lines = {Path(line["path"]).name: line for line in jsonl(out)}
    assert code == 1, err
    assert lines["marked"]["verdict"] == "DECLARED_SYNTHETIC"
    assert lines["marked"]["watermark"]["payload"] == 77
    assert any("recovered from watermark" in reason for reason in lines["marked"]["reasons"])
    assert lines["plain"]["watermark"]["present"] is False
    assert lines["plain"]["verdict"] == "NO_EVIDENCE"
    assert all(isinstance(line["audit_id"], int) for line in lines.values())
    # The audit records keep the watermark report (the payload leads back to the generation record).
    from verifier.audit import AuditLog

    with AuditLog.open(f"sqlite:///{home / 'audit.db'}", migrate=False) as log:
        record = log.get(lines["marked"]["audit_id"]).entry
    assert record.watermark_report is not None and record.watermark_report["payload"] == 77


def test_scan_with_the_detector_records_scores_and_model(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "det-archive"
    copies(root, 2)
    code, out, err = run(capsys, "scan", root, "--checks", "signature,detector", "--format", "jsonl")
    assert code in (0, 1), err
    from verifier.audit import AuditLog

    with AuditLog.open(f"sqlite:///{home / 'audit.db'}", migrate=False) as log:
        for line in jsonl(out):
            assert isinstance(line["synthetic_score"], float)
            record = log.get(line["audit_id"]).entry
            assert record.detection_report is not None
            assert record.model_tag == line["detector"]["model_tag"]
