"""Engagement per track and for the whole room: one definition, shared by the report and the nightly job.

An engagement table has one row per (track, window) and a value (P(Engaged), a regression score, an
expected level); rows whose `track_id` is null (or a table without that column) hold the whole room's own
values. Nulls are left out everywhere.

- A track's engagement is the mean of its windows' values; `windows` counts them.
- The room's engagement over time is, per window, the room's own value where the table has room rows,
  else the mean of the tracks present in that window (windows are matched by start and end).
- The room's (the lecture's) engagement is the mean of that curve: every window counts once, however many
  faces were seen in it. A mean over the (track, window) rows would instead weight each window by its
  number of tracks, so that a crowded stretch of a lecture outweighs a sparse one, and the number would
  not be the mean of the curve the report draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

# One series: window starts, window ends, values, in time order.
Series = tuple[np.ndarray, np.ndarray, np.ndarray]


def tracks_of(table: pa.Table) -> list[int | None]:
    """Each row's track (None: the whole room)."""
    return table["track_id"].to_pylist() if "track_id" in table.column_names else [None] * len(table)


def window_series(table: pa.Table, value: str) -> dict[int | None, Series]:
    """{track_id (None: the whole room's own rows): series} of column `value` (engagement values, or the
    labels of predictions), nulls left out; the room first, then tracks by id."""
    rows = zip(
        tracks_of(table),
        table["window_start_s"].to_pylist(),
        table["window_end_s"].to_pylist(),
        table[value].to_pylist(),
    )
    grouped: dict[int | None, list[tuple[float, float, Any]]] = {}
    for track, start, end, v in rows:
        if v is not None:
            grouped.setdefault(track, []).append((start, end, v))
    series = {}
    for track in sorted(grouped, key=lambda t: (t is not None, t or 0)):
        starts, ends, values = zip(*sorted(grouped[track], key=lambda w: w[0]))
        series[track] = (np.array(starts), np.array(ends), np.array(values))
    return series


def room_series(series: dict[int | None, Series]) -> Series | None:
    """The room's engagement over time (see the module docstring); None without any value."""
    if None in series:
        return series[None]
    by_window: dict[tuple[float, float], list[float]] = {}
    for starts, ends, values in series.values():
        for window, v in zip(zip(starts.tolist(), ends.tolist()), values.tolist()):
            by_window.setdefault(window, []).append(v)
    if not by_window:
        return None
    windows = sorted(by_window)
    starts, ends = (np.array(w, np.float64) for w in zip(*windows))
    return starts, ends, np.array([np.mean(by_window[w]) for w in windows])


@dataclass(frozen=True)
class EngagementSummary:
    """The numbers of the module docstring, and the series they come from (for plots)."""

    tracks: dict[int, tuple[float, int]]  # track_id: (mean, windows)
    room: float | None  # None when no window has a value
    series: dict[int | None, Series]  # as `window_series` gives them
    room_curve: Series | None  # as `room_series` gives it


def summarize_engagement(table: pa.Table, value: str) -> EngagementSummary:
    """Each track's and the room's engagement from the (track, window) rows of `table`'s column `value`."""
    series = window_series(table, value)
    tracks = {t: (float(np.mean(v)), len(v)) for t, (_, _, v) in series.items() if t is not None}
    curve = room_series(series)
    return EngagementSummary(tracks, float(np.mean(curve[2])) if curve is not None else None, series, curve)
