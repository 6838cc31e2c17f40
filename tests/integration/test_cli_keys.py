"""``medverify keys`` end to end through ``verifier.cli.main``, with real files, OpenSSL and dcmsign."""

from __future__ import annotations

import io
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_passphrase: str) -> Path:
    """A MEDVERIFY_HOME with no key store yet, and the passphrase in the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("MEDVERIFY_HOME", str(home))
    monkeypatch.setenv("MEDVERIFY_KEY_PASSPHRASE", key_passphrase)
    for name in ("MEDVERIFY_CONFIG", "MEDVERIFY_KEY_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # never a terminal: no prompt can hang a test
    return home


@pytest.fixture
def initialised_home(home: Path, keystore_template: Path) -> Path:
    shutil.copytree(keystore_template, home / "keys")
    return home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_workflow_and_no_secret_in_any_output(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key_passphrase: str
) -> None:
    outputs: list[str] = []

    def ok(*argv: str) -> str:
        code, out, err = run(capsys, *argv)
        outputs.extend([out, err])
        assert code == 0, (argv, out, err)
        return out

    assert "created" in ok("keys", "init")
    assert "already initialised" in ok("keys", "init")
    ok("keys", "create", "scanner-1", "--role", "acquisition", "--algorithm", "ecdsa-p256")
    ok("keys", "create", "audit-log", "--role", "audit", "--algorithm", "rsa-2048")
    listed = json.loads(ok("keys", "list", "--format", "json"))
    assert {(k["name"], k["role"], k["algorithm"], k["status"]) for k in listed} == {
        ("generator", "generator", "rsa-3072", "active"),
        ("scanner-1", "acquisition", "ecdsa-p256", "active"),
        ("audit-log", "audit", "rsa-2048", "active"),
    }

    pem = ok("keys", "export-cert", "scanner-1")
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    ok("keys", "export-cert", "ca", "-o", str(tmp_path / "ca.pem"))
    assert (tmp_path / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")

    # Trust the CA of another medverify installation.
    other_home = tmp_path / "other"
    (tmp_path / "partner-ca.pem").write_bytes(_other_ca(other_home, key_passphrase))
    assert "trusted CA" in ok("keys", "trust", str(tmp_path / "partner-ca.pem"))

    assert "rotated" in ok("keys", "rotate", "generator")
    assert "revoked" in ok("keys", "revoke", "scanner-1")
    statuses = sorted((k["name"], k["status"]) for k in json.loads(ok("keys", "list", "--format", "json")))
    assert statuses == [
        ("audit-log", "active"),
        ("generator", "active"),
        ("generator", "retired"),
        ("scanner-1", "revoked"),
    ]
    table = ok("keys", "list")
    for word in ("generator", "retired", "revoked", "audit-log", "ecdsa-p256"):
        assert word in table
    ok("keys", "--help")
    ok("keys", "init", "--help")

    everything = "\n".join(outputs)
    assert key_passphrase not in everything
    assert "PRIVATE KEY" not in everything
    assert "ENCRYPTED" not in everything


def _other_ca(home: Path, passphrase: str) -> bytes:
    from provenance.keys import KeyStore

    store = KeyStore(home / "keys", lambda: passphrase.encode())
    store.init()
    return store.export_certificate("ca")


def test_errors_exit_2_with_a_message(initialised_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "revoke", "nope")
    assert code == 2 and "no key named 'nope'" in err
    code, _, err = run(capsys, "keys", "create", "../evil", "--role", "audit")
    assert code == 2 and "invalid key name" in err
    code, _, err = run(capsys, "keys", "create", "generator", "--role", "generator")
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "keys", "trust", str(initialised_home / "keys" / "index.json"))
    assert code == 2 and "certificate" in err


def test_usage_error_exits_2(initialised_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "create", "x", "--role", "wizard")
    assert code == 2 and "wizard" in err


def test_wrong_passphrase_exits_2_without_echoing_it(
    initialised_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDVERIFY_KEY_PASSPHRASE", "not-the-right-one-8Jx")
    code, out, err = run(capsys, "keys", "rotate", "generator")
    assert code == 2
    assert "passphrase" in err
    assert "not-the-right-one-8Jx" not in out + err


def test_init_without_any_passphrase_and_no_terminal_writes_a_passphrase_file(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys init </dev/null` works like any first use: a random passphrase in a 0600 file, said on stderr."""
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    code, out, err = run(capsys, "keys", "init")
    assert code == 0, err
    path = home / "keys" / "passphrase"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in err and "MEDVERIFY_KEY_PASSPHRASE" in err and "created generator" in out
    assert path.read_text().strip() not in out + err
    assert run(capsys, "keys", "create", "scanner", "--role", "acquisition")[0] == 0  # later commands find it


def test_init_generate_passphrase_file(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    code, out, err = run(capsys, "keys", "init", "--generate-passphrase-file")
    assert code == 0, err
    path = home / "keys" / "passphrase"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "warning" in err and "MEDVERIFY_KEY_PASSPHRASE" in err
    assert path.read_text().strip() not in out + err
    # Later commands find the file by themselves.
    code, _, err = run(capsys, "keys", "create", "acq", "--role", "acquisition", "--algorithm", "ecdsa-p256")
    assert code == 0, err
    code, _, err = run(capsys, "keys", "init", "--generate-passphrase-file")
    assert code == 0 and "already exists" in err


def test_generate_passphrase_file_refuses_to_orphan_existing_keys(
    initialised_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "keys", "init", "--generate-passphrase-file")
    assert code == 2 and "conflicts" in err
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    code, _, err = run(capsys, "keys", "init", "--generate-passphrase-file")
    assert code == 2 and "would not decrypt" in err
    assert not (initialised_home / "keys" / "passphrase").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_issued_certificates_verify_with_openssl(
    initialised_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "ec", "--role", "audit", "--algorithm", "ecdsa-p256"]) == 0
    assert main(["keys", "export-cert", "ca", "-o", str(tmp_path / "ca.pem")]) == 0
    for name in ("generator", "ec"):
        leaf = tmp_path / f"{name}.pem"
        assert main(["keys", "export-cert", name, "-o", str(leaf)]) == 0
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(leaf)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")
    # And a certificate from another CA does not.
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "generator.pem"), str(tmp_path / "ec.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.dcmtk
@pytest.mark.skipif(shutil.which("dcmsign") is None, reason="needs DCMTK's dcmsign")
@pytest.mark.parametrize("name", ["generator", "ec"])
def test_dcmsign_accepts_our_keys_and_certificates(
    initialised_home: Path, tmp_path: Path, key_passphrase: str, name: str
) -> None:
    """dcmsign signs with one of our encrypted keys and verifies it against our CA (keys only; no medverify
    signing code is involved)."""
    from provenance.keys import KeyAlgorithm, KeyRole, KeyStore

    store = KeyStore(initialised_home / "keys", lambda: key_passphrase.encode())
    if name == "ec":
        store.create("ec", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    serial = store.info(name).serial
    key_file = initialised_home / "keys" / "signing" / name / f"{serial:x}.key.pem"
    cert_file = initialised_home / "keys" / "signing" / name / f"{serial:x}.crt.pem"
    (tmp_path / "ca.pem").write_bytes(store.export_certificate("ca"))
    _tiny_dicom(tmp_path / "in.dcm")
    sign = subprocess.run(
        ["dcmsign", "--use-passwd", key_passphrase, "--sign", str(key_file), str(cert_file),
         str(tmp_path / "in.dcm"), str(tmp_path / "out.dcm")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert sign.returncode == 0, sign.stderr
    verify = subprocess.run(
        ["dcmsign", "--verify", "+cf", str(tmp_path / "ca.pem"), str(tmp_path / "out.dcm")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Verification : OK" in verify.stdout + verify.stderr


def _tiny_dicom(path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Keys"
    ds.Modality = "OT"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(32)
    ds.save_as(path, enforce_file_format=True)
