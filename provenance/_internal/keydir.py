"""The layout of a key store directory, and reading and writing what it holds.

Every directory is 0700 and every file 0600 (:mod:`provenance._internal.files`)::

    index.json                      which keys exist, their role, algorithm and generations
    revoked.json                    revoked certificates (issuer, serial, fingerprint)
    ca/ca.key.pem, ca/ca.crt.pem    the local CA
    signing/<name>/<serial>.key.pem one file pair per generation of each signing key
    signing/<name>/<serial>.crt.pem
    trusted/<fingerprint>.pem       external certificates added with :meth:`provenance.keys.KeyStore.trust`
    watermark/<n>.json              watermark key generations, sealed (:mod:`provenance._internal.sealed`)
"""

from __future__ import annotations

import contextlib
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provenance._internal.ca import PrivateKey
from provenance._internal.files import ensure_private_dir, exclusive_lock, read_json, write_json
from provenance.errors import KeyStoreError, PassphraseError

__all__ = ["KeyDirectory", "check_name"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_FORMAT = 1


def check_name(name: str) -> str:
    """``name`` if it is a valid key name (it becomes a directory name), else a :class:`KeyStoreError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 characters a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        )
    return name


class KeyDirectory:
    """Where each thing of a key store lives, and its state files, read and written whole under one lock."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------------------------- paths

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_key_path(self) -> Path:
        return self.ca_dir / "ca.key.pem"

    @property
    def ca_cert_path(self) -> Path:
        return self.ca_dir / "ca.crt.pem"

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def watermark_dir(self) -> Path:
        return self.root / "watermark"

    def key_dir(self, name: str) -> Path:
        return self.root / "signing" / check_name(name)

    def generation_paths(self, name: str, serial: int) -> tuple[Path, Path]:
        """The private key and certificate files of one generation of key ``name``."""
        base = self.key_dir(name) / f"{serial:x}"
        return base.with_name(base.name + ".key.pem"), base.with_name(base.name + ".crt.pem")

    def watermark_files(self) -> list[Path]:
        """The sealed watermark key generations, oldest first."""
        if not self.watermark_dir.is_dir():
            return []
        return sorted(self.watermark_dir.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)

    def trusted_files(self) -> list[Path]:
        if not self.trusted_dir.is_dir():
            return []
        return sorted(self.trusted_dir.glob("*.pem"))

    # ----------------------------------------------------------------------------------- state files

    @contextlib.contextmanager
    def locked(self, *, create: bool = False) -> Iterator[None]:
        """Changes are serialised with a lock file; ``create`` makes the directory first."""
        if create:
            ensure_private_dir(self.root)
        elif not self.root.is_dir():
            raise KeyStoreError(f"key store {self.root} is not initialised; run `medverify keys init`")
        with exclusive_lock(self.root / ".lock"):
            yield

    def read_index(self) -> dict[str, Any]:
        index = read_json(self.root / "index.json")
        if index is None:
            return {"format": _FORMAT, "keys": {}}
        if index.get("format") != _FORMAT or not isinstance(index.get("keys"), dict):
            raise KeyStoreError(f"{self.root / 'index.json'} has an unknown format")
        return index

    def write_index(self, index: dict[str, Any]) -> None:
        write_json(self.root / "index.json", index)

    def read_revoked(self) -> list[dict[str, Any]]:
        """The revocation list: one entry (name, issuer, serial, fingerprint, time) per revoked generation."""
        revoked = read_json(self.root / "revoked.json")
        if revoked is None:
            return []
        entries = revoked.get("revoked")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise KeyStoreError(f"{self.root / 'revoked.json'} has an unknown format")
        return entries

    def write_revoked(self, entries: list[dict[str, Any]]) -> None:
        write_json(self.root / "revoked.json", {"format": _FORMAT, "revoked": entries})

    def revoked_serials_and_fingerprints(self) -> tuple[list[tuple[str, int]], list[str]]:
        """The revocation list as a trust policy takes it: (issuer, serial) pairs and certificate fingerprints."""
        revoked = self.read_revoked()
        try:
            serials = [(str(e["issuer"]), int(e["serial"])) for e in revoked]
            fingerprints = [str(e["fingerprint_sha256"]) for e in revoked]
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{self.root / 'revoked.json'} has a malformed entry") from exc
        return serials, fingerprints

    # ----------------------------------------------------------------------------------- key material

    @staticmethod
    def load_cert(path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError as exc:
            raise KeyStoreError(f"certificate file {path} is missing") from exc
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise KeyStoreError(f"{path} is not a PEM certificate") from exc

    @staticmethod
    def load_private_key(path: Path, passphrase: Callable[[], bytes]) -> PrivateKey:
        """The private key in ``path``, decrypted with the passphrase (asked for only once the file is known to be
        usable); refused when the file is readable by others or not encrypted."""
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyStoreError(f"private key file {path} is missing") from exc
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise KeyStoreError(
                f"private key file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        secret = passphrase()
        try:
            key = serialization.load_pem_private_key(data, password=secret)
        except TypeError as exc:  # the file is not encrypted
            raise KeyStoreError(f"private key file {path} is not encrypted; refusing to use it") from exc
        except ValueError as exc:
            # cryptography says "Bad decrypt. Incorrect password?" (or a parse error); never echo the input.
            raise PassphraseError(f"the key passphrase does not decrypt {path} (wrong passphrase?)") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path} holds an unsupported key type {type(key).__name__}")
        return key
