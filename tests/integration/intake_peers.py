"""Helpers of the intake tests (gateway, Orthanc plugin): real DCMTK peers, ports, and the sample uploads.

pynetdicom installs console scripts named like DCMTK's (storescu, storescp, echoscu) that may come first on PATH;
:func:`dcmtk_tool` finds DCMTK's own.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import TEST_KEY_PASSPHRASE, free_port, require_tool

__all__ = ["dataset_bytes", "dcmtk_tool", "free_port", "make_samples", "sender_env", "wait_port"]


def dcmtk_tool(name: str) -> str:
    """The path of DCMTK's ``name`` (not pynetdicom's script of the same name): skip locally, fail in CI."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=20)
            if "dcmtk" in (version.stdout + version.stderr).lower():
                return candidate
    return require_tool(f"dcmtk-{name}")  # skips (or fails in CI) with a name that says what is missing


def sender_env() -> dict[str, str]:
    """Environment for DCMTK senders: Debian's DCMTK leaves Nagle on unless TCP_NODELAY is set."""
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (fail early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Stop a server the test started: SIGTERM (its clean shutdown), then SIGKILL if it does not exit in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta (which receivers rewrite)."""
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _smooth_pixels(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 32, size // 32))
    image = np.kron(coarse, np.ones((32, 32)))
    return np.clip(image * 0.6 + 0.2 + rng.normal(0, 0.01, image.shape), 0.0, 1.0)


def make_samples(home: Path, out: Path) -> dict[str, Path]:
    """The uploads every intake test sends, made with the key store in ``home/keys``:

    ``real`` (pydicom's CT_small, unsigned), ``signed_real`` (the same, signed by the acquisition key ``second``),
    ``generated`` (512x512, signed by the generator key ``rsa`` and watermarked, as ``medverify generate`` writes
    it), ``unsigned_synthetic`` (the generated file with its signature and its Synthetic Data flag stripped; the
    watermark remains) and
    ``tampered`` (the signed real image with pixels changed after signing).
    """
    from provenance.declaration import SyntheticDeclaration
    from provenance.keys import KeyStore
    from provenance.models import MacAlgorithm, SignatureProfile
    from provenance.signature import sign_dataset, strip_signatures
    from verifier.audit import AuditLog
    from verifier.synthetic import write_generated

    out.mkdir(parents=True, exist_ok=True)
    store = KeyStore(home / "keys", lambda: TEST_KEY_PASSPHRASE.encode())
    samples: dict[str, Path] = {}

    real = Path(get_testdata_file("CT_small.dcm"))
    samples["real"] = out / "real.dcm"
    shutil.copyfile(real, samples["real"])

    ds = pydicom.dcmread(real)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    sign_dataset(ds, store.load_signing_key("second"), profile=SignatureProfile.BASE, mac=MacAlgorithm.SHA256)
    samples["signed_real"] = out / "signed_real.dcm"
    ds.save_as(samples["signed_real"], enforce_file_format=True)

    pixels = bytearray(ds.PixelData)
    pixels[1000:1064] = bytes(64)  # a black streak painted in after signing
    ds.PixelData = bytes(pixels)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    samples["tampered"] = out / "tampered.dcm"
    ds.save_as(samples["tampered"], enforce_file_format=True)

    declaration = SyntheticDeclaration(
        generator="vae",
        generator_version="test",
        model_sha256="0123456789abcdef" * 4,
        seed=7,
        generated_at=dt.datetime.now(dt.UTC),
    )
    samples["generated"] = out / "generated.dcm"
    with AuditLog.open(f"sqlite:///{home / 'audit.db'}") as log:
        write_generated(
            _smooth_pixels(512, 7),
            path=samples["generated"],
            modality="CT",
            declaration=declaration,
            signer=store.load_signing_key("rsa"),
            log=log,
            key_name="rsa",
            watermark_key=store.watermark_key(),
        )
    ds = pydicom.dcmread(samples["generated"])
    strip_signatures(ds)
    del ds.SyntheticData  # as a forger would: the watermark is what is left to find it by
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    samples["unsigned_synthetic"] = out / "unsigned_synthetic.dcm"
    ds.save_as(samples["unsigned_synthetic"], enforce_file_format=True)
    return samples


def send_cut_short(port: int, source: Path, keep: int, tmp_path: Path) -> tuple[int, str]:
    """Send ``source`` with its data set cut after ``keep`` bytes: pynetdicom sends a file's data set as raw
    bytes (no DCMTK tool sends a broken data set)."""
    from pynetdicom import AE, _config
    from pynetdicom.dsutils import split_dataset

    meta, offset = split_dataset(source)
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(source.read_bytes()[: offset + keep])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVERIFY")
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(broken)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    return int(rsp.Status), str(rsp.get("ErrorComment", "") or "")
