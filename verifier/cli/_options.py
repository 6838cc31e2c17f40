"""The options several commands share, defined once so that they read and mean the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from verifier.cli._common import check_format

__all__ = [
    "ChecksOption",
    "DbOption",
    "HeatmapsOption",
    "IntakeChecksOption",
    "ModelOption",
    "PolicyOption",
    "TrustCertOption",
    "TrustOption",
    "check_format",
]

ChecksOption = Annotated[
    str | None,
    typer.Option(
        "--checks",
        help="Comma-separated checks to run: signature, watermark (needs a watermark key and the key passphrase), "
        "detector (synthetic and tamper scores; loads torch, about 2 s). Default: all three; one that cannot run "
        "is reported as 'not run' with why. 'signature' alone starts fastest.",
    ),
]
#: The intake channels' --checks: the same checks, another default (verifier.checker.INTAKE_DEFAULT_CHECKS).
IntakeChecksOption = Annotated[
    str | None,
    typer.Option(
        "--checks",
        help="Comma-separated checks to run on every upload: signature, watermark, detector. Default: "
        "signature,watermark. At intake what the detector flags is quarantined, so the detector stays opt-in "
        "(--checks signature,watermark,detector) until the shipped model meets its false-positive targets (it "
        "flags no held-out real view, but still flags some real images stored lossy, as JPEG 2000): see its "
        "model card (detectors/checkpoints/detector/MODEL_CARD.md) for the measured rates.",
    ),
]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="Detector bundle for --checks detector (default: detector_model setting, else the "
                 "shipped bundle)."),
]
HeatmapsOption = Annotated[
    Path | None, typer.Option("--heatmaps", help="With --checks detector: write a PNG heatmap per file into DIR.")
]
TrustOption = Annotated[
    list[Path] | None, typer.Option("--trust", help="Extra trusted CA/signer certificate (PEM); repeatable.")
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Audit database URL (default: MEDVERIFY_DB_URL, else SQLite in the medverify home)."
    ),
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="Site policy TOML (default: the policy_file setting, else built-in).")
]
TrustCertOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--trust-cert",
        help=(
            "PEM certificate allowed to sign checkpoints (repeatable). "
            "Default: the local key store's trust policy."
        ),
    ),
]

