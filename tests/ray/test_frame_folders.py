"""Frame folders end to end: frame numbers from file names (00001.png = frame 0), gaps kept, timestamps from
--frame-rate, and --faces-cropped (each image is one face: the whole image, no score, no landmarks)."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
from e2e import assert_faces_match, by_video, read_table, sort_faces

from emotibatch import schema
from emotibatch.extract import pipeline
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.preprocess import crop_faces
from emotibatch.testing import samples
from emotibatch.testing.samples import FaceTrack

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

RATE = 10.0
# 160x96 frames are letterboxed at scale 4: a 16 px square on multiples of 8 is the detector's 64 on 32.
FOLDER_TRACKS = {
    "clip_a": (
        FaceTrack(16, (40, 48), (56, 48), first=0, last=11),
        FaceTrack(16, (120, 32), (120, 32), first=2, last=8),
    ),
    "clip_b": (FaceTrack(16, (80, 40), (80, 56), first=1, last=4),),
}
GAPS = {"clip_a": (3, 4, 9), "clip_b": ()}
COUNTS = {"clip_a": 12, "clip_b": 6}


def test_frame_folders_keep_their_gaps_and_rows_equal_the_model(make_config, tmp_path):
    root = tmp_path / "frames"
    for name, tracks in FOLDER_TRACKS.items():
        samples.make_frame_folder(root / name, COUNTS[name], gaps=GAPS[name], faces=tracks)
    config = make_config([root], tmp_path / "out", frame_folders=True, frame_rate=RATE, features_dtype="none")
    result = pipeline.extract(config)
    assert [v["status"] for v in result.videos] == ["ok", "ok"], result.videos

    faces = read_table(config.output, "faces")
    assert "features" not in faces.column_names and "features" not in faces.schema.names
    videos = by_video(read_table(config.output, "videos"))
    model = EmotionModel.load(config.model, device="cpu")
    for name, tracks in FOLDER_TRACKS.items():
        sampled = [i for i in range(COUNTS[name]) if i not in GAPS[name]]
        assert_faces_match(faces, name, tracks, sampled, fps=RATE)
        rows = sort_faces(faces.filter(pc.equal(faces["video_id"], name))).to_pylist()
        with_faces = sorted({r["frame_index"] for r in rows})
        assert with_faces == [i for i in sampled if samples.expected_faces(tracks, i)]
        assert all(r["source_uri"] == str(root / name) for r in rows)
        # Probabilities equal the model on crops of the frames as drawn (PNG is lossless).
        crops = [
            crop_faces(
                samples.render_frame(tracks, r["frame_index"], width=160, height=96), np.array([r["bbox"]])
            )[0]
            for r in rows
        ]
        np.testing.assert_allclose(  # the same model on the same crops, only batched otherwise: float32 noise
            [r["emotion_probs"] for r in rows], model.predict(crops).probs, rtol=1e-5, atol=1e-6
        )
        row = videos[name]
        assert (row["status"], row["fps"], row["frame_count"], row["frames_sampled"]) == (
            "ok",
            RATE,
            COUNTS[name],
            len(sampled),
        )
        assert (row["width"], row["height"], row["tracks"], row["faces"]) == (160, 96, len(tracks), len(rows))
    meta = schema.read_metadata(faces.schema)
    assert meta["settings"]["frame_folders"] is True and meta["settings"]["frame_rate"] == RATE


def test_faces_cropped_are_whole_image_faces_one_track_per_folder(make_config, tmp_path):
    """Each image is a face: bbox = the whole image, det_score and landmarks null, one track per folder."""
    root = tmp_path / "crops"
    rng = np.random.default_rng(3)
    folder = root / "person"
    folder.mkdir(parents=True)
    images = {}
    for number in (1, 2, 4, 5):  # frame 2 missing
        image = rng.integers(0, 256, (40, 48, 3), np.uint8)
        cv2.imwrite(str(folder / f"{number:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images[number - 1] = image
    config = make_config([root], tmp_path / "out", frame_folders=True, faces_cropped=True, frame_rate=5.0)
    result = pipeline.extract(config)
    assert [v["status"] for v in result.videos] == ["ok"], result.videos

    faces = sort_faces(read_table(config.output, "faces"))
    rows = faces.to_pylist()
    assert [r["frame_index"] for r in rows] == [0, 1, 3, 4]
    assert [r["timestamp_s"] for r in rows] == [0.0, 0.2, 0.6, 0.8]
    assert {r["face_index"] for r in rows} == {0} and {r["track_id"] for r in rows} == {0}
    assert all(r["bbox"] == [0.0, 0.0, 48.0, 40.0] for r in rows)
    assert faces["det_score"].null_count == faces["landmarks"].null_count == len(rows)
    out = EmotionModel.load(config.model, device="cpu").predict([images[r["frame_index"]] for r in rows])
    # the same model on the same images, only batched otherwise: a few float32 ulps at most
    np.testing.assert_allclose([r["emotion_probs"] for r in rows], out.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["features"] for r in rows], out.features, rtol=1e-5, atol=1e-6)
    meta = schema.read_metadata(faces.schema)
    assert meta["detector"] is None and meta["model"] == config.model
    row = by_video(read_table(config.output, "videos"))["person"]
    assert (row["status"], row["frames_sampled"], row["faces"], row["tracks"]) == ("ok", 4, 4, 1)
