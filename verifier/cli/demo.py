"""``medverify demo``: the whole product on the embedded defaults, from the first command.

It creates the keys on first use, signs real sample images, tampers with copies the way a forger would, verifies
everything and prints what medverify found (and, where DCMTK is installed, what ``dcmsign`` says of the same files).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import pydicom
import typer
from rich.table import Table

from provenance.errors import KeyStoreError
from provenance.keys import PASSPHRASE_ENV, KeyRole, KeyStore, create_passphrase_file, passphrase_source
from provenance.models import SignatureProfile
from provenance.signature import sign_dataset
from verifier.checker import Check, Checker
from verifier.cli import _common, app
from verifier.policy import Policy, load_policy
from verifier.result import FileResult
from verifier.settings import Settings
from verifier.setup import open_audit_log, passphrase_file_path

if TYPE_CHECKING:
    from detectors.models import DetectorConfig
    from verifier.audit import AuditLog
    from verifier.generation import GenerationKeys

__all__: list[str] = []

DEMO_KEY = "demo-scanner"


class _Case(NamedTuple):
    """A demo file: what was done to it, and the verdict and action medverify should give it."""

    path: Path
    what: str
    verdict: str
    action: str


def _open_store(settings: Settings) -> KeyStore:
    """The key store, initialised on first use; an unattended first run gets a generated passphrase file."""
    import os
    import sys

    file = passphrase_file_path(settings)
    has_passphrase = bool(os.environ.get(PASSPHRASE_ENV)) or (file is not None and file.exists())
    store = KeyStore(settings.keys_dir, passphrase_source(passphrase_file=file, interactive=True))
    if not has_passphrase and not sys.stdin.isatty():
        try:
            store.ca_certificate()
        except KeyStoreError:  # not initialised yet
            target = settings.key_passphrase_file or settings.keys_dir / "passphrase"
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            create_passphrase_file(target)
            _common.err_console.print(
                f"[yellow]note:[/] no key passphrase was configured; generated one in {target} (0600). "
                f"For production set {PASSPHRASE_ENV} or let medverify prompt for it."
            )
            store = KeyStore(settings.keys_dir, passphrase_source(passphrase_file=target, interactive=False))
    created = store.init()
    for info in created:
        _common.console.print(f"created key [bold]{info.name}[/] ({info.role.value}, {info.algorithm.value})")
    store.ensure(DEMO_KEY, KeyRole.ACQUISITION)
    return store


def _sample_files() -> list[tuple[str, Path]]:
    from pydicom.data import get_testdata_file

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("CT_small.dcm", "MR_small.dcm"):
            path = get_testdata_file(name)
            if path is not None:
                out.append((name.removesuffix(".dcm"), Path(str(path))))
    return out


def _forged_cases(store: KeyStore, out: Path) -> list[_Case]:
    """The sample images signed by the demo's acquisition key, then tampered with the way a forger would."""
    signer = store.load_signing_key(DEMO_KEY)
    cases: list[_Case] = []
    for stem, source in _sample_files():
        ds = pydicom.dcmread(source)
        unsigned = out / f"{stem}_unsigned.dcm"
        ds.save_as(unsigned)
        cases.append(_Case(unsigned, "original, never signed", "NO_EVIDENCE", "accept"))

        sign_dataset(ds, signer, profile=SignatureProfile.CREATOR)
        signed = out / f"{stem}_signed.dcm"
        ds.save_as(signed)
        cases.append(_Case(signed, f"signed by acquisition key '{DEMO_KEY}'", "AUTHENTIC", "accept"))

        bit = pydicom.dcmread(signed)
        pixels = bytearray(bit.PixelData)
        pixels[len(pixels) // 2] ^= 0x01
        bit.PixelData = bytes(pixels)
        flipped = out / f"{stem}_one_pixel_bit_flipped.dcm"
        bit.save_as(flipped)
        cases.append(_Case(flipped, "signed, then one pixel bit flipped", "TAMPERED", "reject"))

        added = pydicom.dcmread(signed)
        added.add_new(0x00104000, "LT", "added after signing")
        appended = out / f"{stem}_element_added.dcm"
        added.save_as(appended)
        cases.append(_Case(appended, "signed, then Patient Comments added", "AUTHENTIC", "flag"))

    data = cases[1].path.read_bytes()
    truncated = out / "truncated.dcm"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    cases.append(_Case(truncated, "signed file cut short", "MALFORMED", "reject"))
    return cases


def _generated_cases(keys: GenerationKeys, out: Path) -> list[_Case]:
    """Generated images, written as every generated image is (declared, audited, watermarked, signed): a lesion
    injected into a real MR image by the tamper generator, and a GAN sample then laundered the way a forger would
    (signature and private declaration stripped; its pixels still say where it came from)."""
    import numpy as np

    from provenance.signature import strip_signatures
    from verifier.generation import PairedSource, default_checkpoint, generate_signed_image, load_generator

    cases: list[_Case] = []
    source = dict(_sample_files()).get("MR_small")
    if source is not None:  # pragma: no branch - pydicom always ships it
        ds = pydicom.dcmread(source)
        frame = ds.pixel_array.astype(np.float64)
        real = PairedSource(
            pixels=(frame - frame.min()) / max(float(frame.max() - frame.min()), 1.0),
            value_range=(float(frame.min()), float(frame.max())),  # stored on the source's scale
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
        )
        path = out / "MR_small_lesion_injected.dcm"
        generate_signed_image(load_generator("tamper"), name="tamper", seed=1, path=path, modality="MR", keys=keys,
                              source=real, version="demo")  # fmt: skip
        cases.append(_Case(path, "lesion injected by the tamper generator, signed", "DECLARED_SYNTHETIC", "quarantine"))
    if default_checkpoint("gan") is not None:  # pragma: no branch - the package ships it
        generated = out / "gan_sample_as_generated.dcm"
        generate_signed_image(load_generator("gan"), name="gan", seed=7, path=generated, modality="MR", keys=keys,
                              version="demo")  # fmt: skip
        ds = pydicom.dcmread(generated)
        strip_signatures(ds)
        for tag in [t for t in ds.keys() if t.group % 2 == 1]:
            del ds[tag]
        del ds.SyntheticData  # as a forger would: nothing in the tags says what it is any more
        stripped = out / "gan_sample_tags_stripped.dcm"
        ds.save_as(stripped)
        generated.unlink()
        cases.append(
            _Case(stripped, "GAN sample, signature and declaration stripped", "DECLARED_SYNTHETIC", "quarantine")
        )
    return cases


def _dcmsign_says(path: Path, ca_pem: Path) -> str:
    exe = shutil.which("dcmsign")
    if exe is None:
        return "(dcmsign not installed)"
    proc = subprocess.run(
        [exe, "--verify", "+cf", str(ca_pem), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    text = proc.stdout + proc.stderr
    # A file may carry several signatures: dcmsign is OK only when none of them failed ("verification failed").
    if "Verification : OK" in text and "failed" not in text.lower():
        return "OK"
    if "no signatures" in text.lower() or ("Signature" not in text and proc.returncode == 0):
        return "no signature"
    return "FAILED"


def _why(result: FileResult) -> str:
    """The one reason the demo table shows for a file."""
    sig = result.signature
    if result.failed:
        return result.reasons[0].split(": ", 2)[-1]
    if sig is not None and sig.status.value not in ("VALID", "UNSIGNED"):
        return next((r for s in sig.signatures for r in s.reasons), "")
    if result.verdict.status.value == "DECLARED_SYNTHETIC" and sig is not None and sig.status.value == "UNSIGNED":
        return next((r.message for r in result.verdict.reasons if "watermark" in str(r.message)), "")
    if sig is not None and sig.uncovered:
        return "not covered by the signature: " + ", ".join(f"{u.tag} {u.keyword}" for u in sig.uncovered[:3])
    return result.verdict.reasons[0].message if result.verdict.reasons else ""


def _verdict_table(
    cases: list[_Case], check: Callable[[Path], FileResult], out: Path, ca_pem: Path
) -> tuple[Table, bool]:
    """medverify's verdict on every case beside dcmsign's, and whether every verdict was the expected one."""
    table = Table(title=f"medverify demo — files in {out}", show_lines=True)
    table.add_column("file / what was done", ratio=3)
    table.add_column("medverify", no_wrap=True)
    table.add_column("dcmsign", no_wrap=True)
    table.add_column("why", ratio=3)
    all_expected = True
    for case in cases:
        result = check(case.path)
        verdict, action = result.verdict.status.value, result.verdict.action.value
        all_expected &= (verdict, action) == (case.verdict, case.action)
        colour = {"accept": "green", "flag": "yellow", "quarantine": "magenta"}.get(action, "red")
        table.add_row(
            f"{case.path.name}\n[dim]{case.what}[/]",
            f"[{colour}]{verdict}\n{action}[/]",
            _dcmsign_says(case.path, ca_pem),
            _why(result),
        )
    return table, all_expected


def _detector_table(files: list[tuple[Path, str]], out: Path, check: Callable[[Path], FileResult]) -> Table:
    """The shipped detector's scores of ``files``, with a heatmap of each in ``out``/heatmaps."""
    table = Table(title="the detector's opinion, from the pixels alone (no provenance)", show_lines=True)
    table.add_column("file / what it is", ratio=3)
    table.add_column("synthetic", no_wrap=True)
    table.add_column("tamper", no_wrap=True)
    table.add_column("heatmap", ratio=2, overflow="fold")
    for path, what in files:
        detection = check(path).detection_dict() or {}
        if detection.get("synthetic_score") is None:
            table.add_row(f"{path.name}\n[dim]{what}[/]", "-", "-", str(detection.get("error", "not scored")))
            continue
        table.add_row(
            f"{path.name}\n[dim]{what}[/]",
            f"{detection['synthetic_score']:.3f} / {detection['threshold']:.3f}",
            f"{detection['tamper_score']:.3f} / {detection['tamper_threshold']:.3f}",
            str(Path(detection["heatmap"]).relative_to(out)) if detection.get("heatmap") else "-",
        )
    return table


def _detector_caption(model: DetectorConfig) -> str:
    """What the detector table means for this bundle: which heads can flag a file, and why the others cannot."""
    calibrated = model.training.get("calibration", {})
    disabled = [head for head, threshold in (("synthetic", model.threshold), ("tamper", model.tamper_threshold))
                if threshold >= 1.0]
    where = ("the out-of-fold scores it was calibrated on" if calibrated.get("cross_fit")
             else "the sources held out for its calibration")
    gate = calibrated.get("min_auc", 0.8)
    share = re.search(r"in (\d+%) of resamples of whole patients", str(calibrated.get("threshold_rule", "")))
    held = f" in {share.group(1)} of draws of whole patients" if share else ""
    text = f"Scores are calibrated probabilities / the bundle's thresholds (model {model.tag}). "
    if len(disabled) == 2:
        text += (f"Its thresholds are 1.0: on {where} neither head separated real from fake at AUC {gate}, so it flags "
                 "nothing and the verdicts above rest on provenance. ")
    elif disabled:
        text += (f"Its {disabled[0]} threshold is 1.0: on {where} that head did not separate real from fake at AUC "
                 f"{gate}, so it never flags; the other is set so that at most {model.target_fpr:.0%} of the real "
                 f"calibration images reach it{held}. ")
    else:
        text += f"Each is set so that at most {model.target_fpr:.0%} of the real calibration images reach it{held}. "
    return text + ("Compare the heatmap of the injected lesion with the file. "
                   "Figures: detectors/checkpoints/detector/MODEL_CARD.md.")


def _show_detector(cases: list[_Case], out: Path, store: KeyStore, site_policy: Policy, log: AuditLog) -> None:
    """The shipped detector's opinion of three of the files, from their pixels alone, with heatmaps."""
    from verifier.audit import Channel
    from verifier.detection import DetectorSetup

    setup = DetectorSetup(heatmap_dir=out / "heatmaps")
    pixels_only = Checker(
        checks=frozenset({Check.DETECTOR}), trust=store.trust_policy(), site_policy=site_policy, detector=setup
    )

    def check_pixels(path: Path) -> FileResult:
        result = pixels_only.check(path)
        log.append(result.audit_entry(channel=Channel.CLI))
        return result

    wanted = ("MR_small_unsigned.dcm", "MR_small_lesion_injected.dcm", "gan_sample_tags_stripped.dcm")
    shown = [(case.path, case.what) for case in cases if case.path.name in wanted]
    model = setup.load().config
    _common.console.print(_detector_table(shown, out, check_pixels))
    _common.console.print(_detector_caption(model))


@app.command(help="Show medverify at work on real sample images, using the embedded defaults.")
def demo(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Where to write the demo files (default: a temporary folder).")
    ] = None,
    detector: Annotated[
        bool, typer.Option("--detector/--no-detector", help="Also show the shipped detector's scores and heatmaps "
                           "(loads torch and the model).")
    ] = True,
) -> int:
    """Sign, tamper, generate, verify, and compare with dcmsign. Exit 0 when every file got the expected verdict."""
    from verifier.audit import Channel
    from verifier.generation import GenerationKeys

    settings = _common.settings()
    store = _open_store(settings)
    out = workdir or Path(tempfile.mkdtemp(prefix="medverify-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    ca_pem = out / "medverify-ca.pem"
    ca_pem.write_bytes(store.export_certificate("ca"))
    log = open_audit_log(settings)
    keys = GenerationKeys(
        signer=store.load_signing_key("generator"), key_name="generator", watermark_key=store.watermark_key(), log=log
    )
    cases = _forged_cases(store, out) + _generated_cases(keys, out)

    site_policy = load_policy(settings.policy_file)
    checker = Checker(
        checks=frozenset({Check.SIGNATURE, Check.WATERMARK}),
        trust=store.trust_policy(),
        site_policy=site_policy,
        watermark_keys=tuple(store.watermark_keys()),
    )

    def check_and_record(path: Path) -> FileResult:
        result = checker.check(path)
        return result.with_audit_id(log.append(result.audit_entry(channel=Channel.CLI)).id)

    table, all_expected = _verdict_table(cases, check_and_record, out, ca_pem)
    _common.console.print(table)
    if detector:
        _show_detector(cases, out, store, site_policy, log)
    _common.console.print(
        "dcmsign answers OK for the file with an element added after signing; medverify names the element that no "
        "signature covers. The stripped GAN sample carries no tag that says what it is; its pixel watermark leads "
        "back to the audit record of its generation. Every check above is in the audit log: `medverify audit list`, "
        "`medverify audit verify`."
    )
    _common.console.print(
        "Claim audits (reused scans, header contradictions, synthetic images): `medverify claims sample claims`, then "
        "`medverify claims audit claims --manifest claims/claims.csv --report report.html`."
    )
    _common.console.print(
        "What the intake quarantines waits for review: `medverify tokens create --scope review NAME`, "
        "`medverify serve`, then open http://127.0.0.1:8080/ui/quarantine (or `medverify quarantine list`)."
    )
    return 0 if all_expected else 1
