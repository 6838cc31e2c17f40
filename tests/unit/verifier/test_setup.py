"""verifier.setup: the application built from Settings (key store, audit log, trust policy, Checker, intake)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from provenance.keys import KeyStore
from verifier.checker import INTAKE_DEFAULT_CHECKS, Check
from verifier.errors import InputError
from verifier.policy import DEFAULT_POLICY
from verifier.settings import Settings
from verifier.setup import init_keys, load_checker, load_trust_policy, open_audit_log, open_intake

REPO = Path(__file__).resolve().parents[3]


def test_the_checker_of_the_settings_runs_every_check_that_can_run(keyed_home: Path, tmp_path: Path) -> None:
    settings = Settings.load()
    checker = load_checker(settings)
    # The template key store has no watermark key yet: that check is reported, not an error.
    assert checker.checks == frozenset({Check.SIGNATURE, Check.DETECTOR})
    assert set(checker.not_run) == {Check.WATERMARK} and "no watermark key yet" in checker.not_run[Check.WATERMARK]
    assert checker.site_policy == DEFAULT_POLICY and checker.detector is not None and checker.detector.model is None
    assert settings.keys_dir.is_dir() and checker.trust.anchors  # the key store's local CA
    assert load_checker(settings, "signature").checks == frozenset({Check.SIGNATURE})
    policy = tmp_path / "site.toml"
    policy.write_text('version = "site-7"\n[actions]\nNO_EVIDENCE = "flag"\n')
    assert load_checker(settings, "signature", policy_file=policy).site_policy.version == "site-7"


@pytest.mark.parametrize(
    ("checks", "extra", "message"),
    [
        ("signature,x", {}, "unknown check 'x'"),
        ("signature", {"model": Path("/nonexistent")}, "need the detector check"),
        ("detector", {"model": Path("/nonexistent")}, "not a detector bundle"),
    ],
)
def test_what_a_check_needs_is_an_error_before_the_first_file(
    keyed_home: Path, checks: str, extra: dict[str, Path], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        load_checker(Settings.load(), checks, **extra)  # type: ignore[arg-type]


def test_a_check_that_cannot_run_is_not_run_and_says_why(keyed_home: Path) -> None:
    checker = load_checker(Settings.load(), "watermark")
    assert checker.checks == frozenset() and "no watermark key yet" in checker.not_run[Check.WATERMARK]
    result = checker.check(Path(str(get_testdata_file("CT_small.dcm"))))
    assert result.not_run == {"watermark": checker.not_run[Check.WATERMARK]}
    assert f"watermark: not run: {checker.not_run[Check.WATERMARK]}" in result.reasons


def test_the_watermark_keys_are_read_only_with_a_passphrase_at_hand(
    keyed_home: Path, key_passphrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.load()
    KeyStore(settings.keys_dir, lambda: key_passphrase.encode()).rotate_watermark_key()
    assert Check.WATERMARK in load_checker(settings, "signature,watermark").checks
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    checker = load_checker(settings, "signature,watermark")  # never prompts, never stops: not run, and why
    assert checker.checks == frozenset({Check.SIGNATURE}) and not checker.watermark_keys
    assert "no key passphrase available" in checker.not_run[Check.WATERMARK]


def test_the_key_store_is_created_on_first_use_without_a_passphrase(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDVERIFY_KEY_PASSPHRASE")
    told: list[str] = []
    settings = Settings.load()
    checker = load_checker(settings, "signature", notify=told.append)
    assert len(told) == 1 and str(settings.keys_dir) in told[0] and "passphrase" in told[0]
    passphrase = settings.keys_dir / "passphrase"
    assert passphrase.stat().st_mode & 0o777 == 0o600
    assert list(checker.trust.anchors) == [KeyStore(settings.keys_dir, lambda: b"").ca_certificate()]
    load_checker(settings, "signature", notify=told.append)
    assert len(told) == 1  # said once: the second run finds the key store
    assert init_keys(settings) is None


def test_first_use_takes_the_configured_passphrase(cli_home: Path, key_passphrase: str) -> None:
    created = init_keys(Settings.load())
    assert created is not None and created.passphrase_file is None and [k.name for k in created.keys] == ["generator"]
    assert not (cli_home / "keys" / "passphrase").exists()
    KeyStore(cli_home / "keys", lambda: key_passphrase.encode()).load_signing_key("generator")


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
    # The intake default leaves the detector out (its false-positive target is not met yet).
    assert intake.checker.checks | set(intake.checker.not_run) == INTAKE_DEFAULT_CHECKS
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
