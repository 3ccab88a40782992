"""storage.py and video_cache.py against a real S3 server: the node-local video cache, retries, errors, atomic uploads."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import SECRET, options
from s3proxy import Fault, FaultProxy

from emotibatch.extract.decode import DecodeError, probe
from emotibatch.extract.output import Output
from emotibatch.io import storage
from emotibatch.io.sources import VideoSource
from emotibatch.io.video_cache import CACHE_BYTES_ENV, local_copy
from emotibatch.testing import samples


@pytest.fixture(scope="module")
def clip(s3: s3fs.S3FileSystem, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """A small valid video on S3: its key (bucket/key) and bytes."""
    path = samples.make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", width=160, height=96, seconds=1)
    data = path.read_bytes()
    s3.pipe(f"{bucket}/storage/clip.mp4", data)
    return f"{bucket}/storage/clip.mp4", data


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own retries without waiting (botocore's are configured per test through storage options)."""
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)


def test_a_copy_is_fetched_once_and_shared(clip, proxy: FaultProxy, video_cache: Path) -> None:
    key, data = clip
    uri, opts = f"s3://{key}", options(proxy.endpoint)

    def use() -> tuple[Path, bytes]:
        with local_copy(uri, opts) as path:
            return path, path.read_bytes()

    with ThreadPoolExecutor(4) as pool:  # flock holds between descriptors of one process too
        copies = list(pool.map(lambda _: use(), range(4)))
    copies.append(use())
    assert {path for path, _ in copies} == {copies[0][0]}
    assert all(got == data for _, got in copies)
    assert proxy.get_bytes[f"/{key}"] == len(data)
    assert copies[0][0].parent == video_cache
    assert sorted(p.name for p in video_cache.iterdir()) == [
        ".lock",
        copies[0][0].name,
        f"{copies[0][0].name}.lock",
    ]


def test_a_rewritten_object_is_fetched_again(s3, bucket, proxy: FaultProxy, video_cache: Path) -> None:
    uri, opts = f"s3://{bucket}/storage/rewritten.bin", options(proxy.endpoint)
    s3.pipe(uri, b"first")
    with local_copy(uri, opts) as path:
        assert path.read_bytes() == b"first"
    s3.pipe(uri, b"second!")
    fsspec.filesystem("s3", **opts).invalidate_cache()
    with local_copy(uri, opts) as path:
        assert path.read_bytes() == b"second!"


def test_eviction_is_lru_and_spares_copies_in_use(video_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// stands in for a remote store: the cache treats every non-local filesystem alike."""
    fs = fsspec.filesystem("memory")
    uris = {name: f"memory://{video_cache.name}-evict/{name}.mp4" for name in "abcd"}
    for name, uri in uris.items():
        fs.pipe(uri, name.encode() * 1000)
    monkeypatch.setenv(CACHE_BYTES_ENV, "2500")  # room for two copies

    def cached() -> set[bytes]:
        return {p.read_bytes()[:1] for p in video_cache.iterdir() if p.suffix == ".mp4"}

    with local_copy(uris["a"]) as a:  # in use throughout
        with local_copy(uris["b"]):
            pass
        with local_copy(uris["c"]):  # b is the least recently used copy not in use
            assert cached() == {b"a", b"c"}
        assert a.read_bytes() == b"a" * 1000
    with local_copy(uris["d"]):  # a is free now, and older than c
        assert cached() == {b"c", b"d"}


def test_transient_errors_are_retried(clip, proxy: FaultProxy, video_cache: Path) -> None:
    """503 SlowDown on HEAD and GET (botocore retries those), then more mid-body resets than s3fs retries
    within one read: our own retry fetches the rest."""
    key, data = clip
    proxy.inject(Fault("HEAD", key, 503, "SlowDown", times=2))
    proxy.inject(Fault("GET", key, 503, "SlowDown", times=2))
    proxy.inject(Fault("GET", key, None, "reset", times=6))
    with local_copy(f"s3://{key}", options(proxy.endpoint)) as path:
        assert path.read_bytes() == data
    assert proxy.fired == {"SlowDown": 4, "reset": 6}


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (403, "AccessDenied", r"^access denied: s3://{key} \(HTTP 403[^)]*\); check the credentials \(AWS_"),
        (404, "NoSuchKey", r"^not found: s3://{key} \(HTTP 404[^)]*\); check the path$"),
    ],
)
def test_permanent_errors_fail_at_once(clip, proxy: FaultProxy, video_cache, status, code, message) -> None:
    key, _ = clip
    proxy.inject(Fault("HEAD", key, status, code, times=None))
    proxy.inject(Fault("GET", key, status, code, times=None))
    pattern = message.format(key=key)
    with (
        pytest.raises(storage.StorageError, match=pattern),
        local_copy(f"s3://{key}", options(proxy.endpoint)),
    ):
        pass
    with pytest.raises(DecodeError, match=pattern):  # how the job reports it: that video fails
        probe(VideoSource(f"s3://{key}", "clip"), storage_options=options(proxy.endpoint))
    assert proxy.requests["HEAD", f"/{key}"] == 2  # no retries
    assert not any(video_cache.glob("*.mp4*"))


def test_errors_past_the_last_attempt_name_the_cause(clip, proxy, video_cache, fast_retries) -> None:
    key, _ = clip
    proxy.inject(Fault("GET", key, 500, "InternalError", times=None))
    opts = options(proxy.endpoint, retries={"total_max_attempts": 1})
    with pytest.raises(storage.StorageError) as caught, local_copy(f"s3://{key}", opts):
        pass
    assert str(caught.value) == (
        f"could not read s3://{key} after {storage.ATTEMPTS} attempts (HTTP 500 InternalError); the storage was "
        "unreachable or overloaded: run the job again"
    )
    assert not list(video_cache.glob("*.part"))


def test_uploads_are_atomic(s3, bucket, proxy: FaultProxy, fast_retries, monkeypatch) -> None:
    """A write that fails while serialising, or whose upload keeps failing, leaves no object; a dropped
    upload is sent again whole."""
    output = Output(f"s3://{bucket}/atomic", options(proxy.endpoint, retries={"total_max_attempts": 1}))
    table = pa.table({"x": list(range(1000))})

    def half_written(table: pa.Table, where, **_) -> None:
        where.write(b"PAR1 and then nothing")
        raise OSError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(pq, "write_table", half_written)
        with pytest.raises(OSError, match="disk on fire"):
            output.write_table(output.join("faces", "a.parquet"), table)

    proxy.inject(Fault("PUT", "/atomic/faces/", None, "reset", times=2))
    output.write_table(output.join("faces", "b.parquet"), table)
    assert proxy.fired["reset"] == 2
    assert pq.read_table(s3.open(f"{bucket}/atomic/faces/b.parquet", "rb")).equals(table)

    proxy.inject(Fault("PUT", "/atomic/faces/", 500, "InternalError", times=None))
    with pytest.raises(storage.StorageError) as caught:
        output.write_table(output.join("faces", "c.parquet"), table)
    assert str(caught.value) == (
        f"could not write s3://{bucket}/atomic/faces/c.parquet after {storage.ATTEMPTS} attempts "
        "(HTTP 500 InternalError); the storage was unreachable or overloaded: run the job again"
    )
    s3.invalidate_cache()
    assert s3.ls(f"{bucket}/atomic/faces") == [f"{bucket}/atomic/faces/b.parquet"]


def test_credentials_and_endpoint_from_the_environment(clip, s3_endpoint, video_cache, monkeypatch) -> None:
    """AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (set by the session) and AWS_ENDPOINT_URL, which botocore
    reads itself: no storage options at all. The retry defaults apply to every s3:// filesystem."""
    key, data = clip
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET
    s3fs.S3FileSystem.clear_instance_cache()
    assert fsspec.filesystem("s3").config_kwargs == storage.S3_DEFAULTS["config_kwargs"]
    with local_copy(f"s3://{key}") as path:
        assert path.read_bytes() == data
    s3fs.S3FileSystem.clear_instance_cache()


def test_messages_carry_no_credentials(fast_retries) -> None:
    """A presigned URL in an error's text is redacted, and the error is not chained to the original."""
    url = "https://storage.example/v.mp4"

    def fail() -> None:
        raise ConnectionResetError(f"reset while reading {url}?X-Amz-Signature={SECRET}")

    with pytest.raises(storage.StorageError) as caught:
        storage.retrying(fail, url)
    assert f"(ConnectionResetError: reset while reading {url});" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
