"""TrustPolicy and TrustDecision, on certificates made here with cryptography (ECDSA keys: fast)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provenance.errors import ProvenanceError, TrustPolicyError
from provenance.keys import ROLE_OIDS, KeyRole
from provenance.trust import TrustDecision, TrustPolicy, TrustStatus, fingerprint_sha256

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    *,
    issuer: Issuer | None = None,
    ca: bool = False,
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + DAY,
    role: KeyRole | None = None,
    key_cert_sign: bool | None = None,
) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, signer = (_name(cn), key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not key_cert_sign,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if role is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ROLE_OIDS[role]]), critical=False)
    return builder.sign(signer, hashes.SHA256()), key


@pytest.fixture(scope="module")
def ca() -> Issuer:
    return make_cert(
        "Test CA", ca=True, not_before=NOW - 10 * DAY, not_after=NOW + 100 * DAY, key_cert_sign=True
    )


def test_certificate_issued_by_anchor_is_trusted(ca: Issuer) -> None:
    leaf, _ = make_cert("signer", issuer=ca, role=KeyRole.ACQUISITION)
    decision = TrustPolicy(anchors=[ca[0]]).evaluate(leaf)
    assert decision.status is TrustStatus.TRUSTED
    assert decision.role is KeyRole.ACQUISITION
    assert decision.subject == "CN=signer"
    assert decision.issuer == "CN=Test CA"
    assert decision.serial == leaf.serial_number
    assert decision.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()


def test_anchor_itself_is_trusted() -> None:
    selfsigned, _ = make_cert("standalone signer")
    assert TrustPolicy(anchors=[selfsigned]).evaluate(selfsigned).status is TrustStatus.TRUSTED


def test_unknown_ca_is_untrusted(ca: Issuer) -> None:
    other_ca = make_cert("Other CA", ca=True)
    leaf, _ = make_cert("signer", issuer=other_ca)
    decision = TrustPolicy(anchors=[ca[0]]).evaluate(leaf)
    assert decision.status is TrustStatus.UNTRUSTED
    assert decision.role is None


def test_impostor_ca_with_the_anchors_name_is_untrusted(
    ca: Issuer,
) -> None:
    impostor = make_cert("Test CA", ca=True)  # same subject as the anchor, different key
    leaf, _ = make_cert("signer", issuer=impostor)
    decision = TrustPolicy(anchors=[ca[0]]).evaluate(leaf)
    assert decision.status is TrustStatus.UNTRUSTED
    assert "signature" in decision.reason


def test_anchor_without_ca_flag_cannot_issue() -> None:
    not_a_ca = make_cert("plain signer", ca=False)
    leaf, _ = make_cert("signer", issuer=not_a_ca)
    assert TrustPolicy(anchors=[not_a_ca[0]]).evaluate(leaf).status is TrustStatus.UNTRUSTED
    ca_without_cert_sign = make_cert("CA no certsign", ca=True, key_cert_sign=False)
    leaf2, _ = make_cert("signer", issuer=ca_without_cert_sign)
    assert TrustPolicy(anchors=[ca_without_cert_sign[0]]).evaluate(leaf2).status is TrustStatus.UNTRUSTED


def test_expired_and_not_yet_valid(ca: Issuer) -> None:
    policy = TrustPolicy(anchors=[ca[0]])
    expired, _ = make_cert("old", issuer=ca, not_before=NOW - 5 * DAY, not_after=NOW - 2 * DAY)
    future, _ = make_cert("new", issuer=ca, not_before=NOW + 2 * DAY, not_after=NOW + 5 * DAY)
    assert policy.evaluate(expired).status is TrustStatus.EXPIRED
    assert policy.evaluate(future).status is TrustStatus.NOT_YET_VALID
    # ``at`` moves the clock: the expired certificate was fine three days ago.
    assert policy.evaluate(expired, at=NOW - 3 * DAY).status is TrustStatus.TRUSTED
    assert policy.evaluate(expired, at=(NOW - 3 * DAY).replace(tzinfo=None)).status is TrustStatus.TRUSTED


def test_expired_anchor_certificate_itself() -> None:
    old, _ = make_cert("old standalone", not_before=NOW - 5 * DAY, not_after=NOW - DAY)
    assert TrustPolicy(anchors=[old]).evaluate(old).status is TrustStatus.EXPIRED


def test_revoked_by_serial_and_by_fingerprint(ca: Issuer) -> None:
    leaf, _ = make_cert("signer", issuer=ca)
    other, _ = make_cert("other", issuer=ca)
    by_serial = TrustPolicy(anchors=[ca[0]], revoked_serials=[("CN=Test CA", leaf.serial_number)])
    assert by_serial.evaluate(leaf).status is TrustStatus.REVOKED
    assert by_serial.evaluate(other).status is TrustStatus.TRUSTED
    by_fingerprint = TrustPolicy(anchors=[ca[0]], revoked_fingerprints=[fingerprint_sha256(leaf).upper()])
    assert by_fingerprint.evaluate(leaf).status is TrustStatus.REVOKED
    assert by_fingerprint.evaluate(other).status is TrustStatus.TRUSTED


def test_revoked_beats_expired(ca: Issuer) -> None:
    expired, _ = make_cert("old", issuer=ca, not_before=NOW - 5 * DAY, not_after=NOW - 2 * DAY)
    policy = TrustPolicy(anchors=[ca[0]], revoked_fingerprints=[fingerprint_sha256(expired)])
    assert policy.evaluate(expired).status is TrustStatus.REVOKED


def test_revoked_anchor_revokes_what_it_issued(ca: Issuer) -> None:
    leaf, _ = make_cert("signer", issuer=ca)
    policy = TrustPolicy(anchors=[ca[0]], revoked_fingerprints=[fingerprint_sha256(ca[0])])
    assert policy.evaluate(leaf).status is TrustStatus.REVOKED


def test_empty_anchors_is_an_error() -> None:
    with pytest.raises(TrustPolicyError, match="at least one trust anchor"):
        TrustPolicy(anchors=[])
    with pytest.raises(TrustPolicyError):
        TrustPolicy(anchors=[b"not a certificate"])  # type: ignore[list-item]
    assert issubclass(TrustPolicyError, ProvenanceError)


def test_decision_has_no_truth_value(ca: Issuer) -> None:
    decision = TrustPolicy(anchors=[ca[0]]).evaluate(ca[0])
    assert isinstance(decision, TrustDecision)
    with pytest.raises(TypeError, match="status"):
        bool(decision)
    with pytest.raises(TypeError):
        if decision:  # the mistake this guards against
            pass
    with pytest.raises(AttributeError):
        decision.status = TrustStatus.REVOKED  # type: ignore[misc]


def test_unsafe_trust_everything_warns(caplog: pytest.LogCaptureFixture) -> None:
    stranger, _ = make_cert("stranger", not_before=NOW - 5 * DAY, not_after=NOW - DAY)
    with caplog.at_level(logging.WARNING, logger="provenance.trust"):
        policy = TrustPolicy.unsafe_trust_everything()
    assert any("UNSAFE" in record.getMessage() for record in caplog.records)
    assert policy.trusts_everything
    assert policy.evaluate(stranger).status is TrustStatus.TRUSTED
    assert "UNSAFE" in policy.evaluate(stranger).reason


def test_from_pem_files(tmp_path: Path, ca: Issuer) -> None:
    standalone, _ = make_cert("standalone")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(
        ca[0].public_bytes(serialization.Encoding.PEM) + standalone.public_bytes(serialization.Encoding.PEM)
    )
    der = tmp_path / "ca.der"
    der.write_bytes(ca[0].public_bytes(serialization.Encoding.DER))
    policy = TrustPolicy.from_pem_files([bundle])
    assert len(policy.anchors) == 2
    leaf, _ = make_cert("signer", issuer=ca)
    assert policy.evaluate(leaf).status is TrustStatus.TRUSTED
    assert policy.evaluate(standalone).status is TrustStatus.TRUSTED
    assert TrustPolicy.from_pem_files([der]).evaluate(leaf).status is TrustStatus.TRUSTED
    revoking = TrustPolicy.from_pem_files([bundle], revoked_serials=[("CN=Test CA", leaf.serial_number)])
    assert revoking.evaluate(leaf).status is TrustStatus.REVOKED


def test_from_pem_files_errors(tmp_path: Path) -> None:
    with pytest.raises(TrustPolicyError, match="cannot read"):
        TrustPolicy.from_pem_files([tmp_path / "missing.pem"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(TrustPolicyError, match=r"garbage\.pem"):
        TrustPolicy.from_pem_files([garbage])
    with pytest.raises(TrustPolicyError):
        TrustPolicy.from_pem_files([])
