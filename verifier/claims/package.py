"""Evidence packages: the report, every finding as JSON, a thumbnail and the SHA-256 of every image (and, asked
for, the images themselves), signed with the audit key.

A package is a ZIP file::

    report.html                  the self-contained HTML report
    findings.json                the whole audit (claims, findings, per-file results) as JSON
    thumbnails/<claim>/<n>-<file>.png   what each image shows (8-bit, at most 256 pixels a side); an image
                     of a PDF is named by its page (``<n>-report.pdf_page_2_image_1.png``)
    images/<claim>/<n>-<file>    the audited file itself, byte for byte (``include_images=True`` only; a PDF
                     once, however many of its images were audited)
    MANIFEST.json    format, creation time, the SHA-256 of every entry above and of every audited image and of
                     the file it came from (for an image of a PDF: the image's and the PDF's, with the page), and
                     which entries belong to which image
    MANIFEST.sig     the audit key's signature over the exact bytes of MANIFEST.json, and its certificate

An image is put in the package only when its bytes still have the SHA-256 the audit found; one that changed
since (or went away) is left out and said so.

The signature is made like the audit log's checkpoints (:mod:`verifier.audit.checkpoint`: ECDSA/RSA with
SHA-256, or Ed25519). :func:`verify_package` checks that the signature matches, that the signer is trusted for
audit signatures (the checker's trust, never the package's), and that every entry is present, unchanged and
listed, with nothing added.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from verifier.audit.checkpoint import (
    CheckpointSigner,
    TrustedCertificates,
    _sign,
    _signature_ok,
    certificate_fingerprint,
    is_trusted,
)
from verifier.claims.models import ClaimAudit
from verifier.errors import InputError

__all__ = ["PackageStatus", "PackageVerification", "WrittenPackage", "verify_package", "write_package"]

PACKAGE_FORMAT = "medverify-claims-package/v1"
SIGNATURE_FORMAT = "medverify-claims-package-signature/v1"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
#: Refuse packages whose entries would unpack to more than this (a bound on memory when checking).
MAX_PACKAGE_BYTES = 2 * 1024**3


class PackageStatus(enum.StrEnum):
    VALID = "VALID"
    #: Something in the package was changed, added or removed, or the signature does not match.
    INVALID = "INVALID"
    #: The package is intact, but its signer is not trusted for audit signatures here.
    UNTRUSTED = "UNTRUSTED"
    MALFORMED = "MALFORMED"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackageVerification:
    """What checking a package found; ``status`` is ``VALID`` only if every check passed."""

    status: PackageStatus
    problems: tuple[str, ...] = ()
    signer: str | None = None
    signer_sha256: str | None = None
    created: str | None = None
    entries: int = 0
    audited_files: int = 0

    def __bool__(self) -> bool:
        raise TypeError("a PackageVerification has no truth value; compare .status")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"status": self.status.value, "problems": list(self.problems)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class WrittenPackage:
    """What :func:`write_package` wrote: where, how many entries the manifest lists (as `verify-package` counts
    them), and the images it could not include, and why."""

    path: Path
    entries: int
    problems: tuple[str, ...] = ()


def _entry_name(claim_id: str, n: int, path: str) -> str:
    """A safe ZIP entry stem for the ``n``-th image of ``claim_id`` (no folders, no dots at the start)."""
    return f"{_safe(claim_id)}/{n:03d}-{_safe(Path(path).name)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "_"


def _thumbnail_png(image: Any) -> bytes | None:
    if image is None:
        return None
    import cv2

    ok, buf = cv2.imencode(".png", image)
    return bytes(buf.tobytes()) if ok else None


def write_package(
    path: Path, audit: ClaimAudit, report_html: str, signer: CheckpointSigner, *, include_images: bool = False
) -> WrittenPackage:
    """Write the signed evidence package of ``audit`` to ``path`` (atomically): with every image's thumbnail, and
    with the image files themselves when ``include_images``."""
    findings = json.dumps(audit.to_dict(), indent=2, sort_keys=True, default=str).encode("utf-8")
    report = report_html.encode("utf-8")
    contents: dict[str, bytes] = {"report.html": report, "findings.json": findings}
    audited: list[dict[str, Any]] = []
    problems: list[str] = []
    included: dict[str, str] = {}  # file on disk -> its entry (a PDF with several images is included once)
    for c in audit.claims:
        for n, f in enumerate(c.files, 1):
            stem = _entry_name(c.claim_id, n, f.path)
            while f"thumbnails/{stem}.png" in contents or f"images/{stem}" in contents:  # ids equal once made safe
                stem += "_"
            # ``path`` is the image's label (an image of a PDF: ``report.pdf#page=2&image=1``), ``file`` the file
            # on disk and ``file_sha256`` its digest (for a PDF image: the PDF's), ``sha256`` the image's own.
            row: dict[str, Any] = {"claim_id": f.claim_id, "path": f.path, "sha256": f.result.sha256,
                                   "file": f.result.path, "file_sha256": f.result.file_sha256,
                                   "audit_record": f.record_id, "thumbnail": None, "image": None}  # fmt: skip
            if f.result.source is not None:
                row["export"] = f.result.source.to_dict()
            thumb = _thumbnail_png(f.thumbnail)
            if thumb is not None:
                row["thumbnail"] = f"thumbnails/{stem}.png"
                contents[row["thumbnail"]] = thumb
            if include_images and f.result.path in included:
                row["image"] = included[f.result.path]
            elif include_images:
                try:
                    data = Path(f.result.path).read_bytes()
                except OSError as exc:
                    problems.append(f"{f.path}: not included, cannot read it now ({exc.strerror})")
                else:
                    if f.result.file_sha256 is not None and _sha256(data) == f.result.file_sha256:
                        row["image"] = included[f.result.path] = f"images/{_entry_name(c.claim_id, n, f.result.path)}"
                        contents[row["image"]] = data
                    else:
                        problems.append(f"{f.path}: not included, it changed since it was audited")
            audited.append(row)
    manifest = {
        "format": PACKAGE_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "entries": {name: _sha256(data) for name, data in contents.items()},
        "audited_files": audited,
        "claims": {c.claim_id: {"severity": c.severity.value, "audit_record": c.record_id} for c in audit.claims},
        "images_included": include_images,
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    signature = {
        "format": SIGNATURE_FORMAT,
        "signed": MANIFEST,
        "signature": base64.b64encode(_sign(signer.private_key, manifest_bytes)).decode("ascii"),
        "certificate_pem": signer.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "certificate_sha256": certificate_fingerprint(signer.certificate),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in contents.items():
                zf.writestr(name, data)
            zf.writestr(MANIFEST, manifest_bytes)
            zf.writestr(SIGNATURE, json.dumps(signature, indent=2).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return WrittenPackage(path=path, entries=len(contents), problems=tuple(problems))


def verify_package(path: Path, *, trusted: TrustedCertificates) -> PackageVerification:
    """Check the package at ``path`` against ``trusted`` (pinned certificates or a trust callable)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read package {path}: {exc.strerror}") from exc
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return PackageVerification(status=PackageStatus.MALFORMED, problems=(f"{path} is not a ZIP file",))
    with zf:
        infos = zf.infolist()
        if sum(i.file_size for i in infos) > MAX_PACKAGE_BYTES:
            return PackageVerification(status=PackageStatus.MALFORMED, problems=("the package is too large",))
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            return PackageVerification(status=PackageStatus.INVALID, problems=("an entry name occurs twice",))
        if MANIFEST not in names or SIGNATURE not in names:
            return PackageVerification(
                status=PackageStatus.MALFORMED, problems=(f"{MANIFEST} or {SIGNATURE} is missing",)
            )
        try:
            contents = {name: zf.read(name) for name in names}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:  # CRC errors are BadZipFile
            return PackageVerification(status=PackageStatus.INVALID, problems=(f"damaged entry: {exc}",))
    return _check(contents, trusted)


def _check(contents: dict[str, bytes], trusted: TrustedCertificates) -> PackageVerification:
    try:
        manifest = json.loads(contents[MANIFEST])
        sig = json.loads(contents[SIGNATURE])
        if manifest.get("format") != PACKAGE_FORMAT or sig.get("format") != SIGNATURE_FORMAT:
            raise ValueError("unknown package format")
        cert = x509.load_pem_x509_certificate(str(sig["certificate_pem"]).encode("ascii"))
        signature = base64.b64decode(str(sig["signature"]), validate=True)
        entries: dict[str, str] = dict(manifest["entries"])
        created = str(manifest.get("created", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return PackageVerification(status=PackageStatus.MALFORMED, problems=(f"not a medverify package: {exc}",))
    signer = cert.subject.rfc4514_string()
    fingerprint = certificate_fingerprint(cert)
    base = PackageVerification(
        status=PackageStatus.VALID,
        signer=signer,
        signer_sha256=fingerprint,
        created=created,
        entries=len(entries),
        audited_files=len(manifest.get("audited_files") or []),
    )
    problems: list[str] = []
    if not _signature_ok(cert, contents[MANIFEST], signature):
        problems.append(f"the signature over {MANIFEST} does not match (the manifest or signature was changed)")
    for name, digest in sorted(entries.items()):
        if name not in contents:
            problems.append(f"{name} is listed but missing")
        elif _sha256(contents[name]) != digest:
            problems.append(f"{name} was changed (SHA-256 {_sha256(contents[name])[:16]}…, listed {digest[:16]}…)")
    for row in manifest.get("audited_files") or []:
        image = row.get("image") if isinstance(row, dict) else None
        if image and entries.get(image) != row.get("file_sha256", row.get("sha256")):
            problems.append(f"{image} is not the image that was audited (its SHA-256 differs from the audit's)")
    extra = sorted(set(contents) - set(entries) - {MANIFEST, SIGNATURE})
    problems += [f"{name} was added (not in the manifest)" for name in extra]
    if problems:
        return dataclasses.replace(base, status=PackageStatus.INVALID, problems=tuple(problems))
    try:
        signed_at = dt.datetime.fromisoformat(created) if created else dt.datetime.now(dt.UTC)
    except ValueError:
        signed_at = dt.datetime.now(dt.UTC)
    if not is_trusted(cert, signed_at, trusted):
        return dataclasses.replace(
            base,
            status=PackageStatus.UNTRUSTED,
            problems=(f"the signer {signer} (certificate SHA-256 {fingerprint[:16]}…) is not trusted for audit",),
        )
    return base


def package_members(path: Path) -> Sequence[str]:
    """Names of the entries of the package at ``path`` (for messages and tests)."""
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()
