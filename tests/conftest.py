"""Shared fixtures: stand-in models generated once per test session (no weights are ever downloaded)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from emotibatch import standins


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stand-in models under the names EmotiEffLib and insightface know them by."""
    d = tmp_path_factory.mktemp("models")
    standins.make_emotion_model(d / "enet_b0_8_best_vgaf.onnx", seed=1)
    standins.make_emotion_model(d / "enet_b0_8_va_mtl.onnx", va=True, seed=2)
    standins.make_scrfd_model(d / "det_10g.onnx")
    standins.make_scrfd_model(d / "det_batched.onnx", batched=True)
    return d


@pytest.fixture(scope="session")
def emotion_path(model_dir: Path) -> Path:
    return model_dir / "enet_b0_8_best_vgaf.onnx"


@pytest.fixture(scope="session")
def mtl_path(model_dir: Path) -> Path:
    return model_dir / "enet_b0_8_va_mtl.onnx"


@pytest.fixture(scope="session")
def scrfd_path(model_dir: Path) -> Path:
    """Exported like insightface's model packs: batch fixed to 1, rank-2 heads."""
    return model_dir / "det_10g.onnx"


@pytest.fixture(scope="session")
def scrfd_batched_path(model_dir: Path) -> Path:
    return model_dir / "det_batched.onnx"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray (2 CPUs, no dashboard) for the whole session."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a session someone else started: use it, leave it running
        yield
        return
    # "local": a new instance, never a cluster someone else started on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
