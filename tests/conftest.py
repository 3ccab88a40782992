"""Shared fixtures: stand-in models generated once per test session (no weights are ever downloaded)."""

from __future__ import annotations

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
