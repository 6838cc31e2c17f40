"""The table of ``medverify`` commands: name, the module that defines it, and its one-line help.

``medverify --help`` is printed from this table alone, without importing typer or any command module (they pull
in rich, cryptography, pydicom, SQLAlchemy and torch); a command's own module is imported only when it runs. A
test checks that the table says what the modules register.

:data:`FAST_PARAMS` does the same for the parameters of the hot commands (``verify``, which scripts run once per
file): :mod:`verifier.cli._fast` parses their arguments from it without typer, whose import and per-parameter
pydantic adapters cost more than checking a file. The options are still defined once, on the typer command; the
table is what typer makes of them, and a test checks that it still is.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from typing import NamedTuple

__all__ = ["COMMANDS", "FAST_PARAMS", "ROOT_HELP", "Command", "Param", "module_of", "root_help"]

#: The application's one-line description (also the typer app's help).
ROOT_HELP = "Tell whether medical images are genuine: signatures, watermarks, detectors, tamper-evident audit."


class Command(NamedTuple):
    name: str
    module: str
    help: str


#: Every top-level command or command group, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("verify", "signing",
            "Check DICOM files and image exports (PNG, JPEG, TIFF, images in PDFs): signatures, the watermark and "
            "the detector model (--checks narrows)."),
    Command("sign", "signing", "Add a DICOM digital signature (PS3.15) with a key from the key store."),
    Command("demo", "demo", "Show medverify at work on real sample images, using the embedded defaults."),
    Command("generate", "generate",
            "Generate synthetic DICOM images: declared synthetic, signed with the generator key, audited."),
    Command("scan", "scan",
            "Scan archives for DICOM files and image exports (found by content) and check them; incremental and "
            "resumable."),
    Command("evaluate", "evaluate",
            "Evaluate a detector bundle on patients of a corpus it never saw: AUC, TPR at its threshold, "
            "false-positive rate on real images (native and 8-bit apart), localisation; clean, after JPEG 75 and "
            "after a 0.5x resize."),
    Command("gateway", "gateway",
            "Run the DICOM gateway: check each C-STORE, forward accepted instances, quarantine or refuse."),
    Command("serve", "serve",
            "Serve the HTTP API (POST /v1/verify, GET /v1/audit (search), /v1/audit/verify and /v1/audit/{id}, "
            "STOW-RS POST /dicomweb/studies, /v1/quarantine, /metrics) and the quarantine review pages "
            "(/ui/quarantine)."),
    Command("keys", "keys", "Manage signing keys, the local CA, the trust store and revocation."),
    Command("audit", "audit",
            "The tamper-evident audit log: every verification, signing, generation, key event and scan. Records "
            "form an RFC 9162 Merkle log with signed checkpoints."),
    Command("db", "audit", "Create and migrate the audit database."),
    Command("corpus", "corpus", "Build corpora of real images (DICOM, NIfTI, PNG) split by patient."),
    Command("train", "train", "Train the in-house generators on a corpus."),
    Command("watermark", "watermark", "Embed and detect the invisible pixel watermark."),
    Command("orthanc", "orthanc", "Orthanc integration: the medverify filter as an Orthanc Python plugin."),
    Command("tokens", "tokens", "API tokens of the HTTP API (medverify serve): create (shown once), list, revoke."),
    Command("quarantine", "quarantine", "Review quarantined instances: list, show, release, reject (each audited)."),
    Command("claims", "claims",
            "Audit the images attached to insurance claims: reused images (also across earlier audits), header "
            "inconsistencies, synthetic or tampered images; an HTML report and a signed evidence package."),
)  # fmt: skip


class Param(NamedTuple):
    """One parameter of a hot command as typer builds it: what :mod:`verifier.cli._fast` needs to parse it."""

    #: The Python parameter name (the keyword the command's function takes).
    name: str
    #: Option strings; empty for the positional argument (which takes every remaining value).
    flags: tuple[str, ...]
    #: ``str``, ``int``, ``path`` or ``bool`` (a switch: ``flags`` set it, ``off_flags`` clear it).
    type: str
    #: A repeatable option or the positional argument: the values are collected into a list.
    multiple: bool = False
    default: object = None
    off_flags: tuple[str, ...] = ()
    #: The least value an ``int`` option takes.
    min: int | None = None


#: The parameters of the commands that :mod:`verifier.cli._fast` runs without typer, as typer builds them from the
#: command's definition (``verify``: :mod:`verifier.cli.signing`).
FAST_PARAMS: dict[str, tuple[Param, ...]] = {
    "verify": (
        Param("paths", (), "path", multiple=True),
        Param("output_format", ("--format", "-f"), "str", default="text"),
        Param("checks", ("--checks",), "str"),
        Param("trust", ("--trust",), "path", multiple=True),
        Param("follow_symlinks", ("--follow-symlinks",), "bool", default=False, off_flags=("--no-follow-symlinks",)),
        Param("no_audit", ("--no-audit",), "bool", default=False),
        Param("db", ("--db",), "str"),
        Param("workers", ("--workers", "-j"), "int", default=0, min=0),
        Param("policy_file", ("--policy",), "path"),
        Param("model", ("--model",), "path"),
        Param("heatmaps", ("--heatmaps",), "path"),
    ),
}  # fmt: skip


def module_of(name: str) -> str | None:
    """The module (under ``verifier.cli``) of command ``name``, or None for a name that is no command."""
    return next((c.module for c in COMMANDS if c.name == name), None)


def root_help(width: int | None = None) -> str:
    """``medverify --help``: usage, description, options and the commands with their help, as plain text."""
    if width is None:
        width = int(os.environ.get("COLUMNS") or shutil.get_terminal_size((100, 24)).columns)
    width = max(60, min(width, 120))
    name_width = max(len(c.name) for c in COMMANDS) + 2
    lines = [
        "Usage: medverify [OPTIONS] COMMAND [ARGS]...",
        "",
        *textwrap.wrap(ROOT_HELP, width - 2, initial_indent="  ", subsequent_indent="  "),
        "",
        "Options:",
        "  --version  Print the version.",
        "  --help     Show this message and exit.",
        "",
        "Commands:",
    ]
    indent = " " * (2 + name_width)
    for command in COMMANDS:
        first = f"  {command.name:<{name_width}}"
        lines += textwrap.wrap(command.help, width, initial_indent=first, subsequent_indent=indent)
    lines += ["", "Run 'medverify COMMAND --help' for a command's options."]
    return "\n".join(lines) + "\n"
