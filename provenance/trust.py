"""Trust decisions about X.509 signer certificates.

A :class:`TrustPolicy` names the trust anchors (CA certificates, or individual signer certificates trusted as
they are) and what has been revoked. :meth:`TrustPolicy.evaluate` answers with a frozen :class:`TrustDecision`
whose :class:`TrustStatus` says why; a decision cannot be used as a bool, so no caller can write
``if policy.evaluate(cert):`` and mistake an expired or revoked signer for a trusted one.

Only chains of length one are followed (anchor -> signer), which is what medverify's local CA issues.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from provenance._internal.roles import KeyRole, role_of_certificate
from provenance.errors import TrustPolicyError

__all__ = ["TrustDecision", "TrustPolicy", "TrustStatus", "fingerprint_sha256", "load_certificates"]

_log = logging.getLogger(__name__)


class TrustStatus(enum.StrEnum):
    """The outcome of evaluating a certificate against a trust policy."""

    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


@dataclass(frozen=True)
class TrustDecision:
    """Why a certificate is, or is not, trusted. Compare :attr:`status`; never test the decision itself."""

    status: TrustStatus
    subject: str
    issuer: str
    role: KeyRole | None
    serial: int
    fingerprint_sha256: str
    reason: str

    def __bool__(self) -> bool:
        raise TypeError("a TrustDecision has no truth value; compare .status with TrustStatus.TRUSTED instead")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of ``cert``'s DER encoding, as lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse one or more PEM certificates, or one DER certificate; :class:`TrustPolicyError` if none."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise TrustPolicyError(f"not a PEM or DER X.509 certificate: {exc}") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not constraints.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return usage.key_cert_sign


class TrustPolicy:
    """Which certificates medverify trusts as signers.

    ``anchors`` are CA certificates (which must have ``CA:TRUE`` and, if they carry key usage,
    ``keyCertSign``) and signer certificates trusted directly. ``revoked_serials`` holds
    ``(issuer as RFC 4514 string, serial)`` pairs, ``revoked_fingerprints`` SHA-256 fingerprints in hex;
    both apply to anchors as well.
    """

    def __init__(
        self,
        *,
        anchors: Sequence[x509.Certificate],
        revoked_serials: Iterable[tuple[str, int]] = (),
        revoked_fingerprints: Iterable[str] = (),
    ) -> None:
        anchors = list(anchors)
        if not anchors:
            raise TrustPolicyError(
                "a trust policy needs at least one trust anchor; "
                "use TrustPolicy.unsafe_trust_everything() only for research"
            )
        for anchor in anchors:
            if not isinstance(anchor, x509.Certificate):
                raise TrustPolicyError(f"trust anchors must be x509.Certificate objects, not {type(anchor).__name__}")
        self._init(anchors, revoked_serials, revoked_fingerprints, trust_everything=False)

    def _init(
        self,
        anchors: list[x509.Certificate],
        revoked_serials: Iterable[tuple[str, int]],
        revoked_fingerprints: Iterable[str],
        *,
        trust_everything: bool,
    ) -> None:
        self._anchors = {fingerprint_sha256(a): a for a in anchors}
        self._revoked_serials = frozenset((str(issuer), int(serial)) for issuer, serial in revoked_serials)
        self._revoked_fingerprints = frozenset(fp.strip().lower().replace(":", "") for fp in revoked_fingerprints)
        self._trust_everything = trust_everything
        #: (certificate fingerprint, issuer fingerprint) -> None if the issuer's key verifies the certificate's
        #: signature, else why not. Archives hold thousands of files signed by one key: the public-key check is
        #: done once per certificate, the time-dependent checks every time.
        self._issued_by: dict[tuple[str, str], str | None] = {}
        #: certificate fingerprint -> (subject, issuer as RFC 4514 strings, role, anchors named as its issuer):
        #: what a decision says of a certificate, which does not depend on the time of the check.
        self._described: dict[str, tuple[str, str, KeyRole | None, tuple[x509.Certificate, ...]]] = {}
        self._plans: dict[str, tuple[TrustStatus, str, tuple[tuple[datetime, datetime, str], ...]]] = {}

    def _describe(
        self, certificate: x509.Certificate, fingerprint: str
    ) -> tuple[str, str, KeyRole | None, tuple[x509.Certificate, ...]]:
        found = self._described.get(fingerprint)
        if found is None:
            issuers = tuple(a for a in self._anchors.values() if a.subject == certificate.issuer)
            found = (certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string(),
                     role_of_certificate(certificate), issuers)  # fmt: skip
            if len(self._described) >= 4096:
                self._described.clear()
            self._described[fingerprint] = found
        return found

    @classmethod
    def unsafe_trust_everything(cls) -> TrustPolicy:
        """A policy under which every well-formed certificate is TRUSTED. Research only: it proves nothing."""
        _log.warning("UNSAFE trust policy in use: every certificate is trusted, signatures prove nothing")
        policy = cls.__new__(cls)
        policy._init([], (), (), trust_everything=True)
        return policy

    @classmethod
    def from_pem_files(
        cls,
        paths: Sequence[Path],
        *,
        revoked_serials: Iterable[tuple[str, int]] = (),
        revoked_fingerprints: Iterable[str] = (),
    ) -> TrustPolicy:
        """A policy whose anchors are every certificate in the PEM (or DER) files ``paths``."""
        anchors: list[x509.Certificate] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise TrustPolicyError(f"cannot read trust anchor file {path}: {exc.strerror}") from exc
            try:
                anchors.extend(load_certificates(data))
            except TrustPolicyError as exc:
                raise TrustPolicyError(f"{path}: {exc}") from exc
        return cls(anchors=anchors, revoked_serials=revoked_serials, revoked_fingerprints=revoked_fingerprints)

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        """The trust anchors (empty only for the unsafe trust-everything policy)."""
        return tuple(self._anchors.values())

    @property
    def trusts_everything(self) -> bool:
        """True for the policy made by :meth:`unsafe_trust_everything`."""
        return self._trust_everything

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` is on this policy's revocation lists (by issuer and serial, or by fingerprint)."""
        fingerprint = fingerprint_sha256(cert)
        return self._is_revoked(cert, fingerprint, self._describe(cert, fingerprint)[1])

    def _is_revoked(self, cert: x509.Certificate, fingerprint: str, issuer: str) -> bool:
        return fingerprint in self._revoked_fingerprints or (issuer, cert.serial_number) in self._revoked_serials

    def evaluate(
        self, certificate: x509.Certificate, *, at: datetime | None = None, fingerprint: str | None = None
    ) -> TrustDecision:
        """Decide whether ``certificate`` is a trusted signer at time ``at`` (default now; naive means UTC).

        REVOKED beats everything; a certificate that does not chain to an anchor is UNTRUSTED; a chained one
        outside its validity period (or issued by an anchor outside its own) is EXPIRED or NOT_YET_VALID;
        otherwise it is TRUSTED. ``fingerprint`` is the certificate's SHA-256 fingerprint when the caller has it.
        """
        if at is None:
            at = datetime.now(UTC)
        elif at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        if fingerprint is None:
            fingerprint = fingerprint_sha256(certificate)
        subject, issuer_name, role, issuers = self._describe(certificate, fingerprint)
        # Everything but the validity periods depends on the certificate alone: decided once per certificate (an
        # archive holds thousands of files signed by the same few keys), the periods compared at every call.
        plan = self._plans.get(fingerprint)
        if plan is None:
            plan = self._plan(certificate, fingerprint, issuer_name, issuers)
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[fingerprint] = plan
        status, reason, periods = plan
        for not_before, not_after, what in periods:
            if at < not_before:
                status, reason = TrustStatus.NOT_YET_VALID, f"{what} is not valid before {not_before.isoformat()}"
                break
            if at > not_after:
                status, reason = TrustStatus.EXPIRED, f"{what} expired at {not_after.isoformat()}"
                break
        return TrustDecision(
            status=status,
            subject=subject,
            issuer=issuer_name,
            role=role,
            serial=certificate.serial_number,
            fingerprint_sha256=fingerprint,
            reason=reason,
        )

    def _plan(
        self, certificate: x509.Certificate, fingerprint: str, issuer_name: str, issuers: tuple[x509.Certificate, ...]
    ) -> tuple[TrustStatus, str, tuple[tuple[datetime, datetime, str], ...]]:
        """The decision for ``certificate`` apart from time: a status and reason, and the validity periods (with
        what they belong to) that turn TRUSTED into NOT_YET_VALID or EXPIRED, checked in order."""

        def period(cert: x509.Certificate, what: str) -> tuple[datetime, datetime, str]:
            return cert.not_valid_before_utc, cert.not_valid_after_utc, what

        if self._trust_everything:
            return TrustStatus.TRUSTED, "UNSAFE policy: every certificate is trusted", ()
        if self._is_revoked(certificate, fingerprint, issuer_name):
            return TrustStatus.REVOKED, "the certificate has been revoked", ()
        if fingerprint in self._anchors:
            return (TrustStatus.TRUSTED, "the certificate is itself a trust anchor",
                    (period(certificate, "the trusted certificate"),))  # fmt: skip
        if not issuers:
            return TrustStatus.UNTRUSTED, "the certificate is not issued by any trust anchor", ()
        failures: list[str] = []
        for issuer in issuers:
            if not _is_ca(issuer):
                failures.append("the anchor named as issuer is not a CA")
                continue
            failure = self._check_issued_by(certificate, fingerprint, issuer)
            if failure is not None:
                failures.append(failure)
                continue
            if self.is_revoked(issuer):
                return TrustStatus.REVOKED, "the issuing CA has been revoked", ()
            return (TrustStatus.TRUSTED, f"issued by trust anchor {issuer.subject.rfc4514_string()}",
                    (period(certificate, "the certificate"), period(issuer, "the issuing CA certificate")))  # fmt: skip
        return TrustStatus.UNTRUSTED, "an anchor has the issuer's name but " + "; ".join(sorted(set(failures))), ()

    def _check_issued_by(self, certificate: x509.Certificate, fingerprint: str, issuer: x509.Certificate) -> str | None:
        key = (fingerprint, fingerprint_sha256(issuer))
        if key in self._issued_by:
            return self._issued_by[key]
        failure: str | None = None
        try:
            certificate.verify_directly_issued_by(issuer)
        except InvalidSignature:
            failure = "its signature does not verify with the anchor's key"
        except (ValueError, TypeError) as exc:
            failure = f"it cannot be checked against the anchor ({exc})"
        if len(self._issued_by) >= 4096:
            self._issued_by.clear()
        self._issued_by[key] = failure
        return failure

    @property
    def revoked_serials(self) -> frozenset[tuple[str, int]]:
        """Revoked certificates as (issuer RFC 4514 name, serial number)."""
        return self._revoked_serials

    @property
    def revoked_fingerprints(self) -> frozenset[str]:
        """Revoked certificates by SHA-256 fingerprint (hex)."""
        return self._revoked_fingerprints

    def with_extra_anchors(self, anchors: Sequence[x509.Certificate]) -> TrustPolicy:
        """A copy of this policy that also trusts ``anchors``; revocations still apply."""
        if self._trust_everything:
            return self
        return TrustPolicy(
            anchors=[*self._anchors.values(), *anchors],
            revoked_serials=self._revoked_serials,
            revoked_fingerprints=self._revoked_fingerprints,
        )

    def __repr__(self) -> str:
        if self._trust_everything:
            return "TrustPolicy.unsafe_trust_everything()"
        return (
            f"TrustPolicy(anchors={len(self._anchors)}, revoked_serials={len(self._revoked_serials)}, "
            f"revoked_fingerprints={len(self._revoked_fingerprints)})"
        )
