"""Which files make up which claim: one subfolder per claim, or a CSV manifest with what each claim says."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

from verifier.claims.headers import parse_da
from verifier.claims.models import ClaimInfo
from verifier.errors import InputError
from verifier.instance import iter_input_files

__all__ = ["load_claims"]

_MANIFEST_ALIASES = {
    "claim": "claim_id",
    "claim_id": "claim_id",
    "file": "file",
    "path": "file",
    "patient_id": "patient_id",
    "patient": "patient_id",
    "patient_name": "patient_name",
    "patient_sex": "patient_sex",
    "sex": "patient_sex",
    "patient_birth_date": "patient_birth_date",
    "birth_date": "patient_birth_date",
    "claim_date": "claim_date",
    "date": "claim_date",
    "service_date": "claim_date",
    "body_part": "body_part",
}
_CLAIM_FIELDS = ("patient_id", "patient_name", "patient_sex", "patient_birth_date", "claim_date", "body_part")


def load_claims(root: Path, manifest: Path | None = None, *, follow_symlinks: bool = False) -> list[ClaimInfo]:
    """The claims under ``root``: one per subfolder, or as ``manifest`` (CSV) maps claims to files.

    The manifest's columns (header row, case-insensitive): ``claim_id`` and ``file`` (relative to ``root``), and
    optionally ``patient_id``, ``patient_name``, ``patient_sex``, ``patient_birth_date``, ``claim_date`` and
    ``body_part``. A file path must stay inside ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    if manifest is None:
        claims = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = tuple(iter_input_files([sub], follow_symlinks=follow_symlinks, exports=True))
            claims.append(ClaimInfo(claim_id=sub.name, files=files))
        if not claims:
            raise InputError(f"{root} has no claim subfolders (or give --manifest claims.csv)")
        return claims
    return _read_manifest(root, manifest)


def _read_manifest(root: Path, manifest: Path) -> list[ClaimInfo]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read manifest {manifest}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"manifest {manifest} is not UTF-8 text") from exc
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        raise InputError(f"manifest {manifest} is empty")
    columns = {name: _MANIFEST_ALIASES.get(name.strip().lower()) for name in reader.fieldnames}
    unknown = [n for n, c in columns.items() if c is None]
    if unknown:
        raise InputError(f"manifest {manifest}: unknown column(s) {', '.join(unknown)}")
    if not {"claim_id", "file"} <= set(columns.values()):
        raise InputError(f"manifest {manifest} needs the columns claim_id and file")
    base = root.resolve()
    order: list[str] = []
    files: dict[str, list[Path]] = {}
    fields: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(reader, start=2):
        values = {columns[k]: (v or "").strip() for k, v in row.items() if k is not None and columns.get(k)}
        claim_id, rel = values.get("claim_id", ""), values.get("file", "")
        if not claim_id or not rel:
            raise InputError(f"manifest {manifest} line {line_no}: claim_id and file must not be empty")
        path = (root / rel).resolve()
        if not path.is_relative_to(base):
            raise InputError(f"manifest {manifest} line {line_no}: {rel} is outside {root}")
        if claim_id not in files:
            order.append(claim_id)
            files[claim_id], fields[claim_id] = [], {}
        files[claim_id].append(root / rel)
        for name in _CLAIM_FIELDS:
            value = values.get(name, "")
            if not value:
                continue
            known = fields[claim_id].setdefault(name, value)
            if known != value:
                raise InputError(
                    f"manifest {manifest} line {line_no}: claim {claim_id} has two values for {name} "
                    f"({known!r} and {value!r})"
                )
    if not order:
        raise InputError(f"manifest {manifest} lists no files")
    claims = []
    for claim_id in order:
        f = fields[claim_id]
        claims.append(
            ClaimInfo(
                claim_id=claim_id,
                files=tuple(files[claim_id]),
                patient_id=f.get("patient_id"),
                patient_name=f.get("patient_name"),
                patient_sex=(f.get("patient_sex") or "").upper() or None,
                patient_birth_date=_manifest_date(f.get("patient_birth_date"), manifest, claim_id),
                claim_date=_manifest_date(f.get("claim_date"), manifest, claim_id),
                body_part=f.get("body_part"),
            )
        )
    return claims


def _manifest_date(value: str | None, manifest: Path, claim_id: str) -> dt.date | None:
    if not value:
        return None
    parsed = parse_da(value)
    if parsed is None:
        raise InputError(f"manifest {manifest}: claim {claim_id}: {value!r} is not a date (YYYY-MM-DD)")
    return parsed
