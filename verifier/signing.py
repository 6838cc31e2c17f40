"""Signing files: the use case behind ``medverify sign``.

Each file is signed with a key of the key store, written atomically, checked (the new signature must verify as
VALID under the key store's trust policy) and recorded with one audit record.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from provenance.keys import SigningKey
from provenance.models import MacAlgorithm, SignatureProfile, SignatureStatus
from provenance.signature import sign_dataset
from verifier.checker import Checker
from verifier.errors import InputError, MedverifyError
from verifier.instance import Instance

if TYPE_CHECKING:  # SQLAlchemy is imported only when a record is written
    from verifier.audit import AuditLog

__all__ = ["SignatureNotVerifiedError", "SignedFile", "sign_file", "sign_targets"]


class SignatureNotVerifiedError(MedverifyError):
    """The file was signed and written, but its new signature does not verify."""

    def __init__(self, target: Path, reasons: tuple[str, ...]) -> None:
        super().__init__(f"the signature of {target} does not verify: {'; '.join(reasons)}")
        self.target = target
        self.reasons = reasons


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedFile:
    """A signed and recorded file."""

    source: Path
    target: Path
    signature_uid: str
    #: How many elements the signature covers.
    covered: int
    audit_id: int
    #: Whether a pixel binding (a signed digest of the decoded pixels, with its own signature) was made.
    pixel_binding: bool = False


def sign_targets(files: Sequence[Path], *, output: Path | None, in_place: bool) -> list[tuple[Path, Path]]:
    """(source, target) of each file: itself with ``in_place``, else ``output`` (one file) or a file in the
    ``output`` directory (several)."""
    if (output is None) == (not in_place):
        raise InputError("give exactly one of -o/--output and --in-place")
    if in_place or output is None:
        return [(f, f) for f in files]
    if len(files) == 1 and not output.is_dir():
        return [(files[0], output)]
    if output.exists() and not output.is_dir():
        raise InputError(f"{output} is not a directory (several inputs need an output directory)")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise InputError("several inputs share a file name; sign them into separate directories")
    return [(f, output / f.name) for f in files]


def sign_file(
    source: Path,
    target: Path,
    *,
    signer: SigningKey,
    profile: SignatureProfile,
    mac: MacAlgorithm,
    checker: Checker,
    log: AuditLog,
    bind_pixels: bool = True,
) -> SignedFile:
    """Sign ``source`` into ``target``, check the new signature with ``checker`` and record it in ``log``.

    Raises :class:`~verifier.instance.UnreadableInstanceError` or :class:`~provenance.errors.SigningError` when
    the file cannot be signed (nothing is written), :class:`SignatureNotVerifiedError` when the written file's
    signature does not verify (nothing is recorded).
    """
    from verifier.audit import AuditEntry, Channel, EventKind

    ds = Instance.from_path(source).dataset
    uid = sign_dataset(ds, signer, profile=profile, mac=mac, bind_pixels=bind_pixels)
    _write_atomic(ds.save_as, target)
    check = checker.check(target)
    signatures = check.signature.signatures if check.signature is not None else ()
    mine = [s for s in signatures if s.uid == uid]
    if not mine or mine[0].status is not SignatureStatus.VALID:
        raise SignatureNotVerifiedError(target, check.reasons)
    # The binding signature comes right after the full one; it must verify too.
    binding = [s for s in signatures[signatures.index(mine[0]) + 1 :] if s.pixel_binding][:1]
    if binding and binding[0].status is not SignatureStatus.VALID:
        raise SignatureNotVerifiedError(target, check.reasons)
    record = log.append(
        AuditEntry(
            event=EventKind.SIGN,
            channel=Channel.CLI,
            path=str(target),
            sop_instance_uid=check.sop_instance_uid,
            file_sha256=check.sha256,
            signature_report=check.signature.to_dict() if check.signature is not None else None,
            verdict=check.status,
            details={
                "source": str(source),
                "key": signer.name,
                "profile": profile.value,
                "mac": mac.value,
                "signature_uid": uid,
                "pixel_binding_signature_uid": binding[0].uid if binding else None,
            },
        ).with_local_actor()
    )
    return SignedFile(
        source=source,
        target=target,
        signature_uid=uid,
        covered=len(mine[0].covered),
        audit_id=record.id,
        pixel_binding=bool(binding),
    )


def _write_atomic(ds_writer: Callable[[Path], None], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds_writer(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
