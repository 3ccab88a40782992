"""Lecture and track summaries with engagement, on synthetic extract outputs (no Ray): the timelines equal
what EngagementModel and `emotibatch predict` give on the same features, and models that cannot use the
lectures' features are refused before any work. Also jobs/fit.py, which makes such models."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from jobs_helpers import ROOT, write_engagement_head, write_levels_corpus

from emotibatch import nightly, schema
from emotibatch.clips import classify
from emotibatch.config import ExtractConfig
from emotibatch.extract.output import Output
from emotibatch.inference.engagement import FEATURE_DIM, EngagementModel
from emotibatch.testing import standins
from emotibatch.testing.samples import write_synthetic_extract

NIGHT = date(2026, 3, 1)


def _video(extract_dir: Path, video_id: str) -> tuple:
    faces = pq.read_table(Output(str(extract_dir)).faces_path(video_id))
    row = {"video_id": video_id, "source_uri": video_id, "duration_s": 13.0, "frames_sampled": 130}
    return faces, row


def test_pretrained_head_scores_long_tracks_and_says_why_not_short_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_synthetic_extract(
        tmp_path / "x", {"lec": rng.standard_normal(FEATURE_DIM)}, frames=130, faces_per_frame=2
    )
    faces, row = _video(tmp_path / "x", "lec")
    # Track 1 keeps 10 frames: too short for a 128-frame window.
    keep = pc.or_(pc.equal(faces["track_id"], 0), pc.less(faces["frame_index"], 10))
    faces = faces.filter(keep)
    head = EngagementModel.load(write_engagement_head(tmp_path / "head.h5"))
    engagement = nightly.PretrainedEngagement(head, "head")

    lecture, tracks, timeline = nightly.summarize_lecture(
        faces, row, night=NIGHT, run_id="r", engagement=engagement
    )

    track0 = faces.filter(pc.equal(faces["track_id"], 0))
    want = head.predict(schema.as_matrix(track0["features"]))[:, 1]
    assert timeline["track_id"].to_pylist() == [0, 0, 0]  # windows at frames 0, 1, 2
    # the same head on the same windows, computed in float64 and stored as float32: one float32 rounding
    np.testing.assert_allclose(timeline["score"].to_numpy(), want, rtol=float(np.finfo(np.float32).eps))
    assert timeline["prediction"].to_pylist() == [("Distracted", "Engaged")[int(p >= 0.5)] for p in want]
    # frame / fps in float64: a few eps64 off the decimal values, far inside approx's default 1e-6
    assert timeline["window_start_s"].to_pylist() == pytest.approx([0.0, 0.1, 0.2])
    assert timeline["window_end_s"].to_pylist() == pytest.approx([12.7, 12.8, 12.9])
    t = tracks.to_pylist()
    assert [(r["track_id"], r["frames"], r["engagement_windows"]) for r in t] == [(0, 130, 3), (1, 10, 0)]
    # means of the same float32 scores summed in another order: relative error <= n eps32 ~ 4e-7 < 1e-6
    assert t[0]["engagement_mean"] == pytest.approx(want.mean()) and t[0]["engagement_note"] is None
    assert (
        t[1]["engagement_mean"] is None and "at least 128 consecutive face frames" in t[1]["engagement_note"]
    )
    r = lecture.to_pylist()[0]
    assert (r["faces"], r["tracks"], r["frames_with_faces"]) == (140, 2, 130)
    assert (r["engagement_tracks_scored"], r["engagement_tracks_unscored"]) == (1, 1)
    assert r["engagement_mean"] == pytest.approx(want.mean())
    labels = np.array(faces["emotion"].to_pylist())
    assert r["share_Happiness"] == pytest.approx(np.mean(labels == "Happiness"))


def test_fitted_model_timelines_equal_predict(tmp_path: Path) -> None:
    """An engagewild regressor over 0.4 s windows of each track gives what `emotibatch predict` gives."""
    extract_dir, labels = write_levels_corpus(tmp_path)
    model_dir = tmp_path / "model"
    classify.fit(str(extract_dir), str(labels), "engagewild", model_dir, n_splits=2)
    emotion = standins.make_emotion_model(tmp_path / "models/enet_b0_8_best_vgaf.onnx", feature_dim=16)
    extract = ExtractConfig(inputs=("in",), output="out", model=str(emotion))
    engagement = nightly.load_engagement(str(model_dir), extract, window_s=0.4)
    faces, row = _video(extract_dir, "clip03")

    _, tracks, timeline = nightly.summarize_lecture(
        faces, row, night=NIGHT, run_id="r", engagement=engagement
    )

    predicted = classify.predict(
        str(extract_dir), model_dir, str(tmp_path / "p.parquet"), windows=0.4, per_track=True
    )
    predicted = predicted.filter(pc.equal(predicted["video_id"], "clip03"))
    assert (
        timeline.select(["track_id", "window_start_s"]).to_pylist()
        == predicted.select(["track_id", "window_start_s"]).to_pylist()
    )
    # the same regressor on the same descriptors: equal up to float64 rounding (the default rtol 1e-7)
    np.testing.assert_allclose(timeline["score"].to_numpy(), predicted["score"].to_numpy())
    assert timeline["prediction"].to_pylist() == [str(p) for p in predicted["prediction"].to_pylist()]
    assert tracks["engagement_windows"].to_pylist() == [2, 2]


def test_models_that_cannot_use_the_features_are_refused(tmp_path: Path, emotion_path: Path) -> None:
    narrow = standins.make_emotion_model(tmp_path / "narrow.onnx", feature_dim=16)
    head = write_engagement_head(tmp_path / "head.h5")
    with pytest.raises(ValueError, match="needs enet_b0 features"):
        nightly.load_engagement(str(head), ExtractConfig(inputs=("in",), output="out", model=str(narrow)))
    write_synthetic_extract(tmp_path / "x", {f"c{i}": np.full(16, i % 2) for i in range(6)}, frames=4)
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,label\n" + "".join(f"c{i},{'ab'[i % 2]}\n" for i in range(6)))
    classify.fit(str(tmp_path / "x"), str(labels), "generic", tmp_path / "generic", n_splits=2)
    with pytest.raises(ValueError, match=r"come from emotion model .*, not 'enet_b0_8_best_vgaf' \(16-d\)"):
        nightly.load_engagement(
            str(tmp_path / "generic"), ExtractConfig(inputs=("in",), output="out", model=str(emotion_path))
        )
    renamed = standins.make_emotion_model(tmp_path / "m/enet_b0_8_best_vgaf.onnx", feature_dim=16)
    with pytest.raises(ValueError, match="engagement needs a regression model"):
        nightly.load_engagement(
            str(tmp_path / "generic"), ExtractConfig(inputs=("in",), output="out", model=str(renamed))
        )


@pytest.mark.slow
def test_fit_job_is_emotibatch_fit(tmp_path: Path) -> None:
    """`python jobs/fit.py` takes `emotibatch fit`'s options (a small one runs without Ray)."""
    extract_dir, labels = write_levels_corpus(tmp_path)
    args = ["--extract", extract_dir, "--labels", labels, "--task", "engagewild", "-o", tmp_path / "m"]
    done = subprocess.run(
        [sys.executable, "jobs/fit.py", *map(str, args), "--folds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "train labels: 12 clips labelled" in done.stdout
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        classify.MODEL_FILE,
        classify.CARD_FILE,
        classify.METRICS_FILE,
        classify.PLOT_FILES["regression"],
    }
