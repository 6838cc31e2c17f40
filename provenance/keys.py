"""Signing keys: a key store with a local CA, roles, a trust store, revocation and rotation.

Layout of a key store directory (every directory 0700, every file 0600)::

    index.json                      which keys exist, their role, algorithm and generations
    revoked.json                    revoked certificates (issuer, serial, fingerprint)
    ca/ca.key.pem, ca/ca.crt.pem    the local CA (RSA-3072, ten years)
    signing/<name>/<serial>.key.pem one file pair per generation of each signing key
    signing/<name>/<serial>.crt.pem
    trusted/<fingerprint>.pem       external certificates added with :meth:`KeyStore.trust`

Private keys are PKCS#8, encrypted with the passphrase from a :data:`PassphraseSource`; the passphrase is
asked for only when a private key is actually needed (issuing, rotating, signing).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import enum
import getpass
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provenance._internal.files import (
    ensure_private_dir,
    exclusive_lock,
    read_json,
    write_json,
    write_private_file,
)
from provenance._internal.roles import ROLE_OIDS, KeyRole, role_of_certificate
from provenance.errors import KeyStoreError, PassphraseError, TrustPolicyError
from provenance.trust import TrustPolicy, fingerprint_sha256, load_certificates
from provenance.watermark import WatermarkError, WatermarkKey

__all__ = [
    "DEFAULT_KEY_NAME",
    "PASSPHRASE_ENV",
    "ROLE_OIDS",
    "KeyAlgorithm",
    "KeyInfo",
    "KeyRole",
    "KeyStatus",
    "KeyStore",
    "PassphraseSource",
    "SigningKey",
    "TrustedCertificate",
    "create_passphrase_file",
    "passphrase_source",
    "role_of_certificate",
]

#: Environment variable read first by :func:`passphrase_source`.
PASSPHRASE_ENV = "MEDVERIFY_KEY_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
#: The signing key that :meth:`KeyStore.init` creates.
DEFAULT_KEY_NAME = "generator"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_RESERVED_NAMES = frozenset({"ca"})
_FORMAT = 1
_CA_VALIDITY = dt.timedelta(days=3650)
# dcmsign rejects a signature made in the same second as the certificate's notBefore; backdating also absorbs
# small clock differences between the machine that issues and the one that verifies.
_BACKDATE = dt.timedelta(minutes=5)

KeyStatus = Literal["active", "retired", "revoked"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PassphraseSource = Callable[[], bytes]


class KeyAlgorithm(enum.StrEnum):
    """Key algorithms a signing key may use. RSA works in every dcmsign profile; ECDSA only without one."""

    RSA_3072 = "rsa-3072"
    RSA_2048 = "rsa-2048"
    ECDSA_P256 = "ecdsa-p256"


@dataclass(frozen=True)
class SigningKey:
    """A decrypted signing key with its certificate. The private key never appears in ``repr``."""

    name: str
    role: KeyRole
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate

    @property
    def algorithm(self) -> KeyAlgorithm:
        return _algorithm_of(self.private_key.public_key())


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about one generation of a signing key."""

    name: str
    role: KeyRole
    algorithm: KeyAlgorithm
    subject: str
    serial: int
    fingerprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: KeyStatus

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (dates in ISO 8601, serial as an integer)."""
        return {
            "name": self.name,
            "role": str(self.role),
            "algorithm": str(self.algorithm),
            "subject": self.subject,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "status": self.status,
        }


@dataclass(frozen=True)
class TrustedCertificate:
    """An external certificate in the key store's trust store."""

    subject: str
    issuer: str
    serial: int
    fingerprint_sha256: str
    is_ca: bool
    role: KeyRole | None
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> TrustedCertificate:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=cert.serial_number,
            fingerprint_sha256=fingerprint_sha256(cert),
            is_ca=is_ca,
            role=role_of_certificate(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )


# --------------------------------------------------------------------------------------------- passphrases

_NO_PASSPHRASE_HELP = (
    f"no key passphrase available: set {PASSPHRASE_ENV}, point the key_passphrase_file setting "
    "(MEDVERIFY_KEY_PASSPHRASE_FILE) at a file with mode 0600, or run interactively to be prompted; "
    "for unattended demos, `medverify keys init --generate-passphrase-file` writes one next to the keys"
)


def passphrase_source(
    *,
    env: Mapping[str, str] | None = None,
    passphrase_file: Path | None = None,
    interactive: bool = False,
) -> PassphraseSource:
    """A callable that finds the key passphrase when a private key is first needed.

    It tries, in order: the ``MEDVERIFY_KEY_PASSPHRASE`` variable in ``env`` (default ``os.environ``, read at
    call time); ``passphrase_file`` if it exists (it must not be readable by group or others); and, if
    ``interactive`` and standard input is a terminal, a prompt (asked once, then remembered). Otherwise it
    raises :class:`PassphraseError` saying how to provide one.
    """
    prompted: list[bytes] = []

    def source() -> bytes:
        environ = os.environ if env is None else env
        value = environ.get(PASSPHRASE_ENV)
        if value:
            return value.encode("utf-8")
        if passphrase_file is not None and passphrase_file.exists():
            return _read_passphrase_file(passphrase_file)
        if interactive and sys.stdin is not None and sys.stdin.isatty():
            if not prompted:
                entered = getpass.getpass("medverify key passphrase: ")
                if not entered:
                    raise PassphraseError("an empty key passphrase is not allowed")
                prompted.append(entered.encode("utf-8"))
            return prompted[0]
        raise PassphraseError(_NO_PASSPHRASE_HELP)

    return source


def _read_passphrase_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise PassphraseError(f"passphrase file {path} is not a regular file")
        if mode & 0o077:
            raise PassphraseError(
                f"passphrase file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        data = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise PassphraseError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    if not data:
        raise PassphraseError(f"passphrase file {path} is empty")
    return data


def create_passphrase_file(path: Path) -> None:
    """Write a new random passphrase to ``path`` (mode 0600); :class:`KeyStoreError` if it already exists."""
    ensure_private_dir(path.parent)
    write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))


# --------------------------------------------------------------------------------------------- helpers


def _algorithm_of(public_key: object) -> KeyAlgorithm:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size == 3072:
            return KeyAlgorithm.RSA_3072
        if public_key.key_size == 2048:
            return KeyAlgorithm.RSA_2048
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256
    raise KeyStoreError(f"unsupported key type {type(public_key).__name__}")


def _generate(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.RSA_3072:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm is KeyAlgorithm.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise KeyStoreError(f"unsupported key algorithm {algorithm!r}")


def _encrypt(key: PrivateKey, passphrase: bytes) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 characters a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        )
    return name


def _parse_role(value: object) -> KeyRole:
    try:
        return KeyRole(str(value))
    except ValueError as exc:
        raise KeyStoreError(f"unknown key role {value!r}") from exc


def _parse_algorithm(value: object) -> KeyAlgorithm:
    try:
        return KeyAlgorithm(str(value))
    except ValueError as exc:
        raise KeyStoreError(f"unknown key algorithm {value!r}") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------------------------- the store


def _watermark_kek(passphrase: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase)


def _encrypt_watermark_key(key: WatermarkKey, passphrase: bytes) -> bytes:
    import base64
    import json

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    key_id = str(key.key_id)
    sealed = AESGCM(_watermark_kek(passphrase, salt)).encrypt(nonce, key.to_bytes(), key_id.encode())
    record = {
        "format": "medverify-watermark-key/1",
        "key_id": key_id,
        "kdf": "scrypt-n32768-r8-p1",
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    return json.dumps(record, indent=2).encode()


def _decrypt_watermark_key(path: Path, passphrase: bytes) -> WatermarkKey:
    import base64
    import json

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        record = json.loads(path.read_bytes())
        salt, nonce = base64.b64decode(record["salt"]), base64.b64decode(record["nonce"])
        sealed, key_id = base64.b64decode(record["ciphertext"]), str(record["key_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"watermark key file {path} is unreadable or malformed") from exc
    try:
        secret = AESGCM(_watermark_kek(passphrase, salt)).decrypt(nonce, sealed, key_id.encode())
    except InvalidTag:
        raise PassphraseError(f"the passphrase does not decrypt the watermark key {path.name}") from None
    try:
        return WatermarkKey.from_bytes(secret)
    except WatermarkError as exc:
        raise KeyStoreError(f"watermark key file {path} holds no valid key") from exc


class KeyStore:
    """Signing keys, their local CA, trusted external certificates and revocations, in one directory.

    Reading public material (listing, certificates, the trust policy) never needs the passphrase; issuing,
    rotating and loading a signing key do. Changes are serialised with a lock file, state files are replaced
    atomically, and private keys are never overwritten.
    """

    def __init__(self, directory: Path, passphrase: PassphraseSource) -> None:
        self._dir = Path(directory)
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"KeyStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    # ----------------------------------------------------------------------------------- paths and state

    @property
    def _ca_dir(self) -> Path:
        return self._dir / "ca"

    @property
    def _ca_key_path(self) -> Path:
        return self._ca_dir / "ca.key.pem"

    @property
    def _ca_cert_path(self) -> Path:
        return self._ca_dir / "ca.crt.pem"

    @property
    def _trusted_dir(self) -> Path:
        return self._dir / "trusted"

    def _key_dir(self, name: str) -> Path:
        return self._dir / "signing" / _check_name(name)

    def _generation_paths(self, name: str, serial: int) -> tuple[Path, Path]:
        base = self._key_dir(name) / f"{serial:x}"
        return base.with_name(base.name + ".key.pem"), base.with_name(base.name + ".crt.pem")

    @contextlib.contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[None]:
        if create:
            ensure_private_dir(self._dir)
        elif not self._dir.is_dir():
            raise KeyStoreError(f"key store {self._dir} is not initialised; run `medverify keys init`")
        with exclusive_lock(self._dir / ".lock"):
            yield

    def _read_index(self) -> dict[str, Any]:
        index = read_json(self._dir / "index.json")
        if index is None:
            return {"format": _FORMAT, "keys": {}}
        if index.get("format") != _FORMAT or not isinstance(index.get("keys"), dict):
            raise KeyStoreError(f"{self._dir / 'index.json'} has an unknown format")
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        write_json(self._dir / "index.json", index)

    def _read_revoked(self) -> list[dict[str, Any]]:
        revoked = read_json(self._dir / "revoked.json")
        if revoked is None:
            return []
        entries = revoked.get("revoked")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise KeyStoreError(f"{self._dir / 'revoked.json'} has an unknown format")
        return entries

    def _entry(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        _check_name(name)
        entry = index["keys"].get(name)
        if not isinstance(entry, dict):
            raise KeyStoreError(f"no key named {name!r} in {self._dir}")
        return entry

    @staticmethod
    def _current_serial(entry: dict[str, Any]) -> int:
        try:
            return int(str(entry["current"]), 16)
        except (KeyError, ValueError) as exc:
            raise KeyStoreError("corrupt key index entry (no current generation)") from exc

    def _load_cert(self, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError as exc:
            raise KeyStoreError(f"certificate file {path} is missing") from exc
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise KeyStoreError(f"{path} is not a PEM certificate") from exc

    def _load_private_key(self, path: Path) -> PrivateKey:
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
        passphrase = self._passphrase()
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as exc:  # the file is not encrypted
            raise KeyStoreError(f"private key file {path} is not encrypted; refusing to use it") from exc
        except ValueError as exc:
            # cryptography says "Bad decrypt. Incorrect password?" (or a parse error); never echo the input.
            raise PassphraseError(f"the key passphrase does not decrypt {path} (wrong passphrase?)") from exc
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path} holds an unsupported key type {type(key).__name__}")
        return key

    def _info(self, name: str, entry: dict[str, Any], serial: int) -> KeyInfo:
        _, cert_path = self._generation_paths(name, serial)
        cert = self._load_cert(cert_path)
        statuses = entry.get("generations", {})
        status = statuses.get(f"{serial:x}") if isinstance(statuses, dict) else None
        if status not in ("active", "retired", "revoked"):
            raise KeyStoreError(f"corrupt key index entry for {name!r} (status {status!r})")
        return KeyInfo(
            name=name,
            role=_parse_role(entry.get("role")),
            algorithm=_algorithm_of(cert.public_key()),
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            fingerprint_sha256=fingerprint_sha256(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            status=status,
        )

    # ----------------------------------------------------------------------------------- the CA

    def _has_ca(self) -> bool:
        return self._ca_cert_path.exists()

    def _create_ca(self) -> x509.Certificate:
        passphrase = self._passphrase()
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"medverify local CA {secrets.token_hex(4)}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medverify"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        ensure_private_dir(self._ca_dir)
        write_private_file(self._ca_key_path, _encrypt(key, passphrase))
        write_private_file(self._ca_cert_path, _cert_pem(cert))
        return cert

    def _issue(
        self, name: str, role: KeyRole, algorithm: KeyAlgorithm, validity_days: int
    ) -> tuple[int, x509.Certificate]:
        """Make a key pair and its CA-issued certificate, write both, and return (serial, certificate)."""
        if validity_days < 1:
            raise KeyStoreError("validity_days must be at least 1")
        ca_cert = self.ca_certificate()
        ca_key = self._load_private_key(self._ca_key_path)  # also proves the passphrase before any work
        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise KeyStoreError("the local CA key must be RSA")
        passphrase = self._passphrase()
        key = _generate(algorithm)
        now = _now()
        not_after = min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
        try:
            ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medverify"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(role)),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ROLE_OIDS[role]]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ensure_private_dir(self._dir / "signing")
        ensure_private_dir(self._key_dir(name))
        key_path, cert_path = self._generation_paths(name, cert.serial_number)
        write_private_file(key_path, _encrypt(key, passphrase))
        write_private_file(cert_path, _cert_pem(cert))
        return cert.serial_number, cert

    # ----------------------------------------------------------------------------------- public API

    def init(self) -> builtins.list[KeyInfo]:
        """Create the local CA and the default ``generator`` key where missing; return the keys it created.

        Idempotent: a second call creates nothing and returns an empty list. (The CA is not a signing key and
        is not listed; see :meth:`ca_certificate`.)
        """
        with self._locked(create=True):
            if not self._has_ca():
                self._create_ca()
            index = self._read_index()
            if DEFAULT_KEY_NAME in index["keys"]:
                return []
            return [self._create_locked(index, DEFAULT_KEY_NAME, KeyRole.GENERATOR, KeyAlgorithm.RSA_3072, 825)]

    def create(
        self,
        name: str,
        role: KeyRole,
        algorithm: KeyAlgorithm = KeyAlgorithm.RSA_3072,
        *,
        validity_days: int = 825,
    ) -> KeyInfo:
        """Issue a new signing key ``name`` for ``role``; :class:`KeyStoreError` if the name is taken."""
        _check_name(name)
        role, algorithm = _parse_role(role), _parse_algorithm(algorithm)
        if not self._has_ca():
            raise KeyStoreError(f"key store {self._dir} is not initialised; run `medverify keys init`")
        with self._locked():
            return self._create_locked(self._read_index(), name, role, algorithm, validity_days)

    def _create_locked(
        self, index: dict[str, Any], name: str, role: KeyRole, algorithm: KeyAlgorithm, validity_days: int
    ) -> KeyInfo:
        if name in _RESERVED_NAMES:
            raise KeyStoreError(f"the key name {name!r} is reserved")
        if name in index["keys"]:
            raise KeyStoreError(f"a key named {name!r} already exists")
        serial, _ = self._issue(name, role, algorithm, validity_days)
        entry = {
            "role": str(role),
            "algorithm": str(algorithm),
            "validity_days": validity_days,
            "current": f"{serial:x}",
            "generations": {f"{serial:x}": "active"},
        }
        index["keys"][name] = entry
        self._write_index(index)
        return self._info(name, entry, serial)

    def ensure(self, name: str, role: KeyRole, algorithm: KeyAlgorithm = KeyAlgorithm.RSA_3072) -> KeyInfo:
        """The key ``name``, created (and the store initialised) if missing; an error if its role differs."""
        _check_name(name)
        role, algorithm = _parse_role(role), _parse_algorithm(algorithm)
        if not self._has_ca():
            self.init()
        with self._locked():
            index = self._read_index()
            entry = index["keys"].get(name)
            if entry is None:
                return self._create_locked(index, name, role, algorithm, 825)
            info = self._info(name, entry, self._current_serial(entry))
        if info.role is not role:
            raise KeyStoreError(f"key {name!r} exists with role {info.role}, not {role}")
        return info

    def list(self) -> builtins.list[KeyInfo]:
        """Every generation of every signing key (active, retired and revoked), by name then age."""
        index = self._read_index()
        infos: builtins.list[KeyInfo] = []
        for name in sorted(index["keys"]):
            entry = self._entry(index, name)
            generations = entry.get("generations")
            if not isinstance(generations, dict):
                raise KeyStoreError(f"corrupt key index entry for {name!r}")
            gens = [self._info(name, entry, int(serial, 16)) for serial in generations]
            infos.extend(sorted(gens, key=lambda i: (i.not_before, i.serial)))
        return infos

    def info(self, name: str) -> KeyInfo:
        """The current generation of key ``name``."""
        index = self._read_index()
        entry = self._entry(index, name)
        return self._info(name, entry, self._current_serial(entry))

    def load_signing_key(self, name: str) -> SigningKey:
        """The decrypted current generation of key ``name``; refused if revoked or outside its validity."""
        info = self.info(name)
        if info.status == "revoked":
            raise KeyStoreError(f"key {name!r} (serial {info.serial:x}) is revoked; rotate it to sign again")
        now = _now()
        if now > info.not_after:
            raise KeyStoreError(f"key {name!r} expired at {info.not_after.isoformat()}; rotate it")
        key_path, cert_path = self._generation_paths(name, info.serial)
        cert = self._load_cert(cert_path)
        key = self._load_private_key(key_path)
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise KeyStoreError(f"the private key of {name!r} does not match its certificate")
        return SigningKey(name=name, role=info.role, private_key=key, certificate=cert)

    def certificate(self, name: str) -> x509.Certificate:
        """The certificate of the current generation of key ``name``."""
        index = self._read_index()
        entry = self._entry(index, name)
        return self._load_cert(self._generation_paths(name, self._current_serial(entry))[1])

    def ca_certificate(self) -> x509.Certificate:
        """The local CA's certificate."""
        if not self._has_ca():
            raise KeyStoreError(f"key store {self._dir} is not initialised; run `medverify keys init`")
        return self._load_cert(self._ca_cert_path)

    def export_certificate(self, name: str) -> bytes:
        """The PEM certificate of key ``name`` (``"ca"`` for the local CA's)."""
        if name == "ca":
            return _cert_pem(self.ca_certificate())
        return _cert_pem(self.certificate(name))

    def trust(self, pem_or_der: bytes) -> TrustedCertificate:
        """Add an external certificate (a CA, or a signer trusted as it is) to the trust store.

        Adding a certificate that is already trusted changes nothing.
        """
        try:
            certs = load_certificates(pem_or_der)
        except TrustPolicyError as exc:
            raise KeyStoreError(str(exc)) from exc
        if len(certs) != 1:
            raise KeyStoreError(f"expected exactly one certificate, found {len(certs)}; add them one at a time")
        cert = certs[0]
        record = TrustedCertificate.from_certificate(cert)
        if record.not_after < _now():
            raise KeyStoreError(f"refusing to trust {record.subject}: it expired at {record.not_after.isoformat()}")
        with self._locked():
            ensure_private_dir(self._trusted_dir)
            path = self._trusted_dir / f"{record.fingerprint_sha256}.pem"
            if not path.exists():
                write_private_file(path, _cert_pem(cert))
        return record

    def trusted(self) -> builtins.list[TrustedCertificate]:
        """The external certificates in the trust store."""
        return [TrustedCertificate.from_certificate(c) for c in self._trusted_certificates()]

    def _trusted_certificates(self) -> builtins.list[x509.Certificate]:
        if not self._trusted_dir.is_dir():
            return []
        return [self._load_cert(p) for p in sorted(self._trusted_dir.glob("*.pem"))]

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the current generation of ``name``: it can no longer sign, its signatures are REVOKED."""
        with self._locked():
            index = self._read_index()
            entry = self._entry(index, name)
            serial = self._current_serial(entry)
            info = self._info(name, entry, serial)
            if info.status == "revoked":
                return info
            cert = self._load_cert(self._generation_paths(name, serial)[1])
            revoked = self._read_revoked()
            revoked.append(
                {
                    "name": name,
                    "issuer": cert.issuer.rfc4514_string(),
                    "serial": cert.serial_number,
                    "fingerprint_sha256": fingerprint_sha256(cert),
                    "revoked_at": _now().isoformat(),
                }
            )
            # revoked.json first: if we stop in between, verifiers see the revocation before the index does.
            write_json(self._dir / "revoked.json", {"format": _FORMAT, "revoked": revoked})
            entry["generations"][f"{serial:x}"] = "revoked"
            self._write_index(index)
            return self._info(name, entry, serial)

    def rotate(self, name: str) -> KeyInfo:
        """Issue a new generation of key ``name`` (same role and algorithm); the old one becomes retired.

        A retired generation still verifies (its signatures stay TRUSTED) but no longer signs. A revoked
        generation stays revoked.
        """
        with self._locked():
            index = self._read_index()
            entry = self._entry(index, name)
            old = self._current_serial(entry)
            role, algorithm = _parse_role(entry.get("role")), _parse_algorithm(entry.get("algorithm"))
            validity_days = entry.get("validity_days", 825)
            if not isinstance(validity_days, int):
                raise KeyStoreError(f"corrupt key index entry for {name!r} (validity_days)")
            serial, _ = self._issue(name, role, algorithm, validity_days)
            generations = entry["generations"]
            if generations.get(f"{old:x}") == "active":
                generations[f"{old:x}"] = "retired"
            generations[f"{serial:x}"] = "active"
            entry["current"] = f"{serial:x}"
            self._write_index(index)
            return self._info(name, entry, serial)

    # ------------------------------------------------------------------ watermark keys
    # Watermark keys are secrets of another type (provenance.watermark.WatermarkKey), never X.509 keys. Each is
    # stored encrypted with AES-256-GCM under a key derived from the store's passphrase by scrypt (fresh salt and
    # nonce per file), in keys/watermark/<n>.json, mode 0600. Old generations stay for detection.

    @property
    def _watermark_dir(self) -> Path:
        return self._dir / "watermark"

    def _watermark_files(self) -> builtins.list[Path]:
        if not self._watermark_dir.is_dir():
            return []
        return sorted(self._watermark_dir.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)

    def watermark_keys(self) -> builtins.list[WatermarkKey]:
        """Every watermark key generation, newest first (detection tries them all). Needs the passphrase."""
        passphrase = self._passphrase() if self._watermark_files() else b""
        return [_decrypt_watermark_key(path, passphrase) for path in reversed(self._watermark_files())]

    def watermark_key(self) -> WatermarkKey:
        """The current watermark key, created on first use (the key id is ``watermark-<generation>``)."""
        files = self._watermark_files()
        if files:
            return _decrypt_watermark_key(files[-1], self._passphrase())
        return self.rotate_watermark_key()

    def rotate_watermark_key(self) -> WatermarkKey:
        """Create a new watermark key generation; older ones are kept so that their marks are still found."""
        passphrase = self._passphrase()
        with self._locked(create=True):
            ensure_private_dir(self._watermark_dir)
            generation = len(self._watermark_files()) + 1
            key = WatermarkKey.generate(f"watermark-{generation}")
            write_private_file(self._watermark_dir / f"{generation}.json", _encrypt_watermark_key(key, passphrase))
        return key

    def trust_policy(self) -> TrustPolicy:
        """This store's trust policy: the local CA and the trusted certificates, minus what is revoked."""
        revoked = self._read_revoked()
        try:
            serials = [(str(e["issuer"]), int(e["serial"])) for e in revoked]
            fingerprints = [str(e["fingerprint_sha256"]) for e in revoked]
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{self._dir / 'revoked.json'} has a malformed entry") from exc
        return TrustPolicy(
            anchors=[self.ca_certificate(), *self._trusted_certificates()],
            revoked_serials=serials,
            revoked_fingerprints=fingerprints,
        )
