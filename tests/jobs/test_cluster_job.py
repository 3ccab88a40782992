"""`ray job submit` of jobs/extract.py to a real local head started by `ray start`, as docs/cluster.md says.

The head binds its dashboard and job API to 127.0.0.1 with Ray's token authentication on: a token of our
own in the cluster's temp dir, found through RAY_AUTH_TOKEN_PATH by `ray start`, every Ray process it
starts (the job's driver included) and `ray job submit` (RAY_AUTH_MODE=token). ~/.ray is not touched.
The head runs from the venv (PATH), so the job's `python` has emotibatch and its dependencies; the
working dir upload leaves out the virtual environments and caches. Jobs run twice: on local files, and on
s3:// inputs, models and output served by moto (tests/s3/s3server.py), credentials in the head's
environment as an instance profile would give them, never on the command line.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from jobs_helpers import KEY_ID, ROOT, SECRET, free_port, make_lecture, stop_processes

from emotibatch.testing import standins

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 300
EXCLUDES = [".venv", ".venv-moto", ".git", "*.egg-info", ".pytest_cache", ".ruff_cache", "out"]
VIDEOS = ("lecture_a", "lecture_b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.slow  # a `ray start` head, then `ray job submit`


@pytest.fixture(scope="module")
def head(moto: str) -> Iterator[dict]:
    """A head node (2 CPUs, dashboard on 127.0.0.1, token auth) in its own session; stopped by pid."""
    tmp = Path(tempfile.mkdtemp(prefix="ebh", dir="/tmp"))  # short: Ray's socket paths are length-limited
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "EMOTIBATCH_CACHE": str(tmp / "models"),
        "EMOTIBATCH_VIDEO_CACHE": str(tmp / "videos"),
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(name, None)
    dashboard = free_port()
    command = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={free_port()}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=2",
        f"--temp-dir={tmp / 'ray'}",
        "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = starter.communicate(timeout=START_TIMEOUT_S)
        assert starter.returncode == 0, output
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "tmp": tmp}
    finally:
        starter.kill()
        left = stop_processes(starter.pid, str(tmp))
        assert not left, f"cluster processes still running: {left}"
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(head: dict, args: list[str]) -> tuple[bool, str]:
    """Submit jobs/extract.py ARGS and wait for it: whether `ray job status` says it succeeded, and the
    output of both commands (the job's log streamed back by `ray job submit`)."""
    job_id = f"emotibatch-{uuid.uuid4().hex[:8]}"
    ray_job = [RAY, "job"]
    where = ["--address", head["address"]]
    submitted = subprocess.run(
        [
            *ray_job,
            "submit",
            *where,
            "--submission-id",
            job_id,
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps({"excludes": EXCLUDES}),
            "--",
            "python",
            "jobs/extract.py",
            *args,
        ],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    status = subprocess.run(
        [*ray_job, "status", *where, job_id], env=head["env"], capture_output=True, text=True, timeout=60
    )
    said = ANSI.sub("", status.stdout + status.stderr)
    return f"Job '{job_id}' succeeded" in said, said + submitted.stdout + submitted.stderr


def test_job_api_needs_the_token(head: dict) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{head['address']}/api/jobs/", timeout=30)
    assert caught.value.code == 401


def test_submitted_extract_job_writes_every_lectures_rows(
    head: dict, tmp_path: Path, model_args: list[str]
) -> None:
    videos = [make_lecture(tmp_path / f"{name}.mp4") for name in VIDEOS]
    out = tmp_path / "out"
    args = [*map(str, videos), "--output", str(out), "--fps", "1", *model_args]
    succeeded, log = _submit(head, args)
    assert succeeded, log
    assert "videos ok" in log  # the job's run summary, streamed back by `ray job submit`
    videos_table = pq.read_table(out / "videos").to_pylist()
    assert {(v["video_id"], v["status"], v["faces"], v["tracks"]) for v in videos_table} == {
        (name, "ok", 8, 2) for name in VIDEOS
    }
    assert pq.read_table(out / "faces").num_rows == 16


def test_submitted_extract_job_on_s3_leaves_no_credentials_in_its_log(
    head: dict, moto: str, tmp_path: Path
) -> None:
    s3 = s3fs.S3FileSystem(key=KEY_ID, secret=SECRET, client_kwargs={"endpoint_url": moto})
    bucket = f"emotibatch-jobs-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    for name in VIDEOS:
        s3.put_file(str(make_lecture(tmp_path / f"{name}.mp4")), f"{bucket}/in/{name}.mp4")
    s3.put_file(str(standins.make_emotion_model(tmp_path / "emotion.onnx")), f"{bucket}/models/emotion.onnx")
    s3.put_file(str(standins.make_scrfd_model(tmp_path / "scrfd.onnx")), f"{bucket}/models/scrfd.onnx")
    options = {"client_kwargs": {"endpoint_url": moto}}  # credentials: the cluster's environment
    args = [
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out",
        "--model",
        f"s3://{bucket}/models/emotion.onnx",
        "--detector",
        f"s3://{bucket}/models/scrfd.onnx",
        "--device",
        "cpu",
        "--fps",
        "1",
        "--storage-options",
        json.dumps(options),
    ]
    succeeded, log = _submit(head, args)
    assert succeeded, log
    assert SECRET not in log
    s3.invalidate_cache()
    videos = pa.concat_tables(
        [pq.read_table(s3.open(f, "rb")) for f in s3.find(f"{bucket}/out/videos") if f.endswith(".parquet")]
    ).to_pylist()
    assert {(v["video_id"], v["status"], v["faces"], v["tracks"]) for v in videos} == {
        (name, "ok", 8, 2) for name in VIDEOS
    }
    assert all(v["source_uri"] == f"s3://{bucket}/in/{v['video_id']}.mp4" for v in videos)
