"""Fixtures of the detectors.data tests: pydicom's and pydicom-data's installed test files (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors.data import sample_dicom_files


@pytest.fixture(scope="session")
def dicom_sample() -> dict[str, Path]:
    """Installed DICOM test files by name (pydicom's own win over pydicom-data's on a clash)."""
    files: dict[str, Path] = {}
    for _package, path in reversed(sample_dicom_files()):
        files[path.name] = path
    if "MR_small.dcm" not in files:
        pytest.skip("pydicom test files are not installed")
    return files


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slower than a unit test (seconds); still part of the default run")
