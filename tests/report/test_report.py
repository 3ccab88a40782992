"""Reports read without a browser: the numbers and ids are in plain tables, failures and empty videos are
said in words, nothing is fetched, no face is shown unless asked, and long lectures stay small."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from lectures import SECRET
from pages import Page

from emotibatch.cli import cli
from emotibatch.inference.registry import CLASSES_8
from emotibatch.reports import report
from emotibatch.testing import samples


def _self_contained(page: Page) -> None:
    """No script, no external style or frame, and every URL is an anchor in the page or inline data."""
    assert not page.tags["script"] and not page.tags["link"] and not page.tags["iframe"]
    outside = [u for u in page.urls if not u.startswith(("#", "data:"))]
    assert not outside, outside


def test_run_overview_tables_hold_the_run(reports: dict[str, Path]) -> None:
    page = Page.read(reports["synthetic"])
    _self_contained(page)
    totals = page.sections["overview"].rows(0)[0]
    assert (totals["inputs"], totals["ok"], totals["failed"]) == ("3", "2", "1")
    assert (totals["frames sampled"], totals["faces"], totals["tracks"]) == ("600", "900", "3")
    details = page.sections["models"]
    assert details.key_values(0)["classes"] == ", ".join(CLASSES_8)
    (run,) = details.rows(1)
    assert (run["run"], run["failed"], run["faces/s"]) == ("run-1", "1", "7.5")
    assert details.key_values(2)["frames per second"] == "5.0"  # 600 sampled frames in the run's 120 s
    assert details.key_values(3)["storage_options.key"] == "<redacted>"

    (failed,) = page.sections["overview"].rows(1)
    assert (failed["video"], failed["error"]) == ("broken", "cannot decode")
    # The banner names the cause, not a guess ("they have no faces").
    assert page.sections["overview"].says(
        "1 of 3 inputs failed: cannot decode (broken). A rerun retries them."
    )

    emotions = {r["emotion"]: int(r["faces"]) for r in page.sections["emotions"].rows(0)}
    assert list(emotions) == list(CLASSES_8) and sum(emotions.values()) == 900
    videos = {r["video"]: r for r in page.sections["videos"].rows(0)}
    assert videos["lecture"]["faces"] == "900" and videos["broken"]["status"] == "failed"
    assert videos["lecture"]["mostly"] == max(emotions, key=emotions.get) == totals["mostly"]


def test_the_page_leads_with_the_answer_and_ends_with_the_options_collapsed(reports: dict[str, Path]) -> None:
    """What happened, emotions, videos, each video; then runs, models and options inside <details>."""
    text = reports["synthetic"].read_text()
    ids = re.findall(r'<section id="([^"]+)">', text)
    assert ids == ["overview", "emotions", "videos", "v1", "v2", "v3", "models"]
    options = text[text.index('<section id="models">') :]
    assert options.index("<details>") < options.index("<table")
    lecture = text[text.index('<section id="v3">') : text.index('<section id="models">')]
    # The video leads with its charts; its track table (up to MAX_TRACKS rows) is collapsed below them.
    assert lecture.index("<svg") < lecture.index("<details>") < lecture.index("<table")


def test_failure_causes_are_grouped_most_frequent_first() -> None:
    failed = [
        {"video_id": v, "error": e}
        for v, e in [("a", "not found"), ("b", "cannot decode"), ("c", "not found"), ("d", None)]
    ]
    assert report._failure_causes(failed) == "not found (2: a, c); cannot decode (b); no error recorded (d)"
    many = [{"video_id": f"v{i}", "error": f"error {i % 5}"} for i in range(10)]
    assert report._failure_causes(many).endswith("; and 2 other errors")


def test_video_sections_show_tracks_and_say_what_is_missing(
    reports: dict[str, Path], synthetic: Path
) -> None:
    page = Page.read(reports["synthetic"])
    lecture, empty, broken = (page.sections[a] for a in ("v3", "v2", "v1"))
    assert lecture.key_values(-1)["faces"] == "900"
    tracks = lecture.rows(-2)
    assert [t["track"] for t in tracks] == ["#0", "#1", "#2"] and {t["faces"] for t in tracks} == {"300"}
    assert lecture.says("This emotion model has no valence and arousal heads")
    assert empty.says("No faces were found in this video (300 sampled frames)")
    assert broken.says("This input failed, so it has no faces: cannot decode")

    alone = Page.read(reports["no_faces"])
    assert set(alone.sections) == {"overview", "emotions", "videos", "v1", "models"}
    assert alone.sections["v1"].says("No faces were found") and alone.sections["emotions"].says(
        "No faces were found"
    )
    # A one-video page is about that video, not about the run's other inputs.
    assert alone.sections["overview"].rows(0)[0]["inputs"] == "1"
    assert [r["video"] for r in alone.sections["videos"].rows(0)] == ["empty_room"]
    failed = Page.read(reports["failed_input"])
    assert failed.sections["v1"].says("This input failed") and failed.sections["overview"].says(
        "1 of 1 inputs failed: cannot decode (broken)"
    )


def test_no_face_image_without_thumbnails(reports: dict[str, Path]) -> None:
    for name in ("synthetic", "no_faces", "failed_input", "index"):
        text = reports[name].read_text()
        assert "<img" not in text and "data:image/" not in text, name
    assert reports["synthetic"].read_text().count("<svg") == 4  # plots are inline SVG, not images


@pytest.mark.slow
def test_thumbnails_are_one_small_crop_per_track(lecture_report: Path) -> None:
    page = Page.read(lecture_report)
    _self_contained(page)
    assert len(page.images) == 3 and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    for src in page.images:
        crop = cv2.imdecode(
            np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_GRAYSCALE
        )
        assert max(crop.shape) <= report.THUMBNAIL_PX
        h, w = crop.shape
        assert crop[h // 2, w // 2] > 200 and crop[0, 0] < 50  # the white stand-in face, framed by black


def test_unreadable_source_is_said_instead_of_thumbnails(synthetic: Path, tmp_path: Path) -> None:
    path = report.write_report(str(synthetic), str(tmp_path / "r.html"), videos=["lecture"], thumbnails=True)
    page = Page.read(path)
    assert not page.images
    assert page.sections["v1"].says("No thumbnails: the source video could not be read (not found: lecture")


@pytest.mark.slow
def test_a_real_extract_shows_valence_arousal_redacted_options_and_tracks(lecture_report: Path) -> None:
    """Valence and arousal of the MTL model, the run's options (credentials removed), tracks by time."""
    text = lecture_report.read_text()
    assert SECRET not in text
    page = Page.read(lecture_report)
    options = page.sections["models"].key_values(3)
    assert options["sampling.mode"] == "fps" and options["storage_options.secret"] == "<redacted>"
    video = next(s for s in page.sections.values() if s.says("Video lecture"))
    assert video.says("Valence and arousal") and not video.says("no valence and arousal heads")
    tracks = video.rows(-2)
    # --fps 5 samples frames 0, 5, ..., 45: track 0 is in all 10, track 1 (frames 10-40) in 7, track 2 in 6.
    assert [(t["track"], t["faces"], t["first seen"]) for t in tracks] == [
        ("#0", "10", "0.0 s"),
        ("#1", "7", "0.4 s"),
        ("#2", "6", "0.8 s"),
    ]
    assert {"valence", "arousal", "face"} <= set(tracks[0])


def test_long_lecture_plots_are_pooled_not_the_tables(tmp_path: Path) -> None:
    """An hour at 10 fps with two faces per frame: at most MAX_POINTS bins per series, every row counted."""
    root = tmp_path / "long"
    samples.write_synthetic_extract(root, {"hour": np.zeros(2)}, frames=36_000, faces_per_frame=2, fps=10.0)
    path = report.write_report(str(root), str(tmp_path / "hour.html"))
    text = Path(path).read_text()
    assert len(text) < 1_500_000
    page = Page(text)
    assert [t["faces"] for t in page.sections["v1"].rows(-2)] == ["36,000", "36,000"]
    assert page.sections["v1"].says("means over 36 consecutive frames for display")
    assert page.sections["v1"].says("1:00:00")  # the time axis reads in h:mm:ss


def test_summary_bins_are_exact_pools_of_sampled_frames() -> None:
    """Pure: frames without faces count as zero faces; probabilities, valence and counts are means/sums."""
    n, fps = 2500, 25.0
    frames = np.arange(0, n, 2)  # faces on every other sampled frame
    probs = np.tile(np.eye(8, dtype=np.float32)[4], (len(frames), 1))
    faces = pa.table(
        {
            "frame_index": frames,
            "timestamp_s": frames / fps,
            "track_id": np.zeros(len(frames), np.int64),
            "emotion": ["Happiness"] * len(frames),
            "emotion_probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), 8),
            "valence": pa.array(np.full(len(frames), 0.5, np.float32)),
            "arousal": pa.array([None] * len(frames), pa.float32()),
        }
    )
    summary = report.summarize_video(
        faces, CLASSES_8, duration_s=n / fps, fps=fps, sampled_frames=np.arange(n)
    )
    assert len(summary.edges) - 1 == 834 and summary.frames_per_bin == 3  # ceil(2500 / 1000) frames a bin
    # bin means of small counts and of constant float32 values: exact up to float64 rounding (default rtol)
    np.testing.assert_allclose(summary.faces_mean[:-1], np.tile([2 / 3, 1 / 3], 417)[:-1])
    np.testing.assert_allclose(summary.probs[:-1, 4], 1.0)
    assert not summary.probs[-1].any() and np.isnan(summary.valence[-1])  # frame 2499 alone: no face
    np.testing.assert_allclose(summary.valence[:-1], 0.5)
    assert summary.arousal is None  # a column of nulls: nothing to plot
    assert summary.counts == {"Happiness": 1250}
    ((start, width, emotion),) = summary.tracks[0].lanes  # one run of Happiness, to the last face's bin
    assert (start, emotion) == (0.0, 4) and width == pytest.approx(2499 / fps)  # float64 frame / fps


def test_engagement_and_predictions_are_shown_per_track_and_window(synthetic: Path, tmp_path: Path) -> None:
    starts = np.arange(0.0, 30.0, 10.0)
    engagement = pa.table(
        {
            "video_id": ["lecture"] * 6,
            "track_id": [0, 0, 0, 1, 1, 1],
            "window_start_s": np.r_[starts, starts],
            "window_end_s": np.r_[starts, starts] + 10,
            "score": [0.2, 0.4, 0.6, 0.4, 0.6, 0.8],
        }
    )
    predictions = pa.table(
        {
            "video_id": ["lecture", "lecture", "empty_room"],
            "prediction": ["Positive", "Neutral", None],
            "prob_Positive": pa.array([0.7, 0.2, None], pa.float32()),
            "track_id": [0, 1, None],
        }
    )
    windows = pa.table(
        {
            "video_id": ["lecture"] * 3,
            "window_start_s": starts,
            "window_end_s": starts + 10,
            "prediction": ["Positive", "Positive", "Negative"],
        }
    ).replace_schema_metadata({b"emotibatch": json.dumps({"task": "vgaf"}).encode()})
    pq_path = tmp_path / "windows.parquet"
    pa.parquet.write_table(windows, pq_path)
    path = report.write_report(
        str(synthetic),
        str(tmp_path / "r.html"),
        predictions=[predictions, str(pq_path)],
        engagement=engagement,
    )
    page = Page.read(path)
    lecture = page.sections["v3"]
    tables = [t for t in lecture.tables if t and t[0][:2] == ["who", "windows"]]
    rows = {r[0]: r[1:] for r in tables[0][1:]}
    assert rows["whole room (mean of the tracks present)"] == ["3", "0.50"]
    assert rows["#0"] == ["3", "0.40"] and rows["#1"] == ["3", "0.60"]
    assert lecture.says("Predictions: windows.parquet (vgaf model)")
    clip = next(t for t in lecture.tables if t and t[0] == ["who", "prediction", "prob_Positive"])
    assert clip[1:] == [["#0", "Positive", "0.700"], ["#1", "Neutral", "0.200"]]
    assert page.sections["v2"].says("no faces")  # the empty room's null prediction
    with pytest.raises(ValueError, match="engagement table needs one of the columns"):
        report.write_report(str(synthetic), str(tmp_path / "x.html"), engagement=engagement.drop(["score"]))


def test_report_and_index_on_a_bucket() -> None:
    """Extract output, reports and index behind fsspec URIs; the index links relatively."""
    root = "memory://bucket/night"
    samples.write_synthetic_extract(
        f"{root}/extract", {"a": np.zeros(2), "b": np.zeros(2)}, frames=10, failed=["c"]
    )
    for video in ("a", "b"):
        report.write_report(f"{root}/extract", f"{root}/reports/{video}.html", videos=[video])
    report.write_report(f"{root}/extract", f"{root}/reports/c.html", videos=["c"])
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket/night/reports/notes.html", b"<html>not a report</html>")
    report.write_index(f"{root}/reports", f"{root}/index.html")
    page = Page(fs.cat_file("/bucket/night/index.html").decode())
    rows = page.sections["reports"].rows(0)
    assert [r["report"] for r in rows] == ["a", "b", "c"] and [r["failed"] for r in rows] == ["0", "0", "1"]
    assert [u for u in page.urls if not u.startswith("#")] == [
        "reports/a.html",
        "reports/b.html",
        "reports/c.html",
    ]
    assert page.sections["reports"].says("1 inputs failed")


def test_cli_report_writes_one_video_page_where_told(synthetic: Path, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "one.html"
    result = CliRunner().invoke(
        cli, ["report", "--extract", str(synthetic), "--video", "lecture", "-o", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report -> {target}"
    assert re.search(r"<title>emotibatch report: lecture</title>", target.read_text())
    result = CliRunner().invoke(
        cli, ["report", "--extract", str(synthetic), "--video", "nope", "-o", str(target)]
    )
    assert result.exit_code == 2 and "has no video 'nope'" in result.output
