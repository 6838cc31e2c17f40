"""Interoperability with DCMTK's dcmsign 3.6.7: each side verifies what the other signs, across transcoding.

Certificates for dcmsign are made with the openssl CLI (``openssl_pki``); medverify signs with its own key store.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from provenance.keys import KeyStore, SigningKey
from provenance.models import MacAlgorithm, SignatureProfile, SignatureReport, SignatureStatus
from provenance.signature import sign_dataset, verify_dataset
from provenance.trust import TrustPolicy

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("dcmtk")]


@pytest.fixture(scope="module")
def store(signing_keystore_template: Path) -> KeyStore:
    from testkit import TEST_KEY_PASSPHRASE

    return KeyStore(signing_keystore_template, lambda: TEST_KEY_PASSPHRASE.encode())


@pytest.fixture(scope="module")
def medverify_ca(store: KeyStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mv-ca") / "ca.pem"
    path.write_bytes(store.export_certificate("ca"))
    return path


@pytest.fixture(scope="module")
def both_trusted(store: KeyStore, openssl_pki: Path) -> TrustPolicy:
    """medverify's own policy plus the openssl test CA, the way `keys trust` or `--trust` would add it."""
    return store.trust_policy().with_extra_anchors(TrustPolicy.from_pem_files([openssl_pki / "ca.pem"]).anchors)


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    return path


def dcmsign_verify(path: Path, ca: Path) -> tuple[bool, str]:
    """Run ``dcmsign --verify``; (passed, output). Passed means exit 0, 'OK' and no 'FAILED'."""
    result = subprocess.run(
        ["dcmsign", "--verify", "+rg", "+cf", ca, path], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    passed = result.returncode == 0 and "Verification : OK" in output and "Verification : FAILED" not in output
    return passed, output


def dcmsign_sign(pki: Path, src: Path, out: Path, *options: str, key: str = "rsa") -> None:
    result = subprocess.run(
        ["dcmsign", "--sign", pki / f"{key}.key", pki / f"{key}.pem", "-pw", *options, src, out],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def dcmconv(src: Path, out: Path, option: str) -> None:
    result = subprocess.run(["dcmconv", option, src, out], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def medverify_sign(src: Path, out: Path, key: SigningKey, **kwargs: object) -> None:
    ds = pydicom.dcmread(src)
    sign_dataset(ds, key, **kwargs)  # type: ignore[arg-type]
    ds.save_as(out)


def medverify_verify(path: Path, policy: TrustPolicy) -> SignatureReport:
    return verify_dataset(pydicom.dcmread(path), policy)


# ------------------------------------------------------------------------------------- medverify -> dcmsign

RSA_CASES = [(p, m) for p in SignatureProfile for m in (MacAlgorithm.SHA256, MacAlgorithm.SHA512)]


@pytest.mark.parametrize(("profile", "mac"), RSA_CASES, ids=[f"{p.value}-{m.value}" for p, m in RSA_CASES])
def test_dcmsign_verifies_medverify_rsa(
    ct: Path, tmp_path: Path, store: KeyStore, medverify_ca: Path, profile: SignatureProfile, mac: MacAlgorithm
) -> None:
    out = tmp_path / "signed.dcm"
    medverify_sign(ct, out, store.load_signing_key("rsa"), profile=profile, mac=mac)
    passed, output = dcmsign_verify(out, medverify_ca)
    assert passed, output


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "rtplan.dcm"])
def test_dcmsign_verifies_medverify_other_encodings(
    tmp_path: Path, store: KeyStore, medverify_ca: Path, name: str
) -> None:
    src, out = tmp_path / name, tmp_path / "signed.dcm"
    shutil.copy(get_testdata_file(name), src)
    medverify_sign(src, out, store.load_signing_key("rsa"))
    passed, output = dcmsign_verify(out, medverify_ca)
    assert passed, output


def test_dcmsign_verifies_medverify_ecdsa(ct: Path, tmp_path: Path, store: KeyStore, medverify_ca: Path) -> None:
    out = tmp_path / "signed.dcm"
    medverify_sign(ct, out, store.load_signing_key("ecdsa"))
    passed, output = dcmsign_verify(out, medverify_ca)
    assert passed, output


def test_dcmsign_rejects_medverify_signed_file_with_a_changed_pixel(
    ct: Path, tmp_path: Path, store: KeyStore, medverify_ca: Path
) -> None:
    out = tmp_path / "signed.dcm"
    medverify_sign(ct, out, store.load_signing_key("rsa"))
    ds = pydicom.dcmread(out)
    pixels = bytearray(ds.PixelData)
    pixels[100] ^= 0x04
    ds.PixelData = bytes(pixels)
    ds.save_as(out)
    passed, output = dcmsign_verify(out, medverify_ca)
    assert not passed, output
    assert "Verification : FAILED" in output or "failed" in output.lower()


def test_dcmsign_rejects_medverify_signature_under_an_unknown_ca(
    ct: Path, tmp_path: Path, store: KeyStore, openssl_pki: Path
) -> None:
    """The check above must be able to fail for trust too: dcmsign given another CA refuses our signer."""
    out = tmp_path / "signed.dcm"
    medverify_sign(ct, out, store.load_signing_key("rsa"))
    passed, output = dcmsign_verify(out, openssl_pki / "ca.pem")
    assert not passed, output


# ------------------------------------------------------------------------------------- dcmsign -> medverify

DCMSIGN_CASES = [
    ("rsa", ["+pb", "+m2"], "base", "SHA256"),
    ("rsa", ["+pc", "+m2"], "creator", "SHA256"),
    ("rsa", ["+pb"], "base", "RIPEMD160"),  # dcmsign's default MAC
    ("rsa", ["+pc", "+m5"], "creator", "SHA512"),
    ("ec", ["+m2"], None, "SHA256"),
    ("ec", [], None, "RIPEMD160"),
]


@pytest.mark.parametrize(("key", "options", "profile", "mac"), DCMSIGN_CASES, ids=lambda v: str(v))
def test_medverify_verifies_dcmsign(
    ct: Path,
    tmp_path: Path,
    openssl_pki: Path,
    both_trusted: TrustPolicy,
    key: str,
    options: list[str],
    profile: str | None,
    mac: str,
) -> None:
    out = tmp_path / "signed.dcm"
    dcmsign_sign(openssl_pki, ct, out, *options, key=key)
    assert dcmsign_verify(out, openssl_pki / "ca.pem")[0]
    report = medverify_verify(out, both_trusted)
    assert report.status is SignatureStatus.VALID, report.reasons
    (sig,) = report.signatures
    assert sig.mac_algorithm == mac
    assert sig.key_type == ("rsa" if key == "rsa" else "ecdsa")
    assert sig.signer is not None and "interop" in sig.signer
    if profile is not None:
        assert profile in sig.profiles
    assert report.pixel_data_covered is True


def test_openssl_ca_trusted_through_the_key_store(
    ct: Path, tmp_path: Path, openssl_pki: Path, keystore: KeyStore
) -> None:
    out = tmp_path / "signed.dcm"
    dcmsign_sign(openssl_pki, ct, out, "+pc", "+m2")
    assert medverify_verify(out, keystore.trust_policy()).status is SignatureStatus.UNTRUSTED_SIGNER
    keystore.trust((openssl_pki / "ca.pem").read_bytes())
    report = medverify_verify(out, keystore.trust_policy())
    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.problem_found is False


def test_medverify_rejects_dcmsign_signed_file_with_a_changed_attribute(
    ct: Path, tmp_path: Path, openssl_pki: Path, both_trusted: TrustPolicy
) -> None:
    out = tmp_path / "signed.dcm"
    dcmsign_sign(openssl_pki, ct, out, "+m2")
    result = subprocess.run(
        ["dcmodify", "-nb", "-m", "PatientName=Changed^Name", out], capture_output=True, check=False
    )
    assert result.returncode == 0
    assert not dcmsign_verify(out, openssl_pki / "ca.pem")[0]
    assert medverify_verify(out, both_trusted).status is SignatureStatus.INVALID


# ------------------------------------------------------------------------------------- transcoding

TRANSCODINGS = [("+ti", ImplicitVRLittleEndian), ("+tb", ExplicitVRBigEndian), ("+te", ExplicitVRLittleEndian)]


@pytest.mark.parametrize(("option", "syntax"), TRANSCODINGS, ids=[t[0] for t in TRANSCODINGS])
def test_medverify_signature_survives_transcoding(
    tmp_path: Path, store: KeyStore, medverify_ca: Path, both_trusted: TrustPolicy, option: str, syntax: str
) -> None:
    src, signed, converted = tmp_path / "mr.dcm", tmp_path / "signed.dcm", tmp_path / "converted.dcm"
    shutil.copy(get_testdata_file("MR_small_implicit.dcm" if option != "+ti" else "CT_small.dcm"), src)
    medverify_sign(src, signed, store.load_signing_key("rsa"), profile=SignatureProfile.CREATOR)
    dcmconv(signed, converted, option)
    assert pydicom.dcmread(converted).file_meta.TransferSyntaxUID == syntax
    report = medverify_verify(converted, both_trusted)
    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.problem_found is False
    passed, output = dcmsign_verify(converted, medverify_ca)
    if option != "+ti":
        assert passed, output
        return
    # A known limit of dcmsign: in Implicit VR it reads medverify's private pixel-binding block as UN, which it
    # cannot sign; it still checks the full signature (which leaves the block out), and medverify checks both.
    full, binding = output.split("Signature #2")
    assert "Verification : OK" in full, output
    assert "not signable" in binding, output
    assert [s.pixel_binding for s in report.signatures] == [False, True]


@pytest.mark.parametrize(("option", "syntax"), TRANSCODINGS, ids=[t[0] for t in TRANSCODINGS])
@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm"])
def test_dcmsign_signature_survives_transcoding(
    tmp_path: Path, openssl_pki: Path, both_trusted: TrustPolicy, option: str, syntax: str, name: str
) -> None:
    src, signed, converted = tmp_path / name, tmp_path / "signed.dcm", tmp_path / "converted.dcm"
    shutil.copy(get_testdata_file(name), src)
    dcmsign_sign(openssl_pki, src, signed, "+pb", "+m2")
    dcmconv(signed, converted, option)
    assert pydicom.dcmread(converted).file_meta.TransferSyntaxUID == syntax
    report = medverify_verify(converted, both_trusted)
    assert report.status is SignatureStatus.VALID, report.reasons
    assert report.problem_found is False


# ------------------------------------------------------------------------------------- dcmsign's blind spot


def test_element_added_after_dcmsign_is_reported(
    ct: Path, tmp_path: Path, openssl_pki: Path, both_trusted: TrustPolicy
) -> None:
    out = tmp_path / "signed.dcm"
    dcmsign_sign(openssl_pki, ct, out, "+pc", "+m2")
    result = subprocess.run(
        ["dcmodify", "-nb", "-i", "(0010,4000)=added later", out], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert str(pydicom.dcmread(out).PatientComments) == "added later"

    passed, output = dcmsign_verify(out, openssl_pki / "ca.pem")
    assert passed, output  # dcmsign does not notice

    report = medverify_verify(out, both_trusted)
    assert report.status is SignatureStatus.VALID
    assert [u.tag for u in report.uncovered] == ["(0010,4000)"]
    assert report.problem_found is True
    assert any("(0010,4000)" in r for r in report.reasons)


# ------------------------------------------------------------------------------------- private elements


def with_private_block(src: Path, out: Path) -> Path:
    ds = pydicom.dcmread(src)
    block = ds.private_block(0x0029, "ACME unknown 1.0", create=True)
    block.add_new(0x01, "LO", "vendor value")
    ds.save_as(out)
    return out


def test_unknown_private_elements_in_implicit_vr_like_dcmsign(
    tmp_path: Path, store: KeyStore, medverify_ca: Path, openssl_pki: Path, both_trusted: TrustPolicy
) -> None:
    """Both tools leave UN elements out; both verify each other's signature; medverify names what is left out."""
    src = with_private_block(Path(get_testdata_file("MR_small_implicit.dcm")), tmp_path / "private.dcm")
    ours, theirs = tmp_path / "ours.dcm", tmp_path / "theirs.dcm"
    medverify_sign(src, ours, store.load_signing_key("rsa"))
    dcmsign_sign(openssl_pki, src, theirs, "+m2")
    passed, output = dcmsign_verify(ours, medverify_ca)
    assert passed, output
    for path in (ours, theirs):
        report = medverify_verify(path, both_trusted)
        assert report.status is SignatureStatus.VALID, report.reasons
        assert [u.tag for u in report.uncovered] == ["(0029,1001)"]


def test_signed_unknown_private_element_does_not_survive_implicit_transcoding(
    tmp_path: Path, store: KeyStore, medverify_ca: Path, both_trusted: TrustPolicy
) -> None:
    """A known limit shared with dcmsign: a signed private element of an unknown creator reads as UN after
    conversion to Implicit VR, and can no longer be encoded for the MAC. Neither tool may call it valid."""
    src = with_private_block(Path(get_testdata_file("MR_small.dcm")), tmp_path / "private.dcm")
    signed, converted = tmp_path / "signed.dcm", tmp_path / "implicit.dcm"
    medverify_sign(src, signed, store.load_signing_key("rsa"))
    assert medverify_verify(signed, both_trusted).status is SignatureStatus.VALID
    dcmconv(signed, converted, "+ti")
    assert not dcmsign_verify(converted, medverify_ca)[0]
    report = medverify_verify(converted, both_trusted)
    assert report.status is not SignatureStatus.VALID
    assert "(0029,1001)" in " ".join(report.reasons)
