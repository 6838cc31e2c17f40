"""The byte stream that a DICOM digital signature's MAC is computed over (PS3.15 Annex C, PS3.3 C.12.1.1.3).

The signed Data Elements are encoded in the MAC Calculation Transfer Syntax (here always Explicit VR Little
Endian, the only one medverify writes and the one DCMTK uses), in ascending tag order, with one twist that the
standard and DCMTK (``writeSignatureFormat``) agree on: sequences and items are written *without* their length
fields. A sequence is ``tag, 'SQ', 0x0000`` followed by its items, each ``(FFFE,E000)`` without a length and then
its elements, and finally a Sequence Delimitation tag ``(FFFE,E0DD)`` without a length. Items carry no Item
Delimitation. Encapsulated Pixel Data follows the same pattern; its fragments keep their lengths.

Values are taken from the bytes that were read whenever possible, so that what is hashed is exactly what the file
holds; values of a big-endian source are byte-swapped to little endian by VR.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

__all__ = [
    "DIGITAL_SIGNATURES_SEQUENCE",
    "MAC_PARAMETERS_SEQUENCE",
    "UnsignableElementError",
    "dictionary_vr",
    "is_signable_tag",
    "iter_signature_stream",
    "signature_item_stream",
]

MAC_PARAMETERS_SEQUENCE = 0x4FFE0001
DIGITAL_SIGNATURES_SEQUENCE = 0xFFFAFFFA
DATA_SET_TRAILING_PADDING = 0xFFFCFFFC
PIXEL_DATA = 0x7FE00010

_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQ_DELIM_TAG = b"\xfe\xff\xdd\xe0"
# VRs with a 2-byte reserved field and 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_SWAP_WIDTH = {
    "US": 2, "SS": 2, "OW": 2, "AT": 2,
    "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
    "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8,
}  # fmt: skip
_SHORT_HEADER = struct.Struct("<HH2sH")
_LONG_HEADER = struct.Struct("<HH2s2xI")
# VRs whose raw little-endian bytes are their signature-format value (not SQ, UN or an ambiguous VR).
_FAST_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW", "PN",
     "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV"}
)  # fmt: skip
# Signature item attributes that are not part of the MAC (PS3.15 C.1, DCMTK encodeDigitalSignatureItem).
_ITEM_EXCLUDED = frozenset({0x04000115, 0x04000120, 0x04000305, 0x04000310})


class UnsignableElementError(ValueError):
    """A signed element cannot be encoded (unknown VR, or a value that does not decode)."""


def is_signable_tag(tag: int) -> bool:
    """Whether a top-level tag may be covered by a signature (the rules DCMTK applies)."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 or group < 0x0008:
        return False
    if tag in (0x00080001, MAC_PARAMETERS_SEQUENCE, DATA_SET_TRAILING_PADDING):
        return False
    if group == 0xFFFA:
        return False
    return not (group == 0xFFFE and element in (0xE00D, 0xE0DD))


def _swap(value: bytes, width: int) -> bytes:
    if width == 1 or not value:
        return value
    n = len(value) - len(value) % width
    fmt_in = {2: ">%dH", 4: ">%dI", 8: ">%dQ"}[width] % (n // width)
    fmt_out = {2: "<%dH", 4: "<%dI", 8: "<%dQ"}[width] % (n // width)
    return struct.pack(fmt_out, *struct.unpack(fmt_in, value[:n])) + value[n:]


def _header(tag: int, vr: str, length: int | None) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + (b"\x00\x00" if length is None else b"\x00\x00" + struct.pack("<I", length))
    if length is None:  # pragma: no cover - only sequences are written without length
        raise UnsignableElementError(f"{Tag(tag)}: short VR {vr} cannot be written without length")
    if length > 0xFFFF:
        raise UnsignableElementError(f"{Tag(tag)}: value of {length} bytes is too long for VR {vr}")
    return head + struct.pack("<H", length)


def _peek_int(ds: Dataset, tag: int) -> int | None:
    """An integer attribute of ``ds`` read from a copy, so that the data set keeps its raw element."""
    elem = ds.get_item(BaseTag(tag))
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, ds=ds)
    value = elem.value
    return value if isinstance(value, int) else None


def dictionary_vr(tag: int) -> str | None:
    """The data dictionary's VR of ``tag`` (possibly ambiguous, e.g. "US or SS"), or None for an unknown tag."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _raw_vr(elem: RawDataElement, ds: Dataset) -> str | None:
    """The VR of a raw element without converting it (or anything else in ``ds``): as read from an explicit VR
    file, else from the data dictionary, with the ambiguous VRs of the image pixel module resolved the way
    pydicom's writer resolves them. None when it takes pydicom's full resolution (private tags, the rest)."""
    vr = elem.VR if elem.VR is not None else dictionary_vr(elem.tag)
    if vr is None:
        return None
    if " or " not in vr:
        return str(vr)
    tag = int(elem.tag)
    if tag == PIXEL_DATA and elem.VR is None and elem.length != 0xFFFFFFFF:
        return "OW"  # native Pixel Data read as Implicit VR is always OW (PS3.5 A.1), as pydicom decides
    if vr == "US or SS" and elem.length <= 0xFFFF:
        representation = _peek_int(ds, 0x00280103)  # as pydicom: US when PixelRepresentation is 0, else SS
        return None if representation is None else ("SS" if representation else "US")
    return None


def _resolve_vr(elem: DataElement | RawDataElement, ds: Dataset) -> str:
    if isinstance(elem, RawDataElement):
        quick = _raw_vr(elem, ds)
        if quick is not None:
            return quick
    vr = elem.VR
    if vr is None or " or " in vr:
        vr = correct_ambiguous_vr_element(ds[elem.tag], ds, True).VR
    if vr is None or " or " in vr:
        raise UnsignableElementError(f"{Tag(elem.tag)}: its VR cannot be determined")
    return str(vr)


def _encoded_by_pydicom(elem: DataElement, ds: Dataset) -> bytes:
    """Explicit VR little endian encoding of an element built in memory (not read from a file)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, correct_ambiguous_vr_element(elem, ds, True), ds.get("SpecificCharacterSet"))
    return fp.getvalue()


def iter_element_stream(ds: Dataset, tag: int) -> Iterator[bytes | memoryview]:
    """The signature-format bytes of the element ``tag`` of ``ds`` (which must be present)."""
    elem = ds.get_item(BaseTag(tag))
    if elem is None:  # pragma: no cover - callers check presence
        raise KeyError(tag)
    vr = _resolve_vr(elem, ds)
    if vr == "UN":
        raise UnsignableElementError(f"{Tag(tag)} has VR UN and cannot be signed")
    if vr == "SQ":
        seq = ds[tag].value
        yield _header(tag, "SQ", None)
        for item in seq:
            yield _ITEM_TAG
            for child in sorted(item.keys()):
                yield from iter_element_stream(item, int(child))
        yield _SEQ_DELIM_TAG
        return
    raw = elem.value if isinstance(elem, RawDataElement) else None
    if isinstance(raw, bytes | bytearray | memoryview):
        little = elem.is_little_endian
        value = bytes(raw) if little else _swap(bytes(raw), _SWAP_WIDTH.get(vr, 1))
        undefined = elem.length == 0xFFFFFFFF
        if tag == PIXEL_DATA and undefined:
            yield from _encapsulated_stream(tag, vr, value)
            return
        if len(value) % 2:
            value += b"\x00" if vr in ("UI", "OB") else b" "
        yield _header(tag, vr, len(value))
        yield value
        return
    converted = ds[tag]
    if tag == PIXEL_DATA and converted.is_undefined_length:
        yield from _encapsulated_stream(tag, vr, bytes(converted.value))
        return
    quick = _encoded_simply(tag, vr, converted.value)
    yield quick if quick is not None else _encoded_by_pydicom(converted, ds)


#: struct codes of the binary numeric VRs, whose converted values pack back to exactly the bytes they came from.
_NUMERIC_CODES = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}


def _encoded_simply(tag: int, vr: str, value: object) -> bytes | None:
    """The encoding of a converted element that needs no writer: an empty value (only its header), or numbers of
    a binary numeric VR. None for everything else (pydicom's writer encodes it)."""
    if value is None or value == "" or value == b"" or (isinstance(value, list | tuple | MultiValue) and not value):
        return _header(tag, vr, 0)
    code = _NUMERIC_CODES.get(vr)
    if code is None:
        return None
    numbers = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        return None
    try:
        data = struct.pack(f"<{len(numbers)}{code}", *numbers)
    except struct.error:
        return None
    return _header(tag, vr, len(data)) + data


def _encapsulated_stream(tag: int, vr: str, value: bytes) -> Iterator[bytes | memoryview]:
    """Encapsulated Pixel Data: each fragment is its item tag and data, without length; then the delimiter."""
    yield _header(tag, vr, None)
    view = memoryview(value)
    pos = 0
    while pos + 8 <= len(view):
        item_tag = bytes(view[pos : pos + 4])
        (length,) = struct.unpack("<I", view[pos + 4 : pos + 8])
        if item_tag == _SEQ_DELIM_TAG:
            break
        if item_tag != _ITEM_TAG or pos + 8 + length > len(view):
            raise UnsignableElementError(f"{Tag(tag)}: malformed encapsulated pixel data at byte {pos}")
        yield _ITEM_TAG
        yield view[pos + 8 : pos + 8 + length]
        pos += 8 + length
    yield _SEQ_DELIM_TAG


def iter_signature_stream(ds: Dataset, tags: Iterable[int]) -> Iterator[bytes | memoryview]:
    """The MAC byte stream of the data elements ``tags`` of ``ds``, in ascending tag order.

    Tags not present in ``ds`` are skipped: a deleted element changes the stream and so breaks the MAC.
    """
    # Fast path: an element read raw from an explicit VR little endian file is hashed as its header (packed in
    # one call) and its bytes as read; small ones are batched into one buffer. Everything else (sequences,
    # implicit or big-endian sources, ambiguous VRs, values built in memory) goes through iter_element_stream.
    buf = bytearray()
    elements = dict(ds.items())  # raw items, looked up by int tag: no conversion, no Tag() per lookup
    for tag in sorted(set(tags)):
        elem = elements.get(BaseTag(tag))
        if elem is None:
            continue
        value = elem.value
        vr = elem.VR
        if isinstance(elem, RawDataElement) and elem.is_little_endian and (vr is None or " or " in vr):
            # Implicit VR little endian: the value bytes are already in the MAC's encoding; only the VR comes
            # from the data dictionary (private and unknown tags keep the slow path, which names the problem).
            vr = _raw_vr(elem, ds)
        if (
            isinstance(elem, RawDataElement)
            and elem.is_little_endian
            and vr is not None
            and vr in _FAST_VRS
            and isinstance(value, bytes)
            and len(value) == elem.length
            and not len(value) % 2
        ):
            if vr in _LONG_VRS:
                buf += _LONG_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value))
            elif len(value) <= 0xFFFF:
                buf += _SHORT_HEADER.pack(tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value))
            else:
                raise UnsignableElementError(f"{Tag(tag)}: value of {len(value)} bytes is too long for VR {vr}")
            if len(value) > 65536:
                yield bytes(buf)
                buf.clear()
                yield value
            else:
                buf += value
            continue
        if buf:
            yield bytes(buf)
            buf.clear()
        yield from iter_element_stream(ds, tag)
    if buf:
        yield bytes(buf)


def signature_item_stream(item: Dataset) -> Iterator[bytes | memoryview]:
    """The part of a Digital Signatures Sequence item that is included in the MAC."""
    for tag in sorted(int(t) for t in item.keys()):
        if tag in _ITEM_EXCLUDED:
            continue
        yield from iter_element_stream(item, tag)


def feed(update: Callable[[bytes | memoryview], object], chunks: Iterable[bytes | memoryview]) -> None:
    """Feed ``chunks`` to a hash's ``update``."""
    for chunk in chunks:
        update(chunk)
