"""Image I/O, normalisation and corpora: everything that turns files into frames for the detectors.

Needs no database and no crypto; never imports :mod:`verifier` or :mod:`provenance`.
"""

from __future__ import annotations

from detectors.data.build import BuildReport, build_corpus
from detectors.data.corpus import (
    DEFAULT_FRACTIONS,
    MANIFEST_NAME,
    SPLITS,
    Corpus,
    CorpusFrame,
    ManifestEntry,
    Split,
    assign_split,
)
from detectors.data.normalize import CT_HU_RANGE, normalization_range, normalize, normalize_image
from detectors.data.reader import (
    DEFAULT_MAX_DECODED_BYTES,
    ImageData,
    ImageFormat,
    decode_raster,
    image_from_raster,
    max_decoded_bytes,
    raster_format,
    read_image,
    read_raster,
    sniff_format,
)
from detectors.data.sample import build_sample_corpus, sample_dicom_files

__all__ = [
    "CT_HU_RANGE",
    "DEFAULT_FRACTIONS",
    "DEFAULT_MAX_DECODED_BYTES",
    "MANIFEST_NAME",
    "SPLITS",
    "BuildReport",
    "Corpus",
    "CorpusFrame",
    "ImageData",
    "ImageFormat",
    "ManifestEntry",
    "Split",
    "assign_split",
    "build_corpus",
    "build_sample_corpus",
    "decode_raster",
    "image_from_raster",
    "max_decoded_bytes",
    "normalization_range",
    "normalize",
    "normalize_image",
    "raster_format",
    "read_image",
    "read_raster",
    "sample_dicom_files",
    "sniff_format",
]
