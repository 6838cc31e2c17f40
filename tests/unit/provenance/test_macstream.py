"""The MAC byte stream, pinned byte for byte against what dcmsign itself hashes (its ``+d`` dump)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from provenance._internal import macstream
from provenance._internal.macstream import (
    UnsignableElementError,
    dictionary_vr,
    is_signable_tag,
    iter_element_stream,
    iter_signature_stream,
    raw_sequence_items,
    signature_item_stream,
)

MAC_PARAMETERS = 0x4FFE0001
DIGITAL_SIGNATURES = 0xFFFAFFFA
DATA_ELEMENTS_SIGNED = 0x04000020

SAMPLES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",  # encapsulated pixel data
    "MR_small_RLE.dcm",
    "rtplan.dcm",  # nested sequences
]


def our_stream(site: Dataset, index: int = 0) -> bytes:
    """Our MAC stream for signature ``index`` of ``site`` (the top level or a sequence item)."""
    params = site[MAC_PARAMETERS].value[index]
    item = site[DIGITAL_SIGNATURES].value[index]
    tags = [int(Tag(t)) for t in params[DATA_ELEMENTS_SIGNED].value]
    chunks = [*iter_signature_stream(site, tags), *signature_item_stream(item)]
    return b"".join(bytes(c) for c in chunks)


def dcmsign_with_dump(pki: Path, src: Path, out: Path, dump: Path, *extra: str, item: str | None = None) -> None:
    command = ["--sign-item", pki / "rsa.key", pki / "rsa.pem", item] if item else ["--sign", pki / "rsa.key",
                                                                                   pki / "rsa.pem"]  # fmt: skip
    result = subprocess.run(
        ["dcmsign", *command, "-pw", *extra, "+d", dump, src, out], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at byte {i}: ours {a[i : i + 16].hex()} dcmsign {b[i : i + 16].hex()}"
    return f"lengths differ: ours {len(a)}, dcmsign {len(b)}"


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("tags", ["all", "some"])
@pytest.mark.parametrize("read", ["path", "memory"])
def test_stream_matches_dcmsign_dump(
    tmp_path: Path, openssl_pki: Path, dcmtk: None, name: str, tags: str, read: str
) -> None:
    """``memory``: read from bytes as the verifier reads, so that raw elements are hashed from the file's bytes."""
    src, out, dump = tmp_path / name, tmp_path / "signed.dcm", tmp_path / "stream.bin"
    shutil.copy(get_testdata_file(name), src)
    extra: list[str] = ["+m2"]
    if tags == "some":
        for keyword in ("PatientName", "SOPInstanceUID", "StudyInstanceUID"):
            extra += ["-t", keyword]
    dcmsign_with_dump(openssl_pki, src, out, dump, *extra)

    # re-read in the file's own transfer syntax
    ds = pydicom.dcmread(out) if read == "path" else pydicom.dcmread(io.BytesIO(out.read_bytes()))
    expected = dump.read_bytes()
    ours = our_stream(ds)
    assert ours == expected, first_difference(ours, expected)
    if tags == "some":
        assert len(ds[MAC_PARAMETERS].value[0][DATA_ELEMENTS_SIGNED].value) == 3


@pytest.mark.dcmtk
def test_stream_of_a_sequence_item_matches_dcmsign_dump(tmp_path: Path, openssl_pki: Path, dcmtk: None) -> None:
    src, out, dump = tmp_path / "rtplan.dcm", tmp_path / "signed.dcm", tmp_path / "stream.bin"
    shutil.copy(get_testdata_file("rtplan.dcm"), src)
    dcmsign_with_dump(openssl_pki, src, out, dump, "+m5", item="FractionGroupSequence[0]")
    item = pydicom.dcmread(out).FractionGroupSequence[0]
    ours = our_stream(item)
    assert ours == dump.read_bytes(), first_difference(ours, dump.read_bytes())


@pytest.mark.dcmtk
def test_a_changed_value_changes_the_stream(tmp_path: Path, openssl_pki: Path, dcmtk: None) -> None:
    """Guards the comparison above against a stream that ignores values (e.g. one made of headers only)."""
    src, out, dump = tmp_path / "ct.dcm", tmp_path / "signed.dcm", tmp_path / "stream.bin"
    shutil.copy(get_testdata_file("CT_small.dcm"), src)
    dcmsign_with_dump(openssl_pki, src, out, dump)
    ds = pydicom.dcmread(out)
    ds.PatientName = "X"
    assert our_stream(ds) != dump.read_bytes()


# ----------------------------------------------------------------------------------- without dcmtk


def stream_of(ds: Dataset, tags: list[int]) -> bytes:
    return b"".join(bytes(c) for c in iter_signature_stream(ds, tags))


def test_transfer_syntaxes_give_the_same_stream() -> None:
    """Explicit little, implicit and big endian copies of the same data hash the same bytes."""
    streams = {}
    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        tags = sorted(int(t) for t in ds.keys() if is_signable_tag(int(t)))
        streams[name] = stream_of(ds, tags)
    assert len(set(streams.values())) == 1, {k: len(v) for k, v in streams.items()}


def test_sequence_is_written_without_lengths() -> None:
    ds = Dataset()
    inner = Dataset()
    inner.CodeValue = "AB"
    ds.add_new(0x00081032, "SQ", [inner])  # Procedure Code Sequence, one item
    got = b"".join(bytes(c) for c in iter_element_stream(ds, 0x00081032))
    expected = (
        bytes.fromhex("0800 3210") + b"SQ" + b"\x00\x00"  # tag, VR, reserved; no length
        + bytes.fromhex("feff 00e0")  # item tag, no length
        + bytes.fromhex("0800 0001") + b"SH" + b"\x02\x00" + b"AB"
        + bytes.fromhex("feff dde0")  # sequence delimiter, no length; no item delimiter
    )  # fmt: skip
    assert got == expected


def test_odd_length_values_are_padded() -> None:
    ds = Dataset()
    ds.add_new(0x00080018, "UI", "1.2.3")  # odd: padded with NUL
    ds.add_new(0x00100010, "PN", "ABC")  # odd: padded with space
    assert stream_of(ds, [0x00080018]) == bytes.fromhex("0800 1800") + b"UI\x06\x001.2.3\x00"
    assert stream_of(ds, [0x00100010]) == bytes.fromhex("1000 1000") + b"PN\x04\x00ABC "


def test_absent_tags_are_skipped_and_order_is_ascending() -> None:
    ds = Dataset()
    ds.add_new(0x00100020, "LO", "ID")
    ds.add_new(0x00080060, "CS", "CT")
    assert stream_of(ds, [0x00100020, 0x00080060, 0x00200010]) == stream_of(ds, [0x00080060, 0x00100020])
    assert stream_of(ds, [0x00100020, 0x00080060]).startswith(bytes.fromhex("0800 6000"))


def test_un_elements_cannot_be_signed() -> None:
    ds = Dataset()
    ds.add_new(0x00111010, "UN", b"\x01\x02")
    with pytest.raises(UnsignableElementError):
        stream_of(ds, [0x00111010])


@pytest.mark.parametrize(
    ("tag", "signable"),
    [
        (0x00100010, True),
        (0x7FE00010, True),
        (0x00020010, False),  # file meta
        (0x00080000, False),  # group length
        (0x00080001, False),  # length to end
        (0x4FFE0001, False),  # MAC Parameters Sequence
        (0xFFFAFFFA, False),  # Digital Signatures Sequence
        (0xFFFCFFFC, False),  # trailing padding
        (0x00091010, True),  # private
    ],
)
def test_signable_tags(tag: int, signable: bool) -> None:
    assert is_signable_tag(tag) is signable


# ------------------------------------------------------------- raw shortcuts against pydicom's parsed path


#: pydicom samples with sequences: explicit and implicit VR, nested, empty items, private and odd elements, one cut
#: short (whose truncated sequence is left to pydicom). (get_testdata_files would try to download the rest.)
SEQUENCE_SAMPLES = [
    "rtplan.dcm", "rtplan_truncated.dcm", "rtdose.dcm", "rtdose_1frame.dcm", "test-SR.dcm", "CT_small.dcm",
    "examples_overlay.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "reportsi_with_empty_number_tags.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", "gdcm-US-ALOKA-16.dcm", "badVR.dcm",
    "mlut_18.dcm", "vlut_04.dcm", "color3d_jpeg_baseline.dcm", "examples_ybr_color.dcm",
]  # fmt: skip


def _readable_test_files() -> list[str]:
    return [get_testdata_file(name) for name in SEQUENCE_SAMPLES]  # type: ignore[misc]


def _raw_sequences(ds: Dataset) -> list[tuple[int, RawDataElement]]:
    """The top-level sequences of ``ds`` still raw, little endian."""
    return [
        (int(tag), elem)
        for tag, elem in ds.items()
        if isinstance(elem, RawDataElement)
        and elem.is_little_endian
        and isinstance(elem.value, bytes)
        and (elem.VR == "SQ" or (elem.VR is None and dictionary_vr(int(tag)) == "SQ"))
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_raw_sequence_walk_gives_the_parsed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every raw sequence of pydicom's samples (explicit and implicit VR, nested, empty items) streams from its bytes
    exactly as pydicom's parsed items are streamed; and most of them do take the walk."""
    walked = 0
    for name in _readable_test_files():
        for tag, elem in _raw_sequences(pydicom.dcmread(name)):
            fast = macstream._raw_sequence_stream(tag, elem)
            if fast is None:
                continue
            walked += 1
            with monkeypatch.context() as m:
                m.setattr(macstream, "_raw_sequence_stream", lambda *_: None)  # pydicom parses every sequence
                parsed = b"".join(bytes(c) for c in iter_element_stream(pydicom.dcmread(name), tag))
            assert b"".join(bytes(c) for c in fast) == parsed, f"{name} {Tag(tag)}"
    assert walked >= 30


def test_raw_sequence_walk_leaves_what_it_cannot_do_to_pydicom() -> None:
    item = bytes.fromhex("0900 1010") + b"UN\x00\x00" + (2).to_bytes(4, "little") + b"ab"  # a private UN element
    value = bytes.fromhex("feff 00e0") + len(item).to_bytes(4, "little") + item
    elem = RawDataElement(BaseTag(0x00081032), "SQ", len(value), value, 0, False, True)
    assert macstream._raw_sequence_stream(0x00081032, elem) is None
    assert macstream.raw_sequence_items(elem) is None
    cut = RawDataElement(BaseTag(0x00081032), "SQ", len(value) - 1, value[:-1], 0, False, True)
    assert macstream._raw_sequence_stream(0x00081032, cut) is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_raw_sequence_items_are_the_items_pydicom_reads() -> None:
    read = 0
    for name in _readable_test_files():
        ds = pydicom.dcmread(name)
        for tag, elem in _raw_sequences(ds):
            items = raw_sequence_items(elem)
            if items is None:
                continue
            read += 1
            parsed = list(ds[tag].value)
            assert len(items) == len(parsed), f"{name} {Tag(tag)}"
            for ours, theirs in zip(items, parsed, strict=True):
                assert list(ours.keys()) == list(theirs.keys())
                for key in ours.keys():
                    a, b = ours.get_item(key), theirs.get_item(key)
                    if isinstance(b, RawDataElement):
                        assert (a.VR, a.length, a.value or b"") == (b.VR, b.length, b.value or b""), f"{name} {key}"
                    else:  # pydicom converted it while reading
                        assert ours[key].value == theirs[key].value, f"{name} {key}"
    assert read >= 15


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "examples_overlay.dcm"])
def test_file_bytes_path_gives_the_packed_stream(name: str) -> None:
    """The same data set read from a path (values packed one by one) and from memory (runs of the file's bytes)."""
    path = get_testdata_file(name)
    from_path, from_memory = pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(Path(path).read_bytes()))
    assert macstream.file_bytes(from_path) is None
    assert macstream.file_bytes(from_memory) is not None
    tags = sorted(int(t) for t in from_path.keys() if is_signable_tag(int(t)))
    assert stream_of(from_memory, tags) == stream_of(from_path, tags)
