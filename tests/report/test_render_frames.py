"""What a preview frame shows, drawn on blank frames (no video, no Ray): labels a person can read at
640x360, at most `max_labels` of them, and a timecode."""

from __future__ import annotations

import numpy as np
import pytest

from emotibatch.reports.render import MAX_LABELS, draw_faces, draw_timecode, timecode

PALETTE = {"Happiness": "#ffbf00", "Neutral": "#9aa0a6"}


def _grid(n: int) -> np.ndarray:
    """n boxes in 4 rows of 3 on a 640x360 frame, 213 px apart (room for a label each) with 40 px above
    each; box k is 40 + 2k px wide, so the larger the later."""
    boxes = []
    for k in range(n):
        x, y = 10 + (k % 3) * 213, 40 + (k // 3) * 80
        boxes.append((x, y, x + 40 + 2 * k, y + 36))
    return np.array(boxes, np.float32)


def _labelled(image: np.ndarray, boxes: np.ndarray) -> list[int]:
    """The boxes with a label band just above them: mostly the label colour 8 px over the box."""
    return [
        k
        for k, (x1, y1, _, _) in enumerate(boxes.astype(int))
        if (image[y1 - 8, x1 + 4 : x1 + 40] > 0).mean() > 0.5
    ]


def test_only_the_largest_faces_are_labelled_and_every_face_keeps_its_box() -> None:
    image = np.zeros((360, 640, 3), np.uint8)
    boxes = _grid(12)
    probs = np.full(12, 0.5, np.float32)
    drawn = draw_faces(image, boxes, list(range(12)), ["Happiness"] * 12, probs, PALETTE, max_labels=3)
    assert drawn == 3 and _labelled(image, boxes) == [9, 10, 11]
    for x1, _, x2, y2 in boxes.astype(int):  # each box's bottom edge is drawn along its width
        assert (image[y2, x1 + 2 : x2 - 2] > 0).any(axis=1).all()
    assert MAX_LABELS > 3


def test_labels_never_cover_each_other() -> None:
    """Two boxes side by side, too close for two labels above them: the smaller one's goes below."""
    image = np.zeros((360, 640, 3), np.uint8)
    boxes = np.array([[100, 100, 160, 170], [170, 100, 220, 160]], np.float32)
    drawn = draw_faces(image, boxes, [0, 1], ["Neutral"] * 2, np.array([0.9, 0.8]), PALETTE)
    assert drawn == 2
    assert (image[92, 104:140] > 0).mean() > 0.5  # the larger face's label above it
    assert (image[168, 174:200] > 0).mean() > 0.5  # the other's below it: above, it would cover the first


def test_a_label_is_tall_enough_to_read_at_640x360() -> None:
    """ "#12 Happiness 87%" in a band at least 18 px tall (5% of 360 lines: about 9 pt text on a 13-inch
    screen showing the frame at its size) whose text is dark on the emotion's colour."""
    image = np.zeros((360, 640, 3), np.uint8)
    box = np.array([[200, 150, 280, 240]], np.float32)
    draw_faces(image, box, [12], ["Happiness"], np.array([0.87], np.float32), PALETTE)
    band = np.flatnonzero((image[:150, 200:204] == (255, 191, 0)).all(axis=2).any(axis=1))
    assert band.size and band.max() - band.min() + 1 >= 18
    text = image[band.min() : band.max() + 1, 200:]
    dark = (text.max(axis=2) < 80) & (text.max(axis=2) > 0) | (text.sum(axis=2) < 60)
    wide = np.flatnonzero((text == (255, 191, 0)).all(axis=2).any(axis=0))
    assert dark.any() and wide.max() > 120  # the label spans the id, the emotion and the percentage


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0:00:00.0"), (0.96, "0:00:00.9"), (61.25, "0:01:01.2"), (3725.5, "1:02:05.5")],
)
def test_timecodes_read_as_times_in_the_video(seconds: float, text: str) -> None:
    assert timecode(seconds) == text


def test_the_timecode_bar_says_how_many_faces_are_labelled() -> None:
    plain, busy = np.zeros((360, 640, 3), np.uint8), np.zeros((360, 640, 3), np.uint8)
    draw_timecode(plain, 12.0, 3, 3)
    draw_timecode(busy, 12.0, 30, 8)
    width = [np.flatnonzero((img[:30] == 255).all(axis=2).any(axis=0)).max() for img in (plain, busy)]
    assert 0 < width[0] < width[1]  # "... 30 faces, 8 labelled" is longer than "... 3 faces"


def test_label_text_stands_out_on_dark_and_light_colours() -> None:
    """Black on Happiness's amber, white on Contempt's brown: the text's luma differs from the band's by
    more than half the range either way."""
    for emotion, color, ink in (("Happiness", (255, 191, 0), 0), ("Contempt", (140, 86, 75), 255)):
        image = np.zeros((360, 640, 3), np.uint8)
        box = np.array([[200, 150, 280, 240]], np.float32)
        draw_faces(image, box, [3], [emotion], np.array([0.5]), {emotion: "#" + bytes(color).hex()})
        band = image[125:148, 204:300]
        assert (np.abs(band.astype(int) - ink).max(axis=2) < 40).mean() > 0.05, emotion
