"""The pixel binding: a signed digest of the decoded pixel values, so that a signature outlives a lossless
re-encoding.

A PS3.15 signature's MAC is computed over the *encoded* bytes of Pixel Data. When a PACS re-encodes an image
losslessly (RLE, JPEG-LS, JPEG lossless, JPEG 2000 lossless) the pixels stay the same but the MAC no longer
matches. So when medverify signs an image it also writes a private block (creator ``MEDVERIFY PIXELS 1``,
group 0011) holding the transfer syntax at signing; Rows, Columns, Number of Frames, Samples per Pixel, Bits
Stored, Pixel Representation, Photometric Interpretation, Rescale Slope and Intercept as they were; and the
SHA-256 of those values followed by the decoded pixel values. It then signs twice with the same key, two ordinary
PS3.15 signatures that dcmsign verifies:

- the full signature covers every element but the block, Pixel Data included (without the block, so that dcmsign
  can still check it after a conversion to Implicit VR, where it reads the unknown private elements as UN);
- the binding signature covers the block, so the digest, and every element except those a lossless re-encoding
  rewrites (:data:`ENCODING_TAGS`: Pixel Data and its offset tables, Planar Configuration, Photometric
  Interpretation, and Derivation Description, where DCMTK's JPEG encoder notes the compression).

A MAC cannot be checked without the bytes it was computed over, so after a re-encoding only the binding
signature still matches; the pixels are then decoded and their digest compared with the signed one
(:func:`check_binding`). Any changed pixel, dimension or rescale, and any lossy re-encoding, gives another digest.

Canonical form (version 1): the text ``MEDVERIFY-PIXELS-1`` and the recorded values, one ``name=value`` line each
(:meth:`PixelFacts.header`), then each frame's decoded values in row-major order (samples last, whatever the
Planar Configuration), reduced to Bits Stored (sign-extended when Pixel Representation is 1) and written as
little-endian integers of 1, 2 or 4 bytes. Photometric Interpretation YBR_RCT and YBR_ICT count as RGB: JPEG 2000
decoders undo that colour transform.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.datadict import add_private_dict_entries
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from provenance._internal.privatevrs import register_private_block
from provenance.models import PixelBinding, PixelBindingStatus

__all__ = [
    "ENCODING_TAGS",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "PixelFacts",
    "RecordedBinding",
    "bind_pixels",
    "binding_tags",
    "check_binding",
    "digest_pixels",
    "pixel_encoding",
    "read_binding",
    "transfer_syntax_name",
]

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "MEDVERIFY PIXELS 1"
SCHEME = "MEDVERIFY-PIXELS-1"

PIXEL_DATA = 0x7FE00010
PHOTOMETRIC_INTERPRETATION = 0x00280004
DERIVATION_DESCRIPTION = 0x00082111
#: What a lossless re-encoding may rewrite; the binding signature leaves these out, and a matching binding vouches
#: for them: Photometric Interpretation is recorded in it, the others do not change the decoded values, and
#: Derivation Description (free text where encoders note the compression) is quoted in the binding's reason.
ENCODING_TAGS = frozenset(
    {PIXEL_DATA, 0x7FE00001, 0x7FE00002, 0x00280006, PHOTOMETRIC_INTERPRETATION, DERIVATION_DESCRIPTION}
)

# Element offsets in the private block, and their dictionary entries (so that the block keeps its VRs when a file
# is converted to Implicit VR Little Endian and read back by pydicom).
_ENTRIES = {
    0x01: ("LO", "Pixel Binding Scheme"),
    0x02: ("UI", "Transfer Syntax At Signing"),
    0x03: ("US", "Signed Rows"),
    0x04: ("US", "Signed Columns"),
    0x05: ("IS", "Signed Number Of Frames"),
    0x06: ("US", "Signed Samples Per Pixel"),
    0x07: ("US", "Signed Bits Stored"),
    0x08: ("US", "Signed Pixel Representation"),
    0x09: ("CS", "Signed Photometric Interpretation"),
    0x0A: ("DS", "Signed Rescale Slope"),
    0x0B: ("DS", "Signed Rescale Intercept"),
    0x0C: ("LO", "Pixel Values SHA256"),
}
_SCHEME, _XFER, _ROWS, _COLUMNS, _FRAMES, _SAMPLES, _BITS, _REPR, _PHOTOMETRIC, _SLOPE, _INTERCEPT, _DIGEST = _ENTRIES
add_private_dict_entries(
    PRIVATE_CREATOR, {(PRIVATE_GROUP << 16) | k: (vr, "1", name, "") for k, (vr, name) in _ENTRIES.items()}
)
register_private_block(PRIVATE_CREATOR, {k: vr for k, (vr, _) in _ENTRIES.items()})
_RGB_ALIASES = {"YBR_RCT": "RGB", "YBR_ICT": "RGB"}
#: Encapsulated syntaxes that may lose information: pixels that still match were encoded "without loss".
_LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PixelFacts:
    """The attributes that give decoded pixel values their meaning, as the binding records them."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    #: As text (``repr`` of the float), "" when absent.
    slope: str
    intercept: str

    def header(self) -> bytes:
        """The canonical text that starts the digested bytes."""
        values = dataclasses.asdict(self)
        values["photometric"] = _RGB_ALIASES.get(self.photometric, self.photometric)
        return (SCHEME + "\n" + "".join(f"{k}={v}\n" for k, v in values.items())).encode("ascii")

    def differences(self, other: PixelFacts) -> list[str]:
        """What differs from ``other`` (the values now), in words."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        if _RGB_ALIASES.get(self.photometric, self.photometric) == _RGB_ALIASES.get(
            other.photometric, other.photometric
        ):
            theirs["photometric"] = self.photometric
        return [
            f"{k} {mine[k] or 'absent'} at signing, {theirs[k] or 'absent'} now" for k in mine if mine[k] != theirs[k]
        ]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordedBinding:
    """The binding as written in a file (read tolerantly; trustworthy only under a signature whose MAC matches)."""

    transfer_syntax: str
    facts: PixelFacts
    digest: str
    #: The tags of the block's elements (creator included).
    tags: frozenset[int]


def _number(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{keyword} is absent")
        return default
    return int(value)


def _decimal(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None or value == "" else repr(float(value))


def current_facts(ds: Dataset) -> PixelFacts:
    """The facts of ``ds``'s image as it is now; ValueError when an attribute is absent or not a number."""
    return PixelFacts(
        rows=_number(ds, "Rows"),
        columns=_number(ds, "Columns"),
        frames=_number(ds, "NumberOfFrames", 1),
        samples=_number(ds, "SamplesPerPixel", 1),
        bits_stored=_number(ds, "BitsStored", _number(ds, "BitsAllocated")),
        pixel_representation=_number(ds, "PixelRepresentation", 0),
        photometric=str(ds.get("PhotometricInterpretation", "") or "").strip(),
        slope=_decimal(ds, "RescaleSlope"),
        intercept=_decimal(ds, "RescaleIntercept"),
    )


#: What decoders read: the image pixel module, the frame count and Pixel Data with its offset tables.
_DECODER_TAGS = (
    0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280102,
    0x00280103, 0x00281052, 0x00281053, 0x7FE00001, 0x7FE00002, PIXEL_DATA,
)  # fmt: skip


def _pixel_view(ds: Dataset) -> Dataset:
    """A data set of converted copies of what decoding needs, so that ``ds`` keeps its elements as read: a
    signature's MAC is computed over raw elements (a big-endian Pixel Data converted in place would be hashed
    without its byte swap)."""
    view = Dataset()
    view.file_meta = FileMetaDataset()
    view.file_meta.TransferSyntaxUID = UID(_transfer_syntax(ds))
    for tag in _DECODER_TAGS:
        elem = ds.get_item(tag)
        if elem is None:
            continue
        if isinstance(elem, RawDataElement):
            elem = convert_raw_data_element(elem, encoding=getattr(ds, "_character_set", None), ds=ds)
        view.add(copy.copy(elem))
    return view


def _canonical_frames(ds: Dataset, facts: PixelFacts) -> Iterator[bytes]:
    import numpy as np
    from pydicom.pixels.utils import iter_pixels

    bits = facts.bits_stored
    if not 1 <= bits <= 32:
        raise ValueError(f"Bits Stored {bits} is outside 1 to 32")
    signed = facts.pixel_representation == 1
    width = 1 if bits <= 8 else 2 if bits <= 16 else 4
    target = np.dtype(f"<{'i' if signed else 'u'}{width}")
    mask = (1 << bits) - 1
    unsigned = np.dtype(f"<u{width}")
    for frame in iter_pixels(ds, as_rgb=False):
        if frame.dtype.kind == "f":
            raise ValueError("the decoded pixels are not integers")
        if frame.dtype.itemsize * 8 == bits and frame.dtype.kind == target.kind:
            values = frame  # nothing outside Bits Stored: only the byte order may need changing
        else:
            # The low ``width`` bytes (a cast wraps), then the Bits Stored, sign-extended when signed.
            values = frame.astype(unsigned, copy=False)
            if bits < width * 8:
                values = values & mask
            if signed:
                sign = 1 << (bits - 1)
                wide = values.astype(np.int64 if width == 4 else np.int32)
                values = np.bitwise_xor(wide, sign) - sign
        yield np.ascontiguousarray(values, dtype=target).tobytes()


def pixel_digest(ds: Dataset, facts: PixelFacts) -> str:
    """The SHA-256 (hex) of the canonical form of the decoded pixels of ``ds`` (a :func:`_pixel_view`) under
    ``facts``."""
    h = hashlib.sha256(facts.header())
    for chunk in _canonical_frames(ds, facts):
        h.update(chunk)
    return h.hexdigest()


def digest_pixels(ds: Dataset) -> tuple[PixelFacts, str]:
    """The facts of ``ds``'s image and the digest of its decoded pixels, as a binding records them (decoding from
    copies: ``ds`` keeps its elements as read). Raises ValueError, or a decoder's error."""
    view = _pixel_view(ds)
    facts = current_facts(view)
    return facts, pixel_digest(view, facts)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    value = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    return value or str(ExplicitVRLittleEndian)


def pixel_encoding(transfer_syntax: str) -> str:
    """The encoding of Pixel Data under a transfer syntax: the UID itself for an encapsulated one, else ``native``
    (implicit, explicit, big-endian and deflated syntaxes all store the same values uncompressed)."""
    uid = UID(transfer_syntax)
    return str(uid) if uid.is_transfer_syntax and uid.is_encapsulated else "native"


def transfer_syntax_name(transfer_syntax: str) -> str:
    """A transfer syntax's short name for messages, e.g. ``RLELossless`` (the UID when unknown)."""
    uid = UID(transfer_syntax)
    return str(uid.keyword or uid.name) if uid.is_transfer_syntax else transfer_syntax


def bind_pixels(ds: Dataset) -> frozenset[int] | None:
    """Write the pixel binding of ``ds`` (in place) and return its tags; None when ``ds`` has no Pixel Data. A
    binding already there that the pixels still match is kept (the signatures over it stay intact); one they do not
    match is replaced. Raises ValueError (or a decoder's error) when the pixels cannot be decoded."""
    if PIXEL_DATA not in ds:
        return None
    view = _pixel_view(ds)
    facts = current_facts(view)
    digest = pixel_digest(view, facts)
    existing = read_binding(ds)
    if existing is not None:
        if not existing.facts.differences(facts) and pixel_digest(view, existing.facts) == existing.digest:
            return existing.tags  # another signer's binding, still true: rewriting it would break its signatures
        for tag in existing.tags:
            del ds[tag]
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(_SCHEME, "LO", SCHEME)
    block.add_new(_XFER, "UI", _transfer_syntax(ds))
    block.add_new(_ROWS, "US", facts.rows)
    block.add_new(_COLUMNS, "US", facts.columns)
    block.add_new(_FRAMES, "IS", str(facts.frames))
    block.add_new(_SAMPLES, "US", facts.samples)
    block.add_new(_BITS, "US", facts.bits_stored)
    block.add_new(_REPR, "US", facts.pixel_representation)
    block.add_new(_PHOTOMETRIC, "CS", facts.photometric)
    block.add_new(_SLOPE, "DS", facts.slope)
    block.add_new(_INTERCEPT, "DS", facts.intercept)
    block.add_new(_DIGEST, "LO", digest)
    return frozenset({(PRIVATE_GROUP << 16) | (block.block_start >> 8), *(block.get_tag(o) for o in _ENTRIES)})


def _copied_value(ds: Dataset, tag: int) -> Any:
    """The value of ``tag`` converted from a copy: ``ds`` keeps its raw element (KeyError when absent)."""
    elem = ds.get_item(tag)
    if elem is None:
        raise KeyError(tag)
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=getattr(ds, "_character_set", None), ds=ds)
    return elem.value


def binding_tags(ds: Dataset, elements: Iterable[int] | None = None) -> frozenset[int] | None:
    """The tags of the binding block in ``ds`` (creator and elements, whether present or not), or None when it has
    none. Cheap: only the creator elements of group 0011 are read, from their bytes when still raw. ``elements``:
    the int tags of ``ds`` when the caller has them."""
    group = PRIVATE_GROUP << 16
    tags = elements if elements is not None else map(int, ds.keys())
    for tag in sorted(t for t in tags if group | 0x10 <= t <= group | 0xFF):
        elem = ds.get_item(tag)
        value = elem.value if elem is not None else None
        try:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(_copied_value(ds, tag) or "")
        except Exception:  # noqa: BLE001, S112 - a hostile creator element is no binding, never a traceback
            continue
        if text.strip(" \x00") == PRIVATE_CREATOR:
            base = group | ((tag & 0xFF) << 8)
            return frozenset({tag, *(base | o for o in _ENTRIES)})
    return None


def read_binding(ds: Dataset, elements: Iterable[int] | None = None) -> RecordedBinding | None:
    """The binding written in ``ds``, or None when there is none or it cannot be read. ``elements``: the int tags
    of ``ds`` when the caller has them. Nothing in ``ds`` is converted (the MAC is over the elements as read)."""
    tags = binding_tags(ds, elements)
    if tags is None:
        return None
    creator = min(tags)
    base = (PRIVATE_GROUP << 16) | ((creator & 0xFF) << 8)
    try:

        def value(offset: int) -> Any:
            return _copied_value(ds, base | offset)

        def text(offset: int) -> str:
            return str(value(offset) or "").strip()

        if text(_SCHEME) != SCHEME:
            return None
        facts = PixelFacts(
            rows=int(value(_ROWS)),
            columns=int(value(_COLUMNS)),
            frames=int(value(_FRAMES)),
            samples=int(value(_SAMPLES)),
            bits_stored=int(value(_BITS)),
            pixel_representation=int(value(_REPR)),
            photometric=text(_PHOTOMETRIC),
            slope=repr(float(value(_SLOPE))) if text(_SLOPE) else "",
            intercept=repr(float(value(_INTERCEPT))) if text(_INTERCEPT) else "",
        )
        return RecordedBinding(transfer_syntax=text(_XFER), facts=facts, digest=text(_DIGEST).lower(), tags=tags)
    except Exception:  # noqa: BLE001 - pydicom raises many types for a damaged value: no readable binding
        return None


def check_binding(ds: Dataset, recorded: RecordedBinding, signature_uid: str | None) -> PixelBinding:
    """Decode ``ds``'s pixels as they are now and compare them with ``recorded`` (vouched for by the intact
    signature ``signature_uid``)."""
    now = _transfer_syntax(ds)
    signed_as, now_name = transfer_syntax_name(recorded.transfer_syntax), transfer_syntax_name(now)

    def result(status: PixelBindingStatus, reason: str) -> PixelBinding:
        return PixelBinding(
            status=status,
            signature_uid=signature_uid,
            signed_transfer_syntax=recorded.transfer_syntax,
            transfer_syntax=now,
            reason=reason,
        )

    try:
        view = _pixel_view(ds)
        facts = current_facts(view)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged value
        return result(PixelBindingStatus.MISMATCH, f"the image attributes cannot be read now ({exc})")
    changed = recorded.facts.differences(facts)
    if changed:
        return result(PixelBindingStatus.MISMATCH, "image attributes changed since signing: " + "; ".join(changed))
    try:
        digest = pixel_digest(view, recorded.facts)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; the report says why
        return result(
            PixelBindingStatus.UNDECODABLE,
            f"the pixels, now {now_name}, cannot be decoded to check the binding ({type(exc).__name__}: "
            f"{str(exc)[:160]})",
        )
    if digest != recorded.digest:
        return result(
            PixelBindingStatus.MISMATCH,
            f"decoded pixel values differ from those signed (now {now_name}, signed as {signed_as}): "
            "a pixel changed, or a lossy re-encoding",
        )
    how = "without loss" if pixel_encoding(now) in _LOSSY_SYNTAXES else "losslessly"
    note = ""
    derivation = ds.get(DERIVATION_DESCRIPTION)
    if derivation is not None and derivation.value:
        note = f"; Derivation Description, which re-encoders rewrite, now reads {str(derivation.value)[:120]!r}"
    return result(
        PixelBindingStatus.MATCH,
        f"pixels unchanged since signing; re-encoded {how} ({now_name}, signed as {signed_as}){note}",
    )
