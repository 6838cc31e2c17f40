"""DICOM digital signatures: sign, write, re-read and verify real sample files; tamper with them on disk."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence as DicomSequence

from provenance.errors import SigningError
from provenance.keys import KeyStore, SigningKey
from provenance.models import MacAlgorithm, SignatureProfile, SignatureReport, SignatureStatus
from provenance.pixelbinding import read_binding
from provenance.signature import sign_dataset, strip_signatures, verify_dataset
from provenance.trust import TrustPolicy

MAC_PARAMETERS = 0x4FFE0001
DIGITAL_SIGNATURES = 0xFFFAFFFA
MAC_ALGORITHM = 0x04000015
CERTIFICATE = 0x04000115
SIGNATURE = 0x04000120
PIXEL_DATA = 0x7FE00010
PATIENT_NAME = 0x00100010


def _tag(t: int) -> str:
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"


def signable_tags(ds: Dataset) -> set[str]:
    """Every top-level tag that a default signature must cover, computed independently of the code under test."""
    out = set()
    for tag in ds.keys():
        t = int(tag)
        group, element = t >> 16, t & 0xFFFF
        if group < 0x0008 or element == 0 or t in (0x00080001, MAC_PARAMETERS, 0xFFFCFFFC) or group == 0xFFFA:
            continue
        out.add(_tag(t))
    return out


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def store(signing_keystore_template: Path) -> KeyStore:
    from testkit import TEST_KEY_PASSPHRASE  # read-only use of the session template

    return KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())


@pytest.fixture(scope="module")
def rsa_key(store: KeyStore) -> SigningKey:
    return store.load_signing_key("rsa")


@pytest.fixture(scope="module")
def second_key(store: KeyStore) -> SigningKey:
    return store.load_signing_key("second")


@pytest.fixture(scope="module")
def ecdsa_key(store: KeyStore) -> SigningKey:
    return store.load_signing_key("ecdsa")


@pytest.fixture(scope="module")
def policy(store: KeyStore) -> TrustPolicy:
    return store.trust_policy()


@pytest.fixture
def ct_path(tmp_path: Path) -> Path:
    target = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), target)
    return target


_READ = {"mode": "path"}


@pytest.fixture(autouse=True, params=["path", "memory"])
def read_mode(request: pytest.FixtureRequest) -> str:
    """Every test twice: files read from their path, and from bytes in memory as the verifier reads them (then raw
    elements are hashed straight from the file's bytes and raw sequences are walked, not parsed)."""
    _READ["mode"] = request.param
    return str(request.param)


def reread(path: Path) -> FileDataset:
    if _READ["mode"] == "memory":
        return pydicom.dcmread(io.BytesIO(Path(path).read_bytes()))
    return pydicom.dcmread(path)


def sign_file(path: Path, key: SigningKey, out: Path | None = None, **kwargs: object) -> Path:
    """Sign the file at ``path`` and write it to ``out`` (default: in place); return where it went."""
    ds = reread(path)
    sign_dataset(ds, key, **kwargs)  # type: ignore[arg-type]
    target = out or path
    ds.save_as(target)
    return target


def edit_file(path: Path, change: Callable[[FileDataset], None]) -> FileDataset:
    """Re-read ``path``, apply ``change``, write it back, and return the re-read result."""
    ds = reread(path)
    change(ds)
    ds.save_as(path)
    return reread(path)


def check(ds: Dataset, policy: TrustPolicy, **kwargs: object) -> SignatureReport:
    report = verify_dataset(ds, policy, **kwargs)  # type: ignore[arg-type]
    assert isinstance(report, SignatureReport)
    return report


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("mac", [MacAlgorithm.SHA256, MacAlgorithm.SHA384, MacAlgorithm.SHA512])
@pytest.mark.parametrize("profile", list(SignatureProfile))
def test_rsa_round_trip_covers_everything(
    ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy, profile: SignatureProfile, mac: MacAlgorithm
) -> None:
    sign_file(ct_path, rsa_key, profile=profile, mac=mac)
    ds = reread(ct_path)
    report = check(ds, policy)

    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.problem_found is False
    assert report.pixel_data_covered is True
    assert report.uncovered == ()
    assert report.reasons == ()
    # The full signature, and the pixel binding's: together they cover everything; the full one the pixels.
    sig, binding = report.signatures
    assert sig.status is SignatureStatus.VALID and binding.status is SignatureStatus.VALID
    assert (sig.pixel_binding, binding.pixel_binding) == (False, True)
    assert sig.mac_algorithm == mac.value == binding.mac_algorithm
    assert sig.key_type == "rsa"
    assert set(sig.covered) | set(binding.covered) == signable_tags(ds)
    recorded = read_binding(ds)
    assert recorded is not None
    assert {_tag(t) for t in recorded.tags} == set(binding.covered) - set(sig.covered)
    assert _tag(PIXEL_DATA) in sig.covered and _tag(PIXEL_DATA) not in binding.covered
    assert sig.signer is not None and "CN=rsa" in sig.signer
    assert str(ds[MAC_PARAMETERS].value[0][MAC_ALGORITHM].value) == mac.value
    if profile is not SignatureProfile.NONE:
        assert profile.value in sig.profiles


def test_ecdsa_round_trip(ct_path: Path, ecdsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, ecdsa_key)
    report = check(reread(ct_path), policy)
    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.signatures[0].key_type == "ecdsa"
    assert report.pixel_data_covered is True
    assert report.problem_found is False


def test_ecdsa_with_a_profile_is_refused(ct_path: Path, ecdsa_key: SigningKey) -> None:
    ds = reread(ct_path)
    with pytest.raises(SigningError, match="RSA"):
        sign_dataset(ds, ecdsa_key, profile=SignatureProfile.CREATOR)
    assert MAC_PARAMETERS not in ds and DIGITAL_SIGNATURES not in ds


def test_ripemd160_is_refused_for_signing(ct_path: Path, rsa_key: SigningKey) -> None:
    ds = reread(ct_path)
    with pytest.raises(SigningError):
        sign_dataset(ds, rsa_key, mac=MacAlgorithm.RIPEMD160)
    assert DIGITAL_SIGNATURES not in ds


@pytest.mark.parametrize(
    "name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "rtplan.dcm"]
)
def test_round_trip_other_encodings(tmp_path: Path, rsa_key: SigningKey, policy: TrustPolicy, name: str) -> None:
    path = tmp_path / name
    shutil.copy(get_testdata_file(name), path)
    sign_file(path, rsa_key)
    ds = reread(path)
    report = check(ds, policy)
    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.uncovered == ()
    assert set().union(*(s.covered for s in report.signatures)) == signable_tags(ds)
    assert [s.pixel_binding for s in report.signatures] == ([False, True] if PIXEL_DATA in ds else [False])


def test_unsigned_file(ct_path: Path, policy: TrustPolicy) -> None:
    report = check(reread(ct_path), policy)
    assert report.status is SignatureStatus.UNSIGNED
    assert report.signatures == ()
    assert report.problem_found is False


def test_strip_signatures(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, rsa_key)
    ds = edit_file(ct_path, strip_signatures)
    assert MAC_PARAMETERS not in ds and DIGITAL_SIGNATURES not in ds
    assert check(ds, policy).status is SignatureStatus.UNSIGNED


def test_report_has_no_truth_value(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, rsa_key)
    report = check(reread(ct_path), policy)
    with pytest.raises(TypeError):
        bool(report)
    with pytest.raises(TypeError):
        bool(report.signatures[0])
    with pytest.raises(TypeError):
        if report:  # the mistake the type exists to prevent
            pass
    assert report.to_dict()["status"] == "VALID"


# ------------------------------------------------------------------------------------------------ tampering


def _flip_pixel_bit(ds: FileDataset) -> None:
    data = bytearray(ds.PixelData)
    data[len(data) // 2] ^= 0x01
    ds.PixelData = bytes(data)


def _set_name(ds: FileDataset) -> None:
    ds.PatientName = "Someone^Else"


def _delete_name(ds: FileDataset) -> None:
    del ds.PatientName


def _truncate_signature(ds: FileDataset) -> None:
    item = ds[DIGITAL_SIGNATURES].value[0]
    item[SIGNATURE].value = bytes(item[SIGNATURE].value)[:-16]


def _unknown_mac(ds: FileDataset) -> None:
    ds[MAC_PARAMETERS].value[0][MAC_ALGORITHM].value = "FOO"


def _drop_mac_parameters(ds: FileDataset) -> None:
    del ds[MAC_PARAMETERS]


def _garbage_certificate(ds: FileDataset) -> None:
    ds[DIGITAL_SIGNATURES].value[0][CERTIFICATE].value = b"\x30\x82not a certificate at all!"


def _drop_signature_value(ds: FileDataset) -> None:
    del ds[DIGITAL_SIGNATURES].value[0][SIGNATURE]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_flip_pixel_bit, SignatureStatus.INVALID),
        (_set_name, SignatureStatus.INVALID),
        (_truncate_signature, SignatureStatus.INVALID),
        (_unknown_mac, SignatureStatus.MALFORMED),
        (_drop_mac_parameters, SignatureStatus.MALFORMED),
        (_garbage_certificate, SignatureStatus.MALFORMED),
        (_drop_signature_value, SignatureStatus.MALFORMED),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_tampering_on_disk(
    ct_path: Path,
    rsa_key: SigningKey,
    policy: TrustPolicy,
    change: Callable[[FileDataset], None],
    expected: SignatureStatus,
) -> None:
    sign_file(ct_path, rsa_key, bind_pixels=False)  # the standard signature alone (the binding: test_pixelbinding)
    assert check(reread(ct_path), policy).status is SignatureStatus.VALID
    ds = edit_file(ct_path, change)
    report = check(ds, policy)
    assert report.status is expected, report.reasons
    assert report.signatures[0].status is expected
    assert report.problem_found is True
    assert report.reasons, "a failed signature must say why"
    # A signature that does not check covers nothing.
    assert report.pixel_data_covered is False
    assert {u.tag for u in report.uncovered} >= {_tag(PATIENT_NAME)} | ({_tag(PIXEL_DATA)})


def test_deleted_signed_attribute_is_named(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, rsa_key)
    ds = edit_file(ct_path, _delete_name)
    report = check(ds, policy)
    assert report.status is SignatureStatus.INVALID
    text = " ".join(report.reasons)
    assert "(0010,0010)" in text and "PatientName" in text


def test_signature_copied_from_another_file(
    tmp_path: Path, ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy
) -> None:
    donor = tmp_path / "mr.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), donor)
    sign_file(donor, rsa_key)
    donor_ds = reread(donor)

    def transplant(ds: FileDataset) -> None:
        ds[MAC_PARAMETERS] = donor_ds[MAC_PARAMETERS]
        ds[DIGITAL_SIGNATURES] = donor_ds[DIGITAL_SIGNATURES]

    report = check(edit_file(ct_path, transplant), policy)
    assert report.status is SignatureStatus.INVALID, report.reasons
    assert report.problem_found is True


def test_same_content_signature_replayed_onto_a_copy_with_other_pixels(
    tmp_path: Path, ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy
) -> None:
    """The same study, signed once; its signature moved onto a copy whose pixels differ."""
    sign_file(ct_path, rsa_key)
    signed = reread(ct_path)
    other = tmp_path / "other.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), other)

    def transplant(ds: FileDataset) -> None:
        _flip_pixel_bit(ds)
        ds[MAC_PARAMETERS] = signed[MAC_PARAMETERS]
        ds[DIGITAL_SIGNATURES] = signed[DIGITAL_SIGNATURES]

    assert check(edit_file(other, transplant), policy).status is SignatureStatus.INVALID


def test_certificate_swapped_for_another_trusted_signer(
    ct_path: Path, rsa_key: SigningKey, second_key: SigningKey, policy: TrustPolicy
) -> None:
    sign_file(ct_path, rsa_key)
    assert policy.evaluate(second_key.certificate).status.value == "trusted"

    def swap(ds: FileDataset) -> None:
        ds[DIGITAL_SIGNATURES].value[0][CERTIFICATE].value = second_key.certificate.public_bytes(Encoding.DER)

    report = check(edit_file(ct_path, swap), policy)
    assert report.status is SignatureStatus.INVALID, report.reasons
    assert report.signatures[0].signer is not None and "CN=second" in report.signatures[0].signer


def test_hostile_structures_never_raise(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    """Odd shapes of the signature sequences give MALFORMED, not an exception."""
    sign_file(ct_path, rsa_key)

    def empty_signatures(ds: FileDataset) -> None:
        ds[DIGITAL_SIGNATURES].value = DicomSequence([])

    def no_mac_id(ds: FileDataset) -> None:
        del ds[DIGITAL_SIGNATURES].value[0][0x04000005]

    def bad_data_elements_signed(ds: FileDataset) -> None:
        del ds[MAC_PARAMETERS].value[0][0x04000020]

    def empty_item(ds: FileDataset) -> None:
        ds[DIGITAL_SIGNATURES].value.append(Dataset())

    for change in (empty_signatures, no_mac_id, bad_data_elements_signed, empty_item):
        path = ct_path.with_name(f"{change.__name__}.dcm")
        shutil.copy(ct_path, path)
        report = check(edit_file(path, change), policy)
        assert report.status is SignatureStatus.MALFORMED, (change.__name__, report.reasons)
        assert report.problem_found is True


# ------------------------------------------------------------------------------------------------ coverage


def test_element_added_after_signing_is_uncovered(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, rsa_key)

    def add(ds: FileDataset) -> None:
        ds.PatientComments = "added later"

    report = check(edit_file(ct_path, add), policy)
    assert report.status is SignatureStatus.VALID  # the signature itself still checks, as dcmsign says
    assert [(u.tag, u.keyword) for u in report.uncovered] == [("(0010,4000)", "PatientComments")]
    assert report.problem_found is True
    assert any("(0010,4000)" in r for r in report.reasons)
    assert report.to_dict()["uncovered"] == [{"tag": "(0010,4000)", "keyword": "PatientComments"}]


def test_pixel_data_left_out_of_the_signature(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    ds = reread(ct_path)
    tags = [int(t) for t in ds.keys() if _tag(int(t)) in signable_tags(ds) and int(t) != PIXEL_DATA]
    sign_dataset(ds, rsa_key, tags=tags)
    ds.save_as(ct_path)

    report = check(reread(ct_path), policy)
    assert report.status is SignatureStatus.VALID
    assert report.pixel_data_covered is False
    assert [u.tag for u in report.uncovered] == [_tag(PIXEL_DATA)]
    assert report.problem_found is True
    assert any("Pixel Data" in r for r in report.reasons)


def test_creator_profile_requires_pixel_data(ct_path: Path, rsa_key: SigningKey) -> None:
    ds = reread(ct_path)
    tags = [int(t) for t in ds.keys() if _tag(int(t)) in signable_tags(ds) and int(t) != PIXEL_DATA]
    with pytest.raises(SigningError, match="7FE0,0010"):
        sign_dataset(ds, rsa_key, tags=tags, profile=SignatureProfile.CREATOR)


# ------------------------------------------------------------------------------------------------ trust


def _foreign_ca() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_unknown_ca_is_untrusted(ct_path: Path, rsa_key: SigningKey) -> None:
    sign_file(ct_path, rsa_key)
    report = check(reread(ct_path), TrustPolicy(anchors=[_foreign_ca()]))
    assert report.status is SignatureStatus.UNTRUSTED_SIGNER
    assert report.problem_found is True
    # The MAC still matched: the content is intact, only the signer is unknown.
    assert report.uncovered == ()
    assert report.pixel_data_covered is True


def test_revoked_key(tmp_path: Path, keystore: KeyStore) -> None:
    path = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    sign_file(path, keystore.load_signing_key("generator"))
    assert check(reread(path), keystore.trust_policy()).status is SignatureStatus.VALID
    keystore.revoke("generator")
    report = check(reread(path), keystore.trust_policy())
    assert report.status is SignatureStatus.REVOKED
    assert any("revoked" in r for r in report.reasons)


def test_expired_certificate(ct_path: Path, rsa_key: SigningKey, policy: TrustPolicy) -> None:
    sign_file(ct_path, rsa_key)
    ds = reread(ct_path)
    later = rsa_key.certificate.not_valid_after_utc + dt.timedelta(days=1)
    assert check(ds, policy, at=later).status is SignatureStatus.EXPIRED
    assert check(ds, policy).status is SignatureStatus.VALID


def test_two_signatures_coexist(
    ct_path: Path, rsa_key: SigningKey, ecdsa_key: SigningKey, second_key: SigningKey, policy: TrustPolicy
) -> None:
    sign_file(ct_path, rsa_key, mac=MacAlgorithm.SHA384, bind_pixels=False)
    sign_file(ct_path, ecdsa_key, bind_pixels=False)
    sign_file(ct_path, second_key, profile=SignatureProfile.AUTHORIZATION, bind_pixels=False)
    ds = reread(ct_path)
    assert len(ds[DIGITAL_SIGNATURES].value) == 3 and len(ds[MAC_PARAMETERS].value) == 3
    report = check(ds, policy)
    assert [s.status for s in report.signatures] == [SignatureStatus.VALID] * 3
    assert len({s.mac_id for s in report.signatures}) == 3
    assert len({s.uid for s in report.signatures}) == 3
    assert report.status is SignatureStatus.VALID and report.problem_found is False

    # Breaking one of them makes the file INVALID while the others still check.
    def break_second(ds: FileDataset) -> None:
        item = ds[DIGITAL_SIGNATURES].value[1]
        sig = bytearray(item[SIGNATURE].value)
        sig[10] ^= 0xFF
        item[SIGNATURE].value = bytes(sig)

    report = check(edit_file(ct_path, break_second), policy)
    assert [s.status for s in report.signatures] == [
        SignatureStatus.VALID,
        SignatureStatus.INVALID,
        SignatureStatus.VALID,
    ]
    assert report.status is SignatureStatus.INVALID
    assert report.uncovered == ()  # the intact signatures still cover everything


# ------------------------------------------------------------------------------------------------ nested


@pytest.mark.dcmtk
def test_signature_in_a_sequence_item_is_found(tmp_path: Path, openssl_pki: Path, dcmtk: None) -> None:
    import subprocess

    src = tmp_path / "rtplan.dcm"
    out = tmp_path / "rtplan_signed.dcm"
    shutil.copy(get_testdata_file("rtplan.dcm"), src)
    subprocess.run(
        ["dcmsign", "--sign-item", openssl_pki / "rsa.key", openssl_pki / "rsa.pem", "BeamSequence[0]", "-pw", "+m2",
         src, out],
        check=True, capture_output=True,
    )  # fmt: skip
    anchors = TrustPolicy.from_pem_files([openssl_pki / "ca.pem"])
    report = check(reread(out), anchors)
    (sig,) = report.signatures
    assert sig.status is SignatureStatus.VALID, sig.reasons
    assert sig.location == "(300A,00B0)[0]"
    assert report.status is SignatureStatus.VALID
    # An item signature covers its item only: the top level stays uncovered, which is reported.
    assert report.problem_found is True
    assert _tag(0x00100010) in {u.tag for u in report.uncovered}

    def tamper(ds: FileDataset) -> None:
        ds.BeamSequence[0].BeamName = "changed"

    report = check(edit_file(out, tamper), anchors)
    assert report.signatures[0].status is SignatureStatus.INVALID
    assert "(300A,00B0)[0]" in " ".join(report.reasons)


def test_signature_added_in_memory_to_an_item_of_a_file_is_found(
    tmp_path: Path, rsa_key: SigningKey, policy: TrustPolicy
) -> None:
    """The file's bytes hold no signature tag, but a sequence converted and signed in memory does."""
    src = tmp_path / "rtplan.dcm"
    shutil.copy(get_testdata_file("rtplan.dcm"), src)
    ds = reread(src)
    assert check(ds, policy).signatures == ()
    sign_dataset(ds.BeamSequence[0], rsa_key)
    (sig,) = check(ds, policy).signatures
    assert sig.location == "(300A,00B0)[0]"
    assert sig.status is SignatureStatus.VALID, sig.reasons


# ------------------------------------------------------------------------------------------------ private elements


def implicit_with_unknown_private(path: Path) -> Path:
    """An Implicit VR file with a private block whose creator no dictionary knows: its elements read as UN."""
    ds = reread(Path(get_testdata_file("MR_small_implicit.dcm")))
    block = ds.private_block(0x0029, "ACME unknown 1.0", create=True)
    block.add_new(0x01, "LO", "vendor value")
    block.add_new(0x02, "US", 7)
    ds.save_as(path)
    assert reread(path)[0x00291001].VR == "UN"
    return path


def test_implicit_file_with_unknown_private_elements_can_be_signed(
    tmp_path: Path, rsa_key: SigningKey, policy: TrustPolicy
) -> None:
    """Regression: such elements are still raw (VR None) when the default tags are chosen, so the UN rule missed
    them and signing failed with 'cannot sign: (0029,1001) has VR UN'. dcmsign signs these files, skipping UN."""
    path = implicit_with_unknown_private(tmp_path / "private.dcm")
    sign_file(path, rsa_key)
    report = check(reread(path), policy)
    assert report.status is SignatureStatus.VALID, report.reasons
    assert [u.tag for u in report.uncovered] == ["(0029,1001)", "(0029,1002)"]
    assert "(0029,0010)" in report.signatures[0].covered  # the private creator itself is LO, and signed
    assert report.problem_found is True  # honest: those two elements are not protected
