"""Signing keys: a key store with a local CA, roles, a trust store, revocation, rotation and watermark keys.

:class:`KeyStore` is the public face; its parts live apart: the directory layout and state files in
:mod:`provenance._internal.keydir`, the CA's cryptography in :mod:`provenance._internal.ca`, sealed watermark keys
in :mod:`provenance._internal.sealed`, and where the passphrase comes from in :mod:`provenance.passphrase` (its
names are exported here too). Private keys are PKCS#8, encrypted with the passphrase; it is asked for only when a
private key is actually needed (issuing, rotating, signing).
"""

from __future__ import annotations

import builtins
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provenance._internal.ca import (
    KeyAlgorithm,
    algorithm_of,
    cert_pem,
    encrypt_private_key,
    generate_key,
    issue_certificate,
    make_ca,
)
from provenance._internal.files import ensure_private_dir, write_private_file
from provenance._internal.keydir import KeyDirectory, check_name
from provenance._internal.roles import ROLE_OIDS, KeyRole, role_of_certificate
from provenance._internal.sealed import seal_watermark_key, unseal_watermark_key
from provenance.errors import KeyStoreError, TrustPolicyError
from provenance.passphrase import PASSPHRASE_ENV, PassphraseSource, create_passphrase_file, passphrase_source
from provenance.trust import TrustPolicy, fingerprint_sha256, load_certificates
from provenance.watermark import WatermarkKey

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

#: The signing key that :meth:`KeyStore.init` creates.
DEFAULT_KEY_NAME = "generator"

_RESERVED_NAMES = frozenset({"ca"})

KeyStatus = Literal["active", "retired", "revoked"]


@dataclass(frozen=True)
class SigningKey:
    """A decrypted signing key with its certificate. The private key never appears in ``repr``."""

    name: str
    role: KeyRole
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate

    @property
    def algorithm(self) -> KeyAlgorithm:
        return algorithm_of(self.private_key.public_key())


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


class KeyStore:
    """Signing keys, their local CA, trusted external certificates, revocations and watermark keys, in one
    directory (laid out as :mod:`provenance._internal.keydir` says).

    Reading public material (listing, certificates, the trust policy) never needs the passphrase; issuing,
    rotating, loading a signing key and the watermark keys do. Changes are serialised with a lock file, state files
    are replaced atomically, and private keys are never overwritten.
    """

    def __init__(self, directory: Path, passphrase: PassphraseSource) -> None:
        self._dir = Path(directory)
        self._files = KeyDirectory(self._dir)
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return f"KeyStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    # ----------------------------------------------------------------------------------- signing keys

    def init(self) -> builtins.list[KeyInfo]:
        """Create the local CA and the default ``generator`` key where missing; return the keys it created.

        Idempotent: a second call creates nothing and returns an empty list. (The CA is not a signing key and
        is not listed; see :meth:`ca_certificate`.)
        """
        with self._files.locked(create=True):
            if not self._has_ca():
                self._create_ca()
            index = self._files.read_index()
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
        check_name(name)
        role, algorithm = _parse_role(role), _parse_algorithm(algorithm)
        if not self._has_ca():
            raise KeyStoreError(f"key store {self._dir} is not initialised; run `medverify keys init`")
        with self._files.locked():
            return self._create_locked(self._files.read_index(), name, role, algorithm, validity_days)

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
        self._files.write_index(index)
        return self._info(name, entry, serial)

    def ensure(self, name: str, role: KeyRole, algorithm: KeyAlgorithm = KeyAlgorithm.RSA_3072) -> KeyInfo:
        """The key ``name``, created (and the store initialised) if missing; an error if its role differs."""
        check_name(name)
        role, algorithm = _parse_role(role), _parse_algorithm(algorithm)
        if not self._has_ca():
            self.init()
        with self._files.locked():
            index = self._files.read_index()
            entry = index["keys"].get(name)
            if entry is None:
                return self._create_locked(index, name, role, algorithm, 825)
            info = self._info(name, entry, self._current_serial(entry))
        if info.role is not role:
            raise KeyStoreError(f"key {name!r} exists with role {info.role}, not {role}")
        return info

    def list(self) -> builtins.list[KeyInfo]:
        """Every generation of every signing key (active, retired and revoked), by name then age."""
        index = self._files.read_index()
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
        index = self._files.read_index()
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
        key_path, cert_path = self._files.generation_paths(name, info.serial)
        cert = self._files.load_cert(cert_path)
        key = self._files.load_private_key(key_path, self._passphrase)
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise KeyStoreError(f"the private key of {name!r} does not match its certificate")
        return SigningKey(name=name, role=info.role, private_key=key, certificate=cert)

    def certificate(self, name: str) -> x509.Certificate:
        """The certificate of the current generation of key ``name``."""
        index = self._files.read_index()
        entry = self._entry(index, name)
        return self._files.load_cert(self._files.generation_paths(name, self._current_serial(entry))[1])

    def ca_certificate(self) -> x509.Certificate:
        """The local CA's certificate."""
        if not self._has_ca():
            raise KeyStoreError(f"key store {self._dir} is not initialised; run `medverify keys init`")
        return self._files.load_cert(self._files.ca_cert_path)

    def export_certificate(self, name: str) -> bytes:
        """The PEM certificate of key ``name`` (``"ca"`` for the local CA's)."""
        if name == "ca":
            return cert_pem(self.ca_certificate())
        return cert_pem(self.certificate(name))

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
        with self._files.locked():
            ensure_private_dir(self._files.trusted_dir)
            path = self._files.trusted_dir / f"{record.fingerprint_sha256}.pem"
            if not path.exists():
                write_private_file(path, cert_pem(cert))
        return record

    def trusted(self) -> builtins.list[TrustedCertificate]:
        """The external certificates in the trust store."""
        return [TrustedCertificate.from_certificate(c) for c in self._trusted_certificates()]

    def _trusted_certificates(self) -> builtins.list[x509.Certificate]:
        return [self._files.load_cert(p) for p in self._files.trusted_files()]

    def revoke(self, name: str) -> KeyInfo:
        """Revoke the current generation of ``name``: it can no longer sign, its signatures are REVOKED."""
        with self._files.locked():
            index = self._files.read_index()
            entry = self._entry(index, name)
            serial = self._current_serial(entry)
            info = self._info(name, entry, serial)
            if info.status == "revoked":
                return info
            cert = self._files.load_cert(self._files.generation_paths(name, serial)[1])
            revoked = self._files.read_revoked()
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
            self._files.write_revoked(revoked)
            entry["generations"][f"{serial:x}"] = "revoked"
            self._files.write_index(index)
            return self._info(name, entry, serial)

    def rotate(self, name: str) -> KeyInfo:
        """Issue a new generation of key ``name`` (same role and algorithm); the old one becomes retired.

        A retired generation still verifies (its signatures stay TRUSTED) but no longer signs. A revoked
        generation stays revoked.
        """
        with self._files.locked():
            index = self._files.read_index()
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
            self._files.write_index(index)
            return self._info(name, entry, serial)

    def _entry(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        check_name(name)
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

    def _info(self, name: str, entry: dict[str, Any], serial: int) -> KeyInfo:
        _, cert_path = self._files.generation_paths(name, serial)
        cert = self._files.load_cert(cert_path)
        statuses = entry.get("generations", {})
        status = statuses.get(f"{serial:x}") if isinstance(statuses, dict) else None
        if status not in ("active", "retired", "revoked"):
            raise KeyStoreError(f"corrupt key index entry for {name!r} (status {status!r})")
        return KeyInfo(
            name=name,
            role=_parse_role(entry.get("role")),
            algorithm=algorithm_of(cert.public_key()),
            subject=cert.subject.rfc4514_string(),
            serial=cert.serial_number,
            fingerprint_sha256=fingerprint_sha256(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            status=status,
        )

    # ----------------------------------------------------------------------------------- the CA

    def _has_ca(self) -> bool:
        return self._files.ca_cert_path.exists()

    def _create_ca(self) -> x509.Certificate:
        passphrase = self._passphrase()
        key, cert = make_ca(_now())
        ensure_private_dir(self._files.ca_dir)
        write_private_file(self._files.ca_key_path, encrypt_private_key(key, passphrase))
        write_private_file(self._files.ca_cert_path, cert_pem(cert))
        return cert

    def _issue(
        self, name: str, role: KeyRole, algorithm: KeyAlgorithm, validity_days: int
    ) -> tuple[int, x509.Certificate]:
        """Make a key pair and its CA-issued certificate, write both, and return (serial, certificate)."""
        if validity_days < 1:
            raise KeyStoreError("validity_days must be at least 1")
        ca_cert = self.ca_certificate()
        # Also proves the passphrase before any work.
        ca_key = self._files.load_private_key(self._files.ca_key_path, self._passphrase)
        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise KeyStoreError("the local CA key must be RSA")
        passphrase = self._passphrase()
        key = generate_key(algorithm)
        cert = issue_certificate(
            ca_key, ca_cert, name=name, role=role, key=key, validity_days=validity_days, now=_now()
        )
        ensure_private_dir(self._dir / "signing")
        ensure_private_dir(self._files.key_dir(name))
        key_path, cert_path = self._files.generation_paths(name, cert.serial_number)
        write_private_file(key_path, encrypt_private_key(key, passphrase))
        write_private_file(cert_path, cert_pem(cert))
        return cert.serial_number, cert

    # ----------------------------------------------------------------------------------- watermark keys
    # Old generations stay for detection; each is sealed under the passphrase (provenance._internal.sealed).

    def watermark_keys(self) -> builtins.list[WatermarkKey]:
        """Every watermark key generation, newest first (detection tries them all). Needs the passphrase."""
        files = self._files.watermark_files()
        passphrase = self._passphrase() if files else b""
        return [unseal_watermark_key(path, passphrase) for path in reversed(files)]

    def watermark_key(self) -> WatermarkKey:
        """The current watermark key, created on first use (the key id is ``watermark-<generation>``)."""
        files = self._files.watermark_files()
        if files:
            return unseal_watermark_key(files[-1], self._passphrase())
        return self.rotate_watermark_key()

    def rotate_watermark_key(self) -> WatermarkKey:
        """Create a new watermark key generation; older ones are kept so that their marks are still found."""
        passphrase = self._passphrase()
        with self._files.locked(create=True):
            ensure_private_dir(self._files.watermark_dir)
            generation = len(self._files.watermark_files()) + 1
            key = WatermarkKey.generate(f"watermark-{generation}")
            write_private_file(self._files.watermark_dir / f"{generation}.json", seal_watermark_key(key, passphrase))
        return key

    # ----------------------------------------------------------------------------------- trust

    def trust_policy(self) -> TrustPolicy:
        """This store's trust policy: the local CA and the trusted certificates, minus what is revoked."""
        serials, fingerprints = self._files.revoked_serials_and_fingerprints()
        return TrustPolicy(
            anchors=[self.ca_certificate(), *self._trusted_certificates()],
            revoked_serials=serials,
            revoked_fingerprints=fingerprints,
        )
