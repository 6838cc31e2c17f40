"""Watermark keys sealed at rest.

Watermark keys are secrets of another type (:class:`provenance.watermark.WatermarkKey`), never X.509 keys. Each is
stored encrypted with AES-256-GCM under a key derived from the key store's passphrase by scrypt, with a fresh salt
and nonce per file; the key id is authenticated as associated data.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from provenance.errors import KeyStoreError, PassphraseError
from provenance.watermark import WatermarkError, WatermarkKey

__all__ = ["seal_watermark_key", "unseal_watermark_key"]

_FORMAT = "medverify-watermark-key/1"


def _kek(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase)


def seal_watermark_key(key: WatermarkKey, passphrase: bytes) -> bytes:
    """The file content that keeps ``key`` encrypted under ``passphrase`` (JSON)."""
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key_id = str(key.key_id)
    sealed = AESGCM(_kek(passphrase, salt)).encrypt(nonce, key.to_bytes(), key_id.encode())
    record = {
        "format": _FORMAT,
        "key_id": key_id,
        "kdf": "scrypt-n32768-r8-p1",
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return json.dumps(record, indent=2).encode()


def unseal_watermark_key(path: Path, passphrase: bytes) -> WatermarkKey:
    """The watermark key sealed in ``path``; a wrong passphrase is a :class:`PassphraseError`."""
    try:
        record = json.loads(path.read_bytes())
        salt, nonce = base64.b64decode(record["salt"]), base64.b64decode(record["nonce"])
        sealed, key_id = base64.b64decode(record["ciphertext"]), str(record["key_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"watermark key file {path} is unreadable or malformed") from exc
    try:
        secret = AESGCM(_kek(passphrase, salt)).decrypt(nonce, sealed, key_id.encode())
    except InvalidTag:
        raise PassphraseError(f"the passphrase does not decrypt the watermark key {path.name}") from None
    try:
        return WatermarkKey.from_bytes(secret)
    except WatermarkError as exc:
        raise KeyStoreError(f"watermark key file {path} holds no valid key") from exc
