"""What a reviewer sees of an instance: windowed frames (multi-frame too), the header as text, and a typed error
(never a crash) for a damaged file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from verifier.review.render import RenderError, frame_png, header_rows, open_image, parse


def test_every_frame_of_a_multi_frame_instance_is_a_windowed_png() -> None:
    data = Path(get_testdata_file("emri_small.dcm")).read_bytes()  # 10 frames of MR
    instance = parse(data, "emri")
    image = open_image(instance)
    assert image.frames.shape[0] == 10
    pixels = [cv2.imdecode(np.frombuffer(frame_png(image, i), np.uint8), cv2.IMREAD_UNCHANGED) for i in (0, 9)]
    assert all(p.dtype == np.uint8 and p.shape == image.frames.shape[1:] for p in pixels)
    assert all(int(p.max()) - int(p.min()) > 100 for p in pixels)  # the window spreads the grey levels
    with pytest.raises(RenderError, match="no frame 11"):
        frame_png(image, 10)
    rows = header_rows(instance)
    assert any(r.keyword == "PatientName" for r in rows)
    assert any(r.keyword == "PixelData" and r.value.startswith("binary, ") for r in rows)


def test_a_damaged_file_is_a_render_error() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    with pytest.raises(RenderError, match=r"cut short|malformed|damaged"):
        parse(data[: len(data) // 2], "cut")
    with pytest.raises(RenderError, match="not a DICOM"):
        parse(b"GIF89a" + bytes(200), "gif")
