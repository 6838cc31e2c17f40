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
        "/data/ct/1.dcm",
        "/data/ct/3.dcm",
    ]
    assert main(["audit", "list", "--channel", "cli"]) == 0
    assert "/data/mr/8.dcm" in capsys.readouterr().out
    assert main(["audit", "show", "4"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verdict"] == "TAMPERED" and shown["details"] == {"i": 3} and shown["os_user"]
    assert main(["audit", "export", "--format", "csv", "-o", str(home / "all.csv")]) == 0
    assert len((home / "all.csv").read_text().splitlines()) == 11
    assert main(["audit", "show", "99"]) == 2


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
