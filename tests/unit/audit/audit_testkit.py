"""Helpers for the audit tests: a checkpoint key made with ``cryptography`` directly, and sample entries."""

from __future__ import annotations

import dataclasses
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from verifier.audit import AuditEntry, Channel


@dataclasses.dataclass(frozen=True)
class KeySigner:
    """Duck-types the key store's ``SigningKey`` (``private_key`` + ``certificate``)."""

    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def to_pem(self) -> tuple[bytes, bytes]:
        key = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key, self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def from_pem(cls, key: bytes, cert: bytes) -> KeySigner:
        private = serialization.load_pem_private_key(key, password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return cls(private, x509.load_pem_x509_certificate(cert))


def make_signer(common_name: str = "medverify test audit") -> KeySigner:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return KeySigner(key, cert)


def make_entry(i: int, **overrides: object) -> AuditEntry:
    fields: dict[str, object] = {
        "event": "verify",
        "channel": Channel.CLI if i % 2 else Channel.SCAN,
        "path": f"/archive/study{i % 3}/img{i:04d}.dcm",
        "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.{i}",
        "file_sha256": f"{i:064x}",
        "signature_report": {"status": "VALID" if i % 3 else "UNSIGNED", "uncovered": ["0010,0010"]},
        "detection_report": {"synthetic_score": i / 1000, "model_tag": "cnn.resnet18"},
        "model_tag": "cnn.resnet18@1",
        "policy_version": "default-1",
        "verdict": "AUTHENTIC" if i % 3 else "NO_EVIDENCE",
        "action": "accept" if i % 3 else "flag",
        "details": {"n": i, "ünïcode": "Ærø"},
        "os_user": "tester",
        "host": "ward-7",
    }
    fields.update(overrides)
    return AuditEntry(**fields)  # type: ignore[arg-type]
