"""verifier.setup: the application built from Settings (key store, audit log, trust policy, Checker, intake)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from verifier.checker import Check
from verifier.errors import InputError
from verifier.policy import DEFAULT_POLICY
from verifier.settings import Settings
from verifier.setup import load_checker, load_trust_policy, open_audit_log, open_intake

REPO = Path(__file__).resolve().parents[3]


def test_the_checker_of_the_settings(keyed_home: Path, tmp_path: Path) -> None:
    settings = Settings.load()
    checker = load_checker(settings)
    assert checker.checks == frozenset({Check.SIGNATURE})
    assert checker.site_policy == DEFAULT_POLICY and checker.detector is None
    assert settings.keys_dir.is_dir() and checker.trust.anchors  # the key store's local CA
    policy = tmp_path / "site.toml"
    policy.write_text('version = "site-7"\n[actions]\nNO_EVIDENCE = "flag"\n')
    assert load_checker(settings, "signature", policy_file=policy).site_policy.version == "site-7"


@pytest.mark.parametrize(
    ("checks", "extra", "message"),
    [
        ("signature,x", {}, "unknown check 'x'"),
        ("watermark", {}, "no watermark key yet"),
        ("signature", {"model": Path("/nonexistent")}, "need the detector check"),
        ("detector", {"model": Path("/nonexistent")}, "not a detector bundle"),
    ],
)
def test_what_a_check_needs_is_an_error_before_the_first_file(
    keyed_home: Path, checks: str, extra: dict[str, Path], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        load_checker(Settings.load(), checks, **extra)  # type: ignore[arg-type]


def test_no_trust_anchor_is_an_error(cli_home: Path) -> None:
    with pytest.raises(InputError, match="no trusted certificates"):
        load_trust_policy(Settings.load())


def test_the_audit_log_of_the_settings_is_created_on_first_use(keyed_home: Path) -> None:
    settings = Settings.load()
    with open_audit_log(settings, signer=False) as log:
        assert log.size() == 0 and log.url.endswith("audit.db")
    assert (keyed_home / "audit.db").is_file()


def test_an_intake_checks_with_the_settings_checker(keyed_home: Path) -> None:
    from verifier.audit import Channel
    from verifier.intake.decide import Peer

    intake = open_intake(Settings.load(), audit=False)
    decision = intake.check(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes(), Peer(channel=Channel.INTAKE))
    assert decision.result.verdict.status.value == "NO_EVIDENCE" and intake.audit_log is None
    assert intake.record(decision).audit_id is None  # nothing to record into


def test_setup_never_imports_the_cli() -> None:
    code = (
        "import sys\n"
        "import verifier.setup, verifier.checker, verifier.intake.decide, verifier.scan, verifier.claims\n"
        "bad = sorted(m for m in sys.modules if m.startswith('verifier.cli'))\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]", done.stdout
