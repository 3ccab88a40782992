"""The nightly lecture job over several nights, in-process on the session Ray (one run through the script).

Night 1 meets two good lectures, one that fails (its bytes garbled, size and mtime kept), one still
uploading (modified a minute ago) and one without its completion marker. Night 2 changes nothing: only
the failed lecture is tried again. Night 3 restores it, lets the upload settle, adds the marker and a new
lecture: those four, and nothing else, are processed. A rerun of night 3 finds nothing to do.
Then the exit codes of `emotibatch nightly` (the last run through its job wrapper, `python
jobs/nightly_lectures.py`, on this session's Ray), and lectures on S3 (moto), where uploads are aged by
LastModified and known by their ETag.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
import s3fs
from click.testing import CliRunner
from jobs_helpers import KEY_ID, ROOT, SECRET, make_lecture, set_age, write_engagement_head

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
from pages import Page

from emotibatch import nightly
from emotibatch.cli import cli
from emotibatch.config import ExtractConfig, Sampling
from emotibatch.extract.decode import probe, sample_indices
from emotibatch.extract.output import Output, video_key
from emotibatch.io.sources import VideoSource

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]
MARKER = ".done"
JOB_TIMEOUT_S = 300
LECTURES = (
    "course1/week1.mp4",
    "course1/week2.mp4",
    "course2/broken.mp4",
    "course2/young.mp4",
    "course2/unmarked.mp4",
    "course3/new.mp4",
)


def _table(directory: Path) -> pa.Table | None:
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _night(prefix: Path, out: Path, models: dict[str, str], night: date, head: Path) -> nightly.NightResult:
    extract = ExtractConfig(
        inputs=(str(prefix),),
        output=str(out),
        sampling=nightly.LECTURE_SAMPLING,
        device="cpu",
        **models,
    )
    config = nightly.NightlyConfig(
        extract, completion_marker=MARKER, engagement_model=str(head), night=night, settle_minutes=30
    )
    return nightly.run(nightly.prepare(config))


def _tried(result: nightly.NightResult) -> dict[str, str]:
    return {o.lecture.video_id: o.status for o in result.lectures}


@pytest.fixture(scope="module")
def models(emotion_path: Path, scrfd_path: Path) -> dict[str, str]:
    return {"model": str(emotion_path), "detector": str(scrfd_path)}


def test_each_lecture_once_failures_retried_uploads_waited(tmp_path: Path, models: dict[str, str]) -> None:
    prefix, out = tmp_path / "lectures", tmp_path / "out"
    head = write_engagement_head(tmp_path / "head.h5")
    for name in ("course1/week1.mp4", "course1/week2.mp4", "course2/broken.mp4", "course2/young.mp4"):
        make_lecture(prefix / name, age_s=60 if "young" in name else 7200)
        (prefix / (name + MARKER)).touch()
    make_lecture(prefix / "course2/unmarked.mp4")
    broken = prefix / "course2/broken.mp4"
    good_bytes, mtime = broken.read_bytes(), broken.stat().st_mtime
    broken.write_bytes(bytes(len(good_bytes)))  # same size: only the content tells
    os.utime(broken, (mtime, mtime))

    first = _night(prefix, out, models, date(2026, 3, 1), head)
    assert _tried(first) == {
        "course1/week1.mp4": "ok",
        "course1/week2.mp4": "ok",
        "course2/broken.mp4": "failed",
    }
    assert {w.source_uri.rsplit("/", 1)[-1]: w.reason for w in first.waiting} == {
        "young.mp4": "modified 1 min ago (< 30 min)",
        "unmarked.mp4": "no completion marker .done yet",
    }
    night1 = out / "date=2026-03-01"
    failures = json.loads((night1 / "failures.json").read_text())
    assert [f["video_id"] for f in failures["failures"]] == ["course2/broken.mp4"]
    assert failures["run_id"] == first.run_id and failures["failures"][0]["error"]
    assert first.describe()[0].startswith(
        "night 2026-03-01: 3 lectures tried (2 ok, 1 failed), 2 uploads waiting"
    )

    # One report per lecture that ended ok, and the night's index linking them.
    reports = sorted(p.name for p in (night1 / "reports").iterdir())
    assert reports == sorted(f"{video_key(v)}.html" for v in ("course1/week1.mp4", "course1/week2.mp4"))
    index = (night1 / "index.html").read_text()
    assert all(
        f"reports/{name.replace('%', '%25')}" in index or f"reports/{name}" in index for name in reports
    )
    assert '<a href="../courses.html">' in index and "No engagement model ran" not in index
    # A lecture's page is about that lecture: one input, not the night's three.
    week1_page = Page.read(night1 / "reports" / f"{video_key('course1/week1.mp4')}.html")
    assert week1_page.sections["overview"].rows(0)[0]["inputs"] == "1"
    assert [r["video"] for r in week1_page.sections["videos"].rows(0)] == ["course1/week1.mp4"]
    courses = {s.text[0]: s.rows(0) for s in Page.read(out / "courses.html").sections.values()}
    assert {c: [(r["lecture"], r["status"]) for r in rows] for c, rows in courses.items()} == {
        "Course course1": [("course1/week1.mp4", "ok"), ("course1/week2.mp4", "ok")],
        "Course course2": [
            ("course2/broken.mp4", "failed"),
            ("course2/unmarked.mp4", "waiting"),
            ("course2/young.mp4", "waiting"),
        ],
    }

    # Summaries of one lecture: 4 sampled frames with 2 faces each, 2 tracks too short for the head.
    lecture = _table(night1 / "summaries/lectures").to_pylist()
    assert sorted(r["video_id"] for r in lecture) == ["course1/week1.mp4", "course1/week2.mp4"]
    week1 = next(r for r in lecture if r["video_id"] == "course1/week1.mp4")
    assert (week1["frames_sampled"], week1["frames_with_faces"], week1["faces"], week1["tracks"]) == (
        4,
        4,
        8,
        2,
    )
    # float64 fractions of one count: their sum is 1 up to a few eps64, far inside approx's default 1e-6
    assert sum(v for k, v in week1.items() if k.startswith("share_")) == pytest.approx(1.0)
    assert week1["valence_mean"] is None and week1["run_id"] == first.run_id
    assert (
        week1["engagement_model"],
        week1["engagement_tracks_scored"],
        week1["engagement_tracks_unscored"],
    ) == (
        str(head),
        0,
        2,
    )
    tracks = _table(night1 / "summaries/tracks")
    tracks = tracks.filter(pc.equal(tracks["video_id"], "course1/week1.mp4")).to_pylist()
    assert [(t["track_id"], t["frames"], t["engagement_windows"]) for t in tracks] == [(0, 4, 0), (1, 4, 0)]
    assert all("at least 128 consecutive face frames" in t["engagement_note"] for t in tracks)
    assert len(_table(night1 / "summaries/engagement")) == 0
    outcome = next(o for o in first.lectures if o.lecture.video_id == "course1/week1.mp4")
    assert [Path(f).parent.name for f in outcome.files] == [
        "faces",
        "lectures",
        "tracks",
        "engagement",
        "reports",
    ]
    assert all(Path(f).is_file() for f in outcome.files)

    # Night 2, nothing changed: the failed lecture alone is tried again.
    second = _night(prefix, out, models, date(2026, 3, 2), head)
    assert _tried(second) == {"course2/broken.mp4": "failed"}
    assert (len(second.waiting), second.processed_before) == (2, 2)

    # Night 3: the failure was transient, the upload settled, the marker came, a new lecture arrived.
    broken.write_bytes(good_bytes)
    os.utime(broken, (mtime, mtime))
    set_age(prefix / "course2/young.mp4", 7200)
    (prefix / ("course2/unmarked.mp4" + MARKER)).touch()
    make_lecture(prefix / "course3/new.mp4", seed=1)
    (prefix / ("course3/new.mp4" + MARKER)).touch()
    third = _night(prefix, out, models, date(2026, 3, 3), head)
    assert _tried(third) == {
        "course2/broken.mp4": "ok",
        "course2/young.mp4": "ok",
        "course2/unmarked.mp4": "ok",
        "course3/new.mp4": "ok",
    }
    assert (third.waiting, third.processed_before) == ((), 2)
    courses = {s.text[0]: s.rows(0) for s in Page.read(out / "courses.html").sections.values()}
    assert {c: {r["lecture"]: (r["night"], r["status"]) for r in rows} for c, rows in courses.items()} == {
        "Course course1": {
            "course1/week1.mp4": ("2026-03-01", "ok"),
            "course1/week2.mp4": ("2026-03-01", "ok"),
        },
        "Course course2": {
            "course2/broken.mp4": ("2026-03-03", "ok"),
            "course2/unmarked.mp4": ("2026-03-03", "ok"),
            "course2/young.mp4": ("2026-03-03", "ok"),
        },
        "Course course3": {"course3/new.mp4": ("2026-03-03", "ok")},
    }
    assert json.loads((out / "date=2026-03-03/failures.json").read_text())["failures"] == []

    # A rerun of night 3: nothing to do, nothing written.
    again = _night(prefix, out, models, date(2026, 3, 3), head)
    assert (again.lectures, again.run_id, again.night_output, again.processed_before) == ((), None, None, 6)

    # Every lecture processed once: one ok manifest row, faces in exactly one night.
    processed = pq.read_table(out / "_nightly/processed.parquet")
    ok = processed.filter(pc.equal(processed["status"], "ok"))
    assert sorted(ok["video_id"].to_pylist()) == sorted(LECTURES)
    failed = processed.filter(pc.equal(processed["status"], "failed"))
    assert failed["night"].to_pylist() == [date(2026, 3, 1), date(2026, 3, 2)]
    faces = sorted(str(p) for p in out.glob("date=*/faces/*.parquet"))
    assert faces == sorted(
        Output(str(out / night)).faces_path(video_id)
        for night, video_id in [
            ("date=2026-03-01", "course1/week1.mp4"),
            ("date=2026-03-01", "course1/week2.mp4"),
            ("date=2026-03-03", "course2/broken.mp4"),
            ("date=2026-03-03", "course2/unmarked.mp4"),
            ("date=2026-03-03", "course2/young.mp4"),
            ("date=2026-03-03", "course3/new.mp4"),
        ]
    )
    videos = _table(out / "date=2026-03-03/videos")
    assert set(videos["source_stamp"].to_pylist()) == {o.lecture.stamp for o in third.lectures}


def test_job_exits_0_with_a_failed_lecture_2_on_bad_usage_3_with_strict(
    tmp_path: Path, model_args: list[str]
) -> None:
    """0 with a failed lecture (listed), 2 for bad usage, 3 with --strict: the failure is tried again."""
    prefix, out = tmp_path / "lectures", tmp_path / "out"
    make_lecture(prefix / "good.mp4")
    (prefix / "bad.mp4").write_text("this is not a video\n")
    args = [str(prefix), "--output", str(out), "--settle-minutes", "0", "--date", "2026-04-01", *model_args]

    result = CliRunner().invoke(cli, ["nightly", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 lectures tried (1 ok, 1 failed)" in result.output and "failed bad.mp4: " in result.output
    # No --engagement-model: the pretrained head is tried, but the stand-in emotion model's features are
    # not enet_b0's, so the night says plainly that none ran, in its output, its index and its pages.
    said = "No engagement model ran: EmotiEffLib's engagement_single_attention cannot be used"
    assert said in result.output
    night = out / "date=2026-04-01"
    pages = [night / "index.html", *(night / "reports").glob("*.html")]
    assert len(pages) == 2 and all(said in html.unescape(page.read_text()) for page in pages)
    failures = json.loads((out / "date=2026-04-01/failures.json").read_text())["failures"]
    assert [f["video_id"] for f in failures] == ["bad.mp4"]

    usage = CliRunner().invoke(cli, ["nightly", *args, "--settle-minutes", "-1"], catch_exceptions=False)
    assert usage.exit_code == 2 and "--settle-minutes must be >= 0" in usage.output

    address = ray.get_runtime_context().gcs_address  # this session's Ray: no second start-up
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    strict = subprocess.run(
        [sys.executable, "jobs/nightly_lectures.py", *args, "--strict", "--address", address],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert strict.returncode == 3, strict.stdout + strict.stderr
    assert "1 lectures tried (0 ok, 1 failed)" in strict.stdout, strict.stdout
    assert "failed bad.mp4" in strict.stderr  # the log says it too


def test_lectures_on_s3_aged_by_last_modified_known_by_etag(
    tmp_path: Path, moto: str, models: dict[str, str]
) -> None:
    """On an object store: LastModified ages uploads, markers are objects, the manifest keeps ETags."""
    s3 = s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, client_kwargs={"endpoint_url": moto})
    bucket = f"emotibatch-nightly-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    s3.put_file(str(make_lecture(tmp_path / "a.mp4")), f"{bucket}/lectures/c1/a.mp4")
    s3.pipe_file(f"{bucket}/lectures/c1/a.mp4{MARKER}", b"")
    s3.put_file(str(tmp_path / "a.mp4"), f"{bucket}/lectures/c1/b.mp4")  # no marker yet
    # Workers of an in-process Ray never saw this test's environment: credentials in the options.
    options = {"client_kwargs": {"endpoint_url": moto}, "key": KEY_ID, "secret": SECRET}
    extract = ExtractConfig(
        inputs=(f"s3://{bucket}/lectures/",),
        output=f"s3://{bucket}/out",
        sampling=nightly.LECTURE_SAMPLING,
        device="cpu",
        storage_options=options,
        **models,
    )

    def night(settle_minutes: float) -> nightly.NightResult:
        config = nightly.NightlyConfig(
            extract, settle_minutes=settle_minutes, completion_marker=MARKER, night=date(2026, 5, 1)
        )
        return nightly.run(nightly.prepare(config))

    young = night(30)  # just uploaded
    assert young.lectures == ()
    assert sorted(w.reason for w in young.waiting) == [
        "modified 0 min ago (< 30 min)",
        "no completion marker .done yet",
    ]
    settled = night(0)
    assert _tried(settled) == {"c1/a.mp4": "ok"}
    faces = Output(f"s3://{bucket}/out/date=2026-05-01", options).faces_path("c1/a.mp4")
    assert settled.lectures[0].files[0] == f"s3://{faces}"
    s3.invalidate_cache()
    with s3.open(f"{bucket}/out/_nightly/processed.parquet", "rb") as f:
        processed = pq.read_table(f).to_pylist()
    assert [(r["source_uri"], r["status"]) for r in processed] == [(f"s3://{bucket}/lectures/c1/a.mp4", "ok")]
    assert processed[0]["stamp"] == s3.info(f"{bucket}/lectures/c1/a.mp4")["ETag"]
    assert night(0).lectures == ()  # b.mp4 still has no marker; a.mp4 is done
    summaries = s3.find(f"{bucket}/out/date=2026-05-01/summaries")
    assert sorted(p.rsplit("/", 2)[1] for p in summaries) == ["lectures", "tracks"]
    assert not any(SECRET.encode() in s3.cat_file(p) for p in s3.find(f"{bucket}/out"))


def test_nightly_keyframes_decodes_keyframes_at_most_fps_a_second(
    tmp_path: Path, model_args: list[str]
) -> None:
    """`nightly --keyframes --fps 0.5`: rows only at keyframes, at most one each 2 s, the mode in videos/."""
    prefix, out = tmp_path / "lectures", tmp_path / "out"
    lecture = make_lecture(prefix / "c1" / "k.mp4")
    info = probe(VideoSource(str(lecture), "c1/k.mp4"))
    expected = sample_indices(info, Sampling("fps", 0.5, frames="keyframes")).tolist()
    assert len(info.keyframes) == 4 and len(expected) == 2 and set(expected) < set(info.keyframes)
    args = [str(prefix), "--output", str(out), "--settle-minutes", "0", "--date", "2026-04-02", *model_args]
    result = CliRunner().invoke(
        cli, ["nightly", *args, "--keyframes", "--fps", "0.5"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    night = out / "date=2026-04-02"
    faces = _table(night / "faces")
    assert sorted(set(faces["frame_index"].to_pylist())) == expected
    (row,) = _table(night / "videos").to_pylist()
    assert (row["sampling"], row["frames_sampled"], row["sampled_fps"]) == ("keyframes fps 0.5", 2, 2 / 4.0)
