"""Shared fixtures. Keep this small: fixtures used by one test module belong in that module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from testkit import TEST_KEY_PASSPHRASE

from provenance.keys import KeyStore

pytest_plugins = [
    "fixtures_postgres",  # PostgreSQL server + audit_db_url (sqlite, postgresql)
    "fixtures_faults",  # stoppable_postgres, small_disk (tmpfs), tls_pki (test CA for TLS)
]


@pytest.fixture(scope="session")
def keystore_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised key store (local CA + default generator key), made once per session; never modify."""
    directory = tmp_path_factory.mktemp("keystore-template") / "keys"
    KeyStore(directory, lambda: TEST_KEY_PASSPHRASE.encode()).init()
    return directory


@pytest.fixture
def keystore_dir(keystore_template: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`keystore_template` (modes preserved) that a test may change."""
    destination = tmp_path / "keys"
    shutil.copytree(keystore_template, destination)
    return destination


@pytest.fixture
def keystore(keystore_dir: Path) -> KeyStore:
    """A :class:`KeyStore` over :func:`keystore_dir`, opened with :data:`TEST_KEY_PASSPHRASE`."""
    return KeyStore(keystore_dir, lambda: TEST_KEY_PASSPHRASE.encode())


@pytest.fixture
def key_passphrase() -> str:
    """The passphrase of :func:`keystore_template` and its copies."""
    return TEST_KEY_PASSPHRASE


# ----------------------------------------------------------------------------------- signatures and dcmtk

#: Extra keys that :func:`signing_keystore_template` adds to the template store (name, role, algorithm).
SIGNING_TEST_KEYS = (
    ("rsa", "generator", "rsa-2048"),
    ("second", "acquisition", "rsa-2048"),
    ("ecdsa", "generator", "ecdsa-p256"),
)


@pytest.fixture(scope="session")
def signing_keystore_template(keystore_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of :func:`keystore_template` with the RSA-2048 and ECDSA keys of SIGNING_TEST_KEYS; never modify."""
    from provenance.keys import KeyAlgorithm, KeyRole

    directory = tmp_path_factory.mktemp("signing-keystore") / "keys"
    shutil.copytree(keystore_template, directory)
    store = KeyStore(directory, lambda: TEST_KEY_PASSPHRASE.encode())
    for name, role, algorithm in SIGNING_TEST_KEYS:
        store.create(name, KeyRole(role), KeyAlgorithm(algorithm))
    return directory


@pytest.fixture
def signing_home(tmp_path: Path, signing_keystore_template: Path) -> Path:
    """A fresh medverify home whose key store is a copy of :func:`signing_keystore_template`."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(signing_keystore_template, home / "keys")
    return home


def _require_tools(*tools: str) -> None:
    """Skip when a command-line tool is missing, but fail on CI (env CI set), where it must be installed."""
    import os

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"not installed: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def dcmtk() -> None:
    """Require the DCMTK tools the signature tests use (skipped without them, a failure on CI)."""
    _require_tools("dcmsign", "dcmconv", "dcmodify", "dcmdump")


@pytest.fixture(scope="session")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA and two signers (RSA-2048, ECDSA P-256) made with the openssl CLI, as a dcmsign user would.

    Files: ``ca.pem``, ``ca.key``, ``rsa.key``/``rsa.pem``, ``ec.key``/``ec.pem`` (unencrypted PKCS#8). Validity
    starts a day ago: dcmsign rejects a signature made in the second of the certificate's notBefore.
    """
    import datetime as dt
    import subprocess

    _require_tools("openssl")
    d = tmp_path_factory.mktemp("openssl-pki")
    (d / "newcerts").mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.cnf").write_text(
        "[ ca ]\ndefault_ca = testca\n"
        "[ testca ]\ndir = .\ndatabase = ./index.txt\nnew_certs_dir = ./newcerts\nserial = ./serial\n"
        "default_md = sha256\npolicy = anything\nunique_subject = no\ncopy_extensions = none\n"
        "[ anything ]\ncommonName = supplied\norganizationName = optional\n"
        "[ v3_ca ]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "[ v3_signer ]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,nonRepudiation\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
    )
    now = dt.datetime.now(dt.UTC)
    start = (now - dt.timedelta(days=1)).strftime("%Y%m%d%H%M%SZ")
    end = (now + dt.timedelta(days=60)).strftime("%Y%m%d%H%M%SZ")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    def issue(name: str, subject: str, keyopts: list[str], *, ca: bool = False) -> None:
        openssl("genpkey", *keyopts, "-out", f"{name}.key")
        openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr")
        signer = ["-selfsign", "-keyfile", "ca.key"] if ca else ["-cert", "ca.pem", "-keyfile", "ca.key"]
        openssl(
            "ca", "-batch", "-config", "ca.cnf", *signer, "-in", f"{name}.csr", "-out", f"{name}.pem",
            "-startdate", start, "-enddate", end, "-extensions", "v3_ca" if ca else "v3_signer", "-notext",
        )  # fmt: skip

    rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    issue("ca", "/CN=dcmsign interop test CA/O=interop", rsa, ca=True)
    issue("rsa", "/CN=dcmsign RSA signer/O=interop", rsa)
    issue("ec", "/CN=dcmsign ECDSA signer/O=interop", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    return d


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_passphrase: str) -> Path:
    """An empty medverify home for CLI tests, isolated from the caller's settings; stdin is never a terminal."""
    import io
    import sys

    home = tmp_path / "home"
    monkeypatch.setenv("MEDVERIFY_HOME", str(home))
    monkeypatch.setenv("MEDVERIFY_KEY_PASSPHRASE", key_passphrase)
    for name in ("MEDVERIFY_CONFIG", "MEDVERIFY_KEY_PASSPHRASE_FILE", "MEDVERIFY_DEFAULT_KEY", "MEDVERIFY_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no prompt can hang a test
    return home


@pytest.fixture
def keyed_home(cli_home: Path, signing_keystore_template: Path) -> Path:
    """:func:`cli_home` with a copy of :func:`signing_keystore_template` as its key store."""
    cli_home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(signing_keystore_template, cli_home / "keys")
    return cli_home
