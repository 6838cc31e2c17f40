"""C2PA Content Credentials in JPEG, PNG and TIFF images (read with c2pa-python): who made the image and how.

Many commercial image generators embed a C2PA manifest in what they write. Its claim is signed (COSE, X.509) and
bound to the image's bytes by a hash (the *hard binding*); its actions say how the image came about, with an IPTC
digital source type such as ``trainedAlgorithmicMedia`` (made by a generative model) or ``digitalCapture``.

:func:`read_credentials` gives ``None`` when the image carries no manifest, else a :class:`ContentCredentials`
whose :class:`CredentialsStatus` says whether the manifest holds:

* ``VALID``: the claim signature verifies and every hash binding matches (the signer may still be on no trust list
  of ours: ``signer_trusted`` says, and :attr:`ContentCredentials.problems` names why);
* ``INVALID``: the claim signature or a hard binding fails: the image or its manifest was changed after signing;
* ``MALFORMED``: a manifest is there but cannot be parsed.

Nothing is fetched: remote manifests and OCSP responders are not contacted.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from provenance.errors import ProvenanceError

__all__ = [
    "SYNTHETIC_SOURCE_TYPES",
    "ContentCredentials",
    "CredentialsError",
    "CredentialsStatus",
    "read_credentials",
]

#: IPTC digital source types that declare an image made (wholly or partly) by a trained generative model.
SYNTHETIC_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "tiff": "image/tiff"}
#: Validation codes that say the signed claim no longer matches the bytes (signature or a hash binding).
_INTEGRITY_FAILURES = ("claimSignature.", "assertion.dataHash.", "assertion.boxesHash.", "assertion.bmffHash.",
                       "assertion.hashedURI.", "assertion.collectionHash.", "manifest.", "claim.")  # fmt: skip
_CREDENTIAL_CODES = ("signingCredential.", "timeStamp.")
#: No network: settings of the c2pa SDK (remote manifests, OCSP).
_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}


class CredentialsError(ProvenanceError):
    """The c2pa library is missing or failed in a way that says nothing about the image."""


class CredentialsStatus(enum.StrEnum):
    VALID = "VALID"
    INVALID = "INVALID"
    MALFORMED = "MALFORMED"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContentCredentials:
    """The active C2PA manifest of an image and what its validation found.

    ``claim_generator`` is the software that wrote the manifest (name and version); ``source_types`` the IPTC
    digital source types its actions declare (the last path part of the IPTC URI); ``signer`` and ``issuer`` the
    signing certificate's common name and organisation; ``problems`` the validation failures, code and explanation.
    """

    status: CredentialsStatus
    claim_generator: str | None = None
    source_types: tuple[str, ...] = ()
    signer: str | None = None
    issuer: str | None = None
    signer_trusted: bool = False
    title: str | None = None
    problems: tuple[str, ...] = ()
    error: str | None = None

    def __bool__(self) -> bool:
        raise TypeError("ContentCredentials has no truth value; compare its .status")

    @property
    def declares_synthetic(self) -> bool:
        """An intact manifest whose actions declare a generative model made the image."""
        return self.status is CredentialsStatus.VALID and bool(SYNTHETIC_SOURCE_TYPES & set(self.source_types))

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "claim_generator": self.claim_generator,
            "digital_source_types": list(self.source_types),
            "signer": self.signer,
            "issuer": self.issuer,
            "signer_trusted": self.signer_trusted,
            "title": self.title,
            "problems": list(self.problems),
            "error": self.error,
        }


def read_credentials(data: bytes, image_format: str) -> ContentCredentials | None:
    """The C2PA Content Credentials embedded in ``data`` (a ``jpeg``, ``png`` or ``tiff`` image), None if it has
    none. A damaged manifest is a :class:`ContentCredentials` with status ``MALFORMED``, never an exception."""
    mime = _MIME.get(image_format)
    if mime is None:
        raise ValueError(f"no C2PA reader for {image_format!r} images")
    if b"c2pa" not in data:  # every embedded manifest store is a JUMBF box labelled "c2pa": skip the library
        return None
    try:
        import c2pa
    except ImportError as exc:  # a core dependency; a broken install is said, not hidden
        raise CredentialsError(f"c2pa-python is not importable ({exc}): pip install c2pa-python") from None
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, _context(c2pa))
        if reader is None:
            return None
        with reader:
            store = json.loads(reader.json())
    except Exception as exc:  # noqa: BLE001 - the SDK's errors (and a damaged store's JSON): the manifest is unusable
        return ContentCredentials(status=CredentialsStatus.MALFORMED, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return _from_store(store)


_CONTEXTS: dict[int, Any] = {}


def _context(c2pa: Any) -> Any:
    """The SDK context with :data:`_SETTINGS`, made once per process (a forked worker makes its own: the SDK's
    native handles are not shared across a fork)."""
    pid = os.getpid()
    if pid not in _CONTEXTS:
        _CONTEXTS[pid] = c2pa.Context.from_dict(_SETTINGS)
    return _CONTEXTS[pid]


def _from_store(store: Mapping[str, Any]) -> ContentCredentials:
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "") or {}
    statuses = [s for s in store.get("validation_status") or [] if isinstance(s, Mapping)]
    codes = [str(s.get("code", "")) for s in statuses]
    problems = tuple(f"{s.get('code')}: {s.get('explanation', '')}".strip(": ") for s in statuses)
    broken = any(code.startswith(_INTEGRITY_FAILURES) for code in codes)
    invalid_state = str(store.get("validation_state") or "").lower() == "invalid"
    credential_only = all(code.startswith(_CREDENTIAL_CODES) for code in codes)
    status = CredentialsStatus.INVALID if broken or (invalid_state and not credential_only) else CredentialsStatus.VALID
    if not active:
        status = CredentialsStatus.MALFORMED if not broken else status
    signature = active.get("signature_info") or {}
    return ContentCredentials(
        status=status,
        claim_generator=_generator(active),
        source_types=_source_types(active),
        signer=_text(signature.get("common_name")),
        issuer=_text(signature.get("issuer")),
        signer_trusted=str(store.get("validation_state") or "").lower() == "trusted",
        title=_text(active.get("title")),
        problems=problems,
        error=None if active else "no active manifest in the manifest store",
    )


def _text(value: Any) -> str | None:
    return str(value)[:200] if value not in (None, "") else None


def _generator(manifest: Mapping[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], Mapping) and info[0].get("name"):
        first = info[0]
        return _text(f"{first['name']} {first.get('version') or ''}".strip())
    return _text(manifest.get("claim_generator"))


def _source_types(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The digital source types of the manifest's actions (and of a top-level field, which older SDKs wrote)."""
    found: list[str] = []
    uris: list[Any] = [manifest.get("digital_source_type")]
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, Mapping) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") or {}
        for action in data.get("actions") or [] if isinstance(data, Mapping) else []:
            if isinstance(action, Mapping):
                uris.append(action.get("digitalSourceType"))
    for uri in uris:
        if isinstance(uri, str) and uri:
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            if name not in found:
                found.append(name)
    return tuple(found)
