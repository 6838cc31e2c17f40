"""``medverify demo``: the whole product on the embedded defaults, from the first command.

It creates the keys on first use, signs real sample images, tampers with copies the way a forger would, verifies
everything and prints what medverify found (and, where DCMTK is installed, what ``dcmsign`` says of the same files).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pydicom
import typer
from rich.table import Table

from provenance.errors import KeyStoreError
from provenance.keys import PASSPHRASE_ENV, KeyRole, KeyStore, create_passphrase_file, passphrase_source
from provenance.models import SignatureProfile
from provenance.signature import sign_dataset
from verifier.checker import Check, Checker
from verifier.cli import _common, app
from verifier.policy import load_policy
from verifier.result import FileResult
from verifier.settings import Settings
from verifier.setup import open_audit_log, passphrase_file_path

if TYPE_CHECKING:
    from detectors.models import DetectorConfig

__all__: list[str] = []

DEMO_KEY = "demo-scanner"


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


def _generate_tampered_copy(store: KeyStore, out: Path, settings: Settings) -> Path | None:
    """A CT-GAN-style tampered copy of a real MR image, written like every generated image: declared and signed."""
    import datetime as dt
    import hashlib

    import numpy as np

    from detectors.generators import create_generator
    from provenance.declaration import SyntheticDeclaration
    from verifier.synthetic import write_generated

    sources = dict(_sample_files())
    source = sources.get("MR_small")
    if source is None:  # pragma: no cover - pydicom always ships it
        return None
    ds = pydicom.dcmread(source)
    frame = ds.pixel_array.astype(np.float64)
    real = (frame - frame.min()) / max(float(frame.max() - frame.min()), 1.0)
    model = create_generator("tamper", seed=0)
    fake = model.paired_fake(real, seed=1)
    declaration = SyntheticDeclaration(
        generator="tamper",
        generator_version="demo",
        model_sha256=model.digest or hashlib.sha256(b"tamper").hexdigest(),
        seed=1,
        generated_at=dt.datetime.now(dt.UTC),
        kind="paired",
        source_sop_class_uid=str(ds.SOPClassUID),
        source_sop_instance_uid=str(ds.SOPInstanceUID),
    )
    path = out / "MR_small_lesion_injected.dcm"
    write_generated(
        fake,
        path=path,
        modality="MR",
        declaration=declaration,
        signer=store.load_signing_key("generator"),
        log=open_audit_log(settings),
        key_name="generator",
        watermark_key=store.watermark_key(),
        value_range=(float(frame.min()), float(frame.max())),  # stored on the source's scale
    )
    return path


def _generate_stripped_sample(store: KeyStore, out: Path, settings: Settings) -> Path | None:
    """A GAN sample written as every generated image is (declared, watermarked, signed), then laundered the way a
    forger would: signature and private declaration stripped. Its pixels still say where it came from."""
    import datetime as dt

    import numpy as np

    from detectors.generators import create_generator
    from provenance.declaration import SyntheticDeclaration
    from provenance.signature import strip_signatures
    from verifier.cli.generate import default_checkpoint
    from verifier.synthetic import write_generated

    checkpoint = default_checkpoint("gan")
    if checkpoint is None:  # pragma: no cover - the package ships it
        return None
    model = create_generator("gan", checkpoint=checkpoint)
    pixels = model.sample(1, seed=7, size=256)[0]
    declaration = SyntheticDeclaration(
        generator="gan",
        generator_version="demo",
        model_sha256=str(model.digest),
        seed=7,
        generated_at=dt.datetime.now(dt.UTC),
        kind="sample",
    )
    generated = out / "gan_sample_as_generated.dcm"
    write_generated(
        np.asarray(pixels),
        path=generated,
        modality="MR",
        declaration=declaration,
        signer=store.load_signing_key("generator"),
        log=open_audit_log(settings),
        key_name="generator",
        watermark_key=store.watermark_key(),
    )
    ds = pydicom.dcmread(generated)
    strip_signatures(ds)
    for tag in [t for t in ds.keys() if t.group % 2 == 1]:
        del ds[tag]
    stripped = out / "gan_sample_tags_stripped.dcm"
    ds.save_as(stripped)
    generated.unlink()
    return stripped


def _dcmsign_says(path: Path, ca_pem: Path) -> str:
    exe = shutil.which("dcmsign")
    if exe is None:
        return "(dcmsign not installed)"
    proc = subprocess.run(
        [exe, "--verify", "+cf", str(ca_pem), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    text = proc.stdout + proc.stderr
    if "Verification : OK" in text and "FAILED" not in text:
        return "OK"
    if "no signatures" in text.lower() or ("Signature" not in text and proc.returncode == 0):
        return "no signature"
    return "FAILED"


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
    text = f"Scores are calibrated probabilities / the bundle's thresholds (model {model.tag}). "
    if len(disabled) == 2:
        text += (f"Its thresholds are 1.0: on {where} neither head separated real from fake at AUC {gate}, so it flags "
                 "nothing and the verdicts above rest on provenance. ")
    elif disabled:
        text += (f"Its {disabled[0]} threshold is 1.0: on {where} that head did not separate real from fake at AUC "
                 f"{gate}, so it never flags; the other is set so that at most {model.target_fpr:.0%} of the real "
                 "calibration images reach it. ")
    else:
        text += f"Each is set so that at most {model.target_fpr:.0%} of the real calibration images reach it. "
    return text + ("Compare the heatmap of the injected lesion with the file. "
                   "Figures: detectors/checkpoints/detector/MODEL_CARD.md.")


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
    settings = _common.settings()
    store = _open_store(settings)
    signer = store.load_signing_key(DEMO_KEY)
    policy = store.trust_policy()
    out = workdir or Path(tempfile.mkdtemp(prefix="medverify-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    ca_pem = out / "medverify-ca.pem"
    ca_pem.write_bytes(store.export_certificate("ca"))

    # (file, what was done, expected verdict, expected action)
    cases: list[tuple[Path, str, str, str]] = []
    for stem, source in _sample_files():
        ds = pydicom.dcmread(source)
        unsigned = out / f"{stem}_unsigned.dcm"
        ds.save_as(unsigned)
        cases.append((unsigned, "original, never signed", "NO_EVIDENCE", "accept"))

        sign_dataset(ds, signer, profile=SignatureProfile.CREATOR)
        signed = out / f"{stem}_signed.dcm"
        ds.save_as(signed)
        cases.append((signed, f"signed by acquisition key '{DEMO_KEY}'", "AUTHENTIC", "accept"))

        bit = pydicom.dcmread(signed)
        pixels = bytearray(bit.PixelData)
        pixels[len(pixels) // 2] ^= 0x01
        bit.PixelData = bytes(pixels)
        flipped = out / f"{stem}_one_pixel_bit_flipped.dcm"
        bit.save_as(flipped)
        cases.append((flipped, "signed, then one pixel bit flipped", "TAMPERED", "reject"))

        added = pydicom.dcmread(signed)
        added.add_new(0x00104000, "LT", "added after signing")
        appended = out / f"{stem}_element_added.dcm"
        added.save_as(appended)
        cases.append((appended, "signed, then Patient Comments added", "AUTHENTIC", "flag"))

    data = cases[1][0].read_bytes()
    truncated = out / "truncated.dcm"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    cases.append((truncated, "signed file cut short", "MALFORMED", "reject"))

    generated = _generate_tampered_copy(store, out, settings)
    if generated is not None:
        cases.append((generated, "lesion injected by the tamper generator, signed", "DECLARED_SYNTHETIC", "quarantine"))
    stripped = _generate_stripped_sample(store, out, settings)
    if stripped is not None:
        cases.append(
            (stripped, "GAN sample, signature and declaration stripped", "DECLARED_SYNTHETIC", "quarantine")
        )

    site_policy = load_policy(settings.policy_file)
    checker = Checker(
        checks=frozenset({Check.SIGNATURE, Check.WATERMARK}),
        trust=policy,
        site_policy=site_policy,
        watermark_keys=tuple(store.watermark_keys()),
    )
    table = Table(title=f"medverify demo — files in {out}", show_lines=True)
    table.add_column("file / what was done", ratio=3)
    table.add_column("medverify", no_wrap=True)
    table.add_column("dcmsign", no_wrap=True)
    table.add_column("why", ratio=3)
    all_expected = True
    log = open_audit_log(settings)
    from verifier.audit import Channel

    for path, what, expected, expected_action in cases:
        result = checker.check(path)
        result = result.with_audit_id(log.append(result.audit_entry(channel=Channel.CLI)).id)
        sig = result.signature
        note = ""
        if result.failed:
            note = result.reasons[0].split(": ", 2)[-1]
        elif sig is not None and sig.status.value not in ("VALID", "UNSIGNED"):
            note = next((r for s in sig.signatures for r in s.reasons), "")
        elif result.verdict.status.value == "DECLARED_SYNTHETIC" and sig is not None and sig.status.value == "UNSIGNED":
            note = next((r.message for r in result.verdict.reasons if "watermark" in str(r.message)), "")
        elif sig is not None and sig.uncovered:
            note = "not covered by the signature: " + ", ".join(f"{u.tag} {u.keyword}" for u in sig.uncovered[:3])
        elif result.verdict.reasons:
            note = result.verdict.reasons[0].message
        all_expected &= (result.verdict.status.value, result.verdict.action.value) == (expected, expected_action)
        colour = {"accept": "green", "flag": "yellow", "quarantine": "magenta"}.get(result.verdict.action.value, "red")
        table.add_row(
            f"{path.name}\n[dim]{what}[/]",
            f"[{colour}]{result.verdict.status.value}\n{result.verdict.action.value}[/]",
            _dcmsign_says(path, ca_pem),
            note,
        )
    _common.console.print(table)
    if detector:
        from verifier.detection import DetectorSetup

        setup = DetectorSetup(heatmap_dir=out / "heatmaps")
        pixels_only = Checker(checks=frozenset({Check.DETECTOR}), trust=policy, site_policy=site_policy, detector=setup)

        def check_pixels(path: Path) -> FileResult:
            result = pixels_only.check(path)
            log.append(result.audit_entry(channel=Channel.CLI))
            return result

        wanted = ("MR_small_unsigned.dcm", "MR_small_lesion_injected.dcm", "gan_sample_tags_stripped.dcm")
        shown = [(path, what) for path, what, _verdict, _action in cases if path.name in wanted]
        model = setup.load().config
        _common.console.print(_detector_table(shown, out, check_pixels))
        _common.console.print(_detector_caption(model))
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
    return 0 if all_expected else 1
