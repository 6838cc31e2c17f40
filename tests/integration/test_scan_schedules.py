"""The cron line and the systemd units of docs/manual/scans.md, run as written.

Only the paths of this machine are swapped in (the medverify executable, the archive, the log folder, the home);
every option and redirection is the documentation's own. Two nights: the archive holds a tampered file, and the
second night's incremental scan, which checks nothing, must still exit 1 and name it, or an alert on the exit code
fires once and never again.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from testkit import TEST_KEY_PASSPHRASE, jsonl

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "manual" / "scans.md"


def doc_cron_line() -> str:
    text = DOC.read_text(encoding="utf-8")
    [line] = [ln for ln in text.splitlines() if re.match(r"^30 1 \* \* \* ", ln)]
    return line


def doc_units() -> tuple[str, str]:
    block = re.search(r"```ini\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block is not None, "the systemd units are gone from the scans manual"
    service, timer = block.group(1).split("# medverify-scan.timer\n")
    return service.replace("# medverify-scan.service\n", "", 1), timer


@pytest.fixture
def machine(tmp_path: Path, signing_keystore_template: Path) -> dict[str, Path]:
    """This machine's stand-ins for /usr/local/bin/medverify, /srv/pacs/archive, /var/log/medverify and the home."""
    exe = tmp_path / "bin" / "medverify"
    exe.parent.mkdir()
    python = shlex.quote(sys.executable)
    exe.write_text(f'#!/bin/sh\nexec {python} -c "from verifier.cli import app_main; app_main()" "$@"\n')
    exe.chmod(0o755)
    archive = tmp_path / "archive"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for i in range(3):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        (archive / f"s{i}").mkdir(parents=True)
        ds.save_as(archive / f"s{i}" / f"im{i}")
    return {"exe": exe, "archive": archive, "logs": tmp_path / "log", "tmp": tmp_path,
            "keys": signing_keystore_template}  # fmt: skip


def tamper_one(archive: Path, home: Path) -> Path:
    """Sign one file with the acquisition key, then change a pixel: TAMPERED, rejected."""
    from provenance.keys import KeyStore
    from provenance.signature import sign_dataset

    target = archive / "s0" / "im0"
    ds = pydicom.dcmread(target)
    sign_dataset(ds, KeyStore(home / "keys", lambda: TEST_KEY_PASSPHRASE.encode()).load_signing_key("second"))
    data = bytearray(ds.PixelData)
    data[100] ^= 0x10
    ds.PixelData = bytes(data)
    ds.save_as(target)
    return target


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra})
    return env


def test_the_documented_cron_line_alerts_every_night(machine: dict[str, Path]) -> None:
    line = doc_cron_line()
    command = line.split(None, 5)[5]  # after minute, hour, day of month, month, day of week
    assert "--incremental" in command and "%" not in command.replace("\\%", "")
    command = command.replace("\\%", "%")  # cron's own unescaping of %
    here = command.replace("/usr/local/bin/medverify", str(machine["exe"]))
    here = here.replace("/srv/pacs/archive", str(machine["archive"]))
    here = here.replace("/var/log/medverify", str(machine["logs"]))
    assert here.count(str(machine["tmp"])) == 4, here  # exactly the four paths were swapped, nothing else
    machine["logs"].mkdir()
    home = machine["tmp"] / "user"
    shutil.copytree(machine["keys"], home / ".medverify" / "keys")
    (home / ".medverify" / "keys" / "passphrase").write_text(TEST_KEY_PASSPHRASE + "\n")
    (home / ".medverify" / "keys" / "passphrase").chmod(0o600)
    tampered = tamper_one(machine["archive"], home / ".medverify")
    env = clean_env(HOME=str(home))

    nights = []
    for _ in range(2):
        done = subprocess.run(["/bin/sh", "-c", here], env=env, capture_output=True, text=True, timeout=300)
        nights.append(done.returncode)
    log = machine["logs"] / "scan.log"
    assert nights == [1, 1], log.read_text()
    [jsonl_file] = machine["logs"].glob("scan-*.jsonl")  # both nights today: one file, appended to
    lines = jsonl(jsonl_file.read_text())
    first, second = lines[:3], lines[3:]
    assert sorted(x["verdict"] for x in first) == ["NO_EVIDENCE", "NO_EVIDENCE", "TAMPERED"]
    # Night two checked nothing, and still names the tampered file (from its last record).
    assert [(x["path"], x["verdict"], x["checked"]) for x in second] == [(str(tampered), "TAMPERED", False)]
    assert "3 unchanged since the last scan (skipped)" in log.read_text()


def test_the_documented_systemd_units_verify_and_their_exec_start_runs(machine: dict[str, Path]) -> None:
    service, timer = doc_units()
    units = machine["tmp"] / "units"
    units.mkdir()
    home = machine["tmp"] / "var-lib-medverify"

    def here(text: str) -> str:
        return (
            text.replace("/usr/local/bin/medverify", str(machine["exe"]))
            .replace("/srv/pacs/archive", str(machine["archive"]))
            .replace("/var/lib/medverify", str(home))
            .replace("/var/log/medverify", str(machine["logs"]))
        )

    (units / "medverify-scan.service").write_text(here(service))
    (units / "medverify-scan.timer").write_text(timer)
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # Debian's systemd: a unit with an unknown key or a bad value is reported
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(units / "medverify-scan.service"), str(units / "medverify-scan.timer")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode, done.stderr.strip()) == (0, ""), done.stderr

    settings = dict(re.findall(r"^(\w+)=(.*)$", here(service), re.M))  # Environment= lines: read below
    assert settings["SuccessExitStatus"] == "1" and settings["Type"] == "oneshot"
    environment = dict(v.split("=", 1) for v in re.findall(r"^Environment=(.*)$", here(service), re.M))
    assert environment["MEDVERIFY_HOME"] == str(home)
    shutil.copytree(machine["keys"], home / "keys")
    Path(environment["MEDVERIFY_KEY_PASSPHRASE_FILE"]).write_text(TEST_KEY_PASSPHRASE + "\n")
    tampered = tamper_one(machine["archive"], home)
    target = settings["StandardOutput"].removeprefix("append:")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    argv = shlex.split(settings["ExecStart"])
    codes = []
    for _ in range(2):  # two starts of the timer
        with open(target, "a", encoding="utf-8") as out:
            done = subprocess.run(argv, env=clean_env(**environment), stdout=out, stderr=subprocess.PIPE, text=True,
                                  timeout=300)  # fmt: skip
        codes.append(done.returncode)
    assert codes == [1, 1]  # SuccessExitStatus=1: a finding, not a failed unit, every night
    lines = jsonl(Path(target).read_text())
    assert [(x["path"], x["checked"]) for x in lines[3:]] == [(str(tampered), False)]
