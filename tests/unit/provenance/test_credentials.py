"""C2PA Content Credentials read with c2pa-python, on manifests signed here with a certificate made here.

The certificate chain (a test CA and an ES256 end-entity certificate with the emailProtection usage C2PA signers
carry) is made in this file with ``cryptography``; the manifests are signed with c2pa-python. Nothing is
downloaded, and the signer is on no trust list: the manifests read back VALID (intact), not trusted.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provenance.credentials import CredentialsStatus, read_credentials
from verifier.claims.samples import with_content_credentials


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "T")])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)  # fmt: skip


@pytest.fixture(scope="module")
def signer_pem() -> tuple[bytes, bytes]:
    """(chain PEM, private key PEM) of a test generator's signing certificate under a test CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Test CA")).issuer_name(_name("Test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(ca=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    cert = (x509.CertificateBuilder().subject_name(_name("Imaginary Image AI")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    return chain, pem


def _image(path: Path) -> Path:
    rng = np.random.default_rng(3)
    pixels = cv2.GaussianBlur((rng.random((96, 128)) * 255).astype(np.uint8), (0, 0), 2)
    assert cv2.imwrite(str(path), pixels)
    return path


def _signed(tmp_path: Path, suffix: str, signer: tuple[bytes, bytes], source_type: str) -> Path:
    plain = _image(tmp_path / f"plain{suffix}")
    return with_content_credentials(plain, tmp_path / f"signed-{source_type}{suffix}", chain_pem=signer[0],
                                    key_pem=signer[1], source_type=source_type, generator=("ImageAI", "4.2"))


def _png_chunk_edit(data: bytes, chunk: bytes, offset: int) -> bytes:
    """``data`` with one byte of the first ``chunk`` flipped at ``offset`` into its data, CRC recomputed (so that
    only the C2PA validation, not the PNG decoder, can notice)."""
    out = bytearray(data)
    pos = 8
    while pos < len(out):
        (n,) = struct.unpack(">I", out[pos : pos + 4])
        if out[pos + 4 : pos + 8] == chunk:
            out[pos + 8 + offset] ^= 0x5A
            out[pos + 8 + n : pos + 12 + n] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : pos + 8 + n])))
            return bytes(out)
        pos += 12 + n
    raise AssertionError(f"no {chunk!r} chunk")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("source_type", ["trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"])
def test_generated_image_declares_itself(
    tmp_path: Path, signer_pem: tuple[bytes, bytes], suffix: str, source_type: str
) -> None:
    signed = _signed(tmp_path, suffix, signer_pem, source_type)
    creds = read_credentials(signed.read_bytes(), "png" if suffix == ".png" else "jpeg")
    assert creds is not None and creds.status is CredentialsStatus.VALID
    assert creds.declares_synthetic and creds.source_types == (source_type,)
    assert creds.claim_generator == "ImageAI 4.2" and creds.signer == "Imaginary Image AI"
    assert not creds.signer_trusted  # a test CA: intact, but on no trust list
    # The unsigned original has no manifest at all.
    assert read_credentials((tmp_path / f"plain{suffix}").read_bytes(), "png" if suffix == ".png" else "jpeg") is None


def test_a_camera_source_type_is_no_declaration(tmp_path: Path, signer_pem: tuple[bytes, bytes]) -> None:
    creds = read_credentials(_signed(tmp_path, ".png", signer_pem, "digitalCapture").read_bytes(), "png")
    assert creds is not None and creds.status is CredentialsStatus.VALID and not creds.declares_synthetic


def test_changed_pixels_or_signature_fail(tmp_path: Path, signer_pem: tuple[bytes, bytes]) -> None:
    data = _signed(tmp_path, ".png", signer_pem, "trainedAlgorithmicMedia").read_bytes()
    pixels = read_credentials(_png_chunk_edit(data, b"IDAT", 40), "png")
    assert pixels is not None and pixels.status is CredentialsStatus.INVALID and not pixels.declares_synthetic
    assert any("dataHash.mismatch" in p for p in pixels.problems)
    store_len = struct.unpack(">I", data[data.index(b"caBX") - 4 : data.index(b"caBX")])[0]
    signature = read_credentials(_png_chunk_edit(data, b"caBX", store_len - 40), "png")
    assert signature is not None and signature.status is CredentialsStatus.INVALID
    assert any(p.startswith("claimSignature") for p in signature.problems)


def test_a_damaged_manifest_is_malformed_not_an_exception() -> None:
    junk = b"\x89PNG\r\n\x1a\n" + b"c2pa" * 16
    creds = read_credentials(junk, "png")
    assert creds is not None and creds.status is CredentialsStatus.MALFORMED and creds.error
    with pytest.raises(TypeError):
        bool(creds)
