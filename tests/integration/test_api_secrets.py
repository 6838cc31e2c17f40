"""No secret ever reaches an output (issue #10): a full run with real processes, then every byte it produced is
scanned for the key store passphrase, the private keys (PEM bodies, encrypted and decrypted, and DER), the
watermark key secret and the API token.

The run: ``keys init`` and ``keys create`` with a passphrase, ``sign``, ``verify``, ``generate``,
``tokens create``/``list``, ``medverify serve`` used with the token (verify, STOW-RS, a bad token, a wrong scope),
``audit export``/``verify``, and failing commands (a wrong passphrase, a missing file) whose error text is kept.
Scanned: every command's stdout and stderr, the server's log, every file under the medverify home except the
key store itself (the audit database raw and as an SQL dump, the STOW-RS store, exports), and the written files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from pydicom.data import get_testdata_file

from provenance.keys import KeyStore

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "secret-scan-passphrase-7Hq2xLw9"


def _pem_body_lines(pem: bytes) -> list[bytes]:
    """The base64 lines of a PEM (the armour lines are public text)."""
    return [line for line in pem.splitlines() if line and not line.startswith(b"-----") and b":" not in line]


def _private_numbers(key: object) -> dict[str, int]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        return {"d": numbers.d, "p": numbers.p, "q": numbers.q}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"private value": key.private_numbers().private_value}
    raise TypeError(f"unexpected key type {type(key).__name__}")


def secrets_of(home: Path, token: str) -> dict[str, bytes]:
    """Every secret of this home, in the forms it could leak in: name -> bytes to look for."""
    found: dict[str, bytes] = {"passphrase": PASSPHRASE.encode(), "token": token.encode()}
    found["token secret part"] = token.split("_", 2)[2].encode()  # mv_<id>_<secret>; the secret may hold "_"
    for path in sorted((home / "keys").rglob("*.key.pem")):
        encrypted = path.read_bytes()
        key = serialization.load_pem_private_key(encrypted, PASSPHRASE.encode())
        plain = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        rel = path.relative_to(home)
        for i, line in enumerate(_pem_body_lines(plain)[1:-1]):  # whole 64-character lines of the key
            found[f"{rel} PEM line {i}"] = line
        for i, line in enumerate(_pem_body_lines(encrypted)[1:-1]):
            found[f"{rel} encrypted PEM line {i}"] = line
        for part, number in _private_numbers(key).items():  # the private integers, raw and in hex
            raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
            found[f"{rel} {part}"] = raw
            found[f"{rel} {part} hex"] = raw.hex().encode()
    store = KeyStore(home / "keys", lambda: PASSPHRASE.encode())
    for wm in store.watermark_keys():
        secret: bytes = wm._secret  # the test reads the secret to look for it; the API never shows it
        found[f"{wm.key_id} secret"] = secret
        found[f"{wm.key_id} secret hex"] = secret.hex().encode()
        found[f"{wm.key_id} secret base64"] = base64.b64encode(secret).rstrip(b"=")
        found[f"{wm.key_id} secret urlsafe"] = base64.urlsafe_b64encode(secret).rstrip(b"=")
    return found


def test_no_secret_in_any_output_after_a_full_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=PASSPHRASE, OMP_NUM_THREADS="1")
    outputs: dict[str, bytes] = {}

    def cli(*args: str, codes: tuple[int, ...] = (0,), **extra: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", *args],
            env={**env, **extra}, capture_output=True, timeout=600, cwd=work,
        )  # fmt: skip
        label = " ".join(args[:3])
        outputs[f"{label} #{len(outputs)} stdout"] = done.stdout
        outputs[f"{label} #{len(outputs)} stderr"] = done.stderr
        assert done.returncode in codes, done.stderr.decode(errors="replace")
        return done

    ct = work / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    cli("keys", "init")
    cli("keys", "create", "acq", "--role", "acquisition", "--algorithm", "ecdsa-p256")
    cli("sign", str(ct), "--key", "acq", "--output", str(work / "signed.dcm"))
    cli("generate", "vae", "--out", str(work / "gen"), "--count", "1", "--size", "64")  # makes the watermark key
    cli(
        "verify",
        str(work / "signed.dcm"),
        str(work / "gen"),
        "--checks",
        "signature,watermark",
        "--format",
        "jsonl",
        codes=(1,),  # 1: something was flagged (the generated image is declared synthetic)
    )
    token = json.loads(cli("tokens", "create", "scan", "--scope", "verify", "--format", "json").stdout)["token"]
    shown = outputs.pop(next(k for k in reversed(outputs) if k.endswith("stdout")))  # the one place it is shown
    assert token.encode() in shown  # the scan below finds a secret where there is one
    cli("tokens", "list", "--format", "jsonl")
    # Failures: a wrong passphrase and a missing file; their error text is scanned too.
    wrong = PASSPHRASE[::-1]
    cli("sign", str(ct), "--key", "acq", "--output", str(work / "x.dcm"), codes=(2,), MEDVERIFY_KEY_PASSPHRASE=wrong)
    cli("verify", str(work / "missing.dcm"), codes=(2,))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from verifier.cli import app_main; app_main()", "serve", "--listen",
             f"127.0.0.1:{port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {token}"}
        data = (work / "signed.dcm").read_bytes()
        answers = [
            httpx.post(f"{url}/v1/verify", content=data, headers={**auth, "Content-Type": "application/dicom"}),
            httpx.post(f"{url}/v1/verify", content=data,
                       headers={"Authorization": f"Bearer {token[:-2]}xx", "Content-Type": "application/dicom"}),
            httpx.get(f"{url}/v1/audit/1", headers=auth),
            httpx.post(f"{url}/dicomweb/studies", headers={**auth, "Content-Type": 'multipart/related; '
                       'type="application/dicom"; boundary=b'}, content=b"--b\r\n\r\n" + data + b"\r\n--b--\r\n"),
        ]  # fmt: skip
        assert [a.status_code for a in answers] == [200, 401, 403, 200]
        for i, a in enumerate(answers):
            outputs[f"http answer {i}"] = a.content + str(dict(a.headers)).encode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    outputs["serve log"] = log_path.read_bytes()

    cli("audit", "export", "--output", str(work / "audit.jsonl"))
    cli("audit", "export", "--format", "csv")
    cli("audit", "verify")

    with sqlite3.connect(home / "audit.db") as db:
        outputs["audit.db SQL dump"] = "\n".join(db.iterdump()).encode()
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if (home / "keys") in path.parents:
            continue  # the key store holds the encrypted keys; that is where they belong
        outputs[f"file {path.relative_to(home)}"] = path.read_bytes()
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        outputs[f"file work/{path.relative_to(work)}"] = path.read_bytes()

    secrets = secrets_of(home, token)
    assert len(secrets) > 20 and any("watermark" in name for name in secrets)
    leaks = [(name, where) for name, secret in secrets.items() for where, text in outputs.items() if secret in text]
    wrong_leaks = [where for where, text in outputs.items() if wrong.encode() in text]
    assert not leaks and not wrong_leaks, f"secrets found: {leaks[:10]} {wrong_leaks[:5]}"
    assert len(outputs) > 30
    size = sum(map(len, outputs.values()))
    print(f"\n{len(secrets)} secret forms, {len(outputs)} outputs ({size:,} bytes): none found")
