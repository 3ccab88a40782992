"""The one crop rule and the normalisation tables."""

from __future__ import annotations

import numpy as np
import pytest

from emotibatch.inference.preprocess import SCRFD_LUT, crop_faces, letterbox, normalisation_lut


def test_crop_truncates_and_clips_like_the_reference() -> None:
    frame = np.arange(100 * 120 * 3, dtype=np.int64).reshape(100, 120, 3).astype(np.uint8)
    boxes = np.array([[10.9, 20.2, 50.7, 60.99], [-5.0, -3.0, 30.0, 40.0], [100.0, 90.0, 500.0, 400.0]])
    a, b, c = crop_faces(frame, boxes)
    np.testing.assert_array_equal(a, frame[20:60, 10:50])
    np.testing.assert_array_equal(b, frame[0:40, 0:30])
    np.testing.assert_array_equal(c, frame[90:100, 100:120])


def test_margin_grows_the_box_on_each_side() -> None:
    frame = np.zeros((200, 200, 3), np.uint8)
    (crop,) = crop_faces(frame, np.array([[50, 50, 150, 100]]), margin=0.1)
    assert crop.shape[:2] == (60, 120)  # height 50 + 2 * 5, width 100 + 2 * 10
    with pytest.raises(ValueError, match="margin"):
        crop_faces(frame, np.zeros((1, 4)), margin=-0.1)


def test_degenerate_boxes_give_one_pixel_not_an_empty_crop() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    crops = crop_faces(frame, np.array([[5, 5, 5, 5], [20, 20, 30, 30]]))
    assert [c.shape for c in crops] == [(1, 1, 3), (1, 1, 3)]


def test_lut_equals_the_reference_float64_arithmetic() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    lut = normalisation_lut(mean, std)
    pixels = np.arange(256, dtype=np.uint8)
    for c in range(3):
        expected = ((pixels / 255 - mean[c]) / std[c]).astype(np.float32)
        np.testing.assert_array_equal(lut[c], expected)
    np.testing.assert_array_equal(SCRFD_LUT[1], (pixels.astype(np.float32) - 127.5) / 128)


@pytest.mark.parametrize(
    ("size", "scale", "used"),
    [((720, 1280), 0.5, (360, 640)), ((1280, 720), 0.5, (640, 360)), ((480, 640), 1.0, (480, 640))],
)
def test_letterbox_keeps_the_aspect_at_the_top_left(size, scale, used) -> None:
    frame = np.full((*size, 3), 255, np.uint8)
    canvas = np.full((640, 640, 3), 7, np.uint8)
    assert letterbox(frame, (640, 640), canvas) == scale
    assert (canvas[: used[0], : used[1]] == 255).all()
    assert canvas.sum() == 255 * used[0] * used[1] * 3
