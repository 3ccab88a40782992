"""Preview clips: a video's frames with the extract's face boxes, track ids and emotions drawn on, as H.264.

Faces rows exist for sampled frames only. A frame between two sampled frames shows the faces of the
nearest sampled frame before it (at 1 fps the boxes move once a second); a sampled frame without faces
clears them. Frames are decoded by the extract's own decoder, so frame indices mean what they mean in
faces/, and encoded with PyAV (libx264, yuv420p, the source's frame rate; an odd width or height loses
its last pixel column or row).
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emotibatch import schema
from emotibatch.extract.decode import (
    DecodeError,
    Sampling,
    Segment,
    VideoInfo,
    decode_segment,
    probe,
    sample_indices,
)
from emotibatch.extract.output import Output
from emotibatch.io import files
from emotibatch.io.redact import redact_uri
from emotibatch.io.sources import VideoSource, open_fs
from emotibatch.reports.report import colors, read_settings

__all__ = ["RenderResult", "draw_faces", "render_clip"]

COLUMNS = ["frame_index", "track_id", "bbox", "emotion"]
FrameFaces = tuple[np.ndarray, list[int], list[str]]  # one frame's boxes [N, 4], track ids, emotions
CRF = 23


@dataclass(frozen=True)
class RenderResult:
    video_id: str
    first_frame: int  # the source frame index of the clip's first frame
    frames: int
    output: str


def find_video(videos: pa.Table, video: str) -> tuple[dict[str, Any], str]:
    """The videos row VIDEO names and the URI to read it from: VIDEO itself when it is a file (its path,
    or a file with the row's video_id as stem), the row's source_uri when it is a video_id."""
    rows = videos.to_pylist()
    by_id = {r["video_id"]: r for r in rows}
    if video in by_id:
        return by_id[video], by_id[video]["source_uri"]
    shown = redact_uri(video)
    local = os.path.abspath(video) if "://" not in video else shown
    found = [r for r in rows if r["source_uri"] in (shown, local)]
    if not found:
        stem = posixpath.splitext(posixpath.basename(shown.rstrip("/")))[0]
        found = [r for r in rows if r["video_id"] == stem]
    if len(found) != 1:
        why = "several" if found else "no"
        raise ValueError(
            f"{shown} matches {why} video in the extract's videos table (by video_id, source or file name)"
        )
    return found[0], video


def draw_faces(
    image: np.ndarray, boxes: np.ndarray, tracks: list[int], emotions: list[str], palette: Mapping[str, str]
) -> None:
    """Draw each face's box and "#track emotion" on the RGB `image`, in place, sized to the frame."""
    height = image.shape[0]
    thickness = max(2, round(height / 360))
    scale = max(0.35, height / 900)
    for (x1, y1, x2, y2), track, emotion in zip(boxes.round().astype(int).tolist(), tracks, emotions):
        color = tuple(int(palette.get(emotion, "#ffffff")[i : i + 2], 16) for i in (1, 3, 5))
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
        text = f"#{track} {emotion}"
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = y1 - h - base - 2 if y1 - h - base - 2 >= 0 else y2 + 2
        cv2.rectangle(image, (x1, top), (x1 + w + 4, top + h + base + 2), color, cv2.FILLED)
        cv2.putText(
            image, text, (x1 + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )


def frame_span(info: VideoInfo, start_s: float, end_s: float | None) -> tuple[int, int]:
    """The frames shown from `start_s` up to `end_s` (None: the end), [first, stop): by presentation time
    on a variable-rate video, where index / fps drifts from it, else by index / fps."""
    if info.timestamps:
        times = info.times(np.arange(info.frame_count))
        first = int(np.searchsorted(times, start_s - 1e-9))
        return first, info.frame_count if end_s is None else int(np.searchsorted(times, end_s - 1e-9))
    first = math.ceil(start_s * info.fps - 1e-9)
    return first, info.frame_count if end_s is None else min(
        info.frame_count, math.ceil(end_s * info.fps - 1e-9)
    )


def render_clip(
    video: str,
    output: str,
    extract: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    storage_options: dict | None = None,
) -> RenderResult:
    """Write the frames of VIDEO from `start_s` up to `end_s` (default: the end) with the faces of the
    extract output `extract` drawn on them to `output` (MP4, H.264; a path or fsspec URI)."""
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"need 0 <= --start < --end, got start {start_s}, end {end_s}")
    source_output = Output(extract, storage_options)
    videos = source_output.read_tables("videos")
    if videos is None:
        raise ValueError(f"{redact_uri(extract)}: no videos/ table; give the output of `emotibatch extract`")
    row, uri = find_video(videos, video)
    if row["status"] != "ok":
        raise ValueError(f"{row['video_id']} failed in the extract, so it has no faces: {row['error']}")
    settings = read_settings(source_output, source_output.read_tables("runs"))
    source = VideoSource(uri, row["video_id"], "frames" if settings.get("frame_folders") else "video")
    try:
        info = probe(source, storage_options=storage_options, frame_rate=settings.get("frame_rate") or 30.0)
    except DecodeError as exc:
        raise ValueError(str(exc)) from exc
    first, stop = frame_span(info, start_s, end_s)
    missing = set(info.missing_frames)
    indices = [i for i in range(first, stop) if i not in missing]
    if not indices:
        raise ValueError(
            f"{row['video_id']} has no frames from {start_s} s to {end_s} s ({info.duration_s:.2f} s long)"
        )

    sampling = settings.get("sampling")
    sampled = sample_indices(info, Sampling(sampling["mode"], sampling.get("value"))) if sampling else None
    # The clip's first frame shows the faces of the last sampled frame at or before it.
    before = np.asarray([] if sampled is None else sampled[sampled <= first])
    low = int(before[-1]) if len(before) else 0
    path = source_output.faces_path(row["video_id"])
    faces = None
    if source_output.fs.exists(path):
        span = [("frame_index", ">=", low), ("frame_index", "<", stop)]
        faces = pq.read_table(path, columns=COLUMNS, filesystem=source_output.fs, filters=span)
    if sampled is None:  # no settings recorded: faces stay until the next frame that has faces
        sampled = np.unique(faces["frame_index"].to_numpy()) if faces is not None else np.zeros(0, np.int64)
    by_frame = _faces_by_frame(faces)
    palette = colors(list(schema.Provenance.from_schema(faces.schema).classes)) if faces is not None else {}

    target_fs, target = open_fs(output, storage_options)
    segment = Segment(row["video_id"], 0, first, stop, tuple(indices))
    frames = decode_segment(source, info, segment, storage_options=storage_options)
    with files.writing(target_fs, target) as local:
        try:
            count = _encode(
                frames, str(local), Fraction(info.fps).limit_denominator(1001), sampled, by_frame, palette
            )
        except DecodeError as exc:
            raise ValueError(str(exc)) from exc
    return RenderResult(row["video_id"], indices[0], count, output)


def _faces_by_frame(faces: pa.Table | None) -> dict[int, FrameFaces]:
    if faces is None or not len(faces):
        return {}
    faces = faces.sort_by("frame_index")
    frames = faces["frame_index"].to_numpy()
    boxes = schema.as_matrix(faces["bbox"])
    tracks = faces["track_id"].to_pylist()
    emotions = faces["emotion"].to_pylist()
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    ends = np.r_[starts[1:], len(frames)]
    return {int(frames[a]): (boxes[a:b], tracks[a:b], emotions[a:b]) for a, b in zip(starts, ends)}


def _encode(
    frames: Iterable[tuple[int, float, np.ndarray]],
    path: str,
    rate: Fraction,
    sampled: np.ndarray,
    by_frame: Mapping[int, FrameFaces],
    palette: Mapping[str, str],
) -> int:
    """Draw the faces of each frame's latest sampled frame on it and encode it; returns the count."""
    count = 0
    with av.open(path, "w", format="mp4") as container:
        stream = None
        for index, _, frame in frames:
            height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
            if stream is None:
                stream = container.add_stream(
                    "libx264", rate=rate, options={"crf": str(CRF), "preset": "veryfast"}
                )
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            image = np.ascontiguousarray(frame[:height, :width])
            at = np.searchsorted(sampled, index, side="right") - 1
            if at >= 0 and int(sampled[at]) in by_frame:
                draw_faces(image, *by_frame[int(sampled[at])], palette)
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts = count
            container.mux(stream.encode(picture))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count
