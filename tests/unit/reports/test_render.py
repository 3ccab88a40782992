"""render.frame_span: which frames a preview clip shows (the clip itself is tested in tests/report)."""

from __future__ import annotations

from emotibatch.extract.decode import VideoInfo
from emotibatch.reports.render import frame_span


def test_a_constant_rate_span_goes_by_index_over_fps() -> None:
    info = VideoInfo(25.0, 100, 4.0, 64, 64)
    assert frame_span(info, 1.0, 2.0) == (25, 50)
    assert frame_span(info, 0.0, None) == (0, 100)


def test_a_variable_rate_span_goes_by_presentation_time() -> None:
    """A phone video slowing from 30 to 10 fps: index / average fps would start 1.0 s at frame 20 (0.67 s)."""
    times = tuple(i / 30 for i in range(30)) + tuple(1 + i / 10 for i in range(10))
    info = VideoInfo(20.0, 40, 2.0, 64, 64, timestamps=times)
    assert frame_span(info, 1.0, 1.5) == (30, 35)
    assert frame_span(info, 0.5, None) == (15, 40)
