"""Fixtures of the fault and access tests (issue #10), shared by the HTTP API and the DICOM gateway tests:

* ``stoppable_postgres``: a PostgreSQL server of the test's own that the test stops and starts again;
* ``small_disk``: a 2 MiB tmpfs (mounting needs root: skipped locally without it, a failure in CI, which runs as root);
* ``tls_pki``: a test CA made with the openssl CLI, a server certificate for 127.0.0.1 whose key is encrypted with
  :data:`TLS_KEY_PASSPHRASE`, a client certificate, and a rogue CA with its own client certificate.

(The ``openssl_pki`` fixture of conftest makes DICOM signers: no subjectAltName and no serverAuth usage, which a TLS
client rightly refuses, so TLS has its own.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import require_tool

__all__ = ["TLS_KEY_PASSPHRASE", "Pg", "small_disk", "stoppable_postgres", "tls_pki"]

#: Test-only passphrase of the TLS server key; it must never reach any output.
TLS_KEY_PASSPHRASE = "tls-key-passphrase-Wm3q8RvB"


@dataclasses.dataclass
class Pg:
    """A running PostgreSQL server that can be stopped and started again on the same port and data."""

    bin_dir: Path
    data: Path
    port: int
    as_user: dict[str, Any]

    def ctl(self, *args: str) -> None:
        subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args],
                       check=True, capture_output=True, cwd=self.data.parent, **self.as_user)  # fmt: skip

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data.parent} -c fsync=off -c max_connections=60"
        self.ctl("-l", str(self.data.parent / "restart.log"), "-o", options, "start")


@pytest.fixture
def stoppable_postgres() -> Iterator[tuple[Pg, str]]:
    """A PostgreSQL server of this test's own (it is stopped and started again), and an empty database URL."""
    from fixtures_postgres import find_pg_bin, running_postgres

    bin_dir = find_pg_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are required in CI")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    import psycopg

    with running_postgres() as server:
        url = server.create_database()
        with psycopg.connect(host=server.host, port=server.port, user=server.user, dbname="postgres") as c:
            row = c.execute("SHOW data_directory").fetchone()
        assert row is not None
        data = Path(row[0])
        owner = data.stat().st_uid
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0 and owner != 0:
            as_user = {"user": owner, "group": pwd.getpwuid(owner).pw_gid, "extra_groups": []}
        pg = Pg(bin_dir=bin_dir, data=data, port=server.port, as_user=as_user)
        try:
            yield pg, url
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                pg.start()  # running_postgres stops it at the end


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root; CI runs as root, so there its absence is a failure)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        message = f"cannot mount a tmpfs ({done.stderr.strip() or 'not root'})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI runs the tests as root")
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca.pem``; ``server.pem``/``server.key`` (127.0.0.1, key encrypted); ``client.pem``/``client.key``;
    ``rogue-ca.pem`` and ``rogue-client.pem``/``rogue-client.key`` (a client the server must refuse)."""
    require_tool("openssl")
    d = tmp_path_factory.mktemp("tls-pki")

    def openssl(*args: str, **env: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, env={**os.environ, **env})

    def ca(name: str) -> None:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key")
        openssl(
            "req", "-x509", "-new", "-key", f"{name}.key", "-subj", f"/CN=medverify test {name}", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", f"{name}.pem",
        )  # fmt: skip

    def leaf(name: str, issuer: str, ext: str, *, encrypt: bool = False) -> None:
        key = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key"]
        if encrypt:
            key += ["-aes-256-cbc", "-pass", "env:TLS_PASS"]
        openssl(*key, TLS_PASS=TLS_KEY_PASSPHRASE)
        passin = ["-passin", "env:TLS_PASS"] if encrypt else []
        openssl("req", "-new", "-key", f"{name}.key", *passin, "-subj", f"/CN={name}", "-out", f"{name}.csr",
                TLS_PASS=TLS_KEY_PASSPHRASE)  # fmt: skip
        (d / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{ext}\n"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
            "-CAcreateserial", "-days", "30", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        )  # fmt: skip

    ca("ca")
    ca("rogue-ca")
    leaf("server", "ca", "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost", encrypt=True)
    leaf("client", "ca", "extendedKeyUsage=clientAuth")
    leaf("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth")
    assert b"ENCRYPTED" in (d / "server.key").read_bytes()
    return d
