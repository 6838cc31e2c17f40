"""``medverify corpus`` end to end through ``verifier.cli.main``, with real files."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from detectors.data import MANIFEST_NAME, Corpus, sample_dicom_files
from verifier.cli import main


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("MEDVERIFY_HOME", str(home))
    monkeypatch.delenv("MEDVERIFY_CONFIG", raising=False)
    return home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_build_from_a_dicom_tree(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {p.name: p for _pkg, p in sample_dicom_files()}
    if "MR_small.dcm" not in files:
        pytest.skip("pydicom test files are not installed")
    tree = tmp_path / "tree" / "study"
    tree.mkdir(parents=True)
    for name in ("MR_small.dcm", "CT_small.dcm", "emri_small.dcm", "rtplan.dcm"):
        (tree / name.removesuffix(".dcm")).write_bytes(files[name].read_bytes())
    out = tmp_path / "corpus"
    code, stdout, _err = run(capsys, "corpus", "build", "--from", str(tree.parent), "--out", str(out))
    assert code == 0, _err
    assert "MR" in stdout and "CT" in stdout and "scanned 4 files, added 3" in stdout
    assert "1 no pixel data" in stdout
    corpus = Corpus.load(out)
    assert {e.modality for e in corpus.entries} == {"MR", "CT"}

    code, stdout, _err = run(capsys, "corpus", "build", "--from", str(tree), "--out", str(out), "--format", "json")
    assert code == 0
    report = json.loads(stdout)
    assert report["added"] == 0 and report["skipped"]["duplicate"] == 3 and report["images"] == 3


def test_corpus_build_bad_paths_exit_2(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "corpus", "build", "--from", str(tmp_path / "missing"), "--out", str(tmp_path))
    assert code == 2 and "no such file" in err
    afile = tmp_path / "file"
    afile.write_text("x")
    code, _out, err = run(capsys, "corpus", "build", "--from", str(tmp_path), "--out", str(afile))
    assert code == 2 and "not a directory" in err
    code, _out, err = run(capsys, "corpus", "build", "--from", str(tmp_path), "--out", str(tmp_path / "o"),
                          "--fractions", "1,1,1")
    assert code == 2 and "fractions" in err


def test_corpus_sample_to_the_default_cache(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sample corpus must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(sys, "argv", ["medverify"])
    code, stdout, err = run(capsys, "corpus", "sample")
    assert code == 0, err
    manifests = list(home.rglob(MANIFEST_NAME))
    assert len(manifests) == 1 and manifests[0].parent.name == "sample"
    for modality in ("CT", "MR", "CR", "US"):
        assert modality in stdout
    assert len(Corpus.load(manifests[0].parent).entries) >= 12
