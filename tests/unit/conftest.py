"""Unit tests start no Ray: a Ray session costs 15-25 s on a small machine and hides in-process errors
behind task retries. Tests that need Ray belong in tests/ray (or tests/jobs, tests/s3, tests/report), which
share the session-wide `ray_cluster`."""

from __future__ import annotations

import pytest
import ray
import ray._private.worker

NO_RAY = "unit tests must not start Ray; move this test to tests/ray (it can use the ray_cluster fixture)"


def refuse_ray(*args, **kwargs) -> None:
    raise RuntimeError(NO_RAY)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the session-wide fixtures are set up: `ray_cluster` would start Ray for the session."""
    if "ray_cluster" in getattr(item, "fixturenames", ()):
        pytest.fail(NO_RAY)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ray.init` raises, whether called directly or by Ray's auto-init (ray.data, ray.get, ...)."""
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.setattr(ray._private.worker, "init", refuse_ray)
