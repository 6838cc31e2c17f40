"""The local CA's cryptography: key pairs, the CA certificate, and the certificates it issues to signing keys.

Nothing here touches the disk; :class:`provenance.keys.KeyStore` decides what is issued and where it is kept.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provenance._internal.roles import ROLE_OIDS, KeyRole
from provenance.errors import KeyStoreError

__all__ = [
    "KeyAlgorithm",
    "PrivateKey",
    "algorithm_of",
    "cert_pem",
    "encrypt_private_key",
    "generate_key",
    "issue_certificate",
    "make_ca",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CA_VALIDITY = dt.timedelta(days=3650)
# dcmsign rejects a signature made in the same second as the certificate's notBefore; backdating also absorbs
# small clock differences between the machine that issues and the one that verifies.
_BACKDATE = dt.timedelta(minutes=5)


class KeyAlgorithm(enum.StrEnum):
    """Key algorithms a signing key may use. RSA works in every dcmsign profile; ECDSA only without one."""

    RSA_3072 = "rsa-3072"
    RSA_2048 = "rsa-2048"
    ECDSA_P256 = "ecdsa-p256"


def algorithm_of(public_key: object) -> KeyAlgorithm:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size == 3072:
            return KeyAlgorithm.RSA_3072
        if public_key.key_size == 2048:
            return KeyAlgorithm.RSA_2048
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256
    raise KeyStoreError(f"unsupported key type {type(public_key).__name__}")


def generate_key(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.RSA_3072:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm is KeyAlgorithm.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise KeyStoreError(f"unsupported key algorithm {algorithm!r}")


def encrypt_private_key(key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM, encrypted with ``passphrase``: private keys are never stored in the clear."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, signer: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signer,
        content_commitment=signer,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signer,
        crl_sign=not signer,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(now: dt.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A new local CA: an RSA-3072 key and its self-signed certificate (ten years, no intermediate CAs)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"medverify local CA {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medverify"),
        ]
    )
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
        .add_extension(_key_usage(signer=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_certificate(
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    *,
    name: str,
    role: KeyRole,
    key: PrivateKey,
    validity_days: int,
    now: dt.datetime,
) -> x509.Certificate:
    """The CA's certificate for signing key ``name`` of ``role`` (its role as an extended key usage), valid for
    ``validity_days`` but never beyond the CA's own validity."""
    not_after = min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
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
        .add_extension(_key_usage(signer=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ROLE_OIDS[role]]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
