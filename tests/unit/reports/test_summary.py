"""reports.summary: one engagement per track and per lecture, the same in the report and the nightly job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotibatch import nightly, schema
from emotibatch.extract.output import Output
from emotibatch.reports import report
from emotibatch.reports.summary import summarize_engagement
from emotibatch.testing.samples import write_synthetic_extract

# Window [0, 10) has three tracks (1, 0, 0), window [10, 20) only track 0 (1), and a null value (left out).
# The mean over the (track, window) rows would be 2/4 = 0.5; the mean of the per-window means, the room's
# curve, is (1/3 + 1) / 2 = 2/3. Exact in binary floating point up to one rounding of each mean.
ROOM = (1 / 3 + 1) / 2
TIMELINE = pa.Table.from_pylist(
    [
        {"video_id": "lec", "track_id": 0, "window_start_s": 0.0, "window_end_s": 10.0, "score": 1.0},
        {"video_id": "lec", "track_id": 1, "window_start_s": 0.0, "window_end_s": 10.0, "score": 0.0},
        {"video_id": "lec", "track_id": 2, "window_start_s": 0.0, "window_end_s": 10.0, "score": 0.0},
        {"video_id": "lec", "track_id": 0, "window_start_s": 10.0, "window_end_s": 20.0, "score": 1.0},
        {"video_id": "lec", "track_id": 1, "window_start_s": 10.0, "window_end_s": 20.0, "score": None},
    ]
)


def test_the_room_is_the_mean_of_the_per_window_means() -> None:
    summary = summarize_engagement(TIMELINE, "score")
    assert summary.room == pytest.approx(ROOM, rel=1e-15)
    assert summary.room != pytest.approx(np.mean([1.0, 0.0, 0.0, 1.0]))  # not the mean over rows
    assert summary.tracks == {0: (1.0, 2), 1: (0.0, 1), 2: (0.0, 1)}
    starts, ends, curve = summary.room_curve
    assert (starts.tolist(), ends.tolist()) == ([0.0, 10.0], [10.0, 20.0])
    np.testing.assert_allclose(curve, [1 / 3, 1.0], rtol=1e-15)


def test_the_room_own_rows_win_over_the_tracks() -> None:
    room = {"video_id": "lec", "track_id": None, "window_start_s": 0.0, "window_end_s": 20.0, "score": 0.25}
    summary = summarize_engagement(pa.Table.from_pylist([*TIMELINE.to_pylist(), room]), "score")
    assert summary.room == 0.25 and set(summary.tracks) == {0, 1, 2}


def test_no_values_no_room() -> None:
    empty = summarize_engagement(TIMELINE.slice(0, 0), "score")
    assert (empty.room, empty.tracks, empty.room_curve) == (None, {}, None)


@dataclass(frozen=True)
class _Given:
    """An engagement model whose timeline is TIMELINE."""

    name: str = "given"

    def timelines(self, video_id: str, faces: pa.Table, duration_s: float | None) -> tuple[pa.Table, dict]:
        n = len(TIMELINE)
        columns = {c: TIMELINE[c] for c in ("video_id", "track_id", "window_start_s", "window_end_s")}
        extra = {"n_frames": pa.array([10] * n, pa.int64()), "prediction": pa.array([None] * n, pa.string())}
        return pa.table(columns | extra | {"score": TIMELINE["score"]}).cast(schema.NIGHTLY_TIMELINE), {}


def test_the_nightly_job_and_the_report_give_the_same_numbers(tmp_path: Path) -> None:
    write_synthetic_extract(tmp_path / "x", {"lec": np.zeros(4, np.float32)}, frames=20, faces_per_frame=3)
    faces = pq.read_table(Output(str(tmp_path / "x")).faces_path("lec"))
    video = {"video_id": "lec", "source_uri": "lec", "duration_s": 20.0, "frames_sampled": 20}
    lecture, tracks, _ = nightly.summarize_lecture(
        faces, video, night=date(2026, 3, 1), run_id="r", engagement=_Given()
    )
    assert lecture["engagement_mean"].to_pylist() == pytest.approx([ROOM], rel=1e-15)
    assert [(t["engagement_mean"], t["engagement_windows"]) for t in tracks.to_pylist()] == [
        (1.0, 2),
        (0.0, 1),
        (0.0, 1),
    ]
    html = report._engagement_html(TIMELINE, 20.0)
    room_row = '<td>whole room (mean of the tracks present)</td><td class="n">2</td>'
    assert f'{room_row}<td class="n">{ROOM:.2f}</td>' in html
