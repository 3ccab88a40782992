"""Each kind of report in headless Chromium, loaded from disk: no console errors, no request but the page
itself (and its inline data), and no section that renders blank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from devtools import Browser, save_png

PAGES = (
    "synthetic",
    "no_faces",
    "failed_input",
    "index",
    "courses",
    pytest.param("lecture", marks=pytest.mark.slow),
)
SCREEN = {"x": 0, "y": 0, "width": 1280, "height": 900}  # devtools.Browser's window


def _not_blank(pixels: np.ndarray) -> bool:
    """Some ink: at least 0.5% of the pixels clearly darker than the white page."""
    return pixels.size > 0 and float((pixels.min(axis=2) < 200).mean()) > 0.005


@pytest.mark.parametrize("name", PAGES)
def test_report_opens_offline_without_errors(
    name: str, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = (
        request.getfixturevalue("lecture_report")
        if name == "lecture"
        else request.getfixturevalue("reports")[name]
    )
    url = path.resolve().as_uri()
    load = browser.open(url)
    assert load.errors() == []
    assert [u for u in load.requests if u != url and not u.startswith("data:")] == []

    page = browser.screenshot()
    save_png(page, tmp_path / f"{name}.png")  # kept by pytest's tmp_path for a person to look at
    assert page.shape[1] >= 1000 and _not_blank(page)
    sections = browser.boxes("section")
    assert sections, "no <section>"
    for ident, clip in sections:
        assert clip["height"] > 20, ident
        assert _not_blank(browser.screenshot(clip)), f"section {ident} renders blank"


def test_the_first_screen_shows_what_happened_and_the_options_are_collapsed(
    browser: Browser, reports: dict[str, Path], tmp_path: Path
) -> None:
    """In a 1280x900 window: the totals, the failed input's error and the emotions start on the first
    screen; the runs, models and options, last, are one closed line until opened."""
    browser.open(reports["synthetic"].resolve().as_uri())
    save_png(browser.screenshot(SCREEN), tmp_path / "first_screen.png")  # kept for a person to look at
    boxes = dict(browser.boxes("section"))
    assert boxes["overview"]["y"] < 200 and boxes["emotions"]["y"] < SCREEN["height"]
    assert boxes["overview"]["y"] + boxes["overview"]["height"] < SCREEN["height"]  # the failure table too
    assert boxes["models"]["y"] == max(b["y"] for b in boxes.values())
    assert boxes["models"]["height"] < 100  # heading and summary line: the options table is closed
