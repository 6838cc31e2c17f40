"""The intake's parts that need no peer: configuration parsing, the spool, the quarantine, the Orthanc config edit,
and the decision on hostile uploads (the end-to-end tests are in tests/integration/test_gateway.py and
test_orthanc_plugin.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testkit import run_cli

from provenance.keys import KeyStore
from verifier.errors import ConfigError
from verifier.intake.decide import Intake, Peer, error_comment, safe_uid
from verifier.intake.gateway import parse_allowed_callers
from verifier.intake.queue import Destination, QuarantineStore, Spool


def test_allowed_callers_by_title_and_address() -> None:
    allowed = parse_allowed_callers(["CT01, MR02@10.1.0.0/16", "", "STORESCU@127.0.0.1"])
    assert [str(c) for c in allowed] == ["CT01", "MR02@10.1.0.0/16", "STORESCU@127.0.0.1/32"]
    ct, mr, scu = allowed
    assert ct.allows("CT01", "192.0.2.7") and not ct.allows("CT02", "192.0.2.7")
    assert mr.allows("MR02", "10.1.200.3") and not mr.allows("MR02", "10.2.0.1")
    assert scu.allows("STORESCU", "127.0.0.1") and not scu.allows("STORESCU", "not an address")
    for bad in ("TOO_LONG_AE_TITLE_X", "CT@300.1.1.1", "@10.0.0.1", "A\\B"):
        with pytest.raises(ConfigError):
            parse_allowed_callers([bad])


def test_destination_parsing() -> None:
    assert Destination.parse("pacs.example.org:104:ARCHIVE") == Destination("pacs.example.org", 104, "ARCHIVE")
    assert str(Destination.parse("[::1]:11112:PACS")) == "PACS@::1:11112"
    for bad in ("pacs:104", "pacs:port:AET", ":104:AET", "pacs:0:AET", "pacs:104:" + "A" * 17):
        with pytest.raises(ValueError, match=r"HOST:PORT:AET|bad port"):
            Destination.parse(bad)


def test_error_comment_and_uid_checks() -> None:
    assert error_comment("TAMPERED:\n a\\b \x00 reason " + "x" * 100).startswith("TAMPERED: a b reason")
    assert len(error_comment("y" * 200)) == 64
    assert safe_uid("1.2.840.10008.1.2") == "1.2.840.10008.1.2"
    assert safe_uid("1.2.3\x00") == "1.2.3"  # a NUL pad is DICOM padding
    for hostile in ("../../etc/passwd", "1.2.3/4", "1..2", "", None, "1" * 65, ".1", "1.2.a"):
        assert safe_uid(hostile) is None


def test_spool_is_durable_ordered_and_resumes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.put(b"first", sha256="a" * 64)
    second = spool.put(b"second", sha256="b" * 64)
    (tmp_path / "spool" / ".incoming-crash.tmp").write_bytes(b"half written")  # a crash before the rename
    resumed = Spool(tmp_path / "spool")  # a restarted gateway
    assert resumed.pending() == [first, second] and first.read_bytes() == b"first"
    assert not list((tmp_path / "spool").glob(".incoming-*"))
    assert first.stat().st_mode & 0o777 == 0o600  # mkstemp's mode: patient data is not world-readable
    failed = resumed.fail(first, "the PACS refused it with status 0xA900")
    assert failed.parent.name == "failed" and "0xA900" in json.loads(failed.with_suffix(".json").read_text())["reason"]
    resumed.done(second)
    assert resumed.pending() == []


def test_quarantine_names_files_by_digest(tmp_path: Path) -> None:
    store = QuarantineStore(tmp_path / "q")
    path = store.put(b"data", sha256="c" * 64, record={"verdict": "TAMPERED"})
    assert path.name == "c" * 64 + ".dcm" and json.loads(path.with_suffix(".json").read_text())["verdict"] == "TAMPERED"
    assert list(store) == [path]


def test_hostile_uploads_get_a_reject_decision_not_an_exception(keystore: KeyStore) -> None:
    from verifier.audit import Channel
    from verifier.checker import Checker

    checker = Intake(Checker(trust=keystore.trust_policy(), max_bytes=1000))
    peer = Peer(channel=Channel.INTAKE, ae_title="CT01", address="10.0.0.5:40000")
    for data in (b"", b"junk" * 10, b"\x00" * 128 + b"DICM" + b"\xff" * 50, b"\x00" * 2000):
        decision = checker.check(data, peer)
        assert decision.action.value == "reject" and decision.result.failed
        assert decision.sha256 and decision.sop_instance_uid is None
        entry = decision.audit_entry(outcome="refused")
        assert entry.peer_ae_title == "CT01" and entry.peer_address == "10.0.0.5:40000"
        assert entry.details["intake"]["outcome"] == "refused" and entry.verdict in ("UNREADABLE", "MALFORMED")
    assert "exceeds the limit" in checker.check(b"\x00" * 2000, peer).summary()
    with pytest.raises(TypeError):
        bool(checker.check(b"", peer))


def test_install_plugin_edits_the_file_that_holds_python_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian splits Orthanc's configuration: PythonScript lives in python.json and must stay defined once."""
    monkeypatch.setenv("MEDVERIFY_HOME", str(tmp_path / "home"))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "orthanc.json").write_text(
        '{\n  // Orthanc\n  "Name": "x", /* "Plugins": ["no"] */ "Plugins": ["/usr/share/orthanc/plugins/"],\n'
        '  "Url": "http://example.org/a//b"\n}\n'
    )
    (etc / "python.json").write_text('{ "PythonScript": "/etc/orthanc/sample.py", "PythonVerbose": false }')
    code, out, err = run_cli(capsys, "orthanc", "install-plugin", "--config", etc / "orthanc.json", "--allow", "CT01")
    assert code == 0, err
    main = json.loads((etc / "orthanc.json").read_text())
    assert main["Url"] == "http://example.org/a//b"  # '//' inside a string is not a comment
    assert "PythonScript" not in main and main["Plugins"] == ["/usr/share/orthanc/plugins/"]
    # No --checks: no Checks key, so that the plugin runs the intake default of the medverify it runs with.
    assert main["MedVerify"]["AllowedCallers"] == "CT01" and "Checks" not in main["MedVerify"]
    assert json.loads((etc / "python.json").read_text())["PythonScript"] == str(etc / "medverify_plugin.py")
    script = (etc / "medverify_plugin.py").read_text()
    compile(script, "medverify_plugin.py", "exec")
    assert "0xA700" in script and "ReceivedInstanceAction.DISCARD" in script  # the fail-closed fallback
    assert (etc / "orthanc.json.medverify-backup").read_text().startswith("{\n  // Orthanc")
    assert "python.json (PythonScript)" in out

    code, _out, err = run_cli(capsys, "orthanc", "install-plugin", "--config", etc / "orthanc.json", "--checks", "x")
    assert code == 2 and "unknown check" in err
    import detectors

    if not (Path(detectors.__file__).parent / "checkpoints" / "detector" / "config.json").is_file():
        code, _out, err = run_cli(
            capsys, "orthanc", "install-plugin", "--config", etc / "orthanc.json", "--checks", "signature,detector"
        )
        assert code == 2 and "no detector model" in err
