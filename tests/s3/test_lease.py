"""The output's lease on an object store (moto's S3 server): one run at a time, dead holders taken over, the
lease released when a run fails."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import s3fs
from conftest import options

from emotibatch.extract import pipeline
from emotibatch.extract.output import LEASE_FILE, Lease, Output, OutputBusy


@pytest.fixture
def out(s3_endpoint: str, bucket: str) -> Output:
    return Output(f"s3://{bucket}/lease-{uuid.uuid4().hex[:8]}", options(s3_endpoint))


def _holder(s3: s3fs.S3FileSystem, out: Output) -> str | None:
    path = f"{out.path}/{LEASE_FILE}"
    s3.invalidate_cache(path)
    return json.loads(s3.cat_file(path))["run_id"] if s3.exists(path) else None


def test_a_second_run_is_refused_naming_the_holder(s3: s3fs.S3FileSystem, out: Output) -> None:
    first = Lease(out, "run-1").acquire()
    assert _holder(s3, out) == "run-1"
    with pytest.raises(OutputBusy, match=r"is being written by run run-1 \(host "):
        Lease(out, "run-2").acquire()
    assert _holder(s3, out) == "run-1"
    first.release()
    assert _holder(s3, out) is None
    Lease(out, "run-2").acquire().release()


def test_of_runs_starting_together_exactly_one_gets_the_lease(out: Output) -> None:
    start = threading.Barrier(4)
    won, refused = [], []

    def attempt(i: int) -> None:
        start.wait()
        try:
            won.append(Lease(out, f"run-{i}").acquire())
        except OutputBusy:
            refused.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    won[0].release()


def test_a_lease_without_heartbeat_for_the_timeout_is_taken_over(s3: s3fs.S3FileSystem, out: Output) -> None:
    beat = (datetime.now(timezone.utc) - timedelta(minutes=11)).isoformat()
    stale = {"owner": "a-node-that-died", "pid": 1, "run_id": "dead-run", "heartbeat": beat}
    s3.pipe_file(f"{out.path}/{LEASE_FILE}", json.dumps(stale).encode())
    lease = Lease(out, "run-2").acquire()
    assert _holder(s3, out) == "run-2"
    lease.release()


def test_a_failed_run_releases_its_lease(s3: s3fs.S3FileSystem, out: Output, monkeypatch) -> None:
    def fail(plan, progress, finished):
        raise RuntimeError("the job failed")

    monkeypatch.setattr(pipeline, "_execute", fail)
    lease = Lease(out, "run-1").acquire()
    plan = pipeline.Plan(None, out, (), None, None, "run-1", datetime.now(timezone.utc), lease)
    with pytest.raises(RuntimeError, match="the job failed"):
        pipeline.execute(plan)
    assert _holder(s3, out) is None
