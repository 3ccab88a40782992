"""S3 fixtures: one moto server per session (its own venv, see s3server.py), a fault-injecting proxy in front
of it (s3proxy.py), dummy credentials in the usual AWS variables, and a Ray session for the job tests.

Everything a test reads or writes lives in one bucket with a random name, so copies cached by earlier
sessions (named by URI, size and ETag) never stand in for a fetch.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs
import s3server
from s3proxy import FaultProxy

from emotibatch.cluster import start_local_ray
from emotibatch.inference import registry
from emotibatch.io.video_cache import CACHE_ENV

KEY_ID = "emotibatch-test-key-id"
SECRET = "emotibatch-test-secret-Zq8Vx"  # grepped for in every output
REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, with the dummy credentials and a test cache in this process's environment."""
    process, endpoint = s3server.start()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        try:
            yield endpoint
        finally:
            process.terminate()
            process.wait()


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    """Straight to moto: for setting up and inspecting, never through the proxy."""
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)


@pytest.fixture(scope="session")
def bucket(s3: s3fs.S3FileSystem) -> str:
    name = f"emotibatch-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


@pytest.fixture(scope="session")
def session_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_endpoint.removeprefix("http://"))
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(session_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy with no faults and zeroed counters, cleared again after the test."""
    session_proxy.reset()
    yield session_proxy
    session_proxy.reset()


def options(endpoint: str, **config: object) -> dict:
    """Storage options for `endpoint` (credentials from the environment); `config` goes to botocore."""
    out: dict = {"client_kwargs": {"endpoint_url": endpoint, "region_name": REGION}}
    if config:
        out["config_kwargs"] = config
    return out


@pytest.fixture
def video_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh node-local video cache for this process."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "video-cache"))
    return tmp_path / "video-cache"


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray (2 CPUs) for the job tests, or the one another fixture already started.

    The job gets its credentials in storage options, so an already running Ray (whose workers never saw
    this session's AWS variables) serves as well. Caches go to temporary directories when we start Ray.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    caches = tmp_path_factory.mktemp("caches")
    env = {CACHE_ENV: str(caches / "videos"), registry.CACHE_ENV: str(caches / "models")}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        start_local_ray(num_cpus=2, log_to_driver=False, runtime_env={"env_vars": env})
        try:
            yield
        finally:
            ray.shutdown()
