"""HTML reports of an extract output: one self-contained file a person opens from disk or from a bucket.

A report holds no script and makes no request: plots are inline SVG drawn by matplotlib (offline), tables
are plain HTML, styles are inline. It leads with the answer: what happened to the reported inputs (the
failed ones with their errors), the emotions found, the videos; then, per video, its charts first
(emotions, valence and arousal for MTL models, faces per sampled frame, one lane per track over time,
engagement and predictions when their outputs are given) with its track table collapsed below them. The
runs, models and options come last, collapsed: few readers need them.

Faces are personal data: a report shows none unless asked for thumbnails, small crops of each track's
best-scoring face read from the source video, embedded as JPEG (the only images a report holds).

Plots scale to hour-long lectures: consecutive sampled frames are pooled into at most `MAX_POINTS` bins
for display only; tables and counts use every row. Faces are read one video at a time, never `features`.

Rendering is pure: `summarize_video` (faces table -> `VideoSummary`), `video_section`,
`overview_sections`, `page`, `index_page` and `course_page` (the nightly job's course view) take tables
and return HTML. `write_report` and
`write_index` read, call them and write through fsspec (a path may be a bucket URI): a nightly job calls
those two.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import posixpath
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import cv2
import matplotlib as mpl
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MultipleLocator

from emotibatch import __version__, schema
from emotibatch.extract.decode import (
    SEEKABLE_EXTENSIONS,
    DecodeError,
    Sampling,
    Segment,
    VideoInfo,
    decode_segment,
    sample_indices,
)
from emotibatch.extract.output import Output
from emotibatch.io import files
from emotibatch.io.redact import clean_text, redact_uri
from emotibatch.io.sources import VideoSource, open_fs
from emotibatch.reports.summary import summarize_engagement, tracks_of, window_series

__all__ = [
    "ENGAGEMENT_COLUMNS",
    "CourseLecture",
    "Section",
    "course_page",
    "index_page",
    "overview_sections",
    "page",
    "summarize_video",
    "video_section",
    "write_index",
    "write_report",
]

MAX_POINTS = 1000  # bins per plotted series: an SVG stays small however long the video
MAX_TRACKS = 50  # lanes and track rows per video: the tracks with the most faces
THUMBNAIL_PX = 64
REPORT_META = "emotibatch-report"  # <meta name=...> holding the report's summary as JSON, read by the index
# An engagement row's value: the first of these columns the table has (P(Engaged) of a classifier with
# that class; the `score` of an `emotibatch predict` regression such as engagewild, or of the nightly job).
ENGAGEMENT_COLUMNS = ("prob_Engaged", "score")
FACE_COLUMNS = ["frame_index", "timestamp_s", "track_id", "emotion", "emotion_probs", "valence", "arousal"]
THUMBNAIL_COLUMNS = ["bbox", "det_score"]
_TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_HEAD_BYTES = 16384  # the index reads this much of each report to find its summary
# EmotiEffLib's class names get fixed colours, so that every plot of every report reads alike.
EMOTION_COLORS = {
    "Anger": "#d62728",
    "Contempt": "#8c564b",
    "Disgust": "#2ca02c",
    "Fear": "#9467bd",
    "Happiness": "#ffbf00",
    "Neutral": "#9aa0a6",
    "Sadness": "#1f77b4",
    "Surprise": "#17becf",
}
_FALLBACK = ("#e377c2", "#bcbd22", "#7f7f7f", "#ff7f0e", "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94")
_CSS = """
body{font:15px/1.45 system-ui,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;background:#fff;
max-width:1180px;margin:0 auto;padding:12px 24px 48px}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.3em;margin:0 0 .5em;padding-bottom:.2em;
border-bottom:2px solid #dde1e7}h3{font-size:1.05em;margin:1.1em 0 .3em}
section{margin:20px 0;padding:6px 0}nav ul{columns:3;margin:.2em 0}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:.92em}
th,td{border:1px solid #d5d8de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#b00020;font-weight:600}.ok{color:#1b7f3b}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px}
.alert{background:#fdecee;border-left:4px solid #b00020;padding:6px 10px}
.muted{color:#5f6368;font-size:.9em}figure{margin:.3em 0}figcaption{font-size:.9em}
svg{max-width:100%;height:auto}td img{display:block}
details{margin:.6em 0}summary{cursor:pointer;color:#1a56b0;font-weight:600;padding:4px 0}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.3em}
"""


# -- HTML helpers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Markup that is escaped already, for a table cell."""

    html: str


@dataclass(frozen=True)
class Section:
    """A <section> of a page: its anchor, its heading and the markup below the heading."""

    anchor: str
    title: str
    body: str

    def html(self) -> str:
        return f'<section id="{self.anchor}"><h2>{_e(self.title)}</h2>{self.body}</section>'


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _clock(seconds: float | None) -> str:
    """h:mm:ss or m:ss, the way lecture times are read."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    h, rest = divmod(round(seconds), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _moment(seconds: float | None, span: float) -> str:
    """A time in a video `span` seconds long: tenths of a second in clips under a minute, else _clock."""
    return (
        f"{seconds:.1f} s"
        if seconds is not None and math.isfinite(seconds) and span < 60
        else _clock(seconds)
    )


def _number(value: object, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):,.{digits}f}"


def _cell(value: object) -> str:
    if isinstance(value, Raw):
        return value.html
    if value is None or isinstance(value, int | np.integer):
        return _number(value)
    return _e(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> str:
    """A plain HTML table; `numeric` columns align right. Cells are escaped unless `Raw`."""
    right = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_cell(c)}</td>' if i in right else f"<td>{_cell(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(pairs: Iterable[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in pairs) + "</table>"


def _status(status: str) -> Raw:
    return Raw(f'<span class="{"ok" if status == "ok" else "failed"}">{_e(status)}</span>')


def colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per class: EmotiEffLib's emotions fixed, other names from a fallback cycle."""
    spare = iter(_FALLBACK * (1 + len(names) // len(_FALLBACK)))
    return {n: EMOTION_COLORS.get(n) or next(spare) for n in names}


def _swatch(color: str, name: str) -> Raw:
    return Raw(f'<span class="swatch" style="background:{color}"></span>{_e(name)}')


# -- figures: matplotlib to inline SVG -------------------------------------------------------------------


def _figure(height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(10.5, height), layout="constrained")
    FigureCanvasSVG(fig)  # no pyplot: no global state, no GUI backend
    return fig, fig.add_subplot()


def _figure_html(fig: Figure, caption: str) -> str:
    """The figure as inline <svg>: text stays text (fonttype none); matplotlib salts its ids randomly per
    figure, so two figures of a page never share one."""
    buffer = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return f"<figure>{svg[svg.index('<svg') :]}<figcaption>{_e(caption)}</figcaption></figure>"


def _time_axis(ax: Axes, end_s: float) -> None:
    """x from 0 to the end of the video, ticked every round step (0.5 s ... 1 h), at most ~12 ticks."""
    end = max(end_s, 1e-3)
    step = next((s for s in _TICK_STEPS if end / s <= 12), _TICK_STEPS[-1])
    ax.set_xlim(0, end)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g} s" if step < 1 else _clock(x)))
    ax.set_xlabel("time in the video")
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)


def _legend(fig: Figure, handles: list | None = None) -> None:
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def _lanes_figure(
    lanes: Sequence[tuple[str, Sequence[tuple[float, float, int]]]],
    names: Sequence[str],
    palette: Mapping[str, str],
    end_s: float,
) -> Figure:
    """One horizontal lane per (label, [(start_s, width_s, index into names)]), the first on top."""
    fig, ax = _figure(0.9 + 0.24 * len(lanes))
    for k, (_, spans) in enumerate(lanes):
        bars = [(s, w) for s, w, _ in spans]
        ax.broken_barh(bars, (k - 0.4, 0.8), facecolors=[palette[names[c]] for _, _, c in spans])
    ax.set_yticks(range(len(lanes)), [label for label, _ in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    _time_axis(ax, end_s)
    ax.grid(False, axis="y")
    used = sorted({c for _, spans in lanes for _, _, c in spans})
    _legend(fig, [Patch(color=palette[names[c]], label=names[c]) for c in used])
    return fig


# -- one video's faces, binned for display: pure --------------------------------------------------------


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(first, length, value) of each run of equal values in `values`, except runs of -1 (gaps)."""
    if not len(values):
        return []
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    lengths = np.diff(np.r_[starts, len(values)])
    return [(int(a), int(n), int(values[a])) for a, n in zip(starts, lengths) if values[a] >= 0]


def _bin_means(bins: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean of `values` ([N] or [N, K]) per bin, NaNs left out; NaN where a bin has no value."""
    columns = values[:, None] if values.ndim == 1 else values
    present = ~np.isnan(columns)
    sums = np.stack(
        [
            np.bincount(bins, weights=np.where(p, v, 0.0), minlength=n_bins)
            for v, p in zip(columns.T, present.T)
        ],
        axis=1,
    )
    counts = np.stack([np.bincount(bins, weights=p, minlength=n_bins) for p in present.T], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return means[:, 0] if values.ndim == 1 else means


def _floats(column: pa.ChunkedArray) -> np.ndarray | None:
    """A nullable number column as float64 with NaN for nulls; None when every value is null."""
    if column.null_count == len(column):
        return None
    return pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy()


@dataclass(frozen=True)
class TrackSummary:
    """One face track: when the person is present and what they mostly show."""

    track_id: int
    first_s: float
    last_s: float
    faces: int
    emotion: str  # the most frequent label
    share: float  # of the track's faces with that label
    valence: float | None  # means; None unless the model has VA heads
    arousal: float | None
    lanes: tuple[tuple[float, float, int], ...]  # (start_s, width_s, class index of the dominant emotion)
    best_row: int  # the row of its highest-scoring face (the first without scores): its thumbnail


@dataclass(frozen=True)
class VideoSummary:
    """What a video section shows: series pooled into bins of consecutive sampled frames for display;
    counts and tracks over every row."""

    classes: tuple[str, ...]
    end_s: float
    edges: np.ndarray  # [bins + 1] bin edges in seconds: each bin's first frame, then the end
    probs: np.ndarray  # [bins, classes] mean probabilities of the faces in a bin; 0 without faces
    valence: np.ndarray | None  # [bins] means, NaN without faces; None unless the model has VA heads
    arousal: np.ndarray | None
    faces_mean: np.ndarray  # [bins] faces per frame in a bin
    faces_max: np.ndarray
    frames_known: bool  # which frames were sampled is known (else frames without faces are not counted)
    frames_per_bin: int
    counts: dict[str, int]  # faces per emotion label
    tracks: tuple[TrackSummary, ...]  # the `max_tracks` tracks with the most faces, by first appearance
    tracks_total: int


def summarize_video(
    faces: pa.Table,
    classes: Sequence[str],
    *,
    duration_s: float | None,
    fps: float | None,
    sampled_frames: np.ndarray | None = None,
    max_points: int = MAX_POINTS,
    max_tracks: int = MAX_TRACKS,
) -> VideoSummary:
    """A video's faces (`FACE_COLUMNS`, one row at least; `det_score` picks thumbnails) summed up.

    With `sampled_frames` (sorted frame indices) frames without faces count as zero faces. Bins pool
    consecutive sampled frames, never equal time spans, so no bin is empty by rounding alone.
    """
    times = faces["timestamp_s"].to_numpy()
    frames = faces["frame_index"].to_numpy()
    tracks = faces["track_id"].to_numpy()
    labels = faces["emotion"].to_numpy(zero_copy_only=False)
    probs = schema.as_matrix(faces["emotion_probs"]).astype(np.float64)
    step = 1.0 / fps if fps else 0.0
    frames_known = sampled_frames is not None and len(sampled_frames) > 0 and bool(fps)
    if frames_known:
        frame_numbers = np.asarray(sampled_frames, np.int64)
        frame_times = frame_numbers * step
    else:
        frame_numbers, first = np.unique(frames, return_index=True)
        frame_times = times[first]
    end = max(float(duration_s or 0.0), float(times.max()) + step, float(frame_times[-1]) + step, 1e-3)

    per_frame_of = np.clip(np.searchsorted(frame_numbers, frames), 0, len(frame_numbers) - 1)
    per_frame = np.bincount(per_frame_of, minlength=len(frame_numbers)).astype(float)
    pool = math.ceil(len(frame_numbers) / max_points)
    frame_bins = np.arange(len(frame_numbers)) // pool
    n_bins = int(frame_bins[-1]) + 1
    face_bins = per_frame_of // pool
    edges = np.r_[frame_times[::pool], end]
    faces_max = np.zeros(n_bins)
    np.maximum.at(faces_max, frame_bins, per_frame)
    valence, arousal = _floats(faces["valence"]), _floats(faces["arousal"])

    ids, first_rows, sizes = np.unique(tracks, return_index=True, return_counts=True)
    keep = np.argsort(-sizes, kind="stable")[:max_tracks]
    shown = ids[keep][np.argsort(first_rows[keep], kind="stable")]
    scores = _floats(faces["det_score"]) if "det_score" in faces.column_names else None
    by_track = np.argsort(tracks, kind="stable")  # each track's rows together, in row order
    summaries = []
    for track in shown:
        rows = by_track[
            np.searchsorted(tracks[by_track], track) : np.searchsorted(tracks[by_track], track, "right")
        ]
        used = np.unique(face_bins[rows])
        dominant = np.full(n_bins, -1)
        dominant[used] = _bin_means(face_bins[rows], probs[rows], n_bins)[used].argmax(axis=1)
        names, counts = np.unique(labels[rows], return_counts=True)
        best = rows[np.argmax(np.nan_to_num(scores[rows], nan=-1.0))] if scores is not None else rows[0]
        summaries.append(
            TrackSummary(
                track_id=int(track),
                first_s=float(times[rows].min()),
                last_s=float(times[rows].max()),
                faces=len(rows),
                emotion=str(names[counts.argmax()]),
                share=float(counts.max() / len(rows)),
                valence=None if valence is None else float(np.nanmean(valence[rows])),
                arousal=None if arousal is None else float(np.nanmean(arousal[rows])),
                lanes=tuple(
                    (float(edges[a]), float(edges[a + n] - edges[a]), c) for a, n, c in _runs(dominant)
                ),
                best_row=int(best),
            )
        )
    label_names, label_counts = np.unique(labels, return_counts=True)
    return VideoSummary(
        classes=tuple(classes),
        end_s=end,
        edges=edges,
        probs=np.nan_to_num(_bin_means(face_bins, probs, n_bins)),
        valence=None if valence is None else _bin_means(face_bins, valence, n_bins),
        arousal=None if arousal is None else _bin_means(face_bins, arousal, n_bins),
        faces_mean=_bin_means(frame_bins, per_frame, n_bins),
        faces_max=faces_max,
        frames_known=frames_known,
        frames_per_bin=pool,
        counts={str(k): int(v) for k, v in zip(label_names, label_counts)},
        tracks=tuple(summaries),
        tracks_total=len(ids),
    )


def _emotion_figure(summary: VideoSummary, palette: Mapping[str, str]) -> Figure:
    fig, ax = _figure(2.9)
    top = np.cumsum(summary.probs, axis=1)
    for j, name in enumerate(summary.classes):
        bottom = top[:, j - 1] if j else 0.0
        ax.stairs(top[:, j], summary.edges, baseline=bottom, fill=True, color=palette[name], label=name)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean probability")
    _time_axis(ax, summary.end_s)
    _legend(fig)
    return fig


def _va_figure(summary: VideoSummary) -> Figure:
    fig, ax = _figure(2.4)
    low, high = -1.0, 1.0
    for name, values, color in (
        ("valence", summary.valence, "#1f77b4"),
        ("arousal", summary.arousal, "#ff7f0e"),
    ):
        if values is not None:
            ax.stairs(values, summary.edges, color=color, linewidth=1.2, label=name)
            low, high = min(low, float(np.nanmin(values))), max(high, float(np.nanmax(values)))
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_ylim(low * 1.05, high * 1.05)
    ax.set_ylabel("mean of the faces")
    _time_axis(ax, summary.end_s)
    _legend(fig)
    return fig


def _faces_figure(summary: VideoSummary) -> Figure:
    fig, ax = _figure(2.2)
    ax.stairs(summary.faces_max, summary.edges, color="#9ecae1", linewidth=1, label="most in one frame")
    ax.stairs(summary.faces_mean, summary.edges, color="#08306b", linewidth=1.4, label="mean per frame")
    ax.set_ylim(0, max(1.0, float(summary.faces_max.max())) * 1.1)
    ax.set_ylabel("faces per frame")
    _time_axis(ax, summary.end_s)
    _legend(fig)
    return fig


def _distribution_figure(
    counts: Mapping[str, int], classes: Sequence[str], palette: Mapping[str, str]
) -> Figure:
    fig, ax = _figure(0.6 + 0.28 * len(classes))
    total = max(1, sum(counts.values()))
    values = [counts.get(c, 0) for c in classes]
    ax.barh(range(len(classes)), values, color=[palette[c] for c in classes])
    for i, v in enumerate(values):
        ax.text(v, i, f" {100 * v / total:.1f}%", va="center", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=9)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlim(0, max([*values, 1]) * 1.15)
    ax.set_xlabel("faces (one per face per sampled frame)")
    return fig


# -- engagement and predictions: rows per window ----------------------------------------------------------


def _label(track: int | None, whole: str) -> str:
    return whole if track is None else f"#{track}"


def _pooled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS points of a numeric series: means of consecutive points (display only)."""
    pool = math.ceil(len(x) / MAX_POINTS)
    if pool <= 1:
        return x, y
    bins = np.arange(len(x)) // pool
    n = int(bins[-1]) + 1
    return _bin_means(bins, x.astype(float), n), _bin_means(bins, y.astype(float), n)


def _pooled_lane(starts: np.ndarray, ends: np.ndarray, index: np.ndarray) -> list[tuple[float, float, int]]:
    """Lane spans of per-window classes: at most MAX_POINTS pools of consecutive windows (each its most
    frequent class), equal neighbours merged."""
    pool = math.ceil(len(index) / MAX_POINTS)
    firsts = np.arange(0, len(index), pool)
    lasts = np.minimum(firsts + pool, len(index)) - 1
    classes = np.array([np.bincount(index[a : b + 1]).argmax() for a, b in zip(firsts, lasts)])
    return [
        (float(starts[firsts[a]]), float(ends[lasts[a + n - 1]] - starts[firsts[a]]), c)
        for a, n, c in _runs(classes)
    ]


def engagement_column(table: pa.Table) -> str:
    """The column holding an engagement table's values; ValueError when it has none."""
    found = [c for c in ENGAGEMENT_COLUMNS if c in table.column_names]
    if not found:
        raise ValueError(
            f"an engagement table needs one of the columns {', '.join(ENGAGEMENT_COLUMNS)}; it has {', '.join(table.column_names)}"
        )
    return found[0]


def _engagement_html(table: pa.Table, end_s: float) -> str:
    """Engagement per track and for the whole room, as `summary` defines them."""
    value = engagement_column(table)
    head = "<h3>Engagement</h3>"
    if not len(table):
        return head + '<p class="note">The engagement output has no rows for this video.</p>'
    if "window_start_s" not in table.column_names:
        rows = [
            (_label(t, "whole room"), _number(v, 2))
            for t, v in zip(tracks_of(table), table[value].to_pylist())
        ]
        return head + _table(["who", value], rows, (1,))
    summary = summarize_engagement(table, value)
    if summary.room_curve is None:
        return head + '<p class="note">The engagement output has no values for this video.</p>'
    tracks = {k: v for k, v in summary.series.items() if k is not None}
    room_starts, room_ends, room = summary.room_curve
    room_label = "whole room" if None in summary.series else "whole room (mean of the tracks present)"
    fig, ax = _figure(2.6)
    for i, (starts, ends, values) in enumerate(tracks.values()):
        ax.plot(
            *_pooled((starts + ends) / 2, values),
            color="#9ecae1",
            linewidth=0.8,
            label=None if i else "one track",
        )
    ax.plot(*_pooled((room_starts + room_ends) / 2, room), color="#08306b", linewidth=1.8, label=room_label)
    ax.set_ylabel(value)
    _time_axis(ax, end_s)
    _legend(fig)
    rows = [(room_label, len(room), _number(summary.room, 2))] + [
        (f"#{k}", n, _number(mean, 2)) for k, (mean, n) in summary.tracks.items()
    ]
    return (
        head
        + _figure_html(fig, f"Per window ({value}), drawn at the window's centre.")
        + _table(["who", "windows", f"mean {value}"], rows, (1, 2))
    )


def _predictions_html(table: pa.Table, title: str, end_s: float) -> str:
    """`emotibatch predict` rows of one video: a table per clip (or track), lanes or lines over windows."""
    head = f"<h3>Predictions: {_e(title)}</h3>"
    if not len(table):
        return head + '<p class="note">These predictions have no rows for this video.</p>'
    if "window_start_s" not in table.column_names:
        extra = [c for c in table.column_names if c == "score" or c.startswith("prob_")]
        rows = [
            (
                _label(t, "whole clip"),
                "no faces" if r["prediction"] is None else r["prediction"],
                *(_number(r[c], 3) for c in extra),
            )
            for t, r in zip(tracks_of(table), table.to_pylist())
        ]
        return head + _table(["who", "prediction", *extra], rows, range(2, 2 + len(extra)))
    if "score" in table.column_names:
        fig, ax = _figure(2.6)
        for track, (starts, ends, values) in window_series(table, "score").items():
            x, y = _pooled((starts + ends) / 2, values)
            ax.plot(x, y, linewidth=1.8 if track is None else 0.9, label=_label(track, "whole clip"))
        ax.set_ylabel("score")
        _time_axis(ax, end_s)
        _legend(fig)
    else:
        series = window_series(table, "prediction")
        names = sorted({str(v) for _, _, values in series.values() for v in values})
        lanes = [
            (
                _label(track, "whole clip"),
                _pooled_lane(starts, ends, np.array([names.index(str(v)) for v in values])),
            )
            for track, (starts, ends, values) in series.items()
        ]
        fig = _lanes_figure(lanes, names, colors(names), end_s)
    counts = sorted(pc.value_counts(table["prediction"].drop_null()).to_pylist(), key=lambda c: -c["counts"])
    return (
        head
        + _figure_html(fig, "Per window; windows without faces are left out.")
        + _table(["prediction", "windows"], [(c["values"], c["counts"]) for c in counts], (1,))
    )


# -- thumbnails: the only faces a report may show ---------------------------------------------------------


def track_thumbnails(
    row: Mapping[str, Any],
    faces: pa.Table,
    best_rows: Mapping[int, int],
    *,
    frame_folders: bool = False,
    storage_options: dict | None = None,
) -> dict[int, str]:
    """{track_id: JPEG data URI} of crops of the faces rows `best_rows` (by track) from the source video.

    Decoded with the extract's own decoder, so frame indices mean what they meant there. Raises
    ValueError saying why when the source cannot be read.
    """
    fps, count = row.get("fps"), row.get("frame_count")
    if not fps or not count:
        raise ValueError("the videos table records no frame rate or frame count for it")
    seekable = posixpath.splitext(row["source_uri"])[1].lower() in SEEKABLE_EXTENSIONS
    info = VideoInfo(
        fps, count, count / fps, row.get("width") or 0, row.get("height") or 0, seekable=seekable
    )
    frames = faces["frame_index"].to_numpy()
    boxes = schema.as_matrix(faces["bbox"])
    wanted: dict[int, list[int]] = {}
    for track, r in best_rows.items():
        wanted.setdefault(int(frames[r]), []).append(track)
    source = VideoSource(row["source_uri"], row["video_id"], "frames" if frame_folders else "video")
    segment = Segment(row["video_id"], 0, 0, count, tuple(sorted(wanted)))
    out = {}
    try:
        for index, _, image in decode_segment(source, info, segment, storage_options=storage_options):
            for track in wanted[index]:
                out[track] = _jpeg_crop(image, boxes[best_rows[track]])
    except (DecodeError, OSError) as exc:
        raise ValueError(clean_text(str(exc))) from exc
    return out


def _jpeg_crop(image: np.ndarray, box: np.ndarray) -> str:
    """The box grown by a tenth of its side each way, clipped to the frame, fit into THUMBNAIL_PX."""
    x1, y1, x2, y2 = box.astype(float)
    grow = 0.1 * max(x2 - x1, y2 - y1)
    h, w = image.shape[:2]
    left, top = int(np.clip(x1 - grow, 0, w - 1)), int(np.clip(y1 - grow, 0, h - 1))
    right, bottom = (
        int(np.clip(math.ceil(x2 + grow), left + 1, w)),
        int(np.clip(math.ceil(y2 + grow), top + 1, h)),
    )
    crop = image[top:bottom, left:right]
    scale = THUMBNAIL_PX / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


# -- sections: pure functions of tables -------------------------------------------------------------------


def video_section(
    row: Mapping[str, Any],
    summary: VideoSummary | None,
    *,
    anchor: str,
    predictions: Sequence[tuple[str, pa.Table]] = (),
    engagement: pa.Table | None = None,
    thumbnails: Mapping[int, str] | str | None = None,
) -> Section:
    """A video's section from its videos row and its faces' summary (None: failed, or no faces).

    `predictions` ((title, rows)) and `engagement` hold this video's rows; `thumbnails` maps track ids
    to data URIs, or says why there are none.
    """
    size = f"{row['width']}×{row['height']}" if row.get("width") else "-"
    facts = [
        ("source", row.get("source_uri")),
        ("status", _status(row["status"])),
        ("duration", _moment(row.get("duration_s"), row.get("duration_s") or 0.0)),
        ("frame rate", _number(row.get("fps"), 2)),
        ("size", size),
        ("frames sampled", row.get("frames_sampled")),
        ("faces", row.get("faces")),
        ("tracks", row.get("tracks")),
        ("decode / inference", f"{_number(row.get('decode_s'))} s / {_number(row.get('infer_s'))} s"),
    ]
    line = (
        f"{_moment(row.get('duration_s'), row.get('duration_s') or 0.0)} of video · "
        f"{_number(row.get('faces'))} faces in {_number(row.get('tracks'))} tracks · "
        if row["status"] == "ok"
        else ""
    ) + _e(row.get("source_uri"))
    parts = [f'<p class="muted">{line}</p>']
    tracks = ""
    if row["status"] != "ok":
        parts.append(
            f'<p class="alert">This input failed, so it has no faces: {_e(row.get("error") or "no error recorded")}</p>'
        )
    elif summary is None:
        sampled = _number(row.get("frames_sampled"))
        parts.append(f'<p class="note">No faces were found in this video ({sampled} sampled frames).</p>')
    else:
        charts, tracks = _faces_html(summary, thumbnails)
        parts.append(charts)
    end_s = summary.end_s if summary else float(row.get("duration_s") or 1.0)
    if engagement is not None:
        parts.append(_engagement_html(engagement, end_s))
    parts += [_predictions_html(table, title, end_s) for title, table in predictions]
    shown = f"the {len(summary.tracks)} tracks and " if summary is not None else ""
    parts.append(
        f"<details><summary>Details: {shown}the video</summary>{tracks}{_key_values(facts)}</details>"
    )
    return Section(anchor, f"Video {row['video_id']}", "".join(parts))


def _faces_html(summary: VideoSummary, thumbnails: Mapping[int, str] | str | None) -> tuple[str, str]:
    """The charts, and the table of tracks (collapsed by the caller: it can be 50 rows long)."""
    palette = colors(summary.classes)
    bins = (
        f"means over {summary.frames_per_bin} consecutive frames for display"
        if summary.frames_per_bin > 1
        else "one point per frame"
    )
    frames = (
        "sampled frames"
        if summary.frames_known
        else "frames with faces (which frames were sampled is not recorded)"
    )
    parts = [
        "<h3>Emotions over time</h3>",
        _figure_html(
            _emotion_figure(summary, palette),
            f"Mean emotion probabilities of the faces present, {bins}; blank: no face.",
        ),
        "<h3>Valence and arousal</h3>",
        _figure_html(_va_figure(summary), f"Means of the faces present, {bins}.")
        if summary.valence is not None
        else '<p class="muted">This emotion model has no valence and arousal heads (only the MTL models do).</p>',
        "<h3>Faces per frame</h3>",
        _figure_html(_faces_figure(summary), f"Faces found per frame over the {frames}, {bins}."),
        "<h3>Tracks</h3>",
        _figure_html(
            _lanes_figure(
                [(f"#{t.track_id}", t.lanes) for t in summary.tracks], summary.classes, palette, summary.end_s
            ),
            "One lane per track: when the person is present, coloured by their dominant emotion (highest mean probability) in each bin.",
        ),
    ]
    if summary.tracks_total > len(summary.tracks):
        hidden = summary.tracks_total - len(summary.tracks)
        parts.append(
            f'<p class="muted">The {len(summary.tracks)} tracks with the most faces are shown; {hidden:,} shorter ones are not.</p>'
        )
    if isinstance(thumbnails, str):
        parts.append(
            f'<p class="note">No thumbnails: the source video could not be read ({_e(thumbnails)}).</p>'
        )
    pictures = thumbnails if isinstance(thumbnails, Mapping) else None
    with_va = summary.valence is not None
    headers = [
        "track",
        *(["face"] if pictures is not None else []),
        "first seen",
        "last seen",
        "faces",
        "mostly",
        "share",
    ]
    headers += ["valence", "arousal"] if with_va else []
    rows = []
    for t in summary.tracks:
        cells: list[object] = [f"#{t.track_id}"]
        if pictures is not None:
            uri = pictures.get(t.track_id)
            cells.append(Raw(f'<img alt="track {t.track_id}" src="{uri}">' if uri else "-"))
        cells += [
            _moment(t.first_s, summary.end_s),
            _moment(t.last_s, summary.end_s),
            t.faces,
            _swatch(palette.get(t.emotion, "#ccc"), t.emotion),
            f"{100 * t.share:.0f}%",
        ]
        cells += [_number(t.valence, 2), _number(t.arousal, 2)] if with_va else []
        rows.append(cells)
    numeric = [i for i, h in enumerate(headers) if h in ("faces", "share", "valence", "arousal")]
    return "".join(parts), _table(headers, rows, numeric)


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted name, text) rows; long lists shortened."""
    out = []
    for key, value in sorted(settings.items()):
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, name + ".")
        elif isinstance(value, list):
            shown = ", ".join(map(str, value[:5])) + (f", … ({len(value)} in all)" if len(value) > 5 else "")
            out.append((name, shown or "-"))
        else:
            out.append(
                (name, "-" if value is None else json.dumps(value) if isinstance(value, bool) else str(value))
            )
    return out


def overview_sections(
    videos: pa.Table,
    runs: pa.Table | None,
    *,
    shown: Mapping[str, str],
    counts: Mapping[str, int],
    dominant: Mapping[str, str],
    classes: Sequence[str],
    provenance: schema.Provenance | None,
) -> list[Section]:
    """The report's own sections: what happened, emotions, videos, then the run's details.

    They cover the reported videos only (`shown` maps their ids to anchors; every video when empty), so
    a one-lecture page is about that lecture. The last section, the runs, models and options, is
    collapsed: a page puts it after the video sections. `counts` are the faces per emotion and
    `dominant` each video's most frequent emotion; `provenance` is a faces file's (None without one).
    """
    rows = sorted(
        (r for r in videos.to_pylist() if not shown or r["video_id"] in shown), key=lambda r: r["video_id"]
    )
    runs_ = sorted(runs.to_pylist(), key=lambda r: r["started_at"]) if runs is not None else []
    return [
        _what_happened(rows, counts),
        _emotions_section(counts, classes, len(rows)),
        _videos_section(rows, shown, dominant),
        _run_section(runs_, classes, provenance),
    ]


def _failure_causes(failed: Sequence[Mapping[str, Any]]) -> str:
    """The failed inputs' errors, most frequent first: "cannot decode (broken); not found (2: a, b)"."""
    by_error: dict[str, list[str]] = {}
    for r in failed:
        by_error.setdefault(r["error"] or "no error recorded", []).append(r["video_id"])
    causes = sorted(by_error.items(), key=lambda c: -len(c[1]))
    shown = [
        f"{error} ({len(ids)}: {', '.join(ids[:3])}{', …' if len(ids) > 3 else ''})"
        if len(ids) > 1
        else f"{error} ({ids[0]})"
        for error, ids in causes[:3]
    ]
    more = f"; and {len(causes) - 3} other errors" if len(causes) > 3 else ""
    return "; ".join(shown) + more


def _what_happened(rows: list[dict], counts: Mapping[str, int]) -> Section:
    """The answer first: how many inputs, which failed and why, how much video and how many faces."""
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    mostly = max(counts, key=counts.get) if counts else "-"
    totals: list[tuple[str, object]] = [
        ("inputs", len(rows)),
        ("ok", len(ok)),
        ("failed", Raw(f'<span class="failed">{len(failed):,}</span>') if failed else 0),
        ("video time", _clock(sum(r["duration_s"] or 0.0 for r in ok))),
        ("frames sampled", sum(r["frames_sampled"] or 0 for r in ok)),
        ("faces", sum(r["faces"] or 0 for r in ok)),
        ("tracks", sum(r["tracks"] or 0 for r in ok)),
        ("mostly", mostly),
    ]
    if failed:
        body = [
            f'<p class="alert">{len(failed):,} of {len(rows):,} inputs failed: {_e(_failure_causes(failed))}. '
            "A rerun retries them.</p>",
            _table([k for k, _ in totals], [[v for _, v in totals]], range(len(totals))),
            _table(
                ["video", "source", "error"],
                [(r["video_id"], r["source_uri"], r["error"] or "-") for r in failed],
            ),
        ]
    else:
        body = [
            f'<p class="ok">All {len(rows):,} inputs were processed.</p>',
            _table([k for k, _ in totals], [[v for _, v in totals]], range(len(totals))),
        ]
    return Section("overview", "What happened", "".join(body))


def _emotions_section(counts: Mapping[str, int], classes: Sequence[str], videos: int) -> Section:
    total = sum(counts.values())
    if not total:
        return Section(
            "emotions", "Emotions", '<p class="note">No faces were found in the videos of this report.</p>'
        )
    palette = colors(classes)
    caption = f"Faces per emotion (each face's most likely class) over the {videos} videos of this report."
    rows = [
        (_swatch(palette[c], c), counts.get(c, 0), f"{100 * counts.get(c, 0) / total:.1f}%") for c in classes
    ]
    table = _table(["emotion", "faces", "share"], rows, (1, 2))
    body = (
        _figure_html(_distribution_figure(counts, classes, palette), caption)
        + f"<details><summary>The numbers</summary>{table}</details>"
    )
    return Section("emotions", "Emotions", body)


def _videos_section(rows: list[dict], shown: Mapping[str, str], dominant: Mapping[str, str]) -> Section:
    table_rows = []
    for r in rows:
        name = _e(r["video_id"])
        link = Raw(f'<a href="#{shown[r["video_id"]]}">{name}</a>' if r["video_id"] in shown else name)
        table_rows.append(
            (
                link,
                _status(r["status"]),
                _clock(r["duration_s"]),
                r["frames_sampled"],
                r["faces"],
                r["tracks"],
                dominant.get(r["video_id"], "-"),
                _number(r["decode_s"]),
                _number(r["infer_s"]),
            )
        )
    headers = [
        "video",
        "status",
        "duration",
        "frames sampled",
        "faces",
        "tracks",
        "mostly",
        "decode s",
        "inference s",
    ]
    return Section("videos", "Videos", _table(headers, table_rows, (2, 3, 4, 5, 7, 8)))


def _run_section(runs: list[dict], classes: Sequence[str], provenance: schema.Provenance | None) -> Section:
    """The runs that made the output, the models and the options, collapsed: few readers need them."""
    settings = json.loads(runs[-1]["settings"]) if runs else {}

    def model(given: str | None, sha256: str | None) -> str:
        return "-" if not given else f"{given} (sha256 {sha256})" if sha256 else given

    if provenance is not None:
        emotion = model(provenance.model, provenance.model_sha256)
        detector = model(provenance.detector, provenance.detector_sha256)
    else:  # no faces file (every video failed): the run's settings still name the models
        emotion, detector = model(settings.get("model"), None), model(settings.get("detector"), None)
    facts = [("emotion model", emotion), ("face detector", detector), ("classes", ", ".join(classes) or "-")]
    body = ["<h3>Models</h3>", _key_values(facts)]
    if not runs:
        body.append(
            '<p class="note">This output has no runs/ table: no run records, throughput or options.</p>'
        )
    else:
        wall = sum(r["wall_s"] for r in runs)
        throughput = [
            ("frames per second", _number(sum(r["frames_sampled"] for r in runs) / wall) if wall else "-"),
            ("faces per second", _number(sum(r["faces"] for r in runs) / wall) if wall else "-"),
        ]
        keys = (
            "videos_ok",
            "videos_failed",
            "videos_skipped",
            "frames_decoded",
            "frames_sampled",
            "faces",
            "tracks",
        )
        headers = [
            "run",
            "started (UTC)",
            "wall",
            "ok",
            "failed",
            "skipped",
            "frames decoded",
            "frames sampled",
            "faces",
            "tracks",
            "frames/s",
            "faces/s",
        ]
        rows = [
            (
                r["run_id"],
                f"{r['started_at']:%Y-%m-%d %H:%M:%S}",
                _clock(r["wall_s"]),
                *(r[k] for k in keys),
                _number(r["frames_per_s"]),
                _number(r["faces_per_s"]),
            )
            for r in runs
        ]
        body += [
            "<h3>Runs</h3>",
            '<p class="muted">Every input of each run, not only this report\'s. Skipped: finished by an '
            "earlier run. Throughput: sampled frames and faces per second of wall time.</p>",
            _table(headers, rows, range(2, 12)),
            _key_values(throughput),
            f"<h3>Options of run {_e(runs[-1]['run_id'])}</h3>",
            '<p class="muted">As the run recorded them; credentials were removed before they were stored.</p>',
            _key_values(_flatten(settings)),
        ]
        differ = [r["run_id"] for r in runs[:-1] if r["settings"] != runs[-1]["settings"]]
        if differ:
            body.append(f'<p class="note">Earlier runs used other options: {_e(", ".join(differ))}.</p>')
    summary = f"{len(runs)} run{'s' if len(runs) != 1 else ''}, the models and the options (click to open)"
    return Section(
        "models",
        "Runs, models and options",
        f"<details><summary>{_e(summary)}</summary>{''.join(body)}</details>",
    )


def page(title: str, sections: Sequence[Section], *, summary: Mapping[str, Any], subtitle: str = "") -> str:
    """The whole document: inline styles, no script; `summary` as JSON in a <meta> for the index."""
    meta = html.escape(json.dumps(summary, sort_keys=True), quote=True)
    links = "".join(f'<li><a href="#{s.anchor}">{_e(s.title)}</a></li>' for s in sections)
    nav = f"<nav><ul>{links}</ul></nav>" if len(sections) > 1 else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="{REPORT_META}" content="{meta}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><p class="muted">{_e(subtitle)}</p>{nav}</header>'
        + "".join(s.html() for s in sections)
        + "</body></html>"
    )


# -- reading and writing (fsspec) -------------------------------------------------------------------------


def _read_parquet(source: str | pa.Table, storage_options: dict | None) -> pa.Table:
    """A table, or a Parquet file or directory of Parquet files (names starting "_" or "." skipped)."""
    if isinstance(source, pa.Table):
        return source
    fs, path = open_fs(source, storage_options)
    if not fs.exists(path):
        raise ValueError(f"{redact_uri(source)}: not found")
    return pq.read_table(path, filesystem=fs)


def _predictions_title(source: str | pa.Table, table: pa.Table) -> str:
    name = posixpath.basename(redact_uri(source).rstrip("/")) if isinstance(source, str) else "predictions"
    task = schema.read_metadata(table.schema).get("task")
    return f"{name} ({task} model)" if task else name


def read_settings(output: Output, runs: pa.Table | None) -> dict[str, Any]:
    """The settings the output's rows were made with: its settings file, else the latest run's."""
    settings = output.read_settings()
    if settings is not None:
        return settings
    if runs is not None and len(runs):
        return json.loads(runs.sort_by("started_at")["settings"][-1].as_py())
    return {}


def _sampled_frames(row: Mapping[str, Any], settings: Mapping[str, Any]) -> np.ndarray | None:
    """The frames the extract sampled, by its sampling rule; None where the settings do not say."""
    sampling = settings.get("sampling")
    if not sampling or not row.get("fps") or not row.get("frame_count"):
        return None
    info = VideoInfo(row["fps"], row["frame_count"], row["frame_count"] / row["fps"], 0, 0)
    return sample_indices(info, Sampling(sampling["mode"], sampling.get("value")))


def _write_text(path: str, text: str, storage_options: dict | None) -> None:
    fs, target = open_fs(path, storage_options)
    files.write_bytes(fs, target, text.encode())


def build_report(
    extract_dir: str,
    *,
    videos: Sequence[str] | None = None,
    predictions: Sequence[str | pa.Table] = (),
    engagement: str | pa.Table | None = None,
    thumbnails: bool = False,
    notes: Sequence[str] = (),
    storage_options: dict | None = None,
) -> str:
    """The report of `extract_dir` as HTML text (see `write_report`)."""
    output = Output(extract_dir, storage_options)
    table = output.read_tables("videos")
    if table is None:
        raise ValueError(
            f"{redact_uri(extract_dir)}: no videos/ table; give the output of `emotibatch extract`"
        )
    runs = output.read_tables("runs")
    settings = read_settings(output, runs)
    rows = {r["video_id"]: r for r in table.to_pylist()}
    chosen = list(dict.fromkeys(videos)) if videos else sorted(rows)
    unknown = [v for v in chosen if v not in rows]
    if unknown:
        raise ValueError(f"{redact_uri(extract_dir)}/videos has no video {', '.join(map(repr, unknown))}")
    extra = [(_predictions_title(p, t), t) for p in predictions for t in [_read_parquet(p, storage_options)]]
    engaged = None if engagement is None else _read_parquet(engagement, storage_options)
    if engaged is not None:
        engagement_column(engaged)  # refused before any work

    anchors = {v: f"v{i}" for i, v in enumerate(chosen, 1)}
    columns = FACE_COLUMNS + (THUMBNAIL_COLUMNS if thumbnails else [])
    sections, counts, dominant, provenance = [], {}, {}, None
    for video_id in chosen:
        row = rows[video_id]
        path = output.faces_path(video_id)
        summary = thumbs = None
        if row["status"] == "ok" and output.fs.exists(path):
            faces = pq.read_table(path, columns=columns, filesystem=output.fs)
            made_by = schema.Provenance.from_schema(faces.schema)
            provenance = provenance or made_by
            if len(faces):
                summary = summarize_video(
                    faces,
                    made_by.classes,
                    duration_s=row.get("duration_s"),
                    fps=row.get("fps"),
                    sampled_frames=_sampled_frames(row, settings),
                )
            if thumbnails and summary is not None:
                best = {t.track_id: t.best_row for t in summary.tracks}
                try:
                    thumbs = track_thumbnails(
                        row,
                        faces,
                        best,
                        frame_folders=bool(settings.get("frame_folders")),
                        storage_options=storage_options,
                    )
                except ValueError as exc:
                    thumbs = str(exc)
        sections.append(
            video_section(
                row,
                summary,
                anchor=anchors[video_id],
                predictions=[(title, t.filter(pc.equal(t["video_id"], video_id))) for title, t in extra],
                engagement=None
                if engaged is None
                else engaged.filter(pc.equal(engaged["video_id"], video_id)),
                thumbnails=thumbs,
            )
        )
        if summary is not None:
            for name, n in summary.counts.items():
                counts[name] = counts.get(name, 0) + n
            dominant[video_id] = max(summary.counts, key=summary.counts.get)
    classes = list(provenance.classes) if provenance else sorted(counts)
    overview = overview_sections(
        table, runs, shown=anchors, counts=counts, dominant=dominant, classes=classes, provenance=provenance
    )
    said = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    lead = Section(overview[0].anchor, overview[0].title, overview[0].body + said)
    reported = [rows[v] for v in chosen]
    summary_ = {
        "title": chosen[0] if len(chosen) == 1 else posixpath.basename(redact_uri(extract_dir).rstrip("/")),
        "extract": redact_uri(extract_dir),
        "videos": len(reported),
        "ok": sum(r["status"] == "ok" for r in reported),
        "failed": sum(r["status"] != "ok" for r in reported),
        "duration_s": sum(r["duration_s"] or 0.0 for r in reported),
        "faces": sum(r["faces"] or 0 for r in reported),
        "tracks": sum(r["tracks"] or 0 for r in reported),
        "mostly": max(counts, key=counts.get) if counts else None,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    privacy = "includes face thumbnails: personal data" if thumbnails else "no face images (see --thumbnails)"
    subtitle = f"Extract output {summary_['extract']} · generated {summary_['generated']} by emotibatch {__version__} · {privacy}"
    return page(
        f"emotibatch report: {summary_['title']}",
        [lead, *overview[1:-1], *sections, overview[-1]],
        summary=summary_,
        subtitle=subtitle,
    )


def write_report(
    extract_dir: str,
    html_path: str,
    *,
    videos: Sequence[str] | None = None,
    predictions: str | pa.Table | Sequence[str | pa.Table] | None = None,
    engagement: str | pa.Table | None = None,
    thumbnails: bool = False,
    notes: Sequence[str] = (),
    storage_options: dict | None = None,
) -> str:
    """Write the report of the extract output `extract_dir` (every video, or `videos`) to `html_path`.

    `predictions`: `emotibatch predict` outputs. `engagement`: rows of video_id, optional track_id (null:
    the whole room), window_start_s and window_end_s (optional) and one of `ENGAGEMENT_COLUMNS`, such as
    the nightly job's timelines. Each is a table, a Parquet file or a directory of Parquet files; paths
    may be fsspec URIs (`storage_options` for all). `notes` are said under what happened (the nightly job
    says there when no engagement model ran). Returns html_path.
    """
    given = [predictions] if isinstance(predictions, str | pa.Table) else list(predictions or [])
    text = build_report(
        extract_dir,
        videos=videos,
        predictions=given,
        engagement=engagement,
        thumbnails=thumbnails,
        notes=notes,
        storage_options=storage_options,
    )
    _write_text(html_path, text, storage_options)
    return html_path


# -- the night's index ------------------------------------------------------------------------------------


def report_summary(text: str) -> dict[str, Any] | None:
    """The summary a report carries in its <meta> (None for other HTML)."""
    match = re.search(rf'<meta name="{REPORT_META}" content="([^"]*)">', text)
    return json.loads(html.unescape(match.group(1))) if match else None


def index_page(
    reports: Sequence[tuple[str, Mapping[str, Any]]],
    title: str,
    *,
    notes: Sequence[str] = (),
    links: Sequence[tuple[str, str]] = (),
) -> str:
    """A page linking reports, given as (href, summary) in order, with the numbers a person scans for;
    `notes` are said above the table, `links` ((href, text)) lead to related pages."""
    rows = [
        (
            Raw(f'<a href="{_e(href)}">{_e(s.get("title") or href)}</a>'),
            s.get("videos"),
            s.get("ok"),
            Raw(f'<span class="failed">{int(s["failed"]):,}</span>') if s.get("failed") else 0,
            _clock(s.get("duration_s")),
            s.get("faces"),
            s.get("tracks"),
            s.get("mostly") or "-",
            s.get("generated") or "-",
        )
        for href, s in reports
    ]
    failed = sum(s.get("failed") or 0 for _, s in reports)
    body = "".join(f'<p><a href="{_e(href)}">{_e(text)}</a></p>' for href, text in links)
    body += "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    body += f'<p class="alert">{failed:,} inputs failed: see the reports marked in red.</p>' if failed else ""
    headers = ["report", "videos", "ok", "failed", "duration", "faces", "tracks", "mostly", "generated"]
    body += (
        _table(headers, rows, (1, 2, 3, 4, 5, 6)) if rows else '<p class="note">No reports were found.</p>'
    )
    summary = {"title": title, "reports": len(reports), "failed": failed}
    return page(
        title, [Section("reports", "Reports", body)], summary=summary, subtitle=f"{len(reports)} reports"
    )


@dataclass(frozen=True)
class CourseLecture:
    """One lecture of the course view: its latest outcome over every night so far."""

    course: str
    lecture: str
    status: str  # ok, failed or waiting
    night: str | None  # the night of its latest try (None: waiting, never tried)
    why: str | None = None  # the error of a failed lecture, the reason a waiting one waits
    duration_s: float | None = None
    faces: int | None = None
    engagement: float | None = None
    shares: Mapping[str, float | None] | None = None  # share of face time per emotion (ok lectures)
    href: str | None = None  # its report


def course_page(
    lectures: Sequence[CourseLecture], classes: Sequence[str], title: str, *, note: str = ""
) -> str:
    """One section per course: each lecture's emotion shares (and engagement, where a model ran) over the
    semester, with the lectures that failed or still wait, in lecture order."""
    palette = colors(classes)
    courses: dict[str, list[CourseLecture]] = {}
    for x in sorted(lectures, key=lambda x: (x.course, x.lecture)):
        courses.setdefault(x.course, []).append(x)
    sections = []
    for i, (course, rows) in enumerate(courses.items(), 1):
        ok = [x for x in rows if x.status == "ok" and x.shares]
        parts = [
            f'<p class="muted">{len(rows)} lectures: {len(ok)} summarised, '
            f"{sum(x.status == 'failed' for x in rows)} failed, {sum(x.status == 'waiting' for x in rows)} waiting.</p>"
        ]
        if ok:
            parts.append(
                _figure_html(
                    _shares_figure([(x.lecture, x.shares) for x in ok], classes, palette),
                    "Share of face time per emotion in each lecture (each face's most likely class).",
                )
            )
            scored = [x for x in ok if x.engagement is not None]
            if scored:
                parts.append(
                    _figure_html(
                        _engagement_by_lecture([(x.lecture, x.engagement) for x in scored]),
                        "Engagement of each lecture: the mean of its timeline (see the nightly job).",
                    )
                )
        table = [
            (
                Raw(f'<a href="{_e(x.href)}">{_e(x.lecture)}</a>') if x.href else x.lecture,
                x.night or "-",
                Raw('<span class="muted">waiting</span>') if x.status == "waiting" else _status(x.status),
                _clock(x.duration_s),
                x.faces,
                _number(x.engagement, 2),
                max(x.shares, key=lambda c: x.shares[c] or 0.0) if x.shares else "-",
                *(
                    f"{100 * x.shares[c]:.0f}%" if x.shares and x.shares.get(c) is not None else "-"
                    for c in classes
                ),
                x.why or "",
            )
            for x in rows
        ]
        headers = [
            "lecture",
            "night",
            "status",
            "duration",
            "faces",
            "engagement",
            "mostly",
            *classes,
            "note",
        ]
        parts.append(_table(headers, table, range(3, 7 + len(classes))))
        sections.append(Section(f"c{i}", f"Course {course}", "".join(parts)))
    if not sections:
        sections.append(Section("c0", "Courses", '<p class="note">No lecture was found yet.</p>'))
    if note:
        first = sections[0]
        sections[0] = Section(first.anchor, first.title, f'<p class="note">{_e(note)}</p>' + first.body)
    summary = {"title": title, "courses": len(courses), "lectures": len(lectures)}
    return page(
        title, sections, summary=summary, subtitle=f"{len(lectures)} lectures in {len(courses)} courses"
    )


def _shares_figure(
    lectures: Sequence[tuple[str, Mapping[str, float | None]]],
    classes: Sequence[str],
    palette: Mapping[str, str],
) -> Figure:
    fig, ax = _figure(0.9 + 0.26 * len(lectures))
    left = np.zeros(len(lectures))
    for c in classes:
        values = np.array([shares.get(c) or 0.0 for _, shares in lectures])
        ax.barh(range(len(lectures)), values, left=left, color=palette[c], label=c)
        left += values
    ax.set_yticks(range(len(lectures)), [name for name, _ in lectures], fontsize=8)
    ax.set_ylim(len(lectures) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * x:.0f}%"))
    ax.set_xlabel("share of face time")
    _legend(fig)
    return fig


def _engagement_by_lecture(lectures: Sequence[tuple[str, float]]) -> Figure:
    fig, ax = _figure(2.4)
    ax.plot(range(len(lectures)), [v for _, v in lectures], marker="o", color="#08306b")
    ax.set_xticks(range(len(lectures)), [name for name, _ in lectures], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("engagement")
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    return fig


def write_index(
    night_dir_or_list: str | Sequence[str],
    html_path: str,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    links: Sequence[tuple[str, str]] = (),
    storage_options: dict | None = None,
) -> str:
    """Write a page linking reports: every report under a directory (searched recursively; other HTML
    is skipped), or the given report paths in order. Links are relative where a report shares the
    index's filesystem, so the pages open from disk and from a bucket alike. `notes` and `links` go
    above the table (see `index_page`). Returns html_path."""
    options = storage_options or {}
    fs, index = open_fs(html_path, options)
    if isinstance(night_dir_or_list, str):
        root_fs, root = open_fs(night_dir_or_list, options)
        found = sorted(p for p in root_fs.find(root) if p.endswith(".html") and p != index)
        paths = [root_fs.unstrip_protocol(p) if "://" in night_dir_or_list else p for p in found]
    else:
        paths = list(night_dir_or_list)
    base = posixpath.dirname(index)
    reports = []
    for path in paths:
        report_fs, report = open_fs(path, options)
        with report_fs.open(report, "rb") as f:
            summary = report_summary(f.read(_HEAD_BYTES).decode("utf-8", "replace"))
        if summary is not None:
            same = type(report_fs) is type(fs) and report_fs.protocol == fs.protocol
            href = urllib.parse.quote(posixpath.relpath(report, base)) if same else redact_uri(path)
            reports.append((href, summary))
    name = title or f"emotibatch reports: {posixpath.basename(base) or base}"
    _write_text(html_path, index_page(reports, name, notes=notes, links=links), storage_options)
    return html_path
