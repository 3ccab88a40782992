"""The progress displays' text: counts of this run's totals, faces/s, elapsed and ETA."""

from __future__ import annotations

import io
import re
import time

from emotibatch import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_count_to_the_totals_every_interval_and_at_the_end() -> None:
    stream = io.StringIO()
    with progress.for_stream(stream, interval_s=0.01) as shown:
        assert isinstance(shown, progress.PlainLines)
        while "preparing" not in stream.getvalue():  # the thread prints before any work is planned
            time.sleep(0.01)
        shown.planned(videos=2, frames=10)
        shown.staged(frames=4, faces=6)
        shown.committed(1)
        shown.staged(frames=6, faces=2)
        shown.committed(1)
    last = stream.getvalue().splitlines()[-1]
    assert re.fullmatch(
        r"progress: videos 2/2 committed, frames 10/10 sampled, 8 faces \(\d+\.\d faces/s\), "
        r"elapsed 0:00:\d\d, ETA 0:00:00",
        last,
    ), last


def test_a_terminal_gets_the_live_display() -> None:
    stream = Terminal()
    with progress.for_stream(stream) as shown:
        assert isinstance(shown, progress.Live)
        shown.planned(videos=2, frames=10)
        shown.staged(frames=10, faces=3)
        shown.committed(2)
    text = stream.getvalue()
    assert "2/2" in text and "10/10" in text and "3 faces" in text
