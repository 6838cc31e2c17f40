"""What several benchmarks share (imported as a sibling module: the scripts run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def medverify_command() -> list[str]:
    """The ``medverify`` console script beside this interpreter, else on PATH, else ``python -c``: not a pyenv
    shim when the real script is at hand (a shim adds a shell and a second interpreter lookup to every call)."""
    beside = Path(sys.executable).with_name("medverify")
    if beside.is_file():
        return [str(beside)]
    exe = shutil.which("medverify")
    if exe is not None:
        return [exe]
    return [sys.executable, "-c", "import sys; from verifier.cli import app_main; sys.exit(app_main())"]


def bytecode_env(env: dict[str, str], cache: Path | None) -> dict[str, str]:
    """``env`` with Python byte-code cached under ``cache`` (as ``pip install`` compiles an installed package, and
    without writing into the interpreter's site packages), or, with ``cache`` None, compiled at every start."""
    out = dict(env)
    if cache is None:
        out["PYTHONDONTWRITEBYTECODE"] = "1"
        out["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "medverify-bench-no-pycache")  # never written
    else:
        out.pop("PYTHONDONTWRITEBYTECODE", None)
        out["PYTHONPYCACHEPREFIX"] = str(cache)
    return out


@contextlib.contextmanager
def private_network() -> Iterator[list[str]]:
    """A private network namespace (``unshare -n``, root only) with its loopback up, held open by a sleeping
    process; yields the ``nsenter`` prefix that runs a command inside it, and ends the holder on exit."""
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"])
    try:
        time.sleep(0.3)
        if holder.poll() is not None:
            raise SystemExit("unshare -n failed: the Orthanc rows need root (or pass --no-orthanc)")
        yield ["nsenter", "-t", str(holder.pid), "-n"]
    finally:
        holder.kill()
        holder.wait()
