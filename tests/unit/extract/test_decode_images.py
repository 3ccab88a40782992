"""decode's still images (kind "image"): one frame at time 0, read by OpenCV's imread rule (EXIF orientation
applied, grey expanded, alpha dropped), local, remote or corrupt."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from emotibatch.extract import decode
from emotibatch.extract.decode import (
    IMAGE_FPS,
    DecodeError,
    Sampling,
    decode_blocks,
    decode_segment,
    plan_segments,
    plan_video,
    probe,
    sample_indices,
    work_item,
)
from emotibatch.io.sources import VideoSource
from emotibatch.testing.samples import FaceTrack, make_image, render_frame

W, H = 160, 96
FACES = (
    FaceTrack(32, (48, 32), (48, 32), first=0, last=0),
    FaceTrack(16, (120, 64), (120, 64), first=0, last=0),
)
DRAWN = render_frame(FACES, 0, width=W, height=H)


def image(path: Path) -> VideoSource:
    return VideoSource(str(path), path.stem, kind="image")


def only_frame(source: VideoSource, **kwargs) -> tuple[int, float, np.ndarray]:
    info = probe(source, **kwargs)
    (segment,) = plan_segments(info, sample_indices(info, Sampling()), None, video_id=source.video_id)
    (frame,) = decode_segment(source, info, segment, **kwargs)
    return frame


@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling("every", 5), Sampling("fps", 0.5), Sampling("fps", 30.0)]
)
def test_an_image_is_one_frame_at_time_zero_whatever_the_sampling(tmp_path: Path, sampling: Sampling) -> None:
    path = make_image(tmp_path / "photo.png", faces=FACES, width=W, height=H)
    source = image(path)
    info = probe(source)
    assert (info.fps, info.frame_count, info.duration_s, info.width, info.height) == (IMAGE_FPS, 1, 0.0, W, H)
    assert (info.size_bytes, info.seekable, info.frame_count_claimed) == (path.stat().st_size, False, None)
    indices = sample_indices(info, sampling)
    assert indices.tolist() == [0]
    (segment,) = plan_segments(info, indices, 0.1, video_id="photo")  # shorter than a frame at IMAGE_FPS
    ((index, timestamp, frame),) = decode_segment(source, info, segment)
    assert (index, timestamp, frame.dtype, frame.shape) == (0, 0.0, np.uint8, (H, W, 3))
    np.testing.assert_array_equal(frame, DRAWN)  # PNG is lossless


def test_colours_come_out_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (H, W, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "noise.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(only_frame(image(tmp_path / "noise.png"))[2], rgb)


def test_alpha_is_dropped_and_grey_is_expanded_to_rgb(tmp_path: Path) -> None:
    rgba = make_image(tmp_path / "alpha.png", faces=FACES, width=W, height=H, mode="rgba")
    assert cv2.imread(str(rgba), cv2.IMREAD_UNCHANGED).shape == (H, W, 4)
    np.testing.assert_array_equal(only_frame(image(rgba))[2], DRAWN)  # the colour as stored
    grey = make_image(tmp_path / "grey.jpg", faces=FACES, width=W, height=H, mode="grey")
    assert cv2.imread(str(grey), cv2.IMREAD_UNCHANGED).ndim == 2
    frame = only_frame(image(grey))[2]
    assert frame.shape == (H, W, 3)
    stored = cv2.imread(str(grey), cv2.IMREAD_GRAYSCALE)
    for channel in range(3):
        np.testing.assert_array_equal(frame[..., channel], stored)


def test_the_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A phone's portrait photo is stored landscape with orientation 6 (rotate 90 degrees clockwise to show)."""
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:8, :8] = 255  # the stored top-left corner: shown at the top right
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6
    data = io.BytesIO()
    picture.save(data, "JPEG", exif=exif.tobytes(), quality=100)
    (tmp_path / "portrait.jpg").write_bytes(data.getvalue())
    source = image(tmp_path / "portrait.jpg")
    info = probe(source)
    assert (info.width, info.height) == (40, 64)
    raw = cv2.imread(str(tmp_path / "portrait.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    shown = np.rot90(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), k=-1)
    frame = only_frame(source)[2]
    np.testing.assert_array_equal(frame, shown)
    assert frame[:8, -8:].min() > 200 and frame[:8, :8].max() < 50


def test_a_photo_reads_as_insightface_reads_it() -> None:
    """The sample photo shipped inside insightface (a reference library the suite installs): its loader is
    cv2.imread, the pixels the reference detector is shown."""
    from insightface.data import get_image

    path = Path(get_image.__code__.co_filename).parent / "images" / "t1.jpg"
    index, timestamp, frame = only_frame(image(path))
    assert (index, timestamp) == (0, 0.0)
    np.testing.assert_array_equal(frame, get_image("t1", to_rgb=True))


def test_a_corrupt_empty_or_missing_image_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG\n" * 10)
    message = (
        r"^could not decode the image .*broken\.jpg: it is corrupt, cut short or not an image \(\.jpg, .*\); "
        r"copy it again, or open it and save it again as JPEG or PNG$"
    )
    with pytest.raises(DecodeError, match=message):
        probe(image(tmp_path / "broken.jpg"))
    job = plan_video(image(tmp_path / "broken.jpg"), Sampling(), None)
    assert job.info is None and "broken.jpg" in job.error and "ffmpeg" not in job.error
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty file (0 bytes)" in plan_video(image(tmp_path / "empty.png"), Sampling(), None).error
    assert plan_video(image(tmp_path / "gone.png"), Sampling(), None).error.startswith("not found: ")


def test_an_image_replaced_after_probing_is_a_decode_error(tmp_path: Path) -> None:
    path = make_image(tmp_path / "photo.png", width=W, height=H)
    job = plan_video(image(path), Sampling(), 1.0)
    path.write_bytes(b"garbage")
    (block,) = decode_blocks(
        pa.Table.from_pylist([work_item(job, job.segments[0])]), storage_options={}, num_threads=1
    )
    assert block["frame_index"].to_pylist() == [-1]
    assert "could not decode the image" in block["error"][0].as_py()


def test_an_image_becomes_one_block_row_of_its_pixels(tmp_path: Path) -> None:
    job = plan_video(
        image(make_image(tmp_path / "photo.png", faces=FACES, width=W, height=H)), Sampling(), 1.0
    )
    assert (job.error, job.indices, len(job.segments)) == (None, (0,), 1)
    (block,) = decode_blocks(
        pa.Table.from_pylist([work_item(job, job.segments[0])]), storage_options={}, num_threads=1
    )
    row = block.to_pylist()[0]
    assert (row["frame_index"], row["height"], row["width"], row["error"]) == (0, H, W, None)
    np.testing.assert_array_equal(np.frombuffer(row["pixels"], np.uint8).reshape(H, W, 3), DRAWN)


def test_a_remote_image_is_read_through_the_video_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(decode.video_cache.CACHE_ENV, str(cache))
    local = make_image(tmp_path / "photo.png", faces=FACES, width=W, height=H)
    uri = f"memory://test-{uuid.uuid4().hex}/photo.png"
    fs = fsspec.filesystem("memory")
    fs.pipe(uri, local.read_bytes())
    try:
        remote = VideoSource(uri, "photo", kind="image")
        assert probe(remote) == probe(image(local))
        np.testing.assert_array_equal(only_frame(remote)[2], DRAWN)
        assert any(p.is_file() for p in cache.rglob("*")), "the image should have been read from the cache"
    finally:
        fs.rm(uri)
