"""One error root: the packages' errors are mapped to MedverifyError in one place, and main maps it to exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import run_cli

from detectors.data.reader import read_image
from detectors.errors import DetectorsError, ImageDecodeError
from provenance.errors import KeyStoreError, ProvenanceError
from provenance.keys import KeyStore
from verifier.errors import DetectorsFailure, MedverifyError, ProvenanceFailure, application_errors


def test_provenance_and_detector_errors_join_the_root(tmp_path: Path) -> None:
    with pytest.raises(ProvenanceFailure) as provenance, application_errors():
        KeyStore(tmp_path / "none", lambda: b"x").create("k", "acquisition")  # type: ignore[arg-type]
    with pytest.raises(DetectorsFailure) as detectors, application_errors():
        read_image(tmp_path / "missing.png")
    for caught, base in ((provenance.value, ProvenanceError), (detectors.value, DetectorsError)):
        assert isinstance(caught, MedverifyError) and isinstance(caught.__cause__, base)
        assert caught.diagnostics() == caught.__cause__.diagnostics()
    assert isinstance(provenance.value.__cause__, KeyStoreError)
    assert isinstance(detectors.value.__cause__, ImageDecodeError)
    with pytest.raises(ValueError, match="other errors pass"), application_errors():
        raise ValueError("other errors pass unchanged")


def test_main_maps_the_root_to_exit_code_2(
    keyed_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "keys", "rotate", "nothing")  # a KeyStoreError: no such key
    assert code == 2 and err.startswith("error:") and "nothing" in err
    # A DetectorsError no command wraps: the gateway loads its detector model before it listens.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{ not json")
    code, _, err = run_cli(capsys, "gateway", "--forward", "127.0.0.1:11112:PACS", "--allow", "CT01", "--listen",
                           "127.0.0.1:0", "--checks", "signature,detector", "--model", bundle)  # fmt: skip
    assert code == 2 and err.startswith("error:") and "config.json" in err
