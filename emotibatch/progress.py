"""What a person watching an extract sees: a live display in a terminal, a plain line every few seconds in a
log (`ray job submit`, cron, a redirect). Both follow pipeline.Progress, which the driver tells of every
staged block and every ended per-video pass; the CLI chooses one (`for_stream`)."""

from __future__ import annotations

import datetime
import threading
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from emotibatch.extract.pipeline import Progress

# Seconds between two plain lines: often enough to see a job move in a log, rarely enough to read it.
PLAIN_INTERVAL_S = 30.0


class Counts(Progress):
    """The counts both displays show, and the rates derived from them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.planned_at: float | None = None
        self.videos = self.frames = 0  # this run's totals, once planned
        self.videos_done = self.frames_done = self.faces = 0

    def planned(self, videos: int, frames: int) -> None:
        self.planned_at = time.monotonic()
        self.videos, self.frames = videos, frames

    def staged(self, frames: int, faces: int) -> None:
        self.frames_done += frames
        self.faces += faces

    def committed(self, videos: int) -> None:
        self.videos_done += videos

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def faces_per_s(self) -> float:
        busy = time.monotonic() - (self.planned_at or self.started)
        return self.faces / busy if busy > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left at the frame rate so far; None before the first frame."""
        if self.planned_at is None or not self.frames_done:
            return None
        rate = self.frames_done / (time.monotonic() - self.planned_at)
        return (self.frames - self.frames_done) / rate

    def line(self) -> str:
        elapsed = _clock(self.elapsed())
        if self.planned_at is None:
            return f"progress: preparing (Ray start-up, probing the inputs), elapsed {elapsed}"
        eta = self.eta()
        return (
            f"progress: videos {self.videos_done}/{self.videos} committed, "
            f"frames {self.frames_done}/{self.frames} sampled, {self.faces} faces "
            f"({self.faces_per_s():.1f} faces/s), elapsed {elapsed}, ETA {'-' if eta is None else _clock(eta)}"
        )


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class PlainLines(Counts):
    """One line every `interval_s` seconds while it runs (from a thread, so a long step still shows the
    clock move), and a last one when it ends."""

    def __init__(self, stream: TextIO, interval_s: float = PLAIN_INTERVAL_S) -> None:
        super().__init__()
        self.stream = stream
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="emotibatch-progress", daemon=True)

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print()

    def __enter__(self) -> PlainLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._print()


class Live(Counts):
    """rich's live display on a terminal: videos and frames each with a bar, count, elapsed time and ETA."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.display = RichProgress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.videos_task = self.display.add_task("probing", total=None, note="")
        self.frames_task = self.display.add_task("frames", total=None, note="", visible=False)

    def planned(self, videos: int, frames: int) -> None:
        super().planned(videos, frames)
        self.display.update(self.videos_task, description="videos", total=videos, note="committed")
        self.display.update(self.frames_task, total=frames, visible=True, note="")

    def staged(self, frames: int, faces: int) -> None:
        super().staged(frames, faces)
        note = f"{self.faces} faces, {self.faces_per_s():.1f}/s"
        self.display.update(self.frames_task, completed=self.frames_done, note=note)

    def committed(self, videos: int) -> None:
        super().committed(videos)
        self.display.update(self.videos_task, completed=self.videos_done)

    def __enter__(self) -> Live:
        self.display.start()
        return self

    def __exit__(self, *exc) -> None:
        self.display.stop()


def for_stream(stream: TextIO, interval_s: float = PLAIN_INTERVAL_S) -> Live | PlainLines:
    """The live display where `stream` is a terminal, else plain lines every `interval_s` seconds."""
    if stream.isatty():
        return Live(Console(file=stream))
    return PlainLines(stream, interval_s)
