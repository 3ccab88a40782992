"""Preview clips of a real extract: H.264 that PyAV decodes, one output frame per source frame in the
asked span, boxes where the extract found faces, held over the frames between sampled ones."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from lectures import LECTURE_TRACKS, Lecture
from PIL import Image

from emotibatch.cli import cli
from emotibatch.reports import render
from emotibatch.reports.render import render_clip

pytestmark = pytest.mark.slow  # every test renders the `lecture` fixture's real extract


def _frames(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


BAR = 30  # rows of the timecode bar (23 px at 360 lines): it changes every frame


def _drawn(rendered: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Pixels the render changed below the timecode bar: boxes and labels."""
    return np.abs(rendered.astype(int) - source.astype(int))[BAR:].max(axis=2) > 60


def test_a_rendered_span_holds_each_sampled_frames_boxes_until_the_next(
    lecture: Lecture, tmp_path: Path
) -> None:
    out = tmp_path / "clip.mp4"
    result = render_clip("lecture", str(out), str(lecture.out), start_s=0.4, end_s=1.2)
    assert (result.video_id, result.first_frame, result.frames) == ("lecture", 10, 20)
    codec, frames = _frames(out)
    assert codec == "h264" and len(frames) == 20 and frames[0].shape == (360, 640, 3)
    source = _frames(lecture.video)[1][10:30]
    masks = [_drawn(f, s) for f, s in zip(frames, source)]
    assert all(m.any() for m in masks)
    # Sampled at 5 fps of 25: source frames 10..14 (clip frames 0..4) all show frame 10's boxes, though
    # the faces of the video move between them; frame 15 shows its own.
    for i in range(1, 5):
        assert (masks[i] ^ masks[0]).mean() < 0.001, i
    assert (masks[5] ^ masks[0]).mean() > 0.001
    # The 64 px face's box at frame 10: its left and right edges drawn along their whole height.
    (cx, cy) = LECTURE_TRACKS[0].center(10)
    rows = slice(cy - 24 - BAR, cy + 24 - BAR)
    assert (
        masks[0][rows, cx - 33 : cx - 30].any(axis=1).all()
        and masks[0][rows, cx + 30 : cx + 33].any(axis=1).all()
    )
    assert not masks[0][rows, cx - 20 : cx + 20].any()  # the face itself is not painted over
    # The timecode bar: white text on black over the top left corner of every frame.
    assert all((f[:20, :60] < 40).mean() > 0.5 and (f[:20, :60] > 200).any() for f in frames)
    Image.fromarray(frames[5]).save(tmp_path / "frame.png")  # kept by pytest's tmp_path to look at


def test_a_gif_is_a_gif_at_most_ten_frames_a_second(lecture: Lecture, tmp_path: Path) -> None:
    out = tmp_path / "clip.gif"
    result = render_clip("lecture", str(out), str(lecture.out), start_s=0.4, end_s=1.2)
    # 20 source frames at 25 fps; every ceil(25 / 10) = 3rd is kept: 7 frames, 3 / 25 s = 120 ms apart.
    assert result.frames == 7 and out.read_bytes()[:6] == b"GIF89a"
    with Image.open(out) as gif:
        assert (gif.format, gif.n_frames, gif.size, gif.info["duration"]) == ("GIF", 7, (640, 360), 120)


def test_render_by_file_through_the_cli(lecture: Lecture, tmp_path: Path) -> None:
    out = tmp_path / "whole.mp4"
    result = CliRunner().invoke(
        cli, ["render", str(lecture.video), "--extract", str(lecture.out), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"50 frames of lecture from frame 0 -> {out}"
    assert len(_frames(out)[1]) == 50


def test_render_refuses_what_it_cannot_show(
    lecture: Lecture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="failed in the extract"):
        render_clip("broken", out, str(lecture.out))
    with pytest.raises(ValueError, match="matches no video"):
        render_clip("nothing", out, str(lecture.out))
    with pytest.raises(ValueError, match=r"no frames from 5\.0 s"):
        render_clip("lecture", out, str(lecture.out), start_s=5.0)
    avi = tmp_path / "x.avi"
    with pytest.raises(ValueError, match=r"x\.avi: a preview is written as \.mp4 \(MP4 \(H\.264\)\), \.gif"):
        render_clip("lecture", str(avi), str(lecture.out))
    gif = tmp_path / "long.gif"
    monkeypatch.setattr(render, "GIF_MAX_S", 1.0)
    with pytest.raises(ValueError, match=r"a GIF preview holds at most 1 s, this one 2\.0 s"):
        render_clip("lecture", str(gif), str(lecture.out))
    assert not avi.exists() and not gif.exists()
    result = CliRunner().invoke(
        cli, ["render", "lecture", "--extract", str(lecture.out), "-o", out, "--start", "2", "--end", "1"]
    )
    assert result.exit_code == 2 and "need 0 <= --start < --end" in result.output
