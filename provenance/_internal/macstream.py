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

import functools
import io
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from provenance._internal.privatevrs import known_private_vr

__all__ = [
    "DIGITAL_SIGNATURES_SEQUENCE",
    "MAC_PARAMETERS_SEQUENCE",
    "UnsignableElementError",
    "dictionary_vr",
    "element_index",
    "file_bytes",
    "file_segments",
    "is_signable_tag",
    "iter_signature_stream",
    "raw_sequence_items",
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
_VR_BYTES = {vr: vr.encode("ascii") for vr in _FAST_VRS}
_FAST_VR_BYTES = frozenset(_VR_BYTES.values())
_LONG_VR_BYTES = frozenset(vr.encode("ascii") for vr in _LONG_VRS if vr != "UN")
_DEFLATED = "1.2.840.10008.1.2.1.99"
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


@functools.lru_cache(maxsize=4096)
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
        if elem.VR == "UN" and (known := known_private_vr(ds, int(elem.tag))) is not None:
            return known
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
        raw_chunks = _raw_sequence_stream(tag, elem) if isinstance(elem, RawDataElement) else None
        if raw_chunks is not None:
            yield from raw_chunks
            return
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
        little = elem.is_little_endian or elem.VR == "UN"  # UN bytes are never swapped
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


#: VRs whose converted value is plain ASCII text, written as pydicom's writer writes it (values joined by
#: backslashes, padded to even length with a space, or a NUL for UI). Not IS/DS (numbers keep their original
#: string in pydicom's types) nor the VRs that follow the Specific Character Set.
_ASCII_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: struct codes of the binary numeric VRs, whose converted values pack back to exactly the bytes they came from.
_NUMERIC_CODES = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}


def _encoded_simply(tag: int, vr: str, value: object) -> bytes | None:
    """The encoding of a converted element that needs no writer: an empty value (only its header), or numbers of
    a binary numeric VR. None for everything else (pydicom's writer encodes it)."""
    if value is None or value == "" or value == b"" or (isinstance(value, list | tuple | MultiValue) and not value):
        return _header(tag, vr, 0)
    if vr in _ASCII_TEXT_VRS:
        texts = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        if not all(type(t) is str or isinstance(t, UID) for t in texts):
            return None
        joined = "\\".join(str(t) for t in texts)
        if not joined.isascii():
            return None
        data = joined.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return _header(tag, vr, len(data)) + data
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


def element_index(ds: Dataset) -> dict[int, Any]:
    """The elements of ``ds`` as they are (raw ones not converted) by int tag: looking an int up among pydicom's
    BaseTag keys goes through BaseTag's Python-level ``__eq__``, hundreds of times a file."""
    return {int(t): e for t, e in ds.items()}


def file_bytes(ds: Dataset) -> bytes | None:
    """The bytes ``ds`` was parsed from, when its top-level raw elements can be hashed straight from them: a data
    set read by pydicom from an in-memory file (``FileDataset.buffer``) in a transfer syntax that is not deflated
    (whose element offsets refer to the inflated stream, not to the buffer). None otherwise."""
    buffer = getattr(ds, "buffer", None)
    if not isinstance(buffer, io.BytesIO):
        return None
    meta = getattr(ds, "file_meta", None)
    xfer = meta.get_item(0x00020010) if meta is not None else None
    if xfer is None or xfer.value in (_DEFLATED, _DEFLATED.encode()):
        return None
    return buffer.getvalue()  # the bytes the file was read from, not a copy


def file_segments(ds: Dataset, elements: dict[int, Any] | None = None) -> dict[int, tuple[int, int]]:
    """By int tag, (start, end) in :func:`file_bytes` of each top-level element whose bytes there, header included,
    are its signature format; made once, it serves every signature over ``ds`` (medverify files carry two)."""
    data = file_bytes(ds)
    if data is None:
        return {}
    out: dict[int, tuple[int, int]] = {}
    for tag, elem in (elements if elements is not None else element_index(ds)).items():
        if type(elem) is not RawDataElement:
            continue
        _tag, vr, length, value, tell, implicit, little, _raw, _buffered = elem
        if value is None and not length:
            value = b""  # pydicom reads an empty value of an Implicit VR file as None
        # Explicit VR little endian, a VR kept as read, an even length the value has; the long VRs' reserved bytes 0.
        if implicit or not little or vr not in _FAST_VRS or length & 1 or not isinstance(value, bytes):
            continue
        long = vr in _LONG_VRS
        if len(value) == length and (not long or data.startswith(b"\x00\x00", tell - 6)):
            out[tag] = (tell - (12 if long else 8), tell + length)
    return out


def iter_signature_stream(
    ds: Dataset,
    tags: Iterable[int],
    *,
    elements: dict[int, Any] | None = None,
    segments: dict[int, tuple[int, int]] | None = None,
) -> Iterator[bytes | memoryview]:
    """The MAC byte stream of the data elements ``tags`` of ``ds``, in ascending tag order.

    Tags not present in ``ds`` are skipped: a deleted element changes the stream and so breaks the MAC.
    ``elements`` is ``ds``'s elements as read by int tag, and ``segments`` their :func:`file_segments`, when the
    caller has them.
    """
    # Fastest: an element of ``segments`` is hashed as the bytes of the file (adjacent ones as one slice). Fast:
    # such elements without a file (a sequence item) as a packed header and the value, batched. Everything else
    # (sequences, implicit or big-endian sources, ambiguous VRs, values built in memory): iter_element_stream.
    data = file_bytes(ds)
    view = memoryview(data if data is not None else b"")
    buf = bytearray()
    run_start = run_end = -1  # the slice of ``view`` not yet yielded
    if elements is None:
        elements = element_index(ds)
    if segments is None:
        segments = file_segments(ds, elements) if data is not None else {}
    get = elements.get
    segment = segments.get
    for tag in sorted(set(tags)):
        found = segment(tag)
        if found is not None:
            start, end = found
            if start != run_end:
                if run_end >= 0:
                    yield view[run_start:run_end]
                elif buf:  # elements before it that took the buffered path
                    yield bytes(buf)
                    buf.clear()
                run_start = start
            run_end = end
            continue
        elem = get(tag)
        if elem is None:
            continue
        if type(elem) is RawDataElement:
            _tag, vr, length, value, _tell, _implicit, _little, _raw, _buffered = elem
            if value is None and not length:
                value = b""  # pydicom reads an empty value of an Implicit VR file as None
        else:
            value, vr = elem.value, elem.VR
        if run_end >= 0:
            yield view[run_start:run_end]
            run_start = run_end = -1
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
    if run_end >= 0:
        yield view[run_start:run_end]
    if buf:
        yield bytes(buf)


def _raw_sequence_stream(tag: int, elem: RawDataElement) -> list[bytes | memoryview] | None:
    """The signature format of a sequence still raw from a little endian file, made from its bytes without
    parsing them into data sets: headers of sequences and items are rewritten without lengths, the runs of other
    elements are kept as they are (explicit VR) or given explicit headers (implicit VR, the VR from the data
    dictionary). None when the bytes hold anything the walk does not handle exactly as the parsed path would (an
    element of VR UN or of undefined length, an odd length, elements out of tag order, reserved bytes that are not
    zero, lengths that overrun): the caller then parses the sequence."""
    value = elem.value
    # (pydicom parses a sequence of undefined length as it reads it: only defined lengths stay raw.)
    if not elem.is_little_endian or not isinstance(value, bytes) or len(value) != elem.length:
        return None
    out: list[bytes | memoryview] = [_header(tag, "SQ", None)]
    view = memoryview(value)
    if _walk_items(view, 0, len(view), False, bool(elem.is_implicit_VR), out, 0) != len(view):
        return None
    out.append(_SEQ_DELIM_TAG)
    return out


def raw_sequence_items(elem: object) -> list[Dataset] | None:
    """The items of a sequence still raw from a little endian file, each a :class:`Dataset` of
    :class:`RawDataElement` (values as read, nothing converted), read without pydicom's sequence parser, which
    costs more than the rest of a signature check. For the small signature sequences. None when the bytes hold
    anything this reader does not handle exactly as pydicom would (a nested sequence, an element of VR UN, of an
    unknown or ambiguous VR in implicit VR, or of undefined length, elements out of tag order, lengths that
    overrun): the caller then lets pydicom parse the sequence."""
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian:
        return None
    implicit = bool(elem.is_implicit_VR)
    value = elem.value
    if elem.VR != ("SQ" if not implicit else None) or not isinstance(value, bytes) or len(value) != elem.length:
        return None
    view = memoryview(value)
    size = len(view)
    items: list[Dataset] = []
    pos = 0
    while pos < size:
        if pos + 8 > size:
            return None
        code, item_length = _TAG_LENGTH.unpack_from(view, pos)
        pos += 8
        undefined = item_length == 0xFFFFFFFF
        if code != _ITEM or (not undefined and pos + item_length > size):
            return None
        item_end = size if undefined else pos + item_length
        elements: dict[BaseTag, DataElement | RawDataElement] = {}
        previous = -1
        while True:
            if pos == item_end and not undefined:
                break
            found = _next_element(view, pos, item_end, implicit, previous)
            if found is None:
                return None
            tag, vr, length, header = found
            if tag == _ITEM_DELIMITATION:
                if not undefined:
                    return None
                pos += 8
                break
            previous = tag
            start = pos + header
            if vr == "SQ" or length == 0xFFFFFFFF or start + length > item_end:
                return None
            key = BaseTag(tag)
            elements[key] = RawDataElement(  # as pydicom reads Implicit VR: no VR until converted
                key, None if implicit else vr, length, bytes(view[start : start + length]), start, implicit, True,
                True, False,
            )  # fmt: skip
            pos = start + length
        items.append(Dataset(elements))
    return items


_MAX_RAW_DEPTH = 16
_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian 32-bit number: element << 16 | group
_ITEM_DELIMITATION = 0xFFFEE00D  # (FFFE,E00D) as group << 16 | element
_SEQ_DELIM = 0xE0DDFFFE
_TAG_LENGTH = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
_UINT16 = struct.Struct("<H")
_UINT16_PAIR = struct.Struct("<HH")


def _next_element(
    view: memoryview, pos: int, end: int, implicit: bool, previous: int
) -> tuple[int, str, int, int] | None:
    """Tag, VR, value length and header size of the element at ``pos`` of an item (little endian; in Implicit VR the
    VR comes from the data dictionary); an Item Delimitation comes back with VR "" and its length field. None for
    what the byte walks leave to pydicom: a tag not above ``previous`` (the tag before it in the item) or of group
    FFFE, a VR other than SQ and the plain ones (UN; private, unknown or ambiguous in Implicit VR), reserved bytes
    that are not zero, a header past ``end``."""
    if pos + 8 > end:
        return None
    group, element = _UINT16_PAIR.unpack_from(view, pos)
    tag = group << 16 | element
    if tag == _ITEM_DELIMITATION:
        return tag, "", _LENGTH.unpack_from(view, pos + 4)[0], 8
    if tag <= previous or group == 0xFFFE:
        return None
    if implicit:
        vr = dictionary_vr(tag)
        if vr != "SQ" and vr not in _FAST_VRS:
            return None
        return tag, str(vr), _LENGTH.unpack_from(view, pos + 4)[0], 8
    code = bytes(view[pos + 4 : pos + 6])
    if code in _LONG_VR_BYTES:
        if pos + 12 > end or _UINT16.unpack_from(view, pos + 6)[0]:
            return None
        return tag, code.decode("ascii"), _LENGTH.unpack_from(view, pos + 8)[0], 12
    if code in _FAST_VR_BYTES:
        return tag, code.decode("ascii"), _UINT16.unpack_from(view, pos + 6)[0], 8
    return None


def _walk_items(
    view: memoryview, pos: int, end: int, undefined: bool, implicit: bool, out: list[bytes | memoryview], depth: int
) -> int | None:
    """Append the items of a sequence value in ``view[pos:end]`` to ``out``; return where the value ends (after its
    delimiter when of undefined length), or None when the walk cannot stand in for parsing."""
    if depth > _MAX_RAW_DEPTH:
        return None
    while pos < end:
        if pos + 8 > end:
            return None
        code, length = _TAG_LENGTH.unpack_from(view, pos)
        pos += 8
        if code == _SEQ_DELIM:
            return pos if undefined and length == 0 else None
        if code != _ITEM:
            return None
        out.append(_ITEM_TAG)
        if length == 0xFFFFFFFF:
            item_end = _walk_elements(view, pos, end, True, implicit, out, depth)
        else:
            if pos + length > end:
                return None
            item_end = _walk_elements(view, pos, pos + length, False, implicit, out, depth)
            if item_end != pos + length:
                return None
        if item_end is None:
            return None
        pos = item_end
    return None if undefined else pos


def _walk_elements(
    view: memoryview, pos: int, end: int, undefined: bool, implicit: bool, out: list[bytes | memoryview], depth: int
) -> int | None:
    """Append the elements of one item in ``view[pos:end]``; return where the item ends, or None (see above)."""
    run_start = pos
    previous = -1
    while pos < end:
        found = _next_element(view, pos, end, implicit, previous)
        if found is None:
            return None
        tag, vr, length, header = found
        if tag == _ITEM_DELIMITATION:  # not part of the MAC
            if not undefined or length:
                return None
            if pos > run_start:
                out.append(view[run_start:pos])
            return pos + 8
        previous = tag
        if vr == "SQ":
            if pos > run_start:
                out.append(view[run_start:pos])
            out.append(_header(tag, "SQ", None))
            seq_undefined = length == 0xFFFFFFFF
            seq_end = end if seq_undefined else pos + header + length
            if seq_end > end:
                return None
            after = _walk_items(view, pos + header, seq_end, seq_undefined, implicit, out, depth + 1)
            if after is None or (not seq_undefined and after != seq_end):
                return None
            out.append(_SEQ_DELIM_TAG)
            pos = run_start = after
            continue
        if length == 0xFFFFFFFF or length & 1 or pos + header + length > end:
            return None
        if implicit:  # an explicit header for the value as read
            if vr not in _LONG_VRS and length > 0xFFFF:
                return None  # too long for its VR: pydicom's path names the problem
            out.append(_header(tag, vr, length))
            out.append(view[pos + header : pos + header + length])
            run_start = pos + header + length
        pos += header + length
    if undefined:
        return None
    if pos > run_start:
        out.append(view[run_start:pos])
    return pos


def signature_item_stream(item: Dataset, *, elements: dict[int, Any] | None = None) -> Iterator[bytes | memoryview]:
    """The part of a Digital Signatures Sequence item that is included in the MAC; ``elements`` as for
    :func:`iter_signature_stream`."""
    if elements is None:
        elements = element_index(item)
    tags = [t for t in elements if t not in _ITEM_EXCLUDED]
    yield from iter_signature_stream(item, tags, elements=elements)
