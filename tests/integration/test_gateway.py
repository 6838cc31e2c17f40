"""The DICOM gateway end to end with real peers: DCMTK storescu -> ``medverify gateway`` -> DCMTK storescp.

The gateway runs as its own process (the real command); senders are DCMTK's storescu and echoscu, except for a
malformed data set, which no DCMTK tool will send and which a pynetdicom SCU sends as raw bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from intake_peers import (
    dataset_bytes,
    dcmtk_tool,
    free_port,
    make_samples,
    send_cut_short,
    sender_env,
    stop_process,
    wait_port,
)
from testkit import TEST_KEY_PASSPHRASE

from verifier.audit import AuditLog

pytestmark = pytest.mark.dcmtk


@pytest.fixture(scope="module")
def sample_home(signing_keystore_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose key store made the samples (it holds their watermark key); never modified by tests."""
    home = tmp_path_factory.mktemp("gateway-samples") / "home"
    home.mkdir()
    shutil.copytree(signing_keystore_template, home / "keys")
    return home


@pytest.fixture(scope="module")
def samples(sample_home: Path) -> dict[str, Path]:
    return make_samples(sample_home, sample_home.parent / "uploads")


@pytest.fixture
def home(sample_home: Path, samples: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh gateway home with the samples' key store (trust anchors and watermark key)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(sample_home / "keys", home / "keys")
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=TEST_KEY_PASSPHRASE, OMP_NUM_THREADS="1")
    return env


@contextlib.contextmanager
def _running(cmd: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, proc=proc)
        except BaseException:
            if log is not None:
                print(log.read_text(errors="replace")[-4000:])  # shown by pytest with the failure
            raise
        yield
    finally:
        stop_process(proc)
        if log is not None and out is not subprocess.DEVNULL:
            out.close()  # type: ignore[union-attr]


def _pacs(directory: Path, port: int) -> contextlib.AbstractContextManager[None]:
    directory.mkdir(parents=True, exist_ok=True)
    return _running([dcmtk_tool("storescp"), "-aet", "PACS", "+xa", "-od", str(directory), str(port)], port)


def _gateway(
    home: Path, port: int, pacs_port: int, log: Path, *extra: str
) -> contextlib.AbstractContextManager[None]:
    cmd = [
        sys.executable, "-c", "from verifier.cli import app_main; app_main()", "gateway",
        "--listen", f"127.0.0.1:{port}", "--ae-title", "MEDVERIFY", "--forward", f"127.0.0.1:{pacs_port}:PACS",
        "--quarantine", str(home / "quarantine"), "--spool", str(home / "spool"),
        "--allow", "STORESCU@127.0.0.1", "--checks", "signature,watermark", "--retry-max", "0.5", "-v", *extra,
    ]  # fmt: skip
    return _running(cmd, port, env=_env(home), log=log)


def _store(port: int, path: Path, aet: str = "STORESCU", called: str = "MEDVERIFY") -> tuple[int, str]:
    """Send one file with DCMTK's storescu; return its exit code and its debug output (holds the response)."""
    proc = subprocess.run(
        [dcmtk_tool("storescu"), "-d", "-aet", aet, "-aec", called, "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=sender_env(),
    )
    return proc.returncode, proc.stdout + proc.stderr


def _response_status(output: str) -> str:
    """The DIMSE Status line of the C-STORE response in storescu's debug output, e.g. ``0x0000: Success``."""
    lines = [line for line in output.splitlines() if "DIMSE Status" in line]
    assert lines, output[-2000:]
    return lines[-1].split("DIMSE Status", 1)[1].split(":", 1)[1].strip()


def _wait_for_files(directory: Path, count: int, timeout: float = 30.0) -> list[Path]:
    """The complete files in ``directory`` (not hidden temporary ones) once there are ``count`` of them."""

    def complete() -> list[Path]:
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(complete()) >= count:
            time.sleep(0.2)  # let a writer finish the file it just renamed into place
            return complete()
        time.sleep(0.1)
    return complete()


def test_gateway_forwards_real_images_and_stops_fakes(
    home: Path, samples: dict[str, Path], tmp_path: Path
) -> None:
    pacs_dir = tmp_path / "pacs"
    pacs_port, gw_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    with _pacs(pacs_dir, pacs_port), _gateway(home, gw_port, pacs_port, log):
        echo = subprocess.run(
            [dcmtk_tool("echoscu"), "-aet", "STORESCU", "-aec", "MEDVERIFY", "127.0.0.1", str(gw_port)],
            capture_output=True, text=True, timeout=30, env=sender_env(),
        )  # fmt: skip
        assert echo.returncode == 0, echo.stderr

        answers = {name: _store(gw_port, samples[name]) for name in samples}
        for name in ("real", "signed_real", "generated", "unsigned_synthetic"):
            assert _response_status(answers[name][1]) == "0x0000: Success", (name, answers[name][1][-1500:])
        # Tampered: a failure status (not a warning) with the reason in the Error Comment.
        tampered = answers["tampered"][1]
        assert _response_status(tampered) == "0xc001: Error: Cannot understand", tampered[-1500:]
        assert answers["tampered"][0] != 0  # storescu itself reports the failure
        assert "LO [TAMPERED: signature" in tampered, tampered[-1500:]

        # A calling AE title that is not configured is refused at association; nothing of it is stored.
        code, output = _store(gw_port, samples["real"], aet="INTRUDER")
        assert code != 0 and "Calling AE Title Not Recognized" in output, output[-1500:]

        # A malformed data set (cut short) gets a failure status and a reason, not a crash.
        status, comment = send_cut_short(gw_port, samples["real"], 3000, tmp_path)
        assert status == 0xC002, (hex(status), comment)
        assert "MALFORMED" in comment

        forwarded = _wait_for_files(pacs_dir, 2)
    assert len(forwarded) == 2, (forwarded, log.read_text()[-3000:])
    # Byte for byte: the PACS gets through the gateway exactly the data sets it gets straight from storescu
    # (storescu re-encodes a file as it sends it, and storescp writes its own file meta).
    direct_dir, direct_port = tmp_path / "direct", free_port()
    with _pacs(direct_dir, direct_port):
        for name in ("real", "signed_real"):
            code, output = _store(direct_port, samples[name], called="PACS")
            assert code == 0, output[-1500:]
    direct = _wait_for_files(direct_dir, 2)
    assert {dataset_bytes(p) for p in forwarded} == {dataset_bytes(p) for p in direct}

    quarantined = sorted((home / "quarantine").glob("*.json"))
    verdicts = sorted(json.loads(p.read_text())["verdict"] for p in quarantined)
    assert verdicts == ["DECLARED_SYNTHETIC", "DECLARED_SYNTHETIC"]
    assert all(isinstance(json.loads(p.read_text())["audit_id"], int) for p in quarantined)
    reasons = " ".join(r for p in quarantined for r in json.loads(p.read_text())["reasons"])
    assert "signed by generator key" in reasons and "recovered from watermark" in reasons
    # Quarantine and spool files are named by content digest, never by a UID the sender chose.
    for path in [*(home / "quarantine").iterdir(), *(home / "spool").glob("*.dcm")]:
        assert len(path.stem.split("-")[-1]) >= 32 and "1.2." not in path.name
    assert not list((home / "spool").glob("*.dcm"))
    assert not list((home / "spool").glob(".incoming-*"))  # staged copies of refused instances are removed

    with AuditLog.open(f"sqlite:///{home / 'audit.db'}") as audit:
        records = [r.entry for r in audit.query(channel="intake")]
    # One record per instance: 5 samples + the malformed one (the refused association sent no instance).
    assert len(records) == 6
    assert all(r.peer_ae_title == "STORESCU" and (r.peer_address or "").startswith("127.0.0.1:") for r in records)
    outcomes = sorted((r.verdict, r.details["intake"]["outcome"]) for r in records)
    assert outcomes == [
        ("AUTHENTIC", "forward-queued"),
        ("DECLARED_SYNTHETIC", "quarantined"),
        ("DECLARED_SYNTHETIC", "quarantined"),
        ("MALFORMED", "refused"),
        ("NO_EVIDENCE", "forward-queued"),
        ("TAMPERED", "refused"),
    ]


def test_gateway_spools_through_a_pacs_outage_and_a_restart(
    home: Path, samples: dict[str, Path], tmp_path: Path
) -> None:
    """Accepted while the PACS is down, kept on disk across a gateway restart, delivered when the PACS is back."""
    pacs_dir = tmp_path / "pacs"
    pacs_port, gw_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    with _gateway(home, gw_port, pacs_port, log):
        _code, output = _store(gw_port, samples["real"])
        assert _response_status(output) == "0x0000: Success", output[-1500:]
        assert len(list((home / "spool").glob("*.dcm"))) == 1  # on disk before the sender heard Success
    assert len(list((home / "spool").glob("*.dcm"))) == 1  # the PACS never came: still spooled after stop

    with _pacs(pacs_dir, pacs_port), _gateway(home, gw_port, pacs_port, log):
        forwarded = _wait_for_files(pacs_dir, 1)
    assert len(forwarded) == 1, log.read_text()[-3000:]
    assert pydicom.dcmread(forwarded[0]).SOPInstanceUID == pydicom.dcmread(samples["real"]).SOPInstanceUID
    assert not list((home / "spool").glob("*.dcm"))


def test_gateway_parks_what_the_pacs_cannot_accept(home: Path, samples: dict[str, Path], tmp_path: Path) -> None:
    """A PACS that refuses the instance's transfer syntax (storescp +xi: implicit VR only): not retried forever,
    but moved to spool/failed/ with the reason, for a person to look at."""
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs_port, gw_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    pacs = [dcmtk_tool("storescp"), "-aet", "PACS", "+xi", "-od", str(pacs_dir), str(pacs_port)]
    with _running(pacs, pacs_port), _gateway(home, gw_port, pacs_port, log):
        _code, output = _store(gw_port, samples["real"])  # storescu sends explicit VR little endian first
        assert _response_status(output) == "0x0000: Success", output[-1500:]
        failed = _wait_for_files(home / "spool" / "failed", 2)
    assert sorted(p.suffix for p in failed) == [".dcm", ".json"], log.read_text()[-3000:]
    reason = json.loads(next(p for p in failed if p.suffix == ".json").read_text())["reason"]
    assert "accepts no context" in reason and "1.2.840.10008.1.2.1" in reason
    assert not list(pacs_dir.iterdir()) and not list((home / "spool").glob("*.dcm"))


def test_gateway_takes_a_revocation_and_a_policy_change_in_without_a_restart(
    home: Path, samples: dict[str, Path], tmp_path: Path
) -> None:
    """`keys revoke` and an edited policy file count from the next C-STORE of a running gateway; each reload is an
    audit record on the intake channel."""
    from provenance.keys import KeyStore
    from verifier.audit.search import AuditQuery, search

    port, pacs_port = free_port(), free_port()
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "site-1"\n')
    log = tmp_path / "gateway.log"
    with _pacs(tmp_path / "pacs", pacs_port), _gateway(home, port, pacs_port, log, "--policy", str(policy)):
        assert _response_status(_store(port, samples["signed_real"])[1]).startswith("0x0000")
        KeyStore(home / "keys", lambda: TEST_KEY_PASSPHRASE.encode()).revoke("second")  # as `keys revoke second`
        status = _response_status(_store(port, samples["signed_real"])[1])
        # REVOKED raises the action to at least the policy's untrusted_action (flag): still stored, and recorded.
        policy.write_text('version = "site-2"\n[actions]\nNO_EVIDENCE = "reject"\n')
        refused = _response_status(_store(port, samples["real"])[1])
    assert status.startswith("0x0000"), status
    assert refused.lower().startswith("0xc001"), refused + log.read_text()[-2000:]
    with AuditLog.open(f"sqlite:///{home / 'audit.db'}", migrate=False) as audit:
        reloads = search(audit, AuditQuery(events=("reload",)), limit=None, newest_first=False).records
        intake = search(audit, AuditQuery(events=("intake",)), limit=None, newest_first=False).records
    assert [(r.entry.channel.value, r.entry.details["reload"]["changed"]) for r in reloads] == [
        ("intake", ["trust store and revocations"]), ("intake", ["site policy"])
    ]
    assert [r.entry.verdict for r in intake][:2] == ["AUTHENTIC", "NO_EVIDENCE"]
    assert intake[1].entry.signature_report is not None
    assert intake[1].entry.signature_report["status"] == "REVOKED"
    assert (intake[2].entry.action, intake[2].entry.policy_version) == ("reject", "site-2")
