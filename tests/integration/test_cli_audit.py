"""``medverify audit`` / ``medverify db`` end to end through ``main(argv)``, with the real key store."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from testkit import run_cli

from provenance.keys import PASSPHRASE_ENV
from verifier.audit import AuditEntry, Channel
from verifier.cli import main
from verifier.settings import Settings
from verifier.setup import open_audit_log


@pytest.fixture
def home(tmp_path: Path, keystore_dir: Path, key_passphrase: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert keystore_dir == tmp_path / "keys"
    monkeypatch.setenv("MEDVERIFY_HOME", str(tmp_path))
    monkeypatch.setenv(PASSPHRASE_ENV, key_passphrase)
    monkeypatch.setenv("MEDVERIFY_CHECKPOINT_INTERVAL", "4")
    monkeypatch.delenv("MEDVERIFY_DB_URL", raising=False)
    with open_audit_log(Settings.load()) as log:
        for i in range(10):
            log.append(
                AuditEntry(
                    event="verify",
                    channel=Channel.CLI,
                    path=f"/data/{'ct' if i % 2 else 'mr'}/{i}.dcm",
                    verdict="TAMPERED" if i == 3 else "AUTHENTIC",
                    action="reject" if i == 3 else "accept",
                    details={"i": i},
                ).with_local_actor()
            )
    return tmp_path


def test_list_show_export(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "list", "--format", "jsonl", "--verdict", "TAMPERED"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [4]
    assert main(["audit", "list", "--format", "jsonl", "--path-glob", "/data/ct/*", "--limit", "2"]) == 0
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == [
        "/data/ct/9.dcm",
        "/data/ct/7.dcm",
    ]
    assert main(["audit", "list", "--channel", "cli"]) == 0
    assert "/data/mr/8.dcm" in capsys.readouterr().out
    assert main(["audit", "show", "4"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verdict"] == "TAMPERED" and shown["details"] == {"i": 3} and shown["os_user"]
    assert main(["audit", "export", "--format", "csv", "-o", str(home / "all.csv")]) == 0
    assert len((home / "all.csv").read_text().splitlines()) == 11
    assert main(["audit", "show", "99"]) == 2


def test_list_is_newest_first_paged_filtered_and_says_what_it_shows(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_audit_log(Settings.load(), signer=False) as log:  # 12 records: the 10 above and 2 scan ones
        for i, verdict in enumerate(("TAMPERED", "NO_EVIDENCE")):
            log.append(AuditEntry(event="scan", channel=Channel.SCAN, path=f"/archive/a very long folder name "
                                  f"that a table would cut/study {i}/{'x' * 90}.dcm", verdict=verdict,
                                  action="reject" if i == 0 else "accept", sop_instance_uid=f"1.2.3.{i}"))  # fmt: skip
    code, out, err = run_cli(capsys, "audit", "list", "--format", "jsonl", "--limit", "5")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == [12, 11, 10, 9, 8]
    assert "records 1-5 of 12 matching, newest first (page 1 of 3); next: --page 2" in err
    code, out, err = run_cli(capsys, "audit", "list", "--format", "jsonl", "--limit", "5", "--page", "3")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [2, 1]
    assert "records 11-12 of 12 matching, newest first (page 3 of 3)" in err

    # Filters: action, verdict (any case, repeatable), channel, time range, path pattern, UID.
    code, out, _ = run_cli(capsys, "audit", "list", "--format", "jsonl", "--action", "reject")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [11, 4]
    code, out, _ = run_cli(capsys, "audit", "list", "--format", "jsonl", "--verdict", "tampered", "--channel", "scan")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [11]
    code, out, _ = run_cli(capsys, "audit", "list", "--format", "jsonl", "--uid", "1.2.3.1")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [12]
    code, out, err = run_cli(capsys, "audit", "list", "--format", "jsonl", "--until", "2000-01-01")
    assert (code, out) == (0, "") and "no record matches" in err
    code, out, _ = run_cli(capsys, "audit", "list", "--format", "json", "--since", "2000-01-01", "--path", "/archive/*")
    payload = json.loads(out)
    assert payload["total"] == 2 and [r["id"] for r in payload["records"]] == [12, 11]

    # A typo is an error that lists the valid values, not an empty table.
    code, out, err = run_cli(capsys, "audit", "list", "--verdict", "TAMPERD")
    assert code == 2 and out == ""
    assert "did you mean TAMPERED" in err and "AUTHENTIC" in err and "NO_EVIDENCE" in err
    code, _, err = run_cli(capsys, "audit", "list", "--action", "rejected")
    assert code == 2 and "accept, flag, quarantine, reject" in err

    # Piped (not a terminal): nothing is cut, in the table or in TSV.
    code, out, _ = run_cli(capsys, "audit", "list", "--channel", "scan")
    long_path = "/archive/a very long folder name that a table would cut/study 0/" + "x" * 90 + ".dcm"
    assert long_path in out and "NO_EVIDENCE" in out and "…" not in out
    code, out, _ = run_cli(capsys, "audit", "list", "--format", "tsv", "--channel", "scan")
    header, first, second = out.splitlines()
    assert header.split("\t") == ["id", "when", "event", "channel", "verdict", "action", "path", "sop_instance_uid"]
    assert first.split("\t")[0] == "12" and second.split("\t")[4:8] == ["TAMPERED", "reject", long_path, "1.2.3.0"]


def test_verify_prove_check_proof(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["audit", "checkpoint", "--export", str(home / "cp.json")]) == 0
    checkpoint = json.loads((home / "cp.json").read_text())
    assert checkpoint["tree_size"] == 10 and "BEGIN CERTIFICATE" in checkpoint["certificate_pem"]
    assert main(["audit", "prove", "4", "-o", str(home / "proof.json")]) == 0
    capsys.readouterr()
    assert main(["audit", "check-proof", str(home / "proof.json"), str(home / "cp.json")]) == 0
    assert "valid" in capsys.readouterr().out
    # Pinning the signer's own certificate works offline, without the key store.
    (home / "audit.pem").write_text(checkpoint["certificate_pem"])
    args = ["audit", "check-proof", str(home / "proof.json"), str(home / "cp.json"), "--trust-cert"]
    assert main([*args, str(home / "audit.pem")]) == 0
    # An altered proof fails with exit 1.
    proof = json.loads((home / "proof.json").read_text())
    proof["encoding"] = proof["encoding"].replace("TAMPERED", "AUTHENTIC")
    proof.pop("leaf_hash")
    (home / "bad-proof.json").write_text(json.dumps(proof))
    capsys.readouterr()
    assert main(["audit", "check-proof", str(home / "bad-proof.json"), str(home / "cp.json"), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "invalid-path"
    # A certificate that is not the signer's is not trusted.
    (home / "other.pem").write_bytes(_other_certificate())
    capsys.readouterr()
    assert main([*args, str(home / "other.pem")]) == 1
    assert "untrusted" in capsys.readouterr().out


def test_verify_names_the_first_bad_record(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(home / "audit.db") as db:
        db.execute("UPDATE audit_records SET verdict = 'AUTHENTIC', action = 'accept' WHERE id = 4")
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "tampered" in out and "first bad record: 4" in out
    assert main(["audit", "verify", "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_record_id"] == 4


def test_db_commands(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'new.db'}"
    assert main(["db", "current", "--db", url]) == 0
    assert "none (not created)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", url]) == 0
    assert main(["db", "current", "--db", url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["audit", "list", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/audit"]) == 2
    assert "unavailable" in capsys.readouterr().err


def _other_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the audit key")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
