"""``medverify scan --dask``: a real scheduler and two real workers on loopback, started and stopped here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

if not os.environ.get("CI"):  # CI installs the dask extra: there a missing package must fail, not skip
    pytest.importorskip("distributed")

from testkit import run_cli as run

REPO = Path(__file__).resolve().parents[2]


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two single-threaded workers as separate processes; yields the scheduler address."""
    d = tmp_path_factory.mktemp("dask")
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(REPO),
        "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    }
    scheduler_file = d / "scheduler.json"
    procs = [
        subprocess.Popen(
            _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                  str(scheduler_file)),
            env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("the Dask scheduler did not start")
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    _dask("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                          "--local-directory", str(d)),
                    env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def home(keyed_home: Path) -> Path:
    """A home whose key store has the default key plus the 'rsa' (generator) and 'second' (acquisition) keys."""
    return keyed_home


def make_archive(root: Path, capsys: pytest.CaptureFixture[str]) -> list[Path]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    files = []
    for i in range(40):
        ds.SOPInstanceUID = generate_uid()
        path = root / f"d{i % 4}" / f"f{i:03d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path)
        files.append(path)
    # Signed by an acquisition key of the local CA: AUTHENTIC only if the workers got the trust policy.
    code, out, err = run(capsys, "sign", "--in-place", "--key", "second", *files[:5])
    assert code == 0, out + err
    return files


def verdicts(out: str) -> dict[str, tuple[str, str, str | None]]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {line["path"]: (line["verdict"], line["action"], line["sha256"]) for line in lines}


def test_scan_on_a_dask_cluster_matches_a_local_scan(
    cluster: str, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "archive"
    files = make_archive(root, capsys)

    code, out, err = run(capsys, "scan", root, "--dask", cluster, "--format", "jsonl")
    assert code == 0, err
    on_dask = verdicts(out)
    assert set(on_dask) == {str(f) for f in files}
    assert "Dask cluster tcp://127.0.0.1:" in err and "2 workers" in err
    assert sorted(v for v, _, _ in on_dask.values()).count("AUTHENTIC") == 5
    lines = [json.loads(line) for line in out.splitlines()]
    assert len({line["audit_id"] for line in lines}) == 40  # written by the driver, one record each

    code, out, err = run(capsys, "scan", root, "--no-audit", "--format", "jsonl", "--workers", "1")
    assert code == 0, err
    assert verdicts(out) == on_dask

    code, out, err = run(capsys, "scan", root, "--dask", cluster, "--format", "jsonl", "--incremental")
    assert (code, out) == (0, "")
    assert "40 unchanged" in err


def test_dask_local_cluster(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "archive"
    files = make_archive(root, capsys)
    for extra in files[8:]:
        extra.unlink()
    files = files[:8]
    with socket.socket() as taken, warnings.catch_warnings(record=True) as caught:
        try:  # Dask's default HTTP port, held by something else: no clash, no warning
            taken.bind(("127.0.0.1", 8787))
            taken.listen()
        except OSError:
            pass  # already held (e.g. by the scheduler of the tests above), as wanted
        warnings.simplefilter("always")
        code, out, err = run(capsys, "scan", root, "--dask", "local", "--format", "jsonl", "--no-audit")
    assert not [w for w in caught if "8787" in str(w.message)]
    assert code == 0, err
    found = verdicts(out)
    assert {str(f) for f in files} == set(found)
    assert "2 workers" in err


def test_unreachable_scheduler_is_an_error(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import dask

    (tmp_path / "empty").mkdir()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, _, err = run(capsys, "scan", tmp_path / "empty", "--dask", "tcp://127.0.0.1:9", "--no-audit")
    assert code == 2
    assert "cannot reach the Dask scheduler" in err
