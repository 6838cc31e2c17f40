"""Key roles and how they are recorded in X.509 certificates.

Kept apart from :mod:`provenance.keys` so that :mod:`provenance.trust` can read roles without importing the
key store (which itself builds trust policies).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from cryptography import x509

__all__ = ["ROLE_ARC", "ROLE_OIDS", "KeyRole", "role_of_certificate"]


class KeyRole(enum.StrEnum):
    """What a signing key is for; recorded in its certificate so a verifier can tell signers apart."""

    GENERATOR = "generator"
    ACQUISITION = "acquisition"
    AUDIT = "audit"


#: medverify's private OID arc: a UUID-derived OID (ITU-T X.667, ``2.25.<uuid as integer>``) made once.
ROLE_ARC = "2.25.237496621961271361305978400049329650257"

#: The extended-key-usage OID that marks each role in a certificate.
ROLE_OIDS: Mapping[KeyRole, x509.ObjectIdentifier] = MappingProxyType(
    {
        KeyRole.GENERATOR: x509.ObjectIdentifier(f"{ROLE_ARC}.1"),
        KeyRole.ACQUISITION: x509.ObjectIdentifier(f"{ROLE_ARC}.2"),
        KeyRole.AUDIT: x509.ObjectIdentifier(f"{ROLE_ARC}.3"),
    }
)

_ROLE_BY_OID = {oid: role for role, oid in ROLE_OIDS.items()}


def role_of_certificate(cert: x509.Certificate) -> KeyRole | None:
    """The medverify role recorded in ``cert``'s extended key usage, or ``None`` if it records none.

    A certificate that claims more than one medverify role is treated as having none: roles are exclusive.
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension in an untrusted certificate
        return None
    roles = {_ROLE_BY_OID[oid] for oid in eku if oid in _ROLE_BY_OID}
    if len(roles) != 1:
        return None
    return roles.pop()
