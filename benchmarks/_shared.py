"""What several benchmarks share (imported as a sibling module: the scripts run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator


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
