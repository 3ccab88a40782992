"""`emotibatch extract` end to end, in-process: bad inputs fail alone, exit codes, the summary, reruns
(skip finished, retry failed, refuse other settings unless --overwrite), and no credentials anywhere."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e import N_FRAMES, TRACKS, assert_faces_match, by_video, invoke, read_table, summary

from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.output import LEASE_FILE, Lease, Output
from emotibatch.testing import samples, standins

SECRET, KEY, PASSWORD, SIGNATURE = "S3CR3T-VALUE", "AKIAEXAMPLEKEY", "p4ssw0rd", "SIGN4TURE"
STORAGE_OPTIONS = json.dumps({"secret": SECRET, "key": KEY})
# A presigned-style URL with user info: nothing listens on port 9, so it fails like an expired link.
PRESIGNED = f"https://user:{PASSWORD}@127.0.0.1:9/bucket/presigned.mp4?X-Amz-Signature={SIGNATURE}"
WIDE = {"COLUMNS": "1000"}  # rich wraps at 80 columns without a terminal


def _no_secrets(text: str | bytes, where: str) -> None:
    for secret in (SECRET, KEY, PASSWORD, SIGNATURE):
        needle = secret.encode() if isinstance(text, bytes) else secret
        assert needle not in text, f"{secret!r} leaked into {where}"


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    paths = {name: str(p) for name, p in samples.make_bad_inputs(d).items()}
    paths["here"] = "memory://nothing/here.mp4"
    paths["presigned"] = PRESIGNED
    (d / "a_file").write_text("not a directory\n")
    paths["under_file"] = str(d / "a_file" / "under_file.mp4")  # the path runs through a regular file
    if os.geteuid() != 0:  # root reads anything
        locked = d / "locked.mp4"
        locked.write_bytes(b"\0" * 64)
        locked.chmod(0)
        paths["locked"] = str(locked)
    return paths


# What each failure must say: what went wrong, and what to do.
ERRORS = {
    "missing": ("not found", "check the path"),
    "here": ("not found: memory:", "nothing/here.mp4", "check the path"),
    "presigned": ("https://127.0.0.1:9/bucket/presigned.mp4",),
    "empty": ("empty file (0 bytes)", "copy it again"),
    "text": ("could not decode", "re-encode it"),
    "truncated": ("could not decode", "re-encode it"),
    "locked": ("permission denied", "check its read permission"),
    "under_file": ("a_file/under_file.mp4", "Not a directory", "check the path"),
}


@pytest.mark.slow
def test_bad_inputs_fail_alone_exit_3_and_reruns_keep_finished_videos(
    ray_cluster, videos, bad_inputs, model_args, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    inputs = [videos["small"], videos["noface"], *bad_inputs.values()]
    head = ["extract", *inputs, "-o", out, *model_args, "--storage-options", STORAGE_OPTIONS]
    args = [*head, "--every", 5]

    # 1. Every bad input fails on its own; the good ones finish; exit 3 with a summary naming each failure.
    first = invoke(args, env=WIDE)
    assert first.exit_code == 3, first.output
    videos_table = read_table(out, "videos")
    rows = by_video(videos_table)
    assert set(rows) == {"small", "noface", *bad_inputs}
    assert rows["small"]["status"] == "ok" and rows["small"]["faces"] > 0
    assert rows["noface"]["status"] == "ok"
    assert (rows["noface"]["faces"], rows["noface"]["tracks"], rows["noface"]["frames_sampled"]) == (0, 0, 5)
    for name in bad_inputs:
        row = rows[name]
        assert row["status"] == "failed", (name, row)
        assert row["faces"] == 0 and row["error"], name
        for phrase in ERRORS[name]:
            assert phrase in row["error"], (name, row["error"])
        assert f"failed {name}: {row['error']}" in first.output
    faces = read_table(out, "faces")
    assert set(faces["video_id"].to_pylist()) == {"small"}
    assert_faces_match(faces, "small", TRACKS["small"], range(0, N_FRAMES, 5))
    run = read_table(out, "runs").to_pylist()[0]
    n_bad = len(bad_inputs)
    assert (run["videos"], run["videos_ok"], run["videos_failed"], run["videos_skipped"]) == (
        n_bad + 2,
        2,
        n_bad,
        0,
    )
    shown = summary(first.output)
    assert (shown["videos ok"], shown["videos failed"], shown["finished earlier"]) == ("2", str(n_bad), "0")
    assert (shown["faces"], shown["output"]) == (str(rows["small"]["faces"]), str(out))

    # Credentials: not in any output file, not in the summary, not in the settings.
    assert rows["presigned"]["source_uri"] == "https://127.0.0.1:9/bucket/presigned.mp4"
    settings = json.loads(run["settings"])
    assert settings["storage_options"] == {"secret": "<redacted>", "key": "<redacted>"}
    assert (
        PRESIGNED not in settings["inputs"]
        and "https://127.0.0.1:9/bucket/presigned.mp4" in settings["inputs"]
    )
    assert not (out / LEASE_FILE).exists(), "the run left its lease"
    _no_secrets(first.output, "the CLI output")
    for path in out.rglob("*"):
        if path.is_file():
            _no_secrets(path.read_bytes(), str(path))

    # 2. The same again: finished videos are skipped, failed ones retried, no row duplicated; still exit 3.
    faces_before = faces.sort_by("frame_index")
    second = invoke(args, env=WIDE)
    assert second.exit_code == 3, second.output
    runs = read_table(out, "runs").sort_by("started_at").to_pylist()
    assert len(runs) == 2
    assert (runs[1]["videos"], runs[1]["videos_ok"], runs[1]["videos_failed"], runs[1]["videos_skipped"]) == (
        n_bad + 2,
        0,
        n_bad,
        2,
    )
    rows2 = by_video(read_table(out, "videos"))
    assert set(rows2) == set(rows)
    for name in rows:
        expected_run = runs[0]["run_id"] if name in ("small", "noface") else runs[1]["run_id"]
        assert rows2[name]["run_id"] == expected_run, name
    assert read_table(out, "faces").sort_by("frame_index").equals(faces_before)
    assert summary(second.output)["finished earlier"] == "2"

    # 3. Other settings are refused before any work: exit 2, the reason, nothing written.
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run", _refuse)
        other = invoke([*head, "--every", 10], env=WIDE)
    assert other.exit_code == 2, other.output
    assert "other settings" in other.output and "sampling" in other.output and "--overwrite" in other.output
    assert len(read_table(out, "runs")) == 2

    # 4. --overwrite replaces everything; all inputs ok: exit 0.
    good = [
        "extract",
        videos["small"],
        videos["noface"],
        "-o",
        out,
        "--every",
        10,
        *model_args,
        "--overwrite",
    ]
    last = invoke(good, env=WIDE)
    assert last.exit_code == 0, last.output
    rows3 = by_video(read_table(out, "videos"))
    assert set(rows3) == {"small", "noface"} and {r["status"] for r in rows3.values()} == {"ok"}
    assert len(read_table(out, "runs")) == 1
    assert set(read_table(out, "faces")["frame_index"].to_pylist()) == set(range(0, N_FRAMES, 10))
    assert summary(last.output)["videos failed"] == "0" and "\nfailed " not in last.output


def _refuse(*args, **kwargs):
    raise AssertionError("a job ran")


@pytest.fixture
def no_job(monkeypatch):
    """Fail the test if a job is started."""
    monkeypatch.setattr(pipeline, "run", _refuse)
    monkeypatch.setattr(pipeline, "execute", _refuse)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--detector", "no_such_detector"], "unknown model 'no_such_detector'"),
        (["--fps", "0"], "--fps must be > 0"),
        (["--fps", "5", "--every", "2"], "choose one of --fps, --every, --all-frames"),
        (["--every", "0"], "--every must be >= 1"),
        (["--features-dtype", "float64"], "float64"),
        (["--segment-seconds", "0"], "--segment-seconds must be > 0"),
        (["--faces-cropped"], "--faces-cropped applies to --frame-folders inputs only"),
        (["--storage-options", "[1]"], "must be a JSON object"),
        (["--detect-batch-size", "0"], "--batch-size and --detect-batch-size must be >= 1"),
    ],
)
def test_bad_options_exit_2_before_any_work(no_job, videos, model_args, tmp_path, options, message):
    out = tmp_path / "out"
    result = invoke(["extract", videos["small"], "-o", out, *model_args, *options], env=WIDE)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_unwritable_output_exits_2(no_job, videos, model_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a directory\n")
    result = invoke(["extract", videos["small"], "-o", blocker / "out", *model_args], env=WIDE)
    assert result.exit_code == 2, result.output
    assert str(blocker) in result.output
    assert blocker.read_text() == "a regular file, not a directory\n"


def test_input_that_matches_nothing_exits_2(no_job, model_args, tmp_path):
    result = invoke(["extract", tmp_path / "nothing-here", "-o", tmp_path / "out", *model_args], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "not found" in result.output


def test_resume_with_a_detector_replaced_in_place_exits_2(no_job, videos, models, tmp_path, monkeypatch):
    """A detector's identity is its file: the same files under a relative path resume (tests/unit/
    test_prepare.py), but a detector file replaced in place is refused before any work."""
    shutil.copytree(Path(models["detector"]).parent, tmp_path / "models")
    detector = tmp_path / "models" / Path(models["detector"]).name
    out = tmp_path / "out"
    args = ["extract", videos["small"], "-o", out, "--device", "cpu", "--model", models["model"]]
    pipeline.prepare(
        ExtractConfig((str(videos["small"]),), str(out), model=models["model"], detector=str(detector))
    ).release()
    standins.make_scrfd_model(detector, batched=True)  # same name, another file
    monkeypatch.chdir(tmp_path)
    result = invoke([*args, "--detector", f"models/{detector.name}"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "detector_sha256" in result.output and "--overwrite" in result.output


def test_a_second_run_at_once_exits_2_naming_the_holder(no_job, videos, model_args, tmp_path):
    out = tmp_path / "out"
    holder = Lease(Output(str(out)), "the-first-run").acquire()
    try:
        second = invoke(["extract", videos["small"], "-o", out, *model_args], env=WIDE)
    finally:
        holder.release()
    assert second.exit_code == 2, second.output
    assert "is being written by run the-first-run" in second.output and "pid" in second.output
    assert not (out / "_emotibatch.json").exists()  # refused before the output was touched


def test_overwrite_never_deletes_the_users_files(no_job, videos, model_args, tmp_path):
    """OUT is a project folder with the user's videos/ and runs/ files: --overwrite refuses (exit 2) and
    deletes nothing, and an input inside OUT is refused too."""
    project = tmp_path / "project"
    (project / "videos").mkdir(parents=True)
    (project / "runs").mkdir()
    lecture = project / "videos" / "lecture.mp4"
    shutil.copy(videos["small"], lecture)
    (project / "runs" / "notes.txt").write_text("the user's notes")
    expected = {
        videos["small"]: ("only emotibatch's own files", "lecture.mp4", "notes.txt", "another --output"),
        lecture: (f"the input {lecture} lies inside the output {project}",),
    }
    for source, phrases in expected.items():
        result = invoke(["extract", source, "-o", project, *model_args, "--overwrite"], env=WIDE)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert all(phrase in text for phrase in phrases), text
        assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == [
            "runs",
            "runs/notes.txt",
            "videos",
            "videos/lecture.mp4",
        ]


def test_help_documents_exit_codes_and_options():
    result = invoke(["extract", "--help"], env=WIDE)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes: 0 every input ok, 3 some inputs failed (see OUTPUT/videos), 2 bad usage" in text
    for option in (
        "--fps",
        "--every",
        "--all-frames",
        "--segment-seconds",
        "--frame-folders",
        "--frame-rate",
        "--faces-cropped",
        "--features-dtype [float32|float16|none]",
        "--overwrite",
        "--device",
        "--detect-batch-size",
    ):
        assert option in text, option


@pytest.mark.slow
def test_output_uri_credentials_never_shown(ray_cluster, model_args, monkeypatch):
    """An output URI with user info is shown redacted: in the summary and in the refusal of a rerun."""
    path = f"bucket/out-{uuid.uuid4().hex}"
    output = f"memory://user:{PASSWORD}@{path}"
    head = ["extract", "memory://bucket/nothing.mp4", "-o", output, *model_args]
    try:
        first = invoke([*head, "--every", 5], env=WIDE)
        assert first.exit_code == 3, first.output
        assert summary(first.output)["output"] == f"memory://{path}"
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "run", _refuse)
            other = invoke([*head, "--every", 10], env=WIDE)
        assert other.exit_code == 2 and "other settings" in other.output, other.output
        _no_secrets(first.output, "the summary")
        _no_secrets(other.output, "the refusal")
    finally:
        memory = fsspec.filesystem("memory")
        for root in [p for p in memory.ls("/", detail=False) if PASSWORD in p]:
            memory.rm(root, recursive=True)


def test_one_bad_input_never_sinks_the_job(ray_cluster, videos, model_args, tmp_path):
    """Inputs that each ended the whole run (exit 1, no runs row) now fail alone: an https URL beside an
    object store's storage options (fsspec's HTTP filesystem raised TypeError on them) and a file name too
    long for the file system. The good input finishes, the run exits 3 and writes its runs row."""
    long = tmp_path / ("a" * 300 + ".mp4")
    url = "https://127.0.0.1:9/clip.mp4"  # nothing listens on port 9
    options = json.dumps({"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    out = tmp_path / "out"
    args = ["extract", videos["small"], long, url, "-o", out, *model_args, "--every", 5]
    result = invoke([*args, "--storage-options", options], env=WIDE)
    assert result.exit_code == 3, result.output
    rows = by_video(read_table(out, "videos"))
    assert rows["small"]["status"] == "ok" and rows["small"]["faces"] > 0
    assert rows["clip"]["status"] == "failed", rows["clip"]
    assert url in rows["clip"]["error"] and "TypeError" not in rows["clip"]["error"], rows["clip"]["error"]
    failures = [line for line in result.output.splitlines() if line.startswith("failed ")]
    assert len(failures) == 2, result.output
    assert any(line.startswith(f"failed {long.stem}: ") and "File name too long" in line for line in failures)
    (run,) = read_table(out, "runs").to_pylist()
    assert (run["videos"], run["videos_ok"], run["videos_failed"], run["error"]) == (3, 1, 2, None)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"status": ["ok"]}, "columns 'status' are the videos table's own"),
        ({"fps": [999.0]}, "columns 'fps' are the videos table's own"),
        ({"meta": [{"a": 1}]}, "column 'meta' holds struct<a: int64>, but it must hold"),
        ({"size": pa.array([2**64 - 1], pa.uint64())}, "row 1, column 'size': the value cannot be stored"),
    ],
)
def test_manifest_problems_exit_2_naming_the_column(no_job, videos, model_args, tmp_path, table, message):
    """A manifest column that would overwrite the job's own values (a row once read status=ok,
    error="INJECTED", fps=999), or one the videos table cannot hold, stops the job before it starts."""
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(videos["small"])], **table}), manifest)
    result = invoke(["extract", manifest, "-o", tmp_path / "out", *model_args], env=WIDE)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "m.parquet" in text and message in text, result.output


def test_a_run_that_fails_midway_still_writes_its_runs_row(
    ray_cluster, videos, model_args, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("the face stage broke")

    monkeypatch.setattr(pipeline, "_staged_frames", broken)
    out = tmp_path / "out"
    result = invoke(
        ["extract", videos["small"], videos["noface"], "-o", out, *model_args, "--every", 5], env=WIDE
    )
    assert result.exit_code == 1, result.output
    assert "the face stage broke" in result.output
    (run,) = read_table(out, "runs").to_pylist()
    assert run["error"] == "the run ended early: RuntimeError: the face stage broke"
    assert (run["videos"], run["videos_ok"], run["videos_failed"]) == (2, 0, 0)


def test_a_probe_task_that_fails_fails_its_video_only(
    ray_cluster, make_config, videos, monkeypatch, tmp_path
):
    """plan_video turns errors into the video's own; a task that fails anyway (here: the function Ray runs
    raises) must not take the other videos' probes with it."""
    plan_video = pipeline.plan_video

    def probe_or_fail(source, *args, **kwargs):
        if source.video_id == "noface":
            raise TypeError("probing broke")
        return plan_video(source, *args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_video", probe_or_fail)
    config = make_config([videos["small"], videos["noface"]], tmp_path / "out")
    sources = pipeline.list_sources(config.inputs)
    noface, small = pipeline.probe_all(sources, config)  # sorted by video_id
    assert small.error is None and small.info is not None
    assert noface.info is None
    assert noface.error.startswith(f"could not probe {videos['noface']}: RayTaskError"), noface.error
    assert noface.error.endswith("; run the job again")
