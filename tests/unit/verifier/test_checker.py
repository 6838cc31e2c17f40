"""verifier.checker: one frozen Checker, and check() as the one place where a file or an exception becomes a result."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from provenance.keys import KeyStore
from provenance.signature import sign_dataset
from verifier.audit import Channel
from verifier.checker import Check, Checker, parse_checks
from verifier.detection import DetectorSetup
from verifier.policy import Action, VerdictStatus

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))


@pytest.fixture
def checker(keystore: KeyStore) -> Checker:
    return Checker(trust=keystore.trust_policy())


def _signed_copy(keystore_dir: Path, target: Path) -> Path:
    from tests.testkit import TEST_KEY_PASSPHRASE

    store = KeyStore(keystore_dir, lambda: TEST_KEY_PASSPHRASE.encode())
    store.create("scanner", "acquisition", "rsa-2048")  # type: ignore[arg-type]
    ds = pydicom.dcmread(CT_SMALL)
    ds.SOPInstanceUID = generate_uid()
    sign_dataset(ds, store.load_signing_key("scanner"))
    ds.save_as(target)
    return target


def test_a_path_and_its_bytes_get_the_same_answer(checker: Checker, keystore_dir: Path, tmp_path: Path) -> None:
    path = _signed_copy(keystore_dir, tmp_path / "signed.dcm")
    by_path = checker.check(path)
    by_bytes = checker.check(path.read_bytes(), name="upload/1")
    assert by_path.verdict.status is VerdictStatus.AUTHENTIC and by_path.path == str(path)
    assert by_bytes.path == "upload/1"
    assert dataclasses.replace(by_bytes, path=by_path.path) == by_path


def test_unreadable_input_is_one_result_not_an_exception(checker: Checker, tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not DICOM at all")
    missing = checker.check(tmp_path / "missing.dcm")
    junk = checker.check(tmp_path / "junk.dcm")
    junk_bytes = checker.check(b"not DICOM at all")
    for result in (missing, junk, junk_bytes):
        assert result.failed and result.verdict.status is VerdictStatus.UNREADABLE
        assert result.verdict.action is Action.REJECT
    assert missing.sha256 is None  # nothing was read
    assert junk.sha256 == junk_bytes.sha256 is not None
    assert junk_bytes.path == "<bytes>"


def test_input_over_the_size_limit_is_refused_unread(keystore: KeyStore, tmp_path: Path) -> None:
    small = Checker(trust=keystore.trust_policy(), max_bytes=1000)
    for source in (CT_SMALL, CT_SMALL.read_bytes()):
        result = small.check(source)
        assert result.status == "MALFORMED" and "exceeds the limit of 1000 bytes" in (result.error or "")
    assert Checker(trust=keystore.trust_policy()).check(CT_SMALL).status == "UNSIGNED"


def test_a_failing_check_is_a_malformed_result_that_keeps_the_instance(keystore: KeyStore, tmp_path: Path) -> None:
    """A check that raises (here the detector, whose bundle is not there) still gives one result, and examine()
    still hands back what was parsed."""
    broken = Checker(
        checks=parse_checks("signature,detector"),
        trust=keystore.trust_policy(),
        detector=DetectorSetup(model=tmp_path / "no-such-bundle"),
    )
    examined = broken.examine(CT_SMALL)
    assert examined.result.status == "MALFORMED" and "the check failed" in (examined.result.error or "")
    assert examined.instance is not None and examined.result.sha256 == examined.instance.sha256
    assert examined.result.sop_instance_uid == examined.instance.sop_instance_uid
    assert broken.examine(b"junk").instance is None


def test_synthetic_data_yes_makes_an_unsigned_file_declared_synthetic(checker: Checker, tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.SyntheticData = "YES"
    ds.save_as(tmp_path / "flagged.dcm")
    result = checker.check(tmp_path / "flagged.dcm")
    assert result.verdict.status is VerdictStatus.DECLARED_SYNTHETIC and result.status == "UNSIGNED"
    assert "declaration: Synthetic Data (0008,001C) is YES: the file declares itself synthetic" in result.reasons
    ds.SyntheticData = "NO"
    ds.save_as(tmp_path / "real.dcm")
    assert checker.check(tmp_path / "real.dcm").verdict.status is VerdictStatus.NO_EVIDENCE


def test_a_checker_is_frozen_and_needs_a_check(checker: Checker) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        checker.checks = frozenset({Check.WATERMARK})  # type: ignore[misc]
    with pytest.raises(ValueError, match="at least one check"):
        Checker(trust=checker.trust, checks=frozenset())
    assert checker.checks == frozenset({Check.SIGNATURE}) and checker.watermark_keys == ()


def test_check_all_on_two_workers_answers_in_input_order(checker: Checker, tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        ds = pydicom.dcmread(CT_SMALL)
        ds.SOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"f{i}.dcm")
        ds.save_as(paths[-1])
    paths.insert(3, tmp_path / "missing.dcm")
    serial = list(checker.check_all(paths))
    forked = list(checker.check_all(paths, workers=2))
    assert [r.path for r in forked] == [str(p) for p in paths]
    assert [(r.sop_instance_uid, r.verdict.status) for r in forked] == [
        (r.sop_instance_uid, r.verdict.status) for r in serial
    ]
    assert [r.failed for r in forked] == [False, False, False, True, False, False, False]


def test_a_result_builds_its_one_audit_record(checker: Checker, tmp_path: Path) -> None:
    result = checker.check(CT_SMALL)
    entry = result.audit_entry(channel=Channel.SCAN, event="scan", details={"scan": {"run": 7}}, peer_ae_title="CT01")
    assert (entry.event, entry.channel, entry.path, entry.file_sha256) == ("scan", Channel.SCAN, str(CT_SMALL),
                                                                           result.sha256)  # fmt: skip
    assert entry.verdict == "NO_EVIDENCE" and entry.action == "accept" and entry.peer_ae_title == "CT01"
    assert entry.details["scan"] == {"run": 7} and entry.details["error"] is None
    assert entry.details["reasons"] == [r.to_dict() for r in result.verdict.reasons]
    assert entry.os_user and entry.host
    assert entry.signature_report == (result.signature.to_dict() if result.signature is not None else None)


def test_reports_stay_typed_until_they_are_serialised(keystore: KeyStore) -> None:
    from provenance.watermark import WatermarkReport, WatermarkStatus

    checker = Checker(
        checks=parse_checks("signature,watermark"),
        trust=keystore.trust_policy(),
        watermark_keys=(keystore.watermark_key(),),
    )
    result = checker.check(CT_SMALL)
    assert isinstance(result.watermark, WatermarkReport) and result.watermark.status is WatermarkStatus.ABSENT
    assert result.to_dict()["watermark"] == result.watermark.to_dict()
    assert result.audit_entry(channel=Channel.CLI).watermark_report == result.watermark.to_dict()
    assert result.detection is None and result.to_dict()["detector"] is None
