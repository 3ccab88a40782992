"""Helpers and known inputs for the end-to-end tests (fixtures are in conftest.py).

A "face" is the stand-in detector's white square (emotibatch.testing.standins); the videos below place them at
known positions, so tests can state the exact rows a run must write.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from emotibatch.cli import cli
from emotibatch.testing import standins
from emotibatch.testing.samples import FaceTrack, expected_faces

FPS = 25.0
SECONDS = 2.0
N_FRAMES = round(FPS * SECONDS)
KPS = np.array(standins.KEYPOINT_OFFSETS, np.float64)

# 640x360 is letterboxed into the detector's 640x640 input at scale 1: every side (16, 32, 64) is found.
# Faces move along one axis by at most one stride per sampled step (IoU >= 1/3 with the previous box),
# so each FaceTrack is exactly one track under --every 5, --fps 4 and --all-frames.
KNOWN_TRACKS = (
    FaceTrack(64, (96, 96), (160, 96), first=0, last=N_FRAMES - 1),
    FaceTrack(32, (400, 64), (400, 128), first=10, last=40),
    FaceTrack(16, (560, 280), (560, 280), first=20, last=N_FRAMES - 1),
)
# 320x180 is letterboxed at scale 2: frame sides 16 and 32 become the detector's 32 and 64 (a 64 px square
# would be 128, which is no face to it). The 32 px face scores higher than the 16 px one.
SMALL_TRACKS = (
    FaceTrack(16, (200, 120), (200, 120), first=0, last=N_FRAMES - 1),
    FaceTrack(32, (64, 64), (96, 64), first=5, last=N_FRAMES - 1),
)
SIZES = {"known": (640, 360), "small": (320, 180)}
TRACKS = {"known": KNOWN_TRACKS, "small": SMALL_TRACKS}


def invoke(args: Sequence[object], env: dict[str, str] | None = None) -> Result:
    """`emotibatch ARGS` in-process (same Ray session); exceptions other than SystemExit propagate."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def read_table(output: str | Path, table: str) -> pa.Table | None:
    """All files of one output table, read independently of emotibatch.extract.output (None when there are none)."""
    files = sorted(p for p in Path(output, table).glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def sort_faces(table: pa.Table) -> pa.Table:
    return table.sort_by(
        [("video_id", "ascending"), ("frame_index", "ascending"), ("face_index", "ascending")]
    )


def by_video(table: pa.Table) -> dict[str, dict]:
    """A videos (or any keyed) table as {video_id: row}; fails on a duplicated id."""
    rows = table.to_pylist()
    ids = [r["video_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate video rows: {sorted(ids)}"
    return {r["video_id"]: r for r in rows}


def expected_rows(
    tracks: Sequence[FaceTrack], frames: Sequence[int]
) -> dict[int, list[tuple[int, tuple[float, float, float, float]]]]:
    """frame -> [(track number, box x1 y1 x2 y2)] of the faces drawn in each of `frames`."""
    out = {}
    for f in frames:
        faces = []
        for number, track in enumerate(tracks):
            for cx, cy, side in expected_faces([track], f):
                h = side / 2
                faces.append((number, (cx - h, cy - h, cx + h, cy + h)))
        out[int(f)] = faces
    return out


def landmarks_of(box: Sequence[float]) -> np.ndarray:
    """The stand-in's five keypoints (x, y flat) for a detected square `box`."""
    box = np.asarray(box, np.float64)
    centre, stride = (box[:2] + box[2:]) / 2, (box[2] - box[0]) / 2
    return (centre + KPS * stride).reshape(-1)


def assert_faces_match(
    faces: pa.Table, video_id: str, tracks: Sequence[FaceTrack], frames: Sequence[int], fps: float = FPS
) -> dict[int, int]:
    """The faces rows of one video are exactly the drawn squares of `frames`, one track per FaceTrack.

    Returns {FaceTrack number: track_id}."""
    rows = sort_faces(faces.filter(pc.equal(faces["video_id"], video_id))).to_pylist()
    want = expected_rows(tracks, frames)
    got: dict[int, list[dict]] = {}
    for r in rows:
        got.setdefault(r["frame_index"], []).append(r)
    assert set(got) <= set(want), f"{video_id}: rows for unsampled frames {sorted(set(got) - set(want))}"
    with_faces = {f for f, w in want.items() if w}
    assert set(got) == with_faces, f"{video_id}: frames with faces differ: {sorted(set(got) ^ with_faces)}"
    track_of: dict[int, int] = {}  # FaceTrack number -> track_id
    for f in sorted(got):
        frame_rows = got[f]
        assert [r["face_index"] for r in frame_rows] == list(range(len(frame_rows)))
        scores = [r["det_score"] for r in frame_rows]
        assert scores == sorted(scores, reverse=True), f"frame {f}: face_index not by score desc"
        expected = sorted(want[f], key=lambda nb: nb[1])
        found = sorted(frame_rows, key=lambda r: tuple(r["bbox"]))
        assert len(found) == len(expected), f"{video_id} frame {f}: {len(found)} faces, want {len(expected)}"
        for r, (number, box) in zip(found, expected):
            # the stand-in finds the drawn square exactly, up to float32 arithmetic on coordinates < 2000 px
            # (ulp <= 1.2e-4)
            np.testing.assert_allclose(r["bbox"], box, atol=1e-3, err_msg=f"{video_id} frame {f}")
            np.testing.assert_allclose(r["landmarks"], landmarks_of(box), atol=1e-3)
            assert r["timestamp_s"] == f / fps
            assert r["det_score"] > 0.9
            if number not in track_of:
                assert r["track_id"] not in track_of.values(), f"frame {f}: track id reused"
                track_of[number] = r["track_id"]
            assert r["track_id"] == track_of[number], f"{video_id} frame {f}: face {number} changed track"
    # Track ids are 0, 1, ... by first row.
    firsts = []
    for r in rows:
        if r["track_id"] not in firsts:
            firsts.append(r["track_id"])
    assert firsts == list(range(len(firsts)))
    return track_of


def summary(output: str) -> dict[str, str]:
    """The run summary table the CLI prints, as {label: value}."""
    labels = (
        "videos ok",
        "videos failed",
        "finished earlier",
        "frames decoded",
        "frames sampled",
        "faces",
        "tracks",
        "frames/s",
        "faces/s",
        "output",
    )
    found = {}
    for label in labels:
        match = re.search(rf"^\s*{re.escape(label)}\s+(\S+)\s*$", output, re.MULTILINE)
        if match:
            found[label] = match.group(1)
    return found
