"""pipeline.prepare: what is checked before any work (no Ray needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emotibatch import schema
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.inference import registry
from emotibatch.testing import standins


@pytest.mark.slow
def test_the_model_file_is_recorded_and_a_replaced_one_refused_on_resume(
    emotion_path: Path, scrfd_path: Path, tmp_path: Path
) -> None:
    model = tmp_path / "models" / emotion_path.name
    model.parent.mkdir()
    shutil.copy(emotion_path, model)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"not decoded by prepare")
    config = ExtractConfig(
        inputs=(str(tmp_path / "videos"),),
        output=str(tmp_path / "out"),
        model=str(model),
        detector=str(scrfd_path),
    )
    plan = pipeline.prepare(config)
    assert schema.read_metadata(plan.faces_schema)["model_sha256"] == registry.file_sha256(model)
    pipeline.prepare(config)  # the same file: resumable

    standins.make_emotion_model(model, seed=7)  # same name, other weights
    with pytest.raises(ValueError, match=r"other settings \(model_sha256: "):
        pipeline.prepare(config)
