"""The Orthanc plugin end to end: Debian's Orthanc 1.10 + orthanc-python 4.0 with the script that
``medverify orthanc install-plugin`` writes, fed by DCMTK's storescu (C-STORE) and by HTTP (REST).

Orthanc 1.10 cannot bind to loopback only, so it runs in a private network namespace (``unshare -n``) where only
loopback exists; the senders join that namespace with ``nsenter``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from intake_peers import dcmtk_tool, make_samples
from testkit import TEST_KEY_PASSPHRASE, require_tool, run_cli

from verifier.audit import AuditLog

pytestmark = pytest.mark.dcmtk

_PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
HTTP_PORT, DICOM_PORT = 8042, 4242  # inside the private namespace: nothing else can bind or reach them

#: Run inside the namespace: POST each file to /instances, then list what Orthanc stored (one JSON line each).
_REST_CLIENT = """
import json, sys, urllib.error, urllib.request
base = "http://127.0.0.1:%d" % int(sys.argv[1])
for path in sys.argv[2:]:
    request = urllib.request.Request(base + "/instances", data=open(path, "rb").read(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    print(json.dumps({"path": path, "status": status, "body": body.decode("utf-8", "replace")}))
with urllib.request.urlopen(base + "/instances?expand", timeout=60) as answer:
    print(json.dumps({"stored": [i["MainDicomTags"]["SOPInstanceUID"] for i in json.load(answer)]}))
"""


@pytest.fixture(scope="module")
def sample_home(signing_keystore_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("orthanc-samples") / "home"
    home.mkdir()
    shutil.copytree(signing_keystore_template, home / "keys")
    return home


@pytest.fixture(scope="module")
def samples(sample_home: Path) -> dict[str, Path]:
    return make_samples(sample_home, sample_home.parent / "uploads")


@pytest.fixture
def netns() -> Iterator[int]:
    """A private network namespace with loopback up, held by a sleeping process; yields that process's pid."""
    for tool in ("Orthanc", "unshare", "nsenter", "ip"):
        require_tool(tool)
    if not Path(_PYTHON_PLUGIN).exists():
        require_tool("orthanc-python")  # skipped locally, a failure in CI: tests/run.sh installs it
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 900"])
    try:
        time.sleep(0.3)
        if holder.poll() is not None:
            pytest.fail(f"unshare -n failed (exit {holder.returncode}); the Orthanc tests need root")
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _in_netns(pid: int, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},  # Debian's DCMTK leaves Nagle on otherwise
    )


@contextlib.contextmanager
def _orthanc(pid: int, config: Path, log: Path) -> Iterator[None]:
    env = {**os.environ, "MEDVERIFY_KEY_PASSPHRASE": TEST_KEY_PASSPHRASE, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", "Orthanc", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 120
            while "Orthanc has started" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start:\n{log.read_text(errors='replace')[-4000:]}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path
) -> Path:
    """An Orthanc configuration (with comments, as Orthanc allows) and ``medverify orthanc install-plugin``."""
    config = tmp_path / "orthanc" / "orthanc.json"
    config.parent.mkdir()
    storage = tmp_path / "orthanc" / "storage"
    config.write_text(
        "{\n  // a test Orthanc: private namespace, no authentication\n"
        f'  "Name": "medverify-test", "StorageDirectory": "{storage}", "IndexDirectory": "{storage}",\n'
        f'  "HttpPort": {HTTP_PORT}, "DicomPort": {DICOM_PORT}, "DicomAet": "ORTHANC",\n'
        '  /* the plugin is added by install-plugin */ "Plugins": [],\n'
        '  "RemoteAccessAllowed": false, "AuthenticationEnabled": false, "DicomCheckCalledAet": false\n}\n'
    )
    monkeypatch.setenv("MEDVERIFY_HOME", str(home))
    for name in ("MEDVERIFY_CONFIG", "MEDVERIFY_DB_URL", "MEDVERIFY_GATEWAY_ALLOWED_CALLERS"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run_cli(
        capsys, "orthanc", "install-plugin", "--config", config, "--checks", "signature,watermark",
        "--quarantine", home / "quarantine",
    )  # fmt: skip
    assert code == 0, err
    assert "medverify_plugin.py" in out
    written = json.loads(config.read_text())
    assert written["PythonScript"].endswith("medverify_plugin.py") and _PYTHON_PLUGIN in written["Plugins"]
    assert written["MedVerify"]["Home"] == str(home)
    assert (config.parent / "orthanc.json.medverify-backup").exists()
    return config


def _cstore(pid: int, path: Path) -> str:
    """storescu inside the namespace; the DIMSE status of the response, e.g. ``0x0000: Success``."""
    done = _in_netns(pid, dcmtk_tool("storescu"), "-d", "-aet", "STORESCU", "-aec", "ORTHANC", "127.0.0.1",
                     str(DICOM_PORT), str(path))  # fmt: skip
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "DIMSE Status" in line]
    assert lines, (done.stdout + done.stderr)[-2000:]
    return lines[-1].split("DIMSE Status", 1)[1].split(":", 1)[1].strip()


def _rest(pid: int, paths: list[Path]) -> tuple[dict[str, tuple[int, str]], list[str]]:
    done = _in_netns(pid, sys.executable, "-c", _REST_CLIENT, str(HTTP_PORT), *map(str, paths))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    answers = {Path(r["path"]).stem: (r["status"], r["body"]) for r in lines if "path" in r}
    return answers, lines[-1]["stored"]


def test_orthanc_plugin_refuses_fakes_over_cstore_and_rest(
    netns: int,
    sample_home: Path,
    samples: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pydicom

    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(sample_home / "keys", home / "keys")
    config = _install(capsys, monkeypatch, tmp_path, home)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a DICOM file" * 20)
    log = tmp_path / "orthanc.log"
    with _orthanc(netns, config, log):
        sent = ("real", "generated", "unsigned_synthetic", "tampered")
        cstore = {name: _cstore(netns, samples[name]) for name in sent}
        rest, stored = _rest(netns, [samples["signed_real"], samples["generated"], samples["tampered"], garbage])
        # A reviewer releases the generated image quarantined over REST: it goes into Orthanc past the filter.
        monkeypatch.setenv("MEDVERIFY_ORTHANC_URL", f"http://127.0.0.1:{HTTP_PORT}")
        released_id = "intake-" + hashlib.sha256(samples["generated"].read_bytes()).hexdigest()
        cli = [sys.executable, "-c", "from verifier.cli import app_main; app_main()"]
        release = _in_netns(netns, *cli, "quarantine", "release", released_id, "-m", "research image, for Orthanc")
        assert release.returncode == 0, release.stderr[-2000:]
        _, stored_after = _rest(netns, [])

    # C-STORE: the real image is stored; fakes get a failure status (quarantined 0xC003, rejected 0xC001).
    assert cstore["real"] == "0x0000: Success", log.read_text()[-3000:]
    assert cstore["generated"].startswith("0xc003") and cstore["unsigned_synthetic"].startswith("0xc003"), cstore
    assert cstore["tampered"].startswith("0xc001"), cstore
    # REST: a real HTTP error with the verdict, not Orthanc's 200 "FilteredOut".
    assert rest["signed_real"][0] == 200 and json.loads(rest["signed_real"][1])["Status"] == "Success"
    status, body = rest["generated"]
    assert status == 403 and json.loads(body)["Status"] == "Quarantined"
    assert json.loads(body)["Verdict"] == "DECLARED_SYNTHETIC"
    status, body = rest["tampered"]
    assert status == 403 and json.loads(body)["Verdict"] == "TAMPERED" and json.loads(body)["AuditId"] > 0
    assert rest["garbage"][0] == 400 and json.loads(rest["garbage"][1])["Verdict"] == "UNREADABLE"
    # Exactly the two genuine images are in Orthanc.
    expected = {str(pydicom.dcmread(samples[n]).SOPInstanceUID) for n in ("real", "signed_real")}
    assert set(stored) == expected
    assert set(stored_after) == expected | {str(pydicom.dcmread(samples["generated"]).SOPInstanceUID)}

    # Named by content: the generated image over C-STORE (re-encoded by storescu, with Orthanc's file meta) and
    # over REST (the file as is) are two contents; plus the unsigned synthetic one.
    assert len(list((home / "quarantine").glob("*.dcm"))) == 2  # and the released one in released/
    assert (home / "quarantine" / "released" / f"{released_id.removeprefix('intake-')}.dcm").is_file()
    assert not list((home / "quarantine" / "released").glob("*.orthanc"))  # the one-use marker was used
    for verdict_file in (home / "quarantine").glob("*.json"):
        record = json.loads(verdict_file.read_text())
        assert record["verdict"] == "DECLARED_SYNTHETIC" and isinstance(record["audit_id"], int)
    with AuditLog.open(f"sqlite:///{home / 'audit.db'}") as audit:
        records = [r.entry for r in audit.query(channel="intake")]
    assert len(records) == 9  # one per upload: 4 over C-STORE, 4 over REST, and the released one
    dicom = [r for r in records if r.details["intake"]["origin"] == "orthanc-dicom"]
    assert len(dicom) == 4 and all(r.peer_ae_title == "STORESCU" for r in dicom)
    assert sorted(r.details["intake"]["outcome"] for r in records) == [
        "quarantined", "quarantined", "quarantined", "refused", "refused", "refused", "stored", "stored",
        "stored-after-review",
    ]  # fmt: skip


def test_orthanc_plugin_fails_closed_when_medverify_cannot_start(
    netns: int, samples: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A home where no key store can be made (its keys path is a file): the plugin cannot check, so Orthanc must
    store nothing. (An empty home is no longer such a case: the key store is created on first use.)"""
    home = tmp_path / "broken-home"
    home.mkdir()
    config = _install(capsys, monkeypatch, tmp_path, home)
    (home / "keys").write_text("not a key store\n")
    log = tmp_path / "orthanc.log"
    with _orthanc(netns, config, log):
        status = _cstore(netns, samples["real"])
        rest, stored = _rest(netns, [samples["signed_real"]])
    assert status.startswith("0xa700"), status
    assert rest["signed_real"][0] == 503 and "every upload is refused" in rest["signed_real"][1]
    assert stored == []
    assert "every upload is refused" in log.read_text()


# ------------------------------------------------------------------------------------- a PACS that re-encodes

#: Inside the namespace: POST the file to /instances, then save what Orthanc gives back to the second path.
_ROUND_TRIP = """
import json, sys, urllib.request
base = "http://127.0.0.1:%d" % int(sys.argv[1])
request = urllib.request.Request(base + "/instances", data=open(sys.argv[2], "rb").read(), method="POST")
with urllib.request.urlopen(request, timeout=60) as answer:
    stored = json.load(answer)
with urllib.request.urlopen(base + "/instances/%s/file" % stored["ID"], timeout=60) as answer:
    open(sys.argv[3], "wb").write(answer.read())
print(json.dumps(stored))
"""


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70"], ids=["jpeg-ls-lossless", "jpeg-lossless-sv1"]
)  # (RLE: Orthanc 1.10 handed the file back in Explicit VR Little Endian, not re-encoded)
def test_signed_image_stays_authentic_through_orthanc_lossless_ingest_transcoding(
    netns: int, keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], syntax: str
) -> None:
    """Orthanc, set to compress its storage and to re-encode every upload losslessly (IngestTranscoding), hands
    back a medverify-signed image in another transfer syntax: it must verify AUTHENTIC by the pixel binding."""
    import pydicom
    from pydicom.data import get_testdata_file
    from testkit import jsonl

    signed, back = tmp_path / "signed.dcm", tmp_path / "from-orthanc.dcm"
    code, out, err = run_cli(capsys, "sign", get_testdata_file("CT_small.dcm"), "-o", signed, "--key", "second")
    assert code == 0, out + err
    storage = tmp_path / "orthanc" / "storage"
    config = tmp_path / "orthanc" / "orthanc.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "Name": "medverify-transcoding", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
                "HttpPort": HTTP_PORT, "DicomPort": DICOM_PORT, "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False, "Plugins": [], "StorageCompression": True, "IngestTranscoding": syntax,
            }
        )
    )  # fmt: skip
    log = tmp_path / "orthanc.log"
    with _orthanc(netns, config, log):
        done = _in_netns(netns, sys.executable, "-c", _ROUND_TRIP, str(HTTP_PORT), str(signed), str(back))
    assert done.returncode == 0, done.stderr[-2000:] + log.read_text(errors="replace")[-2000:]
    assert pydicom.dcmread(back, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax

    code, out, err = run_cli(capsys, "verify", "--format", "jsonl", back)
    (line,) = jsonl(out)
    assert (code, line["verdict"], line["action"]) == (0, "AUTHENTIC", "accept"), line["reasons"]
    assert [s["status"] for s in line["signature"]["signatures"]] == ["TRANSCODED", "VALID"]
    assert line["signature"]["pixel_binding"]["status"] == "MATCH"
    assert line["signature"]["pixel_binding"]["transfer_syntax"] == syntax
