"""verifier.generation: a generator's output becomes a declared, recorded, watermarked and signed file."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from provenance.declaration import read_declaration
from provenance.keys import KeyStore
from verifier.audit import AuditLog
from verifier.checker import Checker, parse_checks
from verifier.errors import InputError
from verifier.generation import GenerationKeys, PairedSource, generate_signed_image, load_generator
from verifier.policy import VerdictStatus

MR_SMALL = Path(str(get_testdata_file("MR_small.dcm")))


def test_a_paired_fake_is_declared_recorded_marked_and_signed(keystore: KeyStore, tmp_path: Path) -> None:
    source = PairedSource.from_file(MR_SMALL)
    assert source.modality == "MR" and source.sop_instance_uid == str(pydicom.dcmread(MR_SMALL).SOPInstanceUID)
    with AuditLog.open(f"sqlite:///{tmp_path / 'audit.db'}") as log:
        keys = GenerationKeys(
            signer=keystore.load_signing_key("generator"), key_name="generator",
            watermark_key=keystore.watermark_key(), log=log,
        )  # fmt: skip
        path = tmp_path / "fake.dcm"
        record_id = generate_signed_image(
            load_generator("tamper"), name="tamper", seed=3, path=path, modality="MR", keys=keys, source=source
        )
        record = log.get(record_id).entry
    assert record.event == "generate" and record.details["seed"] == 3 and record.details["signing_key"] == "generator"
    declaration = read_declaration(pydicom.dcmread(path))
    assert declaration is not None and declaration.audit_id == record_id
    assert (declaration.generator, declaration.kind, declaration.source_sop_instance_uid) == (
        "tamper", "paired", source.sop_instance_uid,
    )  # fmt: skip
    checker = Checker(
        checks=parse_checks("signature,watermark"), trust=keystore.trust_policy(), watermark_keys=(keys.watermark_key,)
    )
    result = checker.check(path)
    assert result.verdict.status is VerdictStatus.DECLARED_SYNTHETIC
    assert result.signature is not None and result.signature.signatures[0].role == "generator"


def test_an_unknown_generator_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown generator 'nope'"):
        load_generator("nope")
