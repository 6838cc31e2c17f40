"""Fuzz the file entry point (the one scans and the CLI use) with structure-aware mutations of real DICOM files.

Run from the repository root: ``nice python benchmarks/fuzz.py [--cases 20000] [--seed 0] [--checks signature]``.

Seeds are real files from pydicom's test data (explicit, implicit and big-endian VR, RLE, JPEG lossless, JPEG-LS,
JPEG 2000, deflate, multi-frame, nested private sequences) plus a copy of ``CT_small.dcm`` signed with a throw-away
key. Each case applies one to three mutations that know the file's structure:

- ``length``: an element's length field set to 0, odd, undefined (0xFFFFFFFF), huge, or off by one;
- ``vr``: an explicit VR replaced by another VR or by garbage;
- ``truncate``: the file cut at an element boundary or anywhere;
- ``dims``: Rows, Columns, NumberOfFrames, BitsAllocated or SamplesPerPixel set to an extreme value;
- ``tsuid``: the Transfer Syntax UID replaced by another (the data set keeps its encoding);
- ``nest``: a sequence nested hundreds of items deep spliced in;
- ``fragments``: an encapsulated Pixel Data's item tags, lengths or delimiter damaged;
- ``signature``: bytes inside the Digital Signatures / MAC Parameters sequences changed;
- ``splice`` / ``swap`` / ``bitflip``: element ranges copied from another seed, swapped, or bits flipped.

Cases alternate between the two entry points: the scan's (the case written to a file,
:meth:`verifier.checker.Checker.check`, one audit record appended) and the intake's (the bytes as received,
:class:`verifier.intake.decide.Intake` ``check`` then ``record``, as the gateway, the Orthanc plugin and the
HTTP API do), in a worker process with an address-space limit. The parent kills a case that runs longer than
``--timeout`` seconds (a hang) and restarts the worker. Reported: cases, crashes (an exception escaping the
boundary or a dead worker; must be 0), hangs (0), answered cases without an audit record (0), peak memory of the
worker, cases/s, and the verdicts seen. Saves ``benchmarks/results/fuzz.json`` and exits 1 when a target is
missed. A crashing case is saved under ``benchmarks/results/fuzz-crashes/`` to reproduce it.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import io
import json
import multiprocessing
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pydicom
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG-LL.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "nested_priv_SQ.dcm",
)
PASSPHRASE = b"fuzz-throwaway-passphrase"  # a key store made for this run only
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_VRS = [b"AE", b"AS", b"CS", b"DA", b"DS", b"IS", b"LO", b"OB", b"OW", b"SQ", b"UL", b"US", b"UN", b"UT", b"FD"]
_TSUIDS = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.3.4.5.6.7",
    "",
]
TARGETS = {"crashes": 0, "hangs": 0, "unrecorded": 0}


# -- seeds and their structure ---------------------------------------------------------------------------------


class Seed:
    """A seed file's bytes and the byte ranges of its top-level elements (header start, value start, end)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.elements: list[tuple[int, int, int, int]] = []  # (tag, header start, value start, value end)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), defer_size=None)
        explicit = not ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1") == "1.2.840.10008.1.2"
        for tag in list(ds.keys()):
            raw = ds.get_item(tag)
            tell = getattr(raw, "value_tell", None)
            length = getattr(raw, "length", None)
            if tell is None or length is None:
                continue
            vr = data[tell - 8 : tell - 6] if explicit else b""
            header = 12 if explicit and data[tell - 10 : tell - 8] in _LONG_VRS else 8
            if explicit and vr not in _LONG_VRS:
                header = 8
            end = tell + (length if length != 0xFFFFFFFF else 0)
            self.elements.append((int(tag), tell - header, tell, min(end, len(data))))
        self.explicit = explicit


def load_seeds(workdir: Path) -> list[Seed]:
    seeds = []
    for name in SEED_FILES:
        try:
            path = get_testdata_file(name)
        except Exception:  # noqa: BLE001 - a seed from an optional data package may be missing
            continue
        if path:
            seeds.append(Seed(name, Path(str(path)).read_bytes()))
    seeds.append(Seed("CT_small-signed.dcm", _signed_seed(workdir)))
    return seeds


def _signed_seed(workdir: Path) -> bytes:
    from provenance.keys import KeyAlgorithm, KeyRole, KeyStore
    from provenance.signature import sign_dataset

    store = KeyStore(workdir / "keys", lambda: PASSPHRASE)
    store.init()
    store.create("fuzz-acquisition", KeyRole("acquisition"), KeyAlgorithm("rsa-2048"))
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    sign_dataset(ds, store.load_signing_key("fuzz-acquisition"))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- mutations ---------------------------------------------------------------------------------------------------


def _pick(rng: random.Random, seed: Seed) -> tuple[int, int, int, int] | None:
    return rng.choice(seed.elements) if seed.elements else None


def m_length(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    el = _pick(rng, seed)
    if el is None:
        return data
    _, start, value, end = el
    long_form = value - start == 12
    if not seed.explicit or long_form:
        off, fmt = value - 4, "<I"
        choices = [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, (end - value) + 1, max(0, end - value - 1), rng.randrange(1 << 32)]
    else:
        off, fmt = value - 2, "<H"
        choices = [0, 1, 0xFFFF, (end - value) + 1, max(0, end - value - 1), rng.randrange(1 << 16)]
    if off + struct.calcsize(fmt) <= len(data):
        struct.pack_into(fmt, data, off, rng.choice(choices) & (0xFFFFFFFF if fmt == "<I" else 0xFFFF))
    return data


def m_vr(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    el = _pick(rng, seed)
    if el is None or not seed.explicit:
        return data
    start = el[1]
    data[start + 4 : start + 6] = rng.choice([*_VRS, bytes(rng.randrange(256) for _ in range(2))])
    return data


def m_truncate(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    if seed.elements and rng.random() < 0.5:
        cut = rng.choice(seed.elements)[rng.choice((1, 2, 3))]
    else:
        cut = rng.randrange(len(data))
    return data[: max(cut, 0)]


def _dataset_edit(data: bytearray, edit: Callable[[pydicom.Dataset], None]) -> bytearray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(data)))
            edit(ds)
            buf = io.BytesIO()
            ds.save_as(buf)
        except Exception:  # noqa: BLE001 - a mutation that pydicom cannot write leaves the case unchanged
            return data
    return bytearray(buf.getvalue())


def m_dims(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    keyword = rng.choice(["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel", "BitsStored"])
    value = rng.choice([0, 1, 3, 7, 65535, 2**31 - 1, 2**31, 10**9, -1])

    def edit(ds: pydicom.Dataset) -> None:
        if keyword == "NumberOfFrames":
            ds.NumberOfFrames = str(value)
        else:
            ds[keyword].value = value & 0xFFFF if value >= 0 else 0xFFFF

    return _dataset_edit(data, edit)


def m_tsuid(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    target = rng.choice(_TSUIDS)
    old = b"1.2.840.10008.1.2"
    at = data.find(old, 132, 600)
    if at < 0:
        return data
    end = at
    while end < len(data) and data[end] not in (0, 0x20) and (chr(data[end]).isdigit() or data[end] == ord(".")):
        end += 1
    width = end - at
    new = target.encode()[:width].ljust(width, b"\0")
    data[at:end] = new
    return data


def m_nest(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    depth = rng.choice([50, 200, 1000, 5000])
    explicit = seed.explicit
    # An undefined-length sequence of undefined-length items, ``depth`` deep, in a private tag, inserted at the
    # end of the data set (before Pixel Data if there is one), written with raw bytes so pydicom cannot refuse it.
    head = b""
    for _ in range(depth):
        tag = struct.pack("<HH", 0x0009, 0x1010)
        head += tag + (b"SQ\0\0" if explicit else b"") + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    tail = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00" * depth
    if rng.random() < 0.3:
        tail = tail[: rng.randrange(len(tail))]
    pixel = next((e for e in seed.elements if e[0] == 0x7FE00010), None)
    private = next((e for e in seed.elements if e[0] > 0x00091010), None)
    at = (private or pixel or (0, len(data), 0, 0))[1]
    return data[:at] + head + tail + data[at:]


def m_fragments(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    pixel = next((e for e in seed.elements if e[0] == 0x7FE00010), None)
    if pixel is None:
        return data
    item_tags = [i for i in range(pixel[2], len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"][:64]
    if not item_tags:  # native pixel data: damage its length instead
        return m_length(data, seed, rng, [])
    at = rng.choice(item_tags)
    choice = rng.randrange(4)
    if choice == 0:
        struct.pack_into("<I", data, at + 4, rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)]))
    elif choice == 1:
        data[at : at + 4] = bytes(rng.randrange(256) for _ in range(4))
    elif choice == 2:
        delim = data.rfind(b"\xfe\xff\xdd\xe0")
        if delim > 0:
            del data[delim : delim + 8]
    else:
        struct.pack_into("<I", data, pixel[2] + 4, rng.randrange(1 << 16))  # the offset table's length
    return data


def m_signature(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    sigs = [e for e in seed.elements if e[0] in (0xFFFAFFFA, 0x4FFE0001)]
    if not sigs:
        return m_bitflip(data, seed, rng, [])
    _, start, value, end = rng.choice(sigs)
    span_end = end if end > value else len(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, max(start + 1, span_end))
        if i < len(data):
            data[i] = rng.randrange(256)
    return data


def m_splice(data: bytearray, seed: Seed, rng: random.Random, seeds: list[Seed]) -> bytearray:
    other = rng.choice(seeds)
    if not other.elements or not seed.elements:
        return data
    _, s, _, e = rng.choice(other.elements)
    at = rng.choice(seed.elements)[1]
    return data[:at] + other.data[s : max(e, s + 1)] + data[at:]


def m_swap(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    if len(seed.elements) < 2:
        return data
    a, b = sorted(rng.sample(seed.elements, 2), key=lambda e: e[1])
    if a[3] > b[1] or b[3] > len(data):
        return data
    return data[: a[1]] + data[b[1] : b[3]] + data[a[3] : b[1]] + data[a[1] : a[3]] + data[b[3] :]


def m_bitflip(data: bytearray, seed: Seed, rng: random.Random, _: list[Seed]) -> bytearray:
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(132, len(data)) if len(data) > 132 else rng.randrange(max(1, len(data)))
        if i < len(data):
            data[i] ^= 1 << rng.randrange(8)
    return data


MUTATORS: dict[str, Callable[[bytearray, Seed, random.Random, list[Seed]], bytearray]] = {
    "length": m_length,
    "vr": m_vr,
    "truncate": m_truncate,
    "dims": m_dims,
    "tsuid": m_tsuid,
    "nest": m_nest,
    "fragments": m_fragments,
    "signature": m_signature,
    "splice": m_splice,
    "swap": m_swap,
    "bitflip": m_bitflip,
}


def make_case(seeds: list[Seed], rng: random.Random) -> tuple[str, list[str], bytes]:
    seed = rng.choice(seeds)
    names = rng.sample(list(MUTATORS), rng.choice((1, 1, 2, 3)))
    data = bytearray(seed.data)
    for name in names:
        data = MUTATORS[name](data, seed, rng, seeds)
    return seed.name, names, bytes(data)


# -- the worker --------------------------------------------------------------------------------------------------


def _worker(conn: Connection, workdir: str, checks: str, memory_limit: int, entry: str) -> None:
    warnings.simplefilter("ignore")  # pydicom warns about every damaged value; the verdicts say what matters
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from provenance.trust import TrustPolicy
    from verifier.audit import AuditLog, Channel
    from verifier.checker import Checker, parse_checks
    from verifier.intake.decide import Intake, Peer

    policy: TrustPolicy = _trust(workdir)
    log = AuditLog.open(f"sqlite:///{workdir}/audit.db")
    selected = parse_checks(checks)
    keys = []
    if "watermark" in checks:
        from provenance.keys import KeyStore

        keys = [KeyStore(Path(workdir) / "keys", lambda: PASSPHRASE).watermark_key()]
    checker = Checker(checks=selected, trust=policy, watermark_keys=tuple(keys))
    intake = Intake(checker, audit_log=log)
    peer = Peer(channel=Channel.INTAKE, ae_title="FUZZER", address="127.0.0.1:104")
    case_file = Path(workdir) / f"case-{os.getpid()}.dcm"
    # Warm up (imports, the detector model) before the first timed case: a start-up is not a hang.
    checker.check(Path(str(get_testdata_file("CT_small.dcm"))))
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, data = message
        started = time.perf_counter()
        try:
            if entry == "scan" or (entry == "both" and index % 2 == 0):
                case_file.write_bytes(data)
                result = checker.check(case_file)
                audit_id = log.append(result.audit_entry(channel=Channel.SCAN, event="fuzz")).id
            else:
                decision = intake.record(intake.check(data, peer), outcome="fuzz")
                result, audit_id = decision.result, decision.audit_id
            answer = {"index": index, "verdict": result.verdict.status.value, "status": result.status,
                      "audit_id": audit_id}  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - a crash is what this harness looks for
            answer = {"index": index, "crash": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        answer["seconds"] = time.perf_counter() - started
        answer["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(answer)


def _trust(workdir: str) -> Any:
    from provenance.keys import KeyStore

    return KeyStore(Path(workdir) / "keys", lambda: PASSPHRASE).trust_policy()


class Runner:
    """A worker process fed one case at a time; a case that does not answer in ``timeout`` s is a hang."""

    def __init__(self, workdir: Path, checks: str, timeout: float, memory_limit: int, entry: str = "both") -> None:
        self.workdir, self.checks, self.timeout, self.memory_limit = workdir, checks, timeout, memory_limit
        self.entry = entry
        self.ctx = multiprocessing.get_context("fork")
        self.proc: Any = None
        self.conn: Connection | None = None

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker, args=(child, str(self.workdir), self.checks, self.memory_limit, self.entry), daemon=True
        )
        self.proc.start()
        child.close()
        self.conn = parent
        if not parent.poll(300) or parent.recv() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def run(self, index: int, data: bytes) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        assert self.conn is not None
        self.conn.send((index, data))
        if self.conn.poll(self.timeout):
            try:
                answer: dict[str, Any] = self.conn.recv()
                return answer
            except EOFError:
                pass
            self._stop()
            return {"index": index, "crash": f"worker died (exit code {self.proc.exitcode})"}
        self._stop()
        return {"index": index, "hang": True}

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = None

    def close(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(10)
        self._stop()


def run(cases: int, *, seed: int = 0, checks: str = "signature", timeout: float = 5.0,
        memory_limit: int = 6 * 1024**3, workdir: Path | None = None, progress: bool = False,
        crash_dir: Path | None = None, entry: str = "both") -> dict[str, Any]:  # fmt: skip
    """Run ``cases`` fuzz cases and return the figures (see the module docstring)."""
    from verifier.audit import AuditLog

    own = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="medverify-fuzz-") if own else None
    work = Path(tmp.name) if tmp else Path(workdir)  # type: ignore[arg-type]
    try:
        seeds = load_seeds(work)
        rng = random.Random(seed)
        runner = Runner(work, checks, timeout, memory_limit, entry)
        crashes: list[dict[str, Any]] = []
        hangs: list[dict[str, Any]] = []
        unrecorded = 0
        verdicts: collections.Counter[str] = collections.Counter()
        by_mutation: collections.Counter[str] = collections.Counter()
        peak = 0
        slowest = 0.0
        started = time.perf_counter()
        for index in range(cases):
            seed_name, names, data = make_case(seeds, rng)
            by_mutation.update(names)
            answer = runner.run(index, data)
            peak = max(peak, int(answer.get("maxrss_kib", 0)))
            slowest = max(slowest, float(answer.get("seconds", 0.0)))
            case = {"index": index, "seed": seed_name, "mutations": names}
            if "crash" in answer:
                crashes.append({**case, "error": answer["crash"], "traceback": answer.get("traceback", "")})
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"case-{seed}-{index}.dcm").write_bytes(data)
            elif answer.get("hang"):
                hangs.append(case)
                if crash_dir is not None:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"hang-{seed}-{index}.dcm").write_bytes(data)
            else:
                verdicts[f"{answer['verdict']}/{answer['status']}"] += 1
                if answer.get("audit_id") is None:
                    unrecorded += 1
            if progress and (index + 1) % 500 == 0:
                rate = (index + 1) / (time.perf_counter() - started)
                print(f"  {index + 1}/{cases} cases, {rate:.0f}/s, crashes {len(crashes)}, hangs {len(hangs)}",
                      file=sys.stderr, flush=True)  # fmt: skip
        elapsed = time.perf_counter() - started
        runner.close()
        log = AuditLog.open(f"sqlite:///{work}/audit.db")
        answered = cases - len(crashes) - len(hangs)
        in_log = log.size()
        log.close()
        return {
            "cases": cases,
            "seed": seed,
            "checks": checks,
            "entry": entry,
            "seeds": [s.name for s in seeds],
            "crashes": len(crashes),
            "hangs": len(hangs),
            "unrecorded": unrecorded + max(0, answered - in_log),
            "audit_records": in_log,
            "peak_worker_rss_mib": round(peak / 1024, 1),
            "slowest_case_s": round(slowest, 3),
            "cases_per_s": round(cases / elapsed, 1),
            "verdicts": dict(verdicts.most_common()),
            "mutations": dict(by_mutation.most_common()),
            "crash_examples": crashes[:5],
            "hang_examples": hangs[:5],
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checks", default="signature", help="pipeline checks, as for medverify verify --checks")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds after which a case is a hang")
    parser.add_argument("--entry", choices=("both", "scan", "intake"), default="both", help="entry points to drive")
    args = parser.parse_args(argv)
    figures = run(args.cases, seed=args.seed, checks=args.checks, timeout=args.timeout, progress=True,
                  crash_dir=RESULTS / "fuzz-crashes", entry=args.entry)  # fmt: skip
    figures["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    figures["python"] = sys.version.split()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(figures, indent=2))
    print(f"cases {figures['cases']}  ({figures['cases_per_s']}/s, checks: {figures['checks']}, entry: {args.entry})")
    for key, target in TARGETS.items():
        mark = "PASS" if figures[key] <= target else "FAIL"
        print(f"  {key:<12} {figures[key]:>6}   target {target}   {mark}")
    print(f"  peak worker memory {figures['peak_worker_rss_mib']} MiB; slowest case {figures['slowest_case_s']} s")
    print(f"  audit records {figures['audit_records']}")
    print("  verdicts: " + ", ".join(f"{k} {v}" for k, v in figures["verdicts"].items()))
    for crash in figures["crash_examples"]:
        print(f"  crash: case {crash['index']} ({crash['seed']}, {crash['mutations']}): {crash['error'][:200]}")
    return 0 if all(figures[k] <= t for k, t in TARGETS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
