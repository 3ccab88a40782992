"""Probe, sampling rule, segments and frames.

A video becomes rows in four steps, each a pure function of the one before, so that any worker can
redo any step:

1. `probe` reads a `VideoInfo` (average fps, frame count, size).
2. `sample_indices` applies the `Sampling` rule to the whole video: `every N` keeps frames 0, N, 2N, ...;
   `fps F` keeps, for k = 0, 1, 2, ..., the frame nearest to k / F seconds after the start
   (index floor(k * fps / F + 0.5), repeats dropped); `all` keeps every frame. Frame indices are
   0-based in decode order and a frame's timestamp is index / fps, so (video_id, frame_index) joins
   exactly with per-frame annotations such as ABAW's.
3. `plan_segments` cuts the sampled indices into time segments of `segment_seconds`, so a long video is
   decoded in parallel. Sampling is never relative to a segment: the segments' frames together are
   exactly the video's sampled frames. Each segment also knows the last sampled frame before it
   (`overlap_index`), which the tracker decodes again to stitch tracks across segments.
4. `decode_segment` yields (frame_index, timestamp_s, RGB frame) for a segment, in batches of frames.

For the extraction job, `plan_video` does steps 1-3 for one source and never raises (a `VideoJob` carries
the error), and `decode_blocks` is step 4 as Ray Data blocks of raw frames. Both run in Ray workers that
need no models: this module imports none.

Videos in `SEEKABLE_EXTENSIONS` containers are decoded with decord's `get_batch`, which seeks to the
keyframe before each wanted frame. decord's seeks (and its `skip_frames`) return wrong frames in containers
without a frame index: off by up to 288 frames for H.264 in AVI, 230 in MPEG-PS (.mpg), 11 in ASF (.wmv),
and in MPEG-TS even sequential reads are off by a GOP. Those videos, and every video where decord has no
wheel, are decoded by PyAV from the start, keeping the wanted frames; `VideoInfo.seekable` is then False and
`plan_segments` keeps them whole, since every segment would decode from frame 0 again. decord gets an
explicit thread count: 0 would start FFmpeg threads beyond the task's CPUs. A remote video is decoded from
a copy in the node-local cache (`storage.local_copy`), fetched once per node however many segments it has:
decord would load a file object whole into memory, in every segment task.

Frame folders (`VideoSource.kind == "frames"`): the last run of digits in an image's name is its frame
number and frame_index = number - 1 (ABAW's `00001.jpg` is frame 0). Gaps are kept: frame_count is the
highest index + 1 and `VideoInfo.missing_frames` lists the gaps, which sampling skips. A folder has no
frame rate of its own: the caller gives one (`frame_rate`, 30 fps by default).

Every failure to read an input is a `DecodeError` whose message names the input (credentials redacted)
and what to do about it.
"""

from __future__ import annotations

import itertools
import math
import os
import posixpath
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import av
import cv2
import fsspec
import numpy as np
import pyarrow as pa

from emotibatch.io import storage
from emotibatch.io.sources import IMAGE_EXTENSIONS, VideoSource, is_local, open_fs, options_for

Backend = Literal["decord", "pyav"]
# Containers with a frame index, where decord's get_batch gave exactly the frames of sequential decoding
# (H.264, HEVC, VP9, MPEG-4 Part 2, FLV1 and MJPEG; B-frames, open GOPs, edit lists, 29.97 fps, VFR).
SEEKABLE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".flv")
BATCH_SIZE = 32
# Frames per Ray Data block between decoding and the face actors.
FRAMES_PER_BLOCK = 16
DEFAULT_FRAME_RATE = 30.0
# floor(x + 0.5) on a float product: lets an exact half that rounding left just below .5 round up.
_HALF_TOLERANCE = 1e-6
_DIGITS = re.compile(r"\d+")
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+: ")
_FFMPEG_CODE = re.compile(r"failed with (-?\d+)")


class DecodeError(Exception):
    """An input that cannot be read. The message names it (redacted) and says what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video. `missing_frames`: indices below frame_count that have no image
    (gaps in a frame folder). `seekable`: frames can be decoded from the middle (see the module doc)."""

    fps: float
    frame_count: int
    duration_s: float
    width: int
    height: int
    size_bytes: int | None = None
    missing_frames: tuple[int, ...] = ()
    seekable: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.frame_count < 0:
            raise ValueError(f"frame_count must be >= 0, got {self.frame_count}")


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are processed: `all`, `every` N-th (int >= 1) or `fps` F per second (> 0)."""

    mode: Literal["all", "every", "fps"] = "all"
    value: float | int | None = None

    def __post_init__(self) -> None:
        value = self.value
        if self.mode == "all":
            if value is not None:
                raise ValueError(f"sampling 'all' takes no value, got {value!r}")
        elif self.mode == "every":
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"sampling 'every' needs an integer >= 1, got {value!r}")
        elif self.mode == "fps":
            if not (
                isinstance(value, int | float | np.number)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"sampling 'fps' needs a frame rate > 0, got {value!r}")
        else:
            raise ValueError(f"sampling mode must be 'all', 'every' or 'fps', got {self.mode!r}")


def sample_indices(info: VideoInfo, sampling: Sampling) -> np.ndarray:
    """The sorted int64 frame indices `sampling` keeps, relative to the start of the video."""
    n = info.frame_count
    if sampling.mode == "all":
        indices = np.arange(n, dtype=np.int64)
    elif sampling.mode == "every":
        indices = np.arange(0, n, int(sampling.value), dtype=np.int64)  # type: ignore[arg-type]
    else:
        step = info.fps / float(sampling.value)  # type: ignore[arg-type]
        k = np.arange(math.ceil(n / step) + 1, dtype=np.float64)
        indices = np.unique(np.floor(k * step + 0.5 + _HALF_TOLERANCE).astype(np.int64))
        indices = indices[indices < n]
    if info.missing_frames:
        indices = indices[~np.isin(indices, info.missing_frames)]
    return indices


@dataclass(frozen=True)
class Segment:
    """The sampled frames of one time segment [start_frame, end_frame) of a video.

    `segment_index` numbers the time chunks from the start of the video (chunks holding no sampled
    frame are not planned, so indices may skip); `overlap_index` is the last sampled frame before this
    segment, or None for the first.
    """

    video_id: str
    segment_index: int
    start_frame: int
    end_frame: int
    frame_indices: tuple[int, ...]
    overlap_index: int | None = None

    def __post_init__(self) -> None:
        indices = tuple(int(i) for i in self.frame_indices)
        object.__setattr__(self, "frame_indices", indices)
        if not 0 <= self.start_frame <= self.end_frame:
            raise ValueError(f"bad frame range [{self.start_frame}, {self.end_frame})")
        if indices and not (self.start_frame <= indices[0] and indices[-1] < self.end_frame):
            raise ValueError(f"frame indices leave [{self.start_frame}, {self.end_frame})")
        if self.overlap_index is not None and self.overlap_index >= self.start_frame:
            raise ValueError(f"overlap_index {self.overlap_index} must precede frame {self.start_frame}")

    @property
    def segment_id(self) -> str:
        """Stable across runs: the video and the position of the segment in it."""
        return f"{self.video_id}#{self.segment_index:05d}"


def plan_segments(
    info: VideoInfo, indices: Sequence[int] | np.ndarray, segment_seconds: float | None, *, video_id: str
) -> list[Segment]:
    """Cut the sampled `indices` into segments of `segment_seconds` (None: one segment).

    Segment i covers frames [round(i * segment_seconds * fps), round((i + 1) * segment_seconds * fps)),
    the last one ending at frame_count; a video no longer than `segment_seconds`, or not seekable, is
    one segment.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx[0] < 0 or idx[-1] >= info.frame_count or np.any(np.diff(idx) <= 0)):
        raise ValueError(f"indices must be strictly increasing within [0, {info.frame_count})")
    if segment_seconds is None or not info.seekable:
        span = float(max(info.frame_count, 1))
    elif segment_seconds * info.fps >= 1:
        span = segment_seconds * info.fps
    else:
        raise ValueError(f"segment_seconds must cover at least one frame, got {segment_seconds}")
    segments = []
    n_chunks = max(1, math.ceil(info.frame_count / span))
    bounds = [math.floor(i * span + 0.5) for i in range(n_chunks)] + [info.frame_count]
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        lo, hi = np.searchsorted(idx, [start, end])
        if hi > lo:
            overlap = int(idx[lo - 1]) if lo else None
            segments.append(Segment(video_id, i, start, end, tuple(idx[lo:hi].tolist()), overlap))
    return segments


def default_backend() -> Backend:
    """decord where it is installed (x86-64 wheels only), PyAV elsewhere."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def _reencode_hint(shown: str) -> str:
    name = posixpath.basename(shown) or "in.mp4"
    return f"re-encode it: ffmpeg -i {name} -c:v libx264 {posixpath.splitext(name)[0]}_h264.mp4"


def _reason(exc: Exception) -> str:
    """A decoder exception in one line, with FFmpeg's error code spelled out."""
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or str(exc)
    lines = str(exc).strip().splitlines()
    text = _DECORD_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    if text.startswith("Error reading "):  # decord's whole message when FFmpeg cannot open the input
        return "FFmpeg cannot open it as a video (not a video, an unsupported format, or truncated)"
    if code := _FFMPEG_CODE.search(text):
        try:
            av.error.err_check(-abs(int(code.group(1))))
        except av.error.FFmpegError as ffmpeg_error:
            text = f"{text} ({ffmpeg_error.strerror})"
    return text


def _decode_error(shown: str, exc: Exception, frames: str = "") -> DecodeError:
    return DecodeError(f"could not decode {frames}{shown}: {_reason(exc)}; {_reencode_hint(shown)}")


def _not_found(shown: str) -> DecodeError:
    return DecodeError(f"not found: {shown}; check the path")


def _denied(shown: str) -> DecodeError:
    return DecodeError(f"permission denied: {shown}; check its read permission or the storage credentials")


@contextmanager
def _video_file(source: VideoSource, storage_options: dict | None) -> Iterator[tuple[str, int]]:
    """The local path the decoder opens and the file's size, after the checks that give a missing, empty
    or unreadable file its own message. A remote video is a copy in the node-local cache (storage.py)."""
    shown = source.source_uri
    fs, path = open_fs(source.uri, storage_options)
    local = is_local(fs)
    try:
        info = fs.info(path) if local else storage.retrying(lambda: fs.info(path), shown)
    except FileNotFoundError:
        raise _not_found(shown) from None
    except PermissionError:
        raise _denied(shown) from None
    except storage.StorageError as exc:
        raise DecodeError(str(exc)) from None
    if info["type"] == "directory":
        raise DecodeError(f"{shown} is a directory, not a video; for a folder of frames use --frame-folders")
    if not info["size"]:
        raise DecodeError(f"empty file (0 bytes): {shown}; the copy or upload probably failed: copy it again")
    if local:
        if not os.access(path, os.R_OK):
            raise _denied(shown)
        yield path, info["size"]
        return
    with ExitStack() as stack:
        try:
            options = options_for(source.uri, storage_options)
            copy = stack.enter_context(storage.local_copy(source.uri, options, info=info))
        except storage.StorageError as exc:
            raise DecodeError(str(exc)) from None
        yield str(copy), info["size"]


def _decord_reader(file: str, num_threads: int, shown: str):  # -> decord.VideoReader
    import decord

    try:
        return decord.VideoReader(file, num_threads=num_threads)
    except Exception as exc:  # decord raises RuntimeError, DECORDError or AssertionError
        raise _decode_error(shown, exc) from exc


def _video_stream(container: av.container.InputContainer, shown: str) -> av.VideoStream:
    if not container.streams.video:
        raise DecodeError(f"{shown} has no video stream; {_reencode_hint(shown)}")
    return container.streams.video[0]


def _check_threads(num_threads: int) -> None:
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (0 lets FFmpeg use every core), got {num_threads}")


def probe(
    source: VideoSource,
    *,
    storage_options: dict | None = None,
    num_threads: int = 1,
    frame_rate: float = DEFAULT_FRAME_RATE,
    backend: Backend | None = None,
) -> VideoInfo:
    """The `VideoInfo` of `source`; `frame_rate` is the rate of a frame folder. Raises DecodeError."""
    _check_threads(num_threads)
    if source.kind == "frames":
        return _probe_frames(source, storage_options, frame_rate)
    shown = source.source_uri
    with _video_file(source, storage_options) as (file, size):
        if (backend or default_backend()) == "decord":
            reader = _decord_reader(file, num_threads, shown)
            try:
                fps, count, (height, width) = reader.get_avg_fps(), len(reader), reader.next().shape[:2]
            except Exception as exc:
                raise _decode_error(shown, exc) from exc
        else:
            try:
                with av.open(file) as container:
                    stream = _video_stream(container, shown)
                    fps = float(stream.average_rate or 0)
                    count = stream.frames or round((container.duration or 0) / av.time_base * fps)
                    width, height = stream.codec_context.width, stream.codec_context.height
            except av.error.FFmpegError as exc:
                raise _decode_error(shown, exc) from exc
    if not (fps > 0 and count > 0):
        raise DecodeError(f"could not decode {shown}: no frame rate or no frames; {_reencode_hint(shown)}")
    seekable = posixpath.splitext(shown)[1].lower() in SEEKABLE_EXTENSIONS
    return VideoInfo(fps, count, count / fps, width, height, size, seekable=seekable)


def decode_segment(
    source: VideoSource,
    info: VideoInfo,
    segment: Segment,
    *,
    storage_options: dict | None = None,
    num_threads: int = 1,
    with_overlap: bool = False,
    batch_size: int = BATCH_SIZE,
    backend: Backend | None = None,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (frame_index, timestamp_s, RGB uint8 HxWx3 frame) for the segment's frames in index order,
    its overlap frame first when `with_overlap`. decord decodes `batch_size` frames at a time (the
    frames of a batch are views of one array). Raises DecodeError."""
    _check_threads(num_threads)
    indices = list(segment.frame_indices)
    if with_overlap and segment.overlap_index is not None:
        indices.insert(0, segment.overlap_index)
    if not indices:
        return
    if source.kind == "frames":
        frames = _decode_frames(source, indices, storage_options)
    elif info.seekable and (backend or default_backend()) == "decord":
        frames = _decode_decord(source, indices, storage_options, num_threads, batch_size)
    else:
        frames = _decode_pyav(source, indices, storage_options, num_threads)
    for index, frame in frames:
        yield index, index / info.fps, frame


def _decode_decord(
    source: VideoSource, indices: list[int], storage_options: dict | None, num_threads: int, batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    shown = source.source_uri
    with _video_file(source, storage_options) as (file, _):
        reader = _decord_reader(file, num_threads, shown)
        for at in range(0, len(indices), batch_size):
            chunk = indices[at : at + batch_size]
            try:
                batch = reader.get_batch(chunk).asnumpy()
            except Exception as exc:
                raise _decode_error(shown, exc, f"frames {chunk[0]}-{chunk[-1]} of ") from exc
            yield from zip(chunk, batch, strict=True)


def _decode_pyav(
    source: VideoSource, indices: list[int], storage_options: dict | None, num_threads: int
) -> Iterator[tuple[int, np.ndarray]]:
    shown = source.source_uri
    wanted = iter(indices)
    target = next(wanted)
    with _video_file(source, storage_options) as (file, _):
        try:
            with av.open(file) as container:
                stream = _video_stream(container, shown)
                stream.codec_context.thread_count = num_threads
                for index, frame in enumerate(container.decode(stream)):
                    if index == target:
                        yield index, frame.to_ndarray(format="rgb24")
                        target = next(wanted, None)
                        if target is None:
                            return
        except av.error.FFmpegError as exc:
            raise _decode_error(shown, exc, f"frames up to {target} of ") from exc
    raise DecodeError(f"could not decode frame {target} of {shown}: the video ends before it")


def _frame_files(source: VideoSource, storage_options: dict | None) -> tuple[dict[int, str], int]:
    """A frame folder's images by frame index, sorted, and their total size in bytes."""
    shown = source.source_uri
    fs, path = open_fs(source.uri, storage_options)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        raise _not_found(shown) from None
    except PermissionError:
        raise _denied(shown) from None
    files: dict[int, str] = {}
    size = 0
    for entry in entries:
        name = posixpath.basename(entry["name"])
        stem, ext = posixpath.splitext(name)
        if entry["type"] != "file" or name.startswith(".") or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        numbers = _DIGITS.findall(stem)
        if not numbers or int(numbers[-1]) < 1:
            raise DecodeError(f"{name} in {shown} has no frame number >= 1 in its name (00001.jpg: frame 0)")
        index = int(numbers[-1]) - 1
        if index in files:
            other = posixpath.basename(files[index])
            raise DecodeError(f"{name} and {other} in {shown} are both frame {index}; keep one")
        files[index] = entry["name"]
        size += entry["size"] or 0
    if not files:
        raise DecodeError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the frame folder {shown}")
    return dict(sorted(files.items())), size


def _read_image(fs: fsspec.AbstractFileSystem, path: str, shown: str) -> np.ndarray:
    data = np.frombuffer(fs.cat_file(path), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        name = posixpath.basename(path)
        raise DecodeError(f"could not read the image {name} in {shown}; it is empty or corrupt")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _probe_frames(source: VideoSource, storage_options: dict | None, frame_rate: float) -> VideoInfo:
    files, size = _frame_files(source, storage_options)
    fs, _ = open_fs(source.uri, storage_options)
    height, width = _read_image(fs, next(iter(files.values())), source.source_uri).shape[:2]
    count = max(files) + 1
    missing = tuple(sorted(set(range(count)) - files.keys()))
    return VideoInfo(frame_rate, count, count / frame_rate, width, height, size, missing)


def _decode_frames(
    source: VideoSource, indices: list[int], storage_options: dict | None
) -> Iterator[tuple[int, np.ndarray]]:
    files, _ = _frame_files(source, storage_options)
    fs, _ = open_fs(source.uri, storage_options)
    for index in indices:
        if index not in files:
            raise DecodeError(f"frame {index} of {source.source_uri} has no image")
        yield index, _read_image(fs, files[index], source.source_uri)


# -- the extraction job's steps -----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoJob:
    """A probed video and its plan: what the per-video pass checks the staged frames against."""

    source: VideoSource
    info: VideoInfo | None
    error: str | None
    indices: tuple[int, ...] = ()
    segments: tuple[Segment, ...] = field(default=())


def unreadable(source: VideoSource, exc: OSError) -> str:
    """An OSError as a message: its reason only, since its text may quote a signed URL."""
    return f"cannot read {source.source_uri}: {exc.strerror or type(exc).__name__}; check the path and access"


def plan_video(
    source: VideoSource,
    sampling: Sampling,
    segment_seconds: float | None,
    *,
    storage_options: dict | None = None,
    frame_rate: float = DEFAULT_FRAME_RATE,
) -> VideoJob:
    """Probe, sample and plan one video; a video that cannot be read gets its error, not an exception.

    Any exception fails this video only (a TypeError from a filesystem refusing its options, a plan the
    video's frame rate rules out): one input must never end the job for all the others.
    """
    try:
        return _plan_video(source, sampling, segment_seconds, storage_options, frame_rate)
    except Exception as exc:
        return VideoJob(source, None, f"could not probe {source.source_uri}: {storage.one_line(exc)}")


def _plan_video(
    source: VideoSource,
    sampling: Sampling,
    segment_seconds: float | None,
    storage_options: dict | None,
    frame_rate: float,
) -> VideoJob:
    try:
        info = probe(source, storage_options=storage_options, frame_rate=frame_rate)
    except DecodeError as exc:
        return VideoJob(source, None, str(exc))
    except OSError as exc:  # unreadable in a way the decoder has no message for: fail this video only
        return VideoJob(source, None, unreadable(source, exc))
    indices = sample_indices(info, sampling)
    if not len(indices):
        return VideoJob(source, info, None)
    segments = plan_segments(info, indices, segment_seconds, video_id=source.video_id)
    return VideoJob(source, info, None, tuple(int(i) for i in indices), tuple(segments))


def work_item(job: VideoJob, segment: Segment) -> dict:
    """A segment as plain columns (Arrow structs), so Ray Data carries it without pickling."""
    source = {"uri": job.source.uri, "video_id": job.source.video_id, "kind": job.source.kind}
    return {"source": source, "info": asdict(job.info), "segment": asdict(segment)}


def decode_blocks(batch: pa.Table, *, storage_options: dict, num_threads: int) -> Iterator[pa.Table]:
    """Ray Data UDF: `work_item` rows in, their sampled frames out, `FRAMES_PER_BLOCK` raw RGB frames a block.

    A decode failure ends the segment with one row carrying the error (frame_index -1): the per-video
    pass then fails the whole video, so no partial rows survive.
    """
    for item in batch.to_pylist():
        source = VideoSource(**item["source"])
        info = VideoInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in item["info"].items()})
        segment = Segment(**item["segment"])
        rows: list[tuple[int, bytes, int, int, float]] = []
        started = time.perf_counter()
        try:
            for index, _, frame in decode_segment(
                source, info, segment, storage_options=storage_options, num_threads=num_threads
            ):
                now = time.perf_counter()
                rows.append((index, frame.tobytes(), frame.shape[0], frame.shape[1], now - started))
                started = now
                if len(rows) == FRAMES_PER_BLOCK:
                    yield _frame_block(source.video_id, segment.segment_index, rows)
                    rows = []
        except (DecodeError, OSError) as exc:  # OSError: storage failing after the probe succeeded
            error = str(exc) if isinstance(exc, DecodeError) else unreadable(source, exc)
            rows.append((-1, b"", 0, 0, time.perf_counter() - started))
            yield _frame_block(source.video_id, segment.segment_index, rows, error=error)
            continue
        if rows:
            yield _frame_block(source.video_id, segment.segment_index, rows)


def _frame_block(
    video_id: str,
    segment_index: int,
    rows: list[tuple[int, bytes, int, int, float]],
    error: str | None = None,
) -> pa.Table:
    index, pixels, height, width, seconds = zip(*rows)
    n = len(rows)
    return pa.table(
        {
            "video_id": pa.array([video_id] * n, pa.string()),
            "segment_index": pa.array([segment_index] * n, pa.int32()),
            "frame_index": pa.array(index, pa.int64()),
            "pixels": pa.array(pixels, pa.binary()),
            "height": pa.array(height, pa.int32()),
            "width": pa.array(width, pa.int32()),
            "decode_s": pa.array(seconds, pa.float64()),
            "error": pa.array([None] * (n - 1) + [error], pa.string()),
        }
    )
