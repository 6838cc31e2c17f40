"""``medverify claims audit`` and ``medverify claims verify-package``: claim audits and their evidence packages.

``--format text`` states the checks that ran, then each finding with its evidence in plain language; ``json`` and
``jsonl`` carry the same sentence (``evidence_text``) beside the structured evidence; ``csv`` is one row a finding
(a claim without findings gets one row saying so) for a spreadsheet.

Exit codes (ClamAV convention): ``audit`` 0 no claim has findings, 1 at least one has, 2 an error stopped the
audit; ``verify-package`` 0 the package is intact and signed by a trusted audit key, 1 it is not, 2 an error.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from verifier import setup
from verifier.cli import _common, app
from verifier.cli._options import (
    ChecksOption,
    DbOption,
    HeatmapsOption,
    ModelOption,
    PolicyOption,
    TrustCertOption,
    TrustOption,
    check_format,
)
from verifier.cli._results import FORMATS
from verifier.errors import InputError

if TYPE_CHECKING:
    from verifier.claims import ClaimAudit

__all__ = ["claims_app"]

claims_app = typer.Typer(
    help=(
        "Audit the images attached to insurance claims: reused images (also across earlier audits), header "
        "inconsistencies, synthetic or tampered images; an HTML report and a signed evidence package."
    ),
    no_args_is_help=True,
)
app.add_typer(claims_app, name="claims")

_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "none": "green"}


@claims_app.command("audit", help="Audit a folder of claims (one subfolder a claim, or --manifest claims.csv).")
def audit_command(
    directory: Annotated[Path, typer.Argument(help="Folder of claims: one subfolder per claim, or see --manifest.")],
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="CSV mapping claim_id and file (relative to DIRECTORY) to the claimed patient_id, patient_name, "
            "patient_sex, patient_birth_date, claim_date and body_part.",
        ),
    ] = None,
    fhir: Annotated[
        Path | None,
        typer.Option(
            "--fhir",
            help="Read the claims from a FHIR R4 bundle (or a folder of *.json bundles) instead of the subfolders: "
            "the images are cross-checked against the Claim, Patient, ImagingStudy, Procedure and diagnoses.",
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the HTML evidence report here.")] = None,
    package: Annotated[
        Path | None,
        typer.Option(
            "--package",
            help="Write a signed evidence package here (ZIP: report, findings, thumbnails, every image's SHA-256).",
        ),
    ] = None,
    include_images: Annotated[
        bool,
        typer.Option("--include-images", help="Put the audited image files themselves in the evidence package."),
    ] = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="Output: text, json (the whole audit), jsonl (one line a claim), csv (one row a finding), fhir (a "
            "FHIR R4 Bundle: a DetectedIssue a finding, a Provenance an image; with --fhir).",
        ),
    ] = "text",
    checks: ChecksOption = None,
    trust: TrustOption = None,
    db: DbOption = None,
    policy_file: PolicyOption = None,
    date_tolerance: Annotated[
        int, typer.Option("--date-tolerance", min=0, help="Days a study may predate the claimed date.")
    ] = 30,
    follow_symlinks: Annotated[bool, typer.Option(help="Follow symlinks inside claim folders.")] = False,
    model: ModelOption = None,
    heatmaps: HeatmapsOption = None,
) -> int:
    """Audit claims; every image leaves an audit record, every claim a summary record, every image an index row."""
    with contextlib.ExitStack() as stack:
        detector = checks is None or "detector" in checks.lower()
        if heatmaps is None and (report is not None or package is not None) and detector:
            # The report embeds the detector's heatmaps: write them to a folder that goes away afterwards.
            heatmaps = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medverify-heatmaps-")))
        if include_images and package is None:
            raise InputError("--include-images puts the images in the evidence package: give --package too")
        return _audit(directory, manifest, report, package, output_format, checks, trust, db, policy_file,
                      date_tolerance, follow_symlinks, model, heatmaps, include_images, fhir)  # fmt: skip


def _audit(
    directory: Path,
    manifest: Path | None,
    report: Path | None,
    package: Path | None,
    output_format: str,
    checks: str | None,
    trust: list[Path] | None,
    db: str | None,
    policy_file: Path | None,
    date_tolerance: int,
    follow_symlinks: bool,
    model: Path | None,
    heatmaps: Path | None,
    include_images: bool = False,
    fhir: Path | None = None,
) -> int:
    from verifier.claims import ClaimsAuditor, load_claims

    check_format(output_format, (*FORMATS, "csv", "fhir"))
    if fhir is not None and manifest is not None:
        raise InputError("give either --fhir or --manifest: the claims come from one of them")
    if output_format == "fhir" and fhir is None:
        raise InputError("--format fhir writes the findings against the claims' FHIR resources: give --fhir too")
    settings = _common.settings()
    checker = setup.load_checker(
        settings, checks, trust=trust or (), policy_file=policy_file, model=model, heatmaps=heatmaps,
        notify=_common.note,
    )  # fmt: skip
    if fhir is not None:
        from verifier.claims.fhir.bundle import load_fhir_claims

        # Read and checked in full before any image is checked or any record written.
        claims = load_fhir_claims(directory, fhir)
    else:
        claims = load_claims(directory, manifest, follow_symlinks=follow_symlinks)
    n_files = sum(len(c.files) for c in claims)
    signer = None
    if package is not None:
        # Loaded first: a missing passphrase must stop the audit before any record is written.
        signer = setup.load_audit_signer(settings, interactive=False)
    log = setup.open_audit_log(settings, db=db)
    err = _common.err_console
    err.print(f"auditing {len(claims)} claim(s), {n_files} file(s)", highlight=False)
    try:
        result = ClaimsAuditor(checker, log=log, date_tolerance_days=date_tolerance).audit(claims)
    finally:
        log.close()

    html = None
    if report is not None or package is not None:
        from verifier.report import render_claims_report

        html = render_claims_report(result)
    if report is not None and html is not None:
        _write_text(report, html)
        err.print(f"report: {escape(str(report))}", highlight=False)
    if package is not None and signer is not None and html is not None:
        from verifier.claims.package import write_package

        written = write_package(package, result, html, signer, include_images=include_images)
        what = "thumbnails and images" if include_images else "thumbnails"
        err.print(f"evidence package: {escape(str(written.path))} ({written.entries} entries with {what}; signed "
                  "with the audit key)", highlight=False)  # fmt: skip
        for problem in written.problems:
            err.print(f"  note: {escape(problem)}", highlight=False)

    if output_format == "jsonl":
        for claim in result.claims:
            sys.stdout.write(json.dumps(claim.to_dict(), default=str) + "\n")
    elif output_format == "json":
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    elif output_format == "csv":
        _print_csv(result)
    elif output_format == "fhir":
        from verifier.claims.fhir.export import audit_bundle_json

        sys.stdout.write(audit_bundle_json(result) + "\n")
    else:
        _print_text(result)
    rate = result.files / result.seconds if result.seconds > 0 else 0.0
    err.print(
        f"{len(result.claims)} claim(s), {result.files} image(s) in {result.seconds:.1f} s ({rate:.1f} images/s); "
        f"compared with {result.indexed_before} image(s) of earlier audits",
        highlight=False,
    )
    return 1 if any(c.findings for c in result.claims) else 0


def _write_text(path: Path, text: str) -> None:
    from verifier.report.html import _write_atomic

    try:
        _write_atomic(path, text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}") from exc


#: The columns of ``--format csv``: one row a finding.
CSV_COLUMNS = ("claim_id", "claim_severity", "severity", "kind", "finding", "evidence", "files", "other_claim")


def _print_csv(result: ClaimAudit) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    ran = _checks_line(result)
    for c in result.claims:
        if not c.findings:
            writer.writerow([c.claim_id, c.severity.value, "none", "", "no findings", f"No findings from: {ran}.",
                             "; ".join(f.path for f in c.files), ""])  # fmt: skip
        for f in c.findings:
            writer.writerow([c.claim_id, c.severity.value, f.severity.value, f.kind, f.message, f.evidence_text,
                             "; ".join(f.files), f.other_claim or ""])  # fmt: skip


def _checks_line(result: ClaimAudit) -> str:
    """What was looked at: each check's coverage, the reuse comparison and the header rules."""
    earlier = (f"compared with each other and with {result.indexed_before} image(s) of earlier audits"
               if result.indexed_before is not None else "compared with each other (no earlier audits)")  # fmt: skip
    fhir = ["FHIR cross-checks: all"] if any(c.info.fhir is not None for c in result.claims) else []
    return "; ".join([*(c.sentence() for c in result.coverage()), f"reuse: {earlier}", "header rules: all", *fhir])


def _print_text(result: ClaimAudit) -> None:
    out = _common.console
    out.print(f"checks: {escape(_checks_line(result))}", highlight=False, soft_wrap=True)
    table = Table(title="claims", title_justify="left")
    table.add_column("claim")
    table.add_column("severity")
    table.add_column("images", justify="right")
    table.add_column("findings", justify="right")
    for c in result.claims:
        style = _SEVERITY_STYLE[c.severity.value]
        table.add_row(escape(c.claim_id), f"[{style}]{c.severity.value}[/]", str(len(c.files)), str(len(c.findings)))
    out.print(table)
    for c in result.claims:
        if not c.findings:
            continue
        out.print(f"[bold]{escape(c.claim_id)}[/]", highlight=False)
        for f in c.findings:
            style = _SEVERITY_STYLE[f.severity.value]
            out.print(f"  [{style}]{f.severity.value:<6}[/] {f.kind:<20} {escape(f.message)}", highlight=False)
            out.print(f"         {escape(f.evidence_text)}", highlight=False, style="dim")
    out.print(
        "severity: high = the claim cannot stand as filed; medium = a contradiction to explain; low = worth a look. "
        "The HTML report (--report) has the legend of verdicts and actions, thumbnails and heatmaps.",
        highlight=False,
    )


@claims_app.command("sample", help="Write a small claim set (and claims.csv) from the installed sample images: "
                    "DICOM, and exports (a half-size JPEG copy, a PDF, a C2PA-declared JPEG, a PNG of a generated CT).")
def sample_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write the claims into (created).")],
    generated: Annotated[
        bool,
        typer.Option(help="Add a PNG export of a CT made by the in-house GAN (uses the generator and watermark keys "
                     "of the key store, created on first use; the generated image is recorded in the audit log)."),
    ] = True,
    fhir: Annotated[
        bool,
        typer.Option("--fhir", help="Write FHIR R4 claim bundles instead (DIRECTORY/fhir, one a claim) with their "
                     "DICOM images: consistent claims, a reused image, a contradicting date, body part and diagnosis."),
    ] = False,
) -> None:
    """DICOM claims (a clean one, a reused knee MR, contradicting headers) and exports: a half-size JPEG copy, a PDF
    with a reused image on page 2, a JPEG whose C2PA Content Credentials declare it AI-made, a PNG export of a
    generated CT. With ``--fhir``: claims as FHIR bundles (``write_sample_fhir_claims``)."""
    import warnings

    from verifier.claims.samples import write_sample_claims

    if fhir:
        from verifier.claims.samples import write_sample_fhir_claims

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundles = write_sample_fhir_claims(directory)
        n = len(list(bundles.glob("*.json")))
        _common.console.print(f"wrote {n} claims under {escape(str(directory))} and their FHIR bundles in "
                              f"{escape(str(bundles))}", highlight=False)  # fmt: skip
        return

    keys = setup.open_generation_keys(_common.settings(), notify=_common.note) if generated else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the sample files' old quirks
        manifest = write_sample_claims(directory, generation_keys=keys)
    claims = len({line.split(",", 1)[0] for line in manifest.read_text(encoding="utf-8").splitlines()[1:]})
    _common.console.print(f"wrote {claims} claims under {escape(str(directory))} and {escape(str(manifest))}")


@claims_app.command("verify-package", help="Check an evidence package: signature, trust and every SHA-256.")
def verify_package_command(
    package: Annotated[Path, typer.Argument(help="The evidence package (ZIP) to check.")],
    trust_cert: TrustCertOption = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="Output: text or json.")] = "text",
) -> int:
    from verifier.claims.package import PackageStatus, verify_package

    if output_format not in ("text", "json"):
        raise InputError(f"--format must be text or json, not {output_format!r}")
    result = verify_package(package, trusted=setup.checkpoint_signers(_common.settings(), trust_cert))
    if output_format == "json":
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        style = "green" if result.status is PackageStatus.VALID else "bold red"
        _common.console.print(f"[{style}]{result.status.value}[/] {escape(str(package))}", highlight=False)
        if result.signer:
            _common.console.print(
                f"  signed by {escape(result.signer)} (certificate SHA-256 {result.signer_sha256}) at {result.created}",
                highlight=False,
            )
            _common.console.print(
                f"  {result.entries} entries, {result.audited_files} audited image(s) listed", highlight=False
            )
        for problem in result.problems:
            _common.console.print(f"  - {escape(problem)}", highlight=False)
    return 0 if result.status is PackageStatus.VALID else 1
