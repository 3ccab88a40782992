"""A run killed mid-way (SIGKILL to the whole process group: driver and its local Ray) and run again
equals a clean run: the same faces rows, none twice, none missing, one videos row per input."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from e2e import by_video, read_table, sort_faces

from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.extract.output import LEASE_FILE, Output, video_key

START_TIMEOUT_S = 240  # a second local Ray on a busy 2-core machine starts slowly

pytestmark = pytest.mark.slow


def _marked(tmpdir: str, session: int) -> list[int]:
    """Live processes of the killed run: in its session, or started with its RAY_TMPDIR."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, sid = stat.rsplit(")", 1)[1].split()[0], int(stat.rsplit(")", 1)[1].split()[4])
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and (
            sid == session or f"RAY_TMPDIR={tmpdir}".encode() in environ or tmpdir.encode() in cmdline
        ):
            found.append(int(entry.name))
    return found


def _wait_gone(tmpdir: str, session: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _marked(tmpdir, session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _kill_when_staged(args: list[str], output: Path, log: Path) -> tuple[list[str], list[int]]:
    """Run `python -m emotibatch ARGS` with its own local Ray; SIGKILL its process group as soon as a
    staged file appears. Returns the staged files seen then and the processes left after the kill."""
    tmpdir = tempfile.mkdtemp(prefix="ebk", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": tmpdir, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emotibatch", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lingering: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        staged: list[str] = []
        while proc.poll() is None and time.monotonic() < deadline and not staged:
            pieces = output.glob("_staging/*/*.parquet")  # not the hidden scratch files of a write under way
            staged = sorted(str(p.relative_to(output)) for p in pieces if not p.name.startswith("."))
            time.sleep(0.02)
        running = proc.poll() is None
        alive = _marked(tmpdir, proc.pid)  # the driver, GCS, raylet, workers: what must all go
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert running, (
            f"the run ended (rc {proc.returncode}) before it was killed:\n{log.read_text()[-3000:]}"
        )
        assert staged, f"nothing was staged within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
        assert proc.pid in alive and len(alive) >= 3, f"the run's processes were not all found: {alive}"
        lingering = _wait_gone(tmpdir, proc.pid, 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _marked(tmpdir, proc.pid):  # never leave them behind, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(tmpdir, proc.pid, 10)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return staged, lingering


def _assert_same_faces(got: pa.Table, want: pa.Table) -> None:
    got, want = sort_faces(got), sort_faces(want)
    assert got.column_names == want.column_names and got.num_rows == want.num_rows > 0
    for column in got.column_names:
        a, b = got[column].to_pylist(), want[column].to_pylist()
        kind = got.schema.field(column).type
        if pa.types.is_floating(kind) or pa.types.is_fixed_size_list(kind):
            # frames fall in other batches after a resume: onnxruntime's kernels may differ by batch size
            # (test_standins_enet), a few float32 ulps of each value
            np.testing.assert_allclose(
                np.array(a, np.float64), np.array(b, np.float64), rtol=1e-5, err_msg=column
            )
        else:
            assert a == b, column


@pytest.mark.usefixtures("ray_cluster")
def test_killed_run_then_rerun_equals_clean_run(videos, model_args, make_config, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, source in (("a", "known"), ("b", "small")):
        shutil.copy(videos[source], inputs / f"{name}.mp4")
    out = tmp_path / "out"
    settings = {"sampling": Sampling("every", 4), "segment_seconds": 0.5}
    cli_args = [
        "extract",
        str(inputs),
        "-o",
        str(out),
        "--every",
        "4",
        "--segment-seconds",
        "0.5",
        *model_args,
    ]

    staged, lingering = _kill_when_staged(cli_args, out, tmp_path / "killed.log")
    assert not lingering, f"processes of the killed run still alive: {lingering}"
    finished_before = read_table(out, "videos")
    committed = set() if finished_before is None else set(finished_before["video_id"].to_pylist())
    # What it staged whole survives the kill, unless its video was committed (which drops its staging).
    committed_keys = {video_key(video_id) for video_id in committed}
    assert all((out / name).is_file() or name.split("/")[1] in committed_keys for name in staged)
    assert finished_before is None or finished_before.num_rows < 2
    assert read_table(out, "runs") is None  # the killed run never got to its runs row
    assert (out / LEASE_FILE).is_file()  # nor released its lease: the rerun takes it over (its pid is gone)

    rerun = pipeline.extract(make_config([inputs], out, **settings))
    clean = pipeline.extract(make_config([inputs], tmp_path / "clean", **settings))
    assert [v["status"] for v in clean.videos] == ["ok"] * 2

    _assert_same_faces(read_table(out, "faces"), read_table(tmp_path / "clean", "faces"))
    keys = read_table(out, "faces").select(["video_id", "frame_index", "face_index"]).to_pylist()
    assert len(keys) == len({tuple(k.values()) for k in keys})
    rows, clean_rows = by_video(read_table(out, "videos")), by_video(read_table(tmp_path / "clean", "videos"))
    assert set(rows) == set(clean_rows) == {"a", "b"}
    for video_id, row in rows.items():
        for key in ("status", "error", "frames_sampled", "faces", "tracks", "frame_count"):
            assert row[key] == clean_rows[video_id][key], (video_id, key)
    run = read_table(out, "runs").to_pylist()
    assert len(run) == 1 and run[0]["run_id"] == rerun.run_id
    assert run[0]["videos_skipped"] == (0 if finished_before is None else finished_before.num_rows)
    assert not list(out.glob("_staging/*/*")), "staging left behind"
    assert not (out / LEASE_FILE).exists(), "the rerun left its lease"


@pytest.mark.usefixtures("ray_cluster")
def test_staging_left_by_a_finished_video_is_dropped_by_the_next_run(videos, make_config, tmp_path):
    """A task retried after its video was committed can stage again; the next run drops that staging
    and redoes nothing."""
    out = tmp_path / "out"
    config = make_config([videos["small"]], out, sampling=Sampling("every", 10))
    first = pipeline.extract(config)
    assert [v["status"] for v in first.videos] == ["ok"]
    faces = read_table(out, "faces")
    staging = Path(Output(str(out)).staging_dir("small"))
    stale = staging / "00000-0000000000-0000000000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a piece staged after the commit")

    again = pipeline.extract(config)
    assert again.videos == [] and again.run["videos_skipped"] == 1
    assert not staging.exists()
    assert read_table(out, "faces").equals(faces)
