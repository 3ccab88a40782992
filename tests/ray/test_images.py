"""Still images end to end: a photo given directly and images in a folder beside a video are one-frame inputs
(kind image, frame 0 at time 0, their own videos row), found where the detector finds them on the same
pixels; a corrupt image fails alone, naming itself; a rerun duplicates nothing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
from e2e import by_video, read_table, sort_faces

from emotibatch.config import Sampling
from emotibatch.extract import pipeline
from emotibatch.extract.decode import IMAGE_FPS
from emotibatch.inference import detect
from emotibatch.inference.detect import FaceDetector
from emotibatch.testing import samples
from emotibatch.testing.samples import FaceTrack

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

W, H = 640, 360  # letterboxed into the stand-in detector's 640x640 input at scale 1: sides 16-64 are faces
FACES = (
    FaceTrack(64, (96, 96), (96, 96), first=0, last=0),
    FaceTrack(32, (400, 64), (400, 64), first=0, last=0),
    FaceTrack(16, (560, 280), (560, 280), first=0, last=0),
)
# What a score may differ by between the job (frames batched with other inputs' frames) and one detect call
# on the same pixels: the float32 SCRFD graph's outputs under another batch (tests/unit/inference/test_detect.py
# HEAD_ATOL). Coordinates are an anchor centre plus a distance times its stride (at most 32) at scale 1.
HEAD_ATOL = 1e-4
POSITION_ATOL = HEAD_ATOL * max(detect.STRIDES) + 4 * float(np.finfo(np.float32).eps) * W


def test_images_are_one_frame_inputs_with_the_detectors_faces(make_config, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    samples.make_video(folder / "talk.mp4", width=320, height=180, fps=25.0, seconds=1.0)
    images = {
        "group": samples.make_image(folder / "group.png", faces=FACES, width=W, height=H),
        "alpha": samples.make_image(
            folder / "sub" / "alpha.png", faces=FACES[:2], width=W, height=H, mode="rgba"
        ),
        "grey": samples.make_image(folder / "grey.jpg", faces=FACES[1:], width=W, height=H, mode="grey"),
        "single": samples.make_image(tmp_path / "single.png", faces=FACES[:1], width=W, height=H),
    }
    # A real photo: the sample insightface ships in its package (a reference library the suite installs).
    import insightface

    images["t1"] = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a JPEG at all\n" * 20)
    inputs = [folder, images["single"], images["t1"]]
    config = make_config(inputs, tmp_path / "out", sampling=Sampling("fps", 5.0))

    result = pipeline.extract(config)
    statuses = {v["video_id"]: v["status"] for v in result.videos}
    assert statuses == {"talk": "ok", "broken": "failed"} | dict.fromkeys(images, "ok"), result.videos

    videos = by_video(read_table(config.output, "videos"))
    assert {k: v["kind"] for k, v in videos.items()} == {"talk": "video", "broken": "image"} | dict.fromkeys(
        images, "image"
    )
    error = videos["broken"]["error"]
    assert f"could not decode the image {broken}: it is corrupt" in error and "ffmpeg" not in error
    faces = read_table(config.output, "faces")
    detector = FaceDetector.load(config.detector, device="cpu")
    found = {}
    for name, path in images.items():
        row = videos[name]
        height, width = cv2.imread(str(path)).shape[:2]
        assert (row["source_uri"], row["fps"], row["duration_s"]) == (str(path), IMAGE_FPS, 0.0)
        assert (row["frame_count"], row["frames_sampled"], row["frames_lost"]) == (1, 1, 0)
        assert (row["width"], row["height"], row["warning"]) == (width, height, None)
        rows = sort_faces(faces.filter(pc.equal(faces["video_id"], name))).to_pylist()
        (want,) = detector.detect([cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)])
        assert (row["faces"], len(rows)) == (len(want), len(want)), name
        assert {(r["frame_index"], r["timestamp_s"]) for r in rows} <= {(0, 0.0)}
        assert [r["track_id"] for r in rows] == list(range(len(rows)))
        if rows:
            np.testing.assert_allclose([r["bbox"] for r in rows], want.boxes, atol=POSITION_ATOL, rtol=0)
            np.testing.assert_allclose([r["det_score"] for r in rows], want.scores, atol=HEAD_ATOL, rtol=0)
            np.testing.assert_allclose(
                [r["landmarks"] for r in rows], want.kps.reshape(-1, 10), atol=POSITION_ATOL, rtol=0
            )
        found[name] = len(rows)
    drawn = {"group": 3, "alpha": 2, "grey": 2, "single": 1}
    assert {k: found[k] for k in drawn} == drawn, (
        "every drawn face should be found, or equality proves little"
    )

    # A rerun redoes the failed image only and duplicates no row.
    samples.make_image(broken, faces=FACES[:1], width=W, height=H)
    rerun = pipeline.extract(config)
    assert [v["video_id"] for v in rerun.videos] == ["broken"] and rerun.videos[0]["status"] == "ok"
    again = read_table(config.output, "videos")
    assert sorted(again["video_id"].to_pylist()) == sorted(videos)
    assert read_table(config.output, "faces").num_rows == faces.num_rows + 1
