"""The image index in the audit database: every audited image's hashes, so reuse is found across audits.

Bookkeeping next to the Merkle log (like the scan state): each row names the audit record it came from
(``record_id``) and can be rebuilt from the files. Lookups go through indexes only: exact digests and UIDs by
equality, near-duplicates by multi-index hashing on the four 16-bit bands of each perceptual hash (pHash and SimHash
slots, see :mod:`verifier.claims.fingerprint`; probing every value within one bit of each band), so a lookup
costs the same with a thousand images indexed or ten million.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from verifier.audit import AuditLog, _db
from verifier.audit._orm import Base
from verifier.audit._schema import UTCDateTime
from verifier.audit.entry import utc_now
from verifier.claims.fingerprint import MATCH_SIDE, band_probes, band_values
from verifier.claims.matcher import within_radius

__all__ = ["ImageHashRow", "ImageIndexRow", "ImageStore", "IndexedImage"]


class ImageIndexRow(Base):
    """One image seen in a claim audit."""

    __tablename__ = "image_index"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    record_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    claim_id: Mapped[str | None] = mapped_column(sa.Text, index=True)
    path: Mapped[str | None] = mapped_column(sa.Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    file_sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    pixel_sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    phash: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    dhash: Mapped[str | None] = mapped_column(sa.String(64))
    patient_key: Mapped[str | None] = mapped_column(sa.String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    study_date: Mapped[str | None] = mapped_column(sa.String(8))
    body_part: Mapped[str | None] = mapped_column(sa.Text)
    match_view: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ImageHashRow(Base):
    """One perceptual hash of one central-crop scale of an indexed image, split into bands for multi-index lookups.

    ``scale`` is the hash's slot: the scale index for a pHash, ``SIMHASH_OFFSET`` + the scale index for a SimHash
    (images indexed before SimHashes existed have pHash rows only, and are still found by them)."""

    __tablename__ = "image_hashes"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("image_index.id"))
    scale: Mapped[int] = mapped_column(sa.SmallInteger)
    phash: Mapped[str] = mapped_column(sa.String(16))
    b0: Mapped[int] = mapped_column(sa.Integer, index=True)
    b1: Mapped[int] = mapped_column(sa.Integer, index=True)
    b2: Mapped[int] = mapped_column(sa.Integer, index=True)
    b3: Mapped[int] = mapped_column(sa.Integer, index=True)


image_index: sa.Table = ImageIndexRow.__table__  # type: ignore[assignment]
image_hashes: sa.Table = ImageHashRow.__table__  # type: ignore[assignment]


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:016x}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class IndexedImage:
    """An image from an earlier audit, as the index holds it."""

    id: int
    record_id: int | None
    claim_id: str | None
    path: str | None
    sop_instance_uid: str | None
    file_sha256: str | None
    pixel_sha256: str | None
    patient_key: str | None
    study_instance_uid: str | None
    study_date: str | None
    body_part: str | None
    match_view: npt.NDArray[np.uint8] | None
    created_at: dt.datetime
    #: Perceptual hashes by slot (only those a near-duplicate lookup returned; empty for exact lookups).
    slots: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewImage:
    """An image to add to the index."""

    record_id: int | None
    claim_id: str
    path: str
    sop_instance_uid: str | None
    file_sha256: str | None
    pixel_sha256: str | None
    #: Perceptual hashes by slot (:meth:`verifier.claims.fingerprint.Fingerprint.slots`).
    slots: Mapping[int, int]
    dhash: int | None
    patient_key: str | None
    study_instance_uid: str | None
    study_date: str | None
    body_part: str | None
    match_view: npt.NDArray[np.uint8] | None


_COLUMNS = (
    image_index.c.id,
    image_index.c.record_id,
    image_index.c.claim_id,
    image_index.c.path,
    image_index.c.sop_instance_uid,
    image_index.c.file_sha256,
    image_index.c.pixel_sha256,
    image_index.c.patient_key,
    image_index.c.study_instance_uid,
    image_index.c.study_date,
    image_index.c.body_part,
    image_index.c.match_view,
    image_index.c.created_at,
)


def _view(raw: bytes | None) -> npt.NDArray[np.uint8] | None:
    if raw is None or len(raw) != MATCH_SIDE * MATCH_SIDE:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(MATCH_SIDE, MATCH_SIDE)


def _indexed(row: sa.Row[tuple[object, ...]], slots: dict[int, int] | None = None) -> IndexedImage:
    m = row._mapping
    return IndexedImage(
        id=int(m["id"]),
        record_id=m["record_id"],
        claim_id=m["claim_id"],
        path=m["path"],
        sop_instance_uid=m["sop_instance_uid"],
        file_sha256=m["file_sha256"],
        pixel_sha256=m["pixel_sha256"],
        patient_key=m["patient_key"],
        study_instance_uid=m["study_instance_uid"],
        study_date=m["study_date"],
        body_part=m["body_part"],
        match_view=_view(m["match_view"]),
        created_at=m["created_at"],
        slots=slots or {},
    )


class ImageStore:
    """The image index of the audit database that ``log`` writes to."""

    def __init__(self, log: AuditLog) -> None:
        self._engine: sa.Engine = log._engine
        self._url: str = log._url

    def count(self) -> int:
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(image_index)).scalar_one())

    def exact(
        self, *, file_sha256: Iterable[str] = (), pixel_sha256: Iterable[str] = (), uids: Iterable[str] = ()
    ) -> list[IndexedImage]:
        """Indexed images with one of these file or pixel digests, or SOP / Study Instance UIDs."""
        files, pixels, wanted_uids = sorted(set(file_sha256)), sorted(set(pixel_sha256)), sorted(set(uids))
        clauses = []
        if files:
            clauses.append(image_index.c.file_sha256.in_(files))
        if pixels:
            clauses.append(image_index.c.pixel_sha256.in_(pixels))
        if wanted_uids:
            clauses.append(image_index.c.sop_instance_uid.in_(wanted_uids))
            clauses.append(image_index.c.study_instance_uid.in_(wanted_uids))
        if not clauses:
            return []
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            return [_indexed(r) for r in conn.execute(sa.select(*_COLUMNS).where(sa.or_(*clauses)))]

    def near(self, slots: Mapping[int, int]) -> list[IndexedImage]:
        """Indexed images with a hash within its family's radius of a same-family hash of ``slots``
        (:func:`verifier.claims.matcher.within_radius`).

        Every hash within 7 bits is found (four bands, radius-1 probes); farther ones only when a band happens
        to agree. Each result carries the hashes that matched, by slot.
        """
        if not slots:
            return []
        per_band: list[set[int]] = [set(), set(), set(), set()]
        for h in slots.values():
            for band, value in enumerate(band_values(h)):
                per_band[band].update(band_probes(value))
        bands = (image_hashes.c.b0, image_hashes.c.b1, image_hashes.c.b2, image_hashes.c.b3)
        stmt = sa.select(image_hashes.c.image_id, image_hashes.c.scale, image_hashes.c.phash).where(
            sa.or_(*(col.in_(sorted(values)) for col, values in zip(bands, per_band, strict=True)))
        )
        found: dict[int, dict[int, int]] = {}
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            hits = [(int(str(i)), int(str(slot)), int(str(h), 16)) for i, slot, h in conn.execute(stmt)]
            kept = within_radius(slots, [slot for _i, slot, _h in hits], [h for _i, _s, h in hits])
            for (image_id, slot, _h), match in zip(hits, kept, strict=True):
                if match is not None:
                    found.setdefault(image_id, {})[slot] = match
            if not found:
                return []
            rows = conn.execute(sa.select(*_COLUMNS).where(image_index.c.id.in_(sorted(found))))
            return [_indexed(r, found[int(r._mapping["id"])]) for r in rows]

    def known(self, claim_id: str, file_sha256: str | None) -> bool:
        """Whether this file was already indexed for this claim (a re-audit indexes nothing twice)."""
        if file_sha256 is None:
            return False
        with _db.db_errors(self._url), _db.read_transaction(self._engine) as conn:
            stmt = sa.select(image_index.c.id).where(
                image_index.c.claim_id == claim_id, image_index.c.file_sha256 == file_sha256
            )
            return conn.execute(stmt.limit(1)).first() is not None

    def add(self, images: Sequence[NewImage]) -> int:
        """Index ``images`` in one transaction; returns how many rows were written."""
        if not images:
            return 0
        now = utc_now()
        with _db.db_errors(self._url), _db.write_transaction(self._engine) as conn:
            for img in images:
                result = conn.execute(
                    sa.insert(image_index).values(
                        record_id=img.record_id,
                        claim_id=img.claim_id,
                        path=img.path,
                        sop_instance_uid=img.sop_instance_uid,
                        file_sha256=img.file_sha256,
                        pixel_sha256=img.pixel_sha256,
                        phash=_hex(img.slots.get(0)),
                        dhash=_hex(img.dhash),
                        patient_key=img.patient_key,
                        study_instance_uid=img.study_instance_uid,
                        study_date=img.study_date,
                        body_part=img.body_part,
                        match_view=None if img.match_view is None else img.match_view.astype(np.uint8).tobytes(),
                        created_at=now,
                    )
                )
                key = result.inserted_primary_key
                if key is None:  # pragma: no cover - every backend returns the key
                    continue
                image_id = int(key[0])
                hash_rows = []
                for slot, h in sorted(img.slots.items()):
                    b = band_values(h)
                    hash_rows.append(
                        {
                            "image_id": image_id,
                            "scale": slot,
                            "phash": f"{h:016x}",
                            "b0": b[0],
                            "b1": b[1],
                            "b2": b[2],
                            "b3": b[3],
                        }
                    )
                if hash_rows:
                    conn.execute(sa.insert(image_hashes), hash_rows)
        return len(images)
