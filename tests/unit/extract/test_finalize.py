"""The per-video pass (emotibatch.extract.finalize) on staged rows written here: frames that did not decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from emotibatch import schema
from emotibatch.extract.decode import LOST_FRAME, VideoInfo, VideoJob
from emotibatch.extract.finalize import finalize_video
from emotibatch.extract.output import Output
from emotibatch.inference.registry import CLASSES_8
from emotibatch.io.sources import VideoSource

N_CLASSES, DIM = len(CLASSES_8), 4
LOST = (7, 8, 9)


def staged_rows(frames: range, lost: tuple[int, ...]) -> pa.Table:
    """One face per decoded frame, always at the same box; lost frames as decode_blocks and the face
    actor stage them: no faces, error LOST_FRAME."""
    rows = []
    for i in frames:
        face = i not in lost
        rows.append(
            {
                "video_id": "v",
                "segment_index": i // 5,
                "frame_index": i,
                "error": None if face else LOST_FRAME,
                "decode_s": 0.01,
                "infer_s": 0.02 if face else 0.0,
                "bbox": [[10.0, 10.0, 42.0, 42.0]] if face else [],
                "det_score": [0.9] if face else [],
                "landmarks": [[0.0] * 10] if face else [],
                "emotion_probs": [[1 / N_CLASSES] * N_CLASSES] if face else [],
                "valence": [None] if face else [],
                "arousal": [None] if face else [],
                "features": [[0.5] * DIM] if face else [],
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.frames_schema(N_CLASSES, DIM, "float32"))


def test_lost_frames_get_no_rows_are_counted_and_do_not_break_tracks(tmp_path: Path) -> None:
    times = tuple(np.round(np.cumsum([0.0] + [0.04 if i < 6 else 0.1 for i in range(12)]), 9))
    info = VideoInfo(12.0, 13, 13 / 12.0, 64, 64, frame_count_claimed=15, timestamps=times)
    job = VideoJob(VideoSource(str(tmp_path / "v.mp4"), "v"), info, None, tuple(range(13)))
    output = Output(str(tmp_path / "out"))
    output.stage(staged_rows(range(13), LOST))
    faces_schema = schema.with_metadata(
        schema.faces_schema(N_CLASSES, DIM, "float32"), {"classes": list(CLASSES_8)}
    )

    row = finalize_video(job, output, faces_schema, "run")

    assert (row["status"], row["error"]) == ("ok", None)
    assert (row["frames_sampled"], row["frames_lost"], row["faces"]) == (10, 3, 10)
    assert (row["frame_count"], row["frame_count_claimed"]) == (13, 15)
    assert "claims 15 frames but 13 can be decoded" in row["warning"]
    assert "3 sampled frames did not decode" in row["warning"] and "re-encode it" in row["warning"]
    # Frames 6 and 10 are consecutive steps (lost frames were never sampled), within max_gap: one track.
    assert row["tracks"] == 1
    faces = output.read_tables("faces")
    assert faces["frame_index"].to_pylist() == [i for i in range(13) if i not in LOST]
    assert faces["timestamp_s"].to_pylist() == [times[i] for i in range(13) if i not in LOST]
    videos = output.read_tables("videos").to_pylist()
    assert [(v["frames_lost"], v["warning"]) for v in videos] == [(3, row["warning"])]


def test_the_row_says_what_kind_of_input_it_is(tmp_path: Path) -> None:
    output = Output(str(tmp_path / "out"))
    faces_schema = schema.with_metadata(
        schema.faces_schema(N_CLASSES, DIM, "none"), {"classes": list(CLASSES_8)}
    )
    for name, kind in (("photo.jpg", "image"), ("frames", "frames"), ("talk.mp4", "video")):
        source = VideoSource(str(tmp_path / name), name.split(".")[0], kind)  # type: ignore[arg-type]
        finalize_video(VideoJob(source, None, "could not probe it"), output, faces_schema, "run")
    videos = output.read_tables("videos")
    assert videos.schema.field("kind").type == pa.string()
    assert {v["video_id"]: v["kind"] for v in videos.to_pylist()} == {
        "photo": "image",
        "frames": "frames",
        "talk": "video",
    }
