"""Generated sample inputs for the demo, the tests and the benchmarks.

A "face" here is what the stand-in detector (`emotibatch.testing.standins`) finds: a white square of side 16, 32
or 64 px on a black background, centred on a multiple of side / 2 (the detector's anchor stride), painted
by `standins.draw_face`. A `FaceTrack` moves such a square linearly between two centres; positions are
snapped to the stride at every frame so that each drawn square stays detectable (sizes are in frame
pixels: a detector that resizes the frame resizes the squares too) and `expected_faces` gives the
exact boxes a test must find.

Videos are H.264 / yuv420p written with PyAV. White (Y 235) and black (Y 16) squares on even pixel
boundaries have neutral chroma, so they decode back to about 255 / 0 and a threshold at 128 recovers each
square exactly. `stamp=True` adds the frame index as a 16-bit grey code in the bottom rows (grey 96: too
dark for the detector), so a test can tell which frame a decoder really returned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import pyarrow as pa

from emotibatch import schema
from emotibatch.extract.output import Output
from emotibatch.inference.registry import CLASSES_8
from emotibatch.testing.standins import FACE_SIDES, draw_face

STAMP_BITS = 16
STAMP_ROWS = 8
STAMP_LEVEL = 96
# One keyframe a second: seeking then decodes at most a second of frames.
KEYFRAME_SECONDS = 1.0
# A lecture camera's sensor noise in levels: enough that no two frames are alike.
SENSOR_NOISE = 28
# Ticks per second of a variable-rate sample's presentation times (make_video's `times`), MP4's usual.
VFR_TIME_BASE = 15360


@dataclass(frozen=True)
class FaceTrack:
    """A square "face" of side `side` moving linearly from centre `start` to `end`, shown in frames
    `first` to `last` inclusive."""

    side: int
    start: tuple[int, int]
    end: tuple[int, int]
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.side not in FACE_SIDES:
            raise ValueError(f"side must be one of {FACE_SIDES}, got {self.side}")
        stride = self.side // 2
        for name, (x, y) in (("start", self.start), ("end", self.end)):
            if x % stride or y % stride:
                raise ValueError(f"{name} centre {(x, y)} must be multiples of side/2 = {stride}")
        if not 0 <= self.first <= self.last:
            raise ValueError(f"need 0 <= first <= last, got first={self.first}, last={self.last}")

    def center(self, frame_index: int) -> tuple[int, int] | None:
        """The centre at `frame_index` snapped to the stride, or None outside [first, last]."""
        if not self.first <= frame_index <= self.last:
            return None
        span = self.last - self.first
        t = (frame_index - self.first) / span if span else 0.0
        stride = self.side // 2
        return tuple(  # type: ignore[return-value]
            stride * math.floor((a + t * (b - a)) / stride + 0.5)
            for a, b in zip(self.start, self.end, strict=True)
        )


def expected_faces(tracks: Sequence[FaceTrack], frame_index: int) -> list[tuple[int, int, int]]:
    """(cx, cy, side) of every face drawn in frame `frame_index`, in track order."""
    return [(*c, t.side) for t in tracks if (c := t.center(frame_index)) is not None]


def _stamp(frame: np.ndarray, index: int) -> None:
    width = frame.shape[1] // STAMP_BITS
    for bit in range(STAMP_BITS):
        if index >> bit & 1:
            frame[-STAMP_ROWS:, bit * width : (bit + 1) * width] = STAMP_LEVEL


def read_stamp(frame: np.ndarray) -> int:
    """The frame index written by `stamp=True`, read back from a decoded RGB frame."""
    width = frame.shape[1] // STAMP_BITS
    rows = frame[-STAMP_ROWS + 2 : -2, :, 1].astype(np.float32)
    bits = [rows[:, b * width + 2 : (b + 1) * width - 2].mean() > STAMP_LEVEL / 2 for b in range(STAMP_BITS)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def render_frame(
    tracks: Sequence[FaceTrack],
    frame_index: int,
    *,
    width: int,
    height: int,
    stamp: bool = False,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """The RGB uint8 frame `frame_index` of a sample, before encoding: `background` (HxW levels, default
    black), then the faces, then the optional index stamp."""
    frame = np.zeros((height, width, 3), np.uint8)
    if background is not None:
        frame[:] = background[..., None]
    bottom = height - STAMP_ROWS if stamp else height
    for cx, cy, side in expected_faces(tracks, frame_index):
        if not (side // 2 <= cx <= width - side // 2 and side // 2 <= cy <= bottom - side // 2):
            where = " or covers the stamp" if stamp else ""
            raise ValueError(f"face at {(cx, cy)} of side {side} leaves the {width}x{height} frame{where}")
        draw_face(frame, (cx, cy), side)
    if stamp:
        _stamp(frame, frame_index)
    return frame


def make_video(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: float | Fraction = 25.0,
    seconds: float = 4.0,
    faces: Sequence[FaceTrack] = (),
    codec: str = "libx264",
    crf: int = 18,
    noise: int = 0,
    stamp: bool = False,
    seed: int = 0,
    times: Sequence[float] | None = None,
) -> Path:
    """Write a sample video of round(seconds * fps) frames and return its path.

    `fps` may be a Fraction (e.g. Fraction(30000, 1001) for NTSC 29.97). `noise` > 0 fills the background
    with random levels in [0, noise] (seeded by `seed`, new every frame): a black video compresses to
    nothing and decodes unrealistically fast, so benchmarks want noise; keep it under 64 to stay "dark".
    `times` makes a variable-rate video instead: frame i is shown at times[i] seconds (rising from 0,
    rounded to 1 / VFR_TIME_BASE); `fps` and `seconds` then only set the keyframe interval.
    """
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    n_frames = round(seconds * rate) if times is None else len(times)
    pts = list(range(n_frames)) if times is None else [round(t * VFR_TIME_BASE) for t in times]
    if times is not None and (not pts or pts[0] != 0 or any(b <= a for a, b in itertools.pairwise(pts))):
        raise ValueError(f"times must rise from 0 by at least 1 / {VFR_TIME_BASE} s")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options={"crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(1, round(KEYFRAME_SECONDS * rate))
        if times is not None:
            stream.codec_context.time_base = Fraction(1, VFR_TIME_BASE)
        for i in range(n_frames):
            background = rng.integers(0, noise + 1, (height, width), np.uint8) if noise else None
            image = render_frame(faces, i, width=width, height=height, stamp=stamp, background=background)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = pts[i]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_lecture(
    path: str | Path,
    *,
    width: int = 1280,
    height: int = 720,
    fps: float = 25.0,
    seconds: float = 60.0,
    gop_seconds: float = 2.0,
    bframes: bool = True,
    slide_seconds: float = 30.0,
    preset: str = "veryfast",
    stamp: bool = False,
    seed: int = 0,
) -> Path:
    """A lecture-like H.264 recording: a static slide (dark text-like blocks on light grey, a new slide
    every `slide_seconds`) and a speaker region (a smooth figure a quarter of the width) that drifts
    sideways and carries fresh sensor noise (levels 0-SENSOR_NOISE) every frame, as a camera picture does. Keyframes come exactly every `gop_seconds`
    (no scene-cut keyframes, as lecture-capture encoders are set up); `bframes` gives x264's 3 B-frames
    or none. What decoding costs depends on this mix, so `benchmarks/decode.py` measures on it."""
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    rng = np.random.default_rng(seed)
    rate = Fraction(fps).limit_denominator(1001)
    gop = max(1, round(gop_seconds * rate))
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={3 if bframes else 0}"
    side_w, side_h = width // 4 // 2 * 2, height // 2 // 2 * 2
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    slide = np.zeros((height, width), np.uint8)
    coarse = rng.integers(60, 170, (8, 6), np.uint8)  # a smooth figure: clothes, face, hair
    figure = cv2.resize(coarse, (side_w, side_h), interpolation=cv2.INTER_CUBIC)[..., None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=rate, options={"crf": "23", "preset": preset, "x264-params": params}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * rate)):
            if i % max(1, round(slide_seconds * rate)) == 0:
                slide = np.full((height, width), 220, np.uint8)
                for _ in range(12):
                    y, x = rng.integers(0, height * 3 // 4), rng.integers(0, width * 2 // 3)
                    slide[y : y + height // 40, x : x + rng.integers(width // 10, width // 3)] = 40
            x0 = round((width - side_w) * (0.75 + 0.2 * math.sin(2 * math.pi * i / (20 * float(rate)))))
            x0 = min(max(0, x0), width - side_w)
            image = np.repeat(slide[..., None], 3, axis=2)
            noise = rng.integers(0, SENSOR_NOISE + 1, (side_h, side_w, 1), np.uint8)
            image[height - side_h :, x0 : x0 + side_w] = figure + noise
            if stamp:  # on black rows, as read_stamp expects
                image[-STAMP_ROWS:] = 0
                _stamp(image, i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _remux(src: Path, dst: Path, *, shift: int = 0, faststart: bool = False) -> None:
    """Copy `src`'s packets into `dst`, `shift` ticks earlier."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
                packet.stream = stream
                out.mux(packet)


def make_trimmed_video(path: str | Path, hidden: int, **video: Any) -> Path:
    """A `make_video` MP4 whose first `hidden` frames are hidden by an edit list, as a cut without
    re-encoding leaves them (the decoder needs them, the player skips them): the container claims every
    frame, `hidden` fewer decode, and the first that does is source frame `hidden` (its stamp)."""
    path = Path(path)
    whole = make_video(path.with_suffix(".whole.tmp.mp4"), **video)
    with av.open(str(whole)) as inp:
        stream = inp.streams.video[0]
        tick = round(1 / (stream.average_rate * stream.time_base))
    _remux(whole, path, shift=hidden * tick)
    whole.unlink()
    return path


def make_cut_video(path: str | Path, frames: int, **video: Any) -> tuple[Path, int]:
    """A `make_video` MP4 (index first) cut inside the packet of its first keyframe at or after frame
    `frames` (x264 places keyframes by content), and the number of frames that still decode: those
    before that keyframe. The index still claims every frame, and the packet cut short must be dropped,
    not decoded."""
    path = Path(path)
    whole = make_video(path.with_suffix(".whole.tmp.mp4"), **video)
    faststart = path.with_suffix(".faststart.tmp.mp4")
    _remux(whole, faststart, faststart=True)
    with av.open(str(faststart)) as inp:
        stream = inp.streams.video[0]
        tick = round(1 / (stream.average_rate * stream.time_base))
        keyframes = sorted(
            (p.pts // tick, p.pos, p.size) for p in inp.demux(stream) if p.size and p.is_keyframe
        )
    whole.unlink()
    after = [k for k in keyframes if k[0] >= frames]
    if not after:
        faststart.unlink()
        raise ValueError(f"no keyframe at or after frame {frames}; keyframes: {[k[0] for k in keyframes]}")
    kept, pos, size = after[0]
    path.write_bytes(faststart.read_bytes()[: pos + size // 2])
    faststart.unlink()
    return path, kept


def make_frame_folder(
    directory: str | Path,
    n_frames: int,
    *,
    gaps: Sequence[int] = (),
    faces: Sequence[FaceTrack] = (),
    width: int = 160,
    height: int = 96,
    stamp: bool = False,
    ext: str = ".png",
) -> Path:
    """Write frames 0 .. n_frames - 1 except `gaps` as images named like ABAW's (`00001.png` is frame 0).

    PNG (the default) is lossless, so decoded frames equal `render_frame` exactly.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = set(gaps)
    for i in range(n_frames):
        if i not in missing:
            image = render_frame(faces, i, width=width, height=height, stamp=stamp)
            cv2.imwrite(str(directory / f"{i + 1:05d}{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return directory


def make_image(
    path: str | Path,
    *,
    faces: Sequence[FaceTrack] = (),
    width: int = 160,
    height: int = 96,
    mode: Literal["rgb", "rgba", "grey"] = "rgb",
) -> Path:
    """Write a still image of `render_frame(faces, 0)` (each track's frame-0 face) and return its path; the
    format follows the extension (PNG is lossless, JPEG is not).

    "rgba" adds an alpha channel that falls from 255 to 0 across the image (what a reader drops, not what
    it composites), "grey" writes one channel (the frame is grey already, so nothing is lost).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = render_frame(faces, 0, width=width, height=height)
    if mode == "grey":
        image = frame[..., 0]
    elif mode == "rgba":
        alpha = np.linspace(255, 0, width).round().astype(np.uint8)
        image = np.dstack([cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), np.broadcast_to(alpha, (height, width))])
    else:
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise ValueError(f"OpenCV cannot write a {mode} image as {path.name}")
    return path


def make_bad_inputs(directory: str | Path) -> dict[str, Path]:
    """Inputs every reader must turn into a clear error rather than a crash or silent garbage.

    Keys: "empty" (0 bytes), "text" (a text file named .mp4), "truncated" (a good mp4 cut in half: its
    index, written last, is lost) and "missing" (a path that is not created). A file cut after an intact
    index is not bad: the frames before the cut decode (`make_cut_video`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.mp4" for name in ("empty", "text", "truncated")}
    paths["missing"] = directory / "missing.mp4"
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("this is not a video\n")
    good = make_video(directory / "good.tmp.mp4", width=160, height=96, seconds=2.0, noise=255)
    data = good.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    good.unlink()
    return paths


# Faces in each video never overlap or touch, so every square is its own blob.
SAMPLE_SET: dict[str, tuple[FaceTrack, ...]] = {
    "one_face": (FaceTrack(64, (96, 96), (224, 96), first=0, last=99),),
    "two_faces": (
        FaceTrack(32, (48, 32), (176, 32), first=0, last=99),
        FaceTrack(64, (256, 128), (64, 128), first=20, last=79),
    ),
    "crowd": (
        FaceTrack(16, (16, 8), (80, 8), first=0, last=99),
        FaceTrack(32, (272, 48), (144, 48), first=0, last=99),
        FaceTrack(16, (304, 80), (272, 80), first=50, last=99),
        FaceTrack(64, (64, 128), (256, 128), first=10, last=89),
    ),
}


def make_sample_set(directory: str | Path) -> list[Path]:
    """Three 4 s 320x180 25 fps demo videos with moving faces (what `emotibatch demo` runs on)."""
    directory = Path(directory)
    return [
        make_video(directory / f"{name}.mp4", width=320, height=180, seconds=4.0, faces=faces)
        for name, faces in SAMPLE_SET.items()
    ]


def write_synthetic_extract(
    root: str | Path,
    means: Mapping[str, np.ndarray | None],
    *,
    frames: int = 20,
    faces_per_frame: int = 1,
    noise: float = 1.0,
    fps: float = 10.0,
    features_dtype: schema.FeaturesDtype = "float32",
    model: str = "enet_b0_8_best_vgaf",
    model_sha256: str | None = None,
    detector_sha256: str | None = None,
    failed: Sequence[str] = (),
    seed: int = 0,
) -> None:
    """An extract output with planted features, written one video at a time (any size fits in memory).

    Per video, face 0 of each frame (track 0) has features `means[video] + noise * N(0, 1)`, other faces
    (tracks 1, 2, ...) pure noise; None makes a clip without faces. `failed` ids get a failed videos row.
    """
    rng = np.random.default_rng(seed)
    dim = len(next(m for m in means.values() if m is not None))
    provenance = schema.Provenance(CLASSES_8, model, model_sha256, "det_10g", detector_sha256)
    faces_schema = provenance.on(schema.faces_schema(len(CLASSES_8), dim, features_dtype))
    out = Output(str(root))
    for video_id in failed:
        row = {
            "video_id": video_id,
            "source_uri": video_id,
            "kind": "video",
            "status": "failed",
            "error": "cannot decode",
        }
        out.commit_video(video_id, None, pa.Table.from_pylist([row | {"run_id": "r"}], schema.VIDEOS_BASE))
    for video_id, mean in means.items():
        n = 0 if mean is None else frames * faces_per_frame
        frame_index = np.repeat(np.arange(frames), faces_per_frame)[:n]
        face_index = np.tile(np.arange(faces_per_frame, dtype=np.int32), frames)[:n]
        columns: dict[str, Any] = {
            "video_id": [video_id] * n,
            "source_uri": [video_id] * n,
            "frame_index": frame_index,
            "timestamp_s": frame_index / fps,
            "face_index": face_index,
            "track_id": face_index.astype(np.int64),
            "bbox": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * n, np.float32)), 4),
            "det_score": np.ones(n, np.float32),
            "landmarks": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(10 * n, np.float32)), 10),
            "valence": pa.nulls(n, pa.float32()),
            "arousal": pa.nulls(n, pa.float32()),
        }
        logits = rng.standard_normal((n, len(CLASSES_8)), np.float32)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        columns["emotion"] = [CLASSES_8[i] for i in probs.argmax(1)]
        columns["emotion_probs"] = pa.FixedSizeListArray.from_arrays(
            pa.array(probs.reshape(-1)), probs.shape[1]
        )
        if features_dtype != "none":
            x = noise * rng.standard_normal((n, dim), np.float32)
            if n:
                x[face_index == 0] += np.asarray(mean, np.float32)
            columns["features"] = pa.FixedSizeListArray.from_arrays(
                pa.array(x.astype(features_dtype).reshape(-1)), dim
            )
        faces = pa.table({name: columns[name] for name in faces_schema.names}).cast(faces_schema)
        row = {
            "video_id": video_id,
            "source_uri": video_id,
            "kind": "video",
            "status": "ok",
            "fps": fps,
            "frame_count": frames,
            "duration_s": frames / fps,
            "frames_sampled": frames,
            "faces": n,
            "tracks": faces_per_frame if n else 0,
            "run_id": "r",
        }
        out.commit_video(video_id, faces, pa.Table.from_pylist([row], schema.VIDEOS_BASE))
