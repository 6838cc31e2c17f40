"""Errors raised by the provenance package.

Every error derives from :class:`ProvenanceError`. Messages never contain key material or passphrases.
"""

from __future__ import annotations

__all__ = [
    "KeyStoreError",
    "PassphraseError",
    "ProvenanceError",
    "SigningError",
    "TrustPolicyError",
]


class ProvenanceError(Exception):
    """Base class of every provenance error."""

    def diagnostics(self) -> str:
        """A human-readable explanation, safe to print (never contains secrets)."""
        return str(self)


class KeyStoreError(ProvenanceError):
    """A key store operation failed (missing key, wrong role, bad file permissions, ...)."""


class PassphraseError(KeyStoreError):
    """No passphrase was available, or it does not decrypt the private key."""


class TrustPolicyError(ProvenanceError):
    """The trust policy is unusable, e.g. it trusts nothing."""


class SigningError(ProvenanceError):
    """A dataset could not be signed."""
