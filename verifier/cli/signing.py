"""``medverify sign`` and ``medverify verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from provenance.errors import SigningError
from provenance.models import MacAlgorithm, SignatureProfile
from verifier import setup
from verifier.checker import Checker
from verifier.cli import _common, _verify, app
from verifier.cli._options import (
    ChecksOption,
    DbOption,
    HeatmapsOption,
    ModelOption,
    PolicyOption,
    TrustOption,
)
from verifier.errors import InputError
from verifier.instance import UnreadableInstanceError

__all__: list[str] = []

PixelBindingOption = Annotated[
    bool,
    typer.Option(
        help="Also sign a digest of the decoded pixels (a private block and a second signature), so that the "
        "signature still vouches for the pixels after a lossless re-encoding (RLE, JPEG-LS, JPEG 2000 ...)."
    ),
]


@app.command(help="Check DICOM files and image exports (PNG, JPEG, TIFF, images in PDFs): signatures, the watermark "
              "and the detector model (--checks narrows).")
def verify(
    paths: Annotated[
        list[Path],
        typer.Argument(help="DICOM, PNG, JPEG, TIFF or PDF files, or directories searched for them (by content)."),
    ],
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="Output: text, json (one array) or jsonl (one line a file).")
    ] = "text",
    checks: ChecksOption = None,
    trust: TrustOption = None,
    follow_symlinks: Annotated[bool, typer.Option(help="Follow symlinks inside directories.")] = False,
    no_audit: Annotated[bool, typer.Option("--no-audit", help="Write no audit records (for evaluation runs).")] = False,
    db: DbOption = None,
    workers: Annotated[
        int, typer.Option("--workers", "-j", min=0, help="Worker processes (0: one per core for large batches).")
    ] = 0,
    policy_file: PolicyOption = None,
    model: ModelOption = None,
    heatmaps: HeatmapsOption = None,
) -> int:
    """Verify files. Exit code 0: nothing found; 1: a problem found; 2: an error stopped a check.

    Every check runs unless --checks narrows them; one that cannot run here is reported as "not run" with why.
    Every file checked leaves one audit record (unless --no-audit), written before its result is printed; an
    export gets one per image (a PDF one per embedded image, naming its page). On an export the DICOM signature
    check is "not applicable"; its C2PA Content Credentials are read instead.

    The plain forms of these options are parsed without typer (:mod:`verifier.cli._fast`) from the table typer
    makes of them (:data:`verifier.cli._commands.FAST_PARAMS`); a test keeps the two in step.
    """
    return _verify.verify(
        paths, output_format=output_format, checks=checks, trust=trust, follow_symlinks=follow_symlinks,
        no_audit=no_audit, db=db, workers=workers, policy_file=policy_file, model=model, heatmaps=heatmaps,
    )  # fmt: skip


@app.command(help="Add a DICOM digital signature (PS3.15) with a key from the key store.")
def sign(
    files: Annotated[list[Path], typer.Argument(help="DICOM files to sign.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output file (one input) or directory (several).")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace each input file with the signed one.")] = False,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Key name (default: the default_key setting).")] = None,
    profile: Annotated[
        SignatureProfile, typer.Option("--profile", help="PS3.15 signature profile.", case_sensitive=False)
    ] = SignatureProfile.NONE,
    mac: Annotated[str, typer.Option("--mac", help="MAC algorithm: sha256, sha384 or sha512.")] = "sha256",
    pixel_binding: PixelBindingOption = True,
) -> int:
    """Sign files; they are written atomically, and the signature is checked before anything is written."""
    from verifier.signing import SignatureNotVerifiedError, sign_file, sign_targets

    targets = sign_targets(files, output=output, in_place=in_place)
    try:
        mac_algorithm = MacAlgorithm(mac.upper())
    except ValueError:
        raise InputError(f"unknown MAC algorithm {mac!r}; use sha256, sha384 or sha512") from None
    settings = _common.settings()
    store = setup.open_keystore(settings)
    created = setup.init_keys(settings, interactive=True, store=store)
    if created is not None:
        _common.note(created.message())
    signer = store.load_signing_key(key or settings.default_key)
    if signer.role.value == "generator":
        _common.err_console.print(
            f"[yellow]note:[/] key '{signer.name}' has role generator: files it signs verify as DECLARED_SYNTHETIC. "
            "Sign real acquisitions with an acquisition key (`medverify keys create NAME --role acquisition`).",
            highlight=False,
        )
    checker = Checker(trust=store.trust_policy())
    log = setup.open_audit_log(settings)
    failures = 0
    for source, target in targets:
        try:
            signed = sign_file(
                source, target, signer=signer, profile=profile, mac=mac_algorithm, checker=checker, log=log,
                bind_pixels=pixel_binding,
            )  # fmt: skip
        except (UnreadableInstanceError, SigningError) as exc:
            failures += 1
            _common.err_console.print(f"[red]not signed[/] {escape(str(source))}: {escape(exc.diagnostics())}")
            continue
        except SignatureNotVerifiedError as exc:
            failures += 1
            _common.err_console.print(f"[red]signature does not verify[/] {escape(str(target))}: {exc.reasons}")
            continue
        _common.console.print(
            f"[green]signed[/] {escape(str(target))} (key {signer.name}, {profile.value}, {mac_algorithm.value}, "
            f"{signed.covered} elements, UID {signed.signature_uid}, "
            f"{'pixel binding, ' if signed.pixel_binding else ''}audit #{signed.audit_id})",
            highlight=False,
        )
    return 2 if failures else 0
