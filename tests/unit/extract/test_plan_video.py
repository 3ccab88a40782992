"""plan_video (emotibatch.extract.decode) fails the one video it cannot probe or plan, whatever the error:
an exception there would end the whole job."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotibatch.extract import decode
from emotibatch.extract.decode import Sampling, plan_video
from emotibatch.io import storage
from emotibatch.io.sources import VideoSource
from emotibatch.testing import samples

S3_OPTIONS = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "key": "AKIAEXAMPLE"}


def test_an_http_url_is_probed_without_an_object_stores_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec's HTTP filesystem raised TypeError on S3's client_kwargs; the URL needs none."""
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    source = VideoSource("https://127.0.0.1:9/clip.mp4?X-Amz-Signature=abc", "clip")  # nothing listens
    job = plan_video(source, Sampling(), None, storage_options=S3_OPTIONS)
    assert job.info is None and "https://127.0.0.1:9/clip.mp4" in job.error
    assert "TypeError" not in job.error and "Signature" not in job.error


def test_any_exception_in_probing_fails_the_video(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise TypeError("the filesystem refused its options")

    monkeypatch.setattr(decode, "probe", broken)
    job = plan_video(VideoSource("s3://bucket/v.mp4?sig=1", "v"), Sampling(), None)
    assert (job.info, job.segments) == (None, ())
    assert job.error == "could not probe s3://bucket/v.mp4: TypeError: the filesystem refused its options"


def test_a_plan_the_video_rules_out_fails_the_video(tmp_path: Path) -> None:
    path = samples.make_video(tmp_path / "v.mp4", width=64, height=64, fps=25.0, seconds=0.2)
    job = plan_video(VideoSource(str(path), "v"), Sampling(), 0.01)  # a segment shorter than a frame
    assert job.error.startswith(f"could not probe {path}: ValueError: segment_seconds must cover")
