"""End-to-end fixtures: ONE local Ray for the whole test session, stand-in models, generated inputs.

`ray.init` takes 15-25 s on a small machine, so every test here shares the session started by `ray_cluster`;
`pipeline.extract` and the CLI (click's CliRunner, in-process) reuse an initialised Ray and never shut it
down. Known inputs and helpers are in e2e.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from e2e import FPS, SECONDS, SIZES, TRACKS

from emotibatch.config import ExtractConfig
from emotibatch.testing import samples


@pytest.fixture(scope="session")
def models(emotion_path: Path, scrfd_path: Path) -> dict[str, str]:
    """The stand-in models as ExtractConfig fields."""
    return {"model": str(emotion_path), "detector": str(scrfd_path)}


@pytest.fixture(scope="session")
def model_args(models: dict[str, str]) -> list[str]:
    """The same as CLI options, with the CPU device."""
    return ["--model", models["model"], "--detector", models["detector"], "--device", "cpu"]


@pytest.fixture(scope="session")
def make_config(models: dict[str, str]):
    """ExtractConfig factory: the stand-in models on the CPU unless told otherwise."""

    def make(inputs: Sequence[str | Path], output: str | Path, **settings) -> ExtractConfig:
        settings = {**models, "device": "cpu", **settings}
        return ExtractConfig(inputs=tuple(str(i) for i in inputs), output=str(output), **settings)

    return make


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 s 25 fps videos with known faces ("known" 640x360, "small" 320x180), and "noface" (1 s)."""
    d = tmp_path_factory.mktemp("videos")
    made = {
        name: samples.make_video(
            d / f"{name}.mp4", width=w, height=h, fps=FPS, seconds=SECONDS, faces=TRACKS[name]
        )
        for name, (w, h) in SIZES.items()
    }
    made["noface"] = samples.make_video(d / "noface.mp4", width=320, height=180, fps=FPS, seconds=1.0)
    return made
