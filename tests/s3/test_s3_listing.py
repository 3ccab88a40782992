"""Listing inputs on S3 (emotibatch.io.sources), through the fault-injecting proxy: a listing the store
refuses stops the job before any work (exit 2, naming the input); a transient failure is retried."""

from __future__ import annotations

import json
import uuid

import pytest
import s3fs
from click.testing import CliRunner
from conftest import options
from s3proxy import Fault, FaultProxy

from emotibatch.cli import cli
from emotibatch.extract import pipeline
from emotibatch.io import storage
from emotibatch.io.sources import list_sources


@pytest.fixture
def prefix(s3: s3fs.S3FileSystem, bucket: str) -> str:
    """A fresh prefix holding one (fake) video: no listing cached by an earlier test stands in for it."""
    root = f"{bucket}/listing-{uuid.uuid4().hex[:8]}"
    s3.pipe(f"{root}/in/a.mp4", b"x")
    return root


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)


def _options(proxy: FaultProxy) -> dict:
    # One botocore attempt per request: what is retried here is our own retrying.
    return options(proxy.endpoint, retries={"total_max_attempts": 1, "mode": "standard"})


def test_a_transient_listing_failure_is_retried(prefix, bucket, proxy: FaultProxy, fast_retries) -> None:
    # s3fs tries a throttled request 5 times itself: 7 faults outlast it, not our retrying on top.
    proxy.inject(Fault("GET", rf"^/{bucket}$", 503, "SlowDown", times=7))
    (source,) = list_sources([f"s3://{prefix}/in/"], storage_options=_options(proxy))
    assert source.uri == f"s3://{prefix}/in/a.mp4"
    assert proxy.fired["SlowDown"] == 7


def test_a_refused_listing_exits_2_naming_the_input(
    prefix, bucket, proxy: FaultProxy, fast_retries, emotion_path, scrfd_path, tmp_path, monkeypatch
) -> None:
    proxy.inject(Fault("GET", rf"^/{bucket}$", 403, "AccessDenied", times=None))
    monkeypatch.setattr(pipeline, "run", lambda plan: pytest.fail("a job ran"))
    args = [f"s3://{prefix}/in/", "-o", str(tmp_path / "out"), "--model", str(emotion_path)]
    args += ["--detector", str(scrfd_path), "--device", "cpu"]
    result = CliRunner().invoke(cli, ["extract", *args, "--storage-options", json.dumps(_options(proxy))])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"access denied: s3://{prefix}/in" in text and "lets them list it" in text, result.output
    assert not (tmp_path / "out" / "runs").exists()
