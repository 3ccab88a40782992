"""Shared fixtures: stand-in models generated once per test session (no weights are ever downloaded)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from emotibatch.cluster import start_local_ray
from emotibatch.inference import detect, embed, runtime
from emotibatch.testing import standins


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


@pytest.fixture
def cuda_code_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models loaded with device="auto" run as on CUDA, on this CPU: uint8 pixels normalised in the graph,
    IO binding, batches filled on 3 threads a batch ahead (onnxruntime runs the CUDA-bound graph on its
    CPU provider, as when CUDA fails to load)."""
    monkeypatch.setattr(runtime, "providers_for", lambda device: [runtime.CUDA, runtime.CPU])
    make_runner = runtime.make_runner

    def as_on_cuda(*args, **kwargs) -> runtime.Runner:
        runner = make_runner(*args, **kwargs)
        assert runner.lut is None, "the graph should normalise its uint8 input, as on CUDA"
        return dataclasses.replace(runner, device="cuda", fill_threads=3)

    for module in (detect, embed):
        monkeypatch.setattr(module, "make_runner", as_on_cuda)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray (2 CPUs, no dashboard) for the whole session."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a session someone else started: use it, leave it running
        yield
        return
    # "local": a new instance, never a cluster someone else started on this machine.
    start_local_ray(address="local", num_cpus=2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
