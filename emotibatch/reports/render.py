"""Preview clips: a video's frames with the extract's face boxes, track ids and emotions drawn on.

Faces rows exist for sampled frames only. A frame between two sampled frames shows the faces of the
nearest sampled frame before it (at 1 fps the boxes move once a second); a sampled frame without faces
clears them. Frames are decoded by the extract's own decoder, so frame indices mean what they mean in
faces/.

Each frame carries a timecode (its time in the video), and each face its box and "#track emotion p%",
in type sized to the frame (readable at 640x360). A crowded lecture hall would bury the frame under
labels, so at most `max_labels` faces of a frame are labelled, the largest first, and never one label
over another; every face keeps its box, and the timecode bar says how many faces were labelled.

The output's extension picks the format: `.mp4` is H.264 with PyAV (libx264, yuv420p, the source's
frame rate; an odd width or height loses its last pixel column or row); `.gif` is a GIF with Pillow, at
most `GIF_MAX_FPS` frames a second (every k-th frame) and `GIF_MAX_WIDTH` pixels wide, for clips up to
`GIF_MAX_S` seconds (Pillow holds a GIF's frames in memory). Anything else is refused before any work.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

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

__all__ = ["FORMATS", "MAX_LABELS", "RenderResult", "draw_faces", "draw_timecode", "render_clip", "timecode"]

COLUMNS = ["frame_index", "track_id", "bbox", "emotion", "emotion_probs"]
# One frame's faces: boxes [N, 4], track ids, emotions, each emotion's probability [N].
FrameFaces = tuple[np.ndarray, list[int], list[str], np.ndarray]
CRF = 23
MAX_LABELS = 8  # labelled faces per frame, the largest first; the others keep their boxes only
FORMATS = {".mp4": "MP4 (H.264)", ".gif": "GIF"}
GIF_MAX_FPS = 10.0
GIF_MAX_WIDTH = 640
GIF_MAX_S = 60.0
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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


def _text_size(height: int) -> tuple[float, int]:
    """Font scale and stroke for a frame `height` pixels tall: 14 px capitals at 360 lines, 2 px strokes
    from 540 lines up, so that labels read at 640x360 and keep their proportion above it."""
    return 0.55 * height / 360, max(1, round(height / 360))


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def draw_faces(
    image: np.ndarray,
    boxes: np.ndarray,
    tracks: list[int],
    emotions: list[str],
    probs: np.ndarray,
    palette: Mapping[str, str],
    max_labels: int = MAX_LABELS,
) -> int:
    """Draw each face's box, and "#track emotion p%" for up to `max_labels` faces, largest first, on the
    RGB `image`, in place, sized to the frame. A label goes above its box, else below it; one that would
    cover an earlier label is left out. Returns the number of faces labelled."""
    height, width = image.shape[:2]
    scale, stroke = _text_size(height)
    pad = max(2, stroke * 2)
    for (x1, y1, x2, y2), emotion in zip(boxes.round().astype(int).tolist(), emotions):
        cv2.rectangle(image, (x1, y1), (x2, y2), _rgb(palette.get(emotion, "#ffffff")), max(2, stroke))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    placed: list[tuple[int, int, int, int]] = []
    for i in np.argsort(-areas, kind="stable").tolist():
        if len(placed) == max_labels:
            break
        x1, y1, x2, y2 = boxes[i].round().astype(int).tolist()
        text = f"#{tracks[i]} {emotions[i]} {100 * float(probs[i]):.0f}%"
        (w, h), base = cv2.getTextSize(text, _FONT, scale, stroke)
        band_w, band_h = w + 2 * pad, h + base + 2 * pad
        left = int(np.clip(x1, 0, max(0, width - band_w)))
        spots = [(left, top, left + band_w, top + band_h) for top in (y1 - band_h, y2 + 2)]
        free = [
            r
            for r in spots
            if r[1] >= 0 and r[3] <= height and not any(_overlap(r, other) for other in placed)
        ]
        if not free:
            continue
        left, top, right, bottom = free[0]
        color = _rgb(palette.get(emotions[i], "#ffffff"))
        # Black on light colours, white on dark ones (Contempt's brown, Sadness's blue): ITU-R BT.601 luma.
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        cv2.rectangle(image, (left, top), (right, bottom), color, cv2.FILLED)
        cv2.putText(image, text, (left + pad, top + pad + h), _FONT, scale, ink, stroke, cv2.LINE_AA)
        placed.append(free[0])
    return len(placed)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def timecode(seconds: float) -> str:
    """h:mm:ss.s, tenths truncated (a frame at 0.96 s is in second 0, not 1)."""
    tenths = math.floor(seconds * 10 + 1e-6)
    minutes, rest = divmod(tenths, 600)
    return f"{minutes // 60}:{minutes % 60:02d}:{rest // 10:02d}.{rest % 10}"


def draw_timecode(image: np.ndarray, seconds: float, faces: int, labelled: int) -> None:
    """The frame's time in the video (h:mm:ss.s) and its face count, white on black at the top left."""
    scale, stroke = _text_size(image.shape[0])
    text = timecode(seconds)
    if faces:
        text += f"  {faces} face{'s' if faces != 1 else ''}" + (
            f", {labelled} labelled" if labelled < faces else ""
        )
    (w, h), base = cv2.getTextSize(text, _FONT, scale, stroke)
    pad = max(3, stroke * 3)
    cv2.rectangle(image, (0, 0), (w + 2 * pad, h + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (pad, pad + h), _FONT, scale, (255, 255, 255), stroke, cv2.LINE_AA)


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
    max_labels: int = MAX_LABELS,
    storage_options: dict | None = None,
) -> RenderResult:
    """Write the frames of VIDEO from `start_s` up to `end_s` (default: the end) with the faces of the
    extract output `extract` drawn on them to `output` (a path or fsspec URI ending .mp4 or .gif)."""
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"need 0 <= --start < --end, got start {start_s}, end {end_s}")
    if max_labels < 0:
        raise ValueError(f"--max-labels must be >= 0, got {max_labels}")
    suffix = posixpath.splitext(redact_uri(output).rstrip("/"))[1].lower()
    if suffix not in FORMATS:
        kinds = ", ".join(f"{k} ({v})" for k, v in FORMATS.items())
        raise ValueError(f"{redact_uri(output)}: a preview is written as {kinds}; name the output so")
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
    if suffix == ".gif":
        span_s = (stop - first) / info.fps
        if span_s > GIF_MAX_S + 1e-9:
            raise ValueError(
                f"a GIF preview holds at most {GIF_MAX_S:g} s, this one {span_s:.1f} s: "
                "give --start and --end, or write .mp4"
            )
        keep = math.ceil(info.fps / GIF_MAX_FPS - 1e-9)  # every keep-th frame: at most GIF_MAX_FPS
        indices = indices[::keep]

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
    drawn = _drawn(frames, sampled, by_frame, palette, max_labels)
    with files.writing(target_fs, target) as local:
        try:
            if suffix == ".gif":
                count = _write_gif(drawn, str(local), info.fps / keep)
            else:
                count = _encode(drawn, str(local), Fraction(info.fps).limit_denominator(1001))
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
    probs = schema.as_matrix(faces["emotion_probs"]).max(axis=1)  # the label's: it is the argmax class
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    ends = np.r_[starts[1:], len(frames)]
    return {
        int(frames[a]): (boxes[a:b], tracks[a:b], emotions[a:b], probs[a:b]) for a, b in zip(starts, ends)
    }


def _drawn(
    frames: Iterable[tuple[int, float, np.ndarray]],
    sampled: np.ndarray,
    by_frame: Mapping[int, FrameFaces],
    palette: Mapping[str, str],
    max_labels: int,
) -> Iterator[np.ndarray]:
    """Each frame with the faces of its latest sampled frame and its timecode drawn on (even sizes)."""
    for index, seconds, frame in frames:
        height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        image = np.array(frame[:height, :width])  # a copy: decord's frames are views of one batch
        at = np.searchsorted(sampled, index, side="right") - 1
        faces = by_frame.get(int(sampled[at])) if at >= 0 else None
        labelled = draw_faces(image, *faces, palette, max_labels) if faces is not None else 0
        draw_timecode(image, seconds, len(faces[1]) if faces is not None else 0, labelled)
        yield image


def _encode(images: Iterable[np.ndarray], path: str, rate: Fraction) -> int:
    """Encode the frames as H.264 in MP4; returns the count."""
    count = 0
    with av.open(path, "w", format="mp4") as container:
        stream = None
        for image in images:
            if stream is None:
                stream = container.add_stream(
                    "libx264", rate=rate, options={"crf": str(CRF), "preset": "veryfast"}
                )
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts = count
            container.mux(stream.encode(picture))
            count += 1
        if stream is not None:
            container.mux(stream.encode())
    return count


def _write_gif(images: Iterable[np.ndarray], path: str, fps: float) -> int:
    """Write the frames as a looping GIF at `fps` (GIF counts time in hundredths of a second), each
    shrunk to GIF_MAX_WIDTH and given its own 256-colour palette; returns the count."""
    pictures = []
    for image in images:
        picture = Image.fromarray(image)
        if picture.width > GIF_MAX_WIDTH:
            size = (GIF_MAX_WIDTH, round(picture.height * GIF_MAX_WIDTH / picture.width))
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        pictures.append(picture.quantize(256, method=Image.Quantize.MEDIANCUT))
    if pictures:
        frame_ms = 10 * max(2, round(100 / fps))  # browsers slow down frames under 20 ms
        pictures[0].save(
            path, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
        )
    return len(pictures)
