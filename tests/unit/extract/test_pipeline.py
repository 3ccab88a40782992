"""pipeline.prepare: what is checked before any work (no Ray needed)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from emotibatch import schema
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.output import LEASE_FILE
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
    assert schema.Provenance.from_schema(plan.faces_schema).model_sha256 == registry.file_sha256(model)
    plan.release()
    pipeline.prepare(config).release()  # the same file: resumable

    standins.make_emotion_model(model, seed=7)  # same name, other weights
    with pytest.raises(ValueError, match=r"other settings \(model_sha256: "):
        pipeline.prepare(config)
    assert not (tmp_path / "out" / LEASE_FILE).exists()  # a refused run leaves no lease behind


def _config(tmp_path: Path, model: str, detector: str) -> ExtractConfig:
    (tmp_path / "videos").mkdir(exist_ok=True)
    (tmp_path / "videos" / "a.mp4").write_bytes(b"not decoded by prepare")
    return ExtractConfig(
        inputs=(str(tmp_path / "videos"),), output=str(tmp_path / "out"), model=model, detector=detector
    )


def test_a_detector_replaced_in_place_is_refused_on_resume(
    emotion_path: Path, scrfd_path: Path, tmp_path: Path
) -> None:
    detector = tmp_path / "models" / scrfd_path.name
    detector.parent.mkdir()
    shutil.copy(scrfd_path, detector)
    config = _config(tmp_path, str(emotion_path), str(detector))
    plan = pipeline.prepare(config)
    plan.release()
    provenance = schema.Provenance.from_schema(plan.faces_schema)
    assert provenance.detector_sha256 == registry.file_sha256(detector)
    assert provenance.detector == str(detector)  # how it was given, for people

    standins.make_scrfd_model(detector, batched=True)  # same name, another file
    with pytest.raises(ValueError, match=r"other settings \(detector_sha256: .*--overwrite"):
        pipeline.prepare(config)
    pipeline.prepare(dataclasses.replace(config, overwrite=True)).release()  # the fix the message names


def test_the_same_model_files_by_another_path_resume(
    emotion_path: Path, scrfd_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(emotion_path.parent, tmp_path / "models")
    model, detector = (tmp_path / "models" / p.name for p in (emotion_path, scrfd_path))
    pipeline.prepare(_config(tmp_path, str(model), str(detector))).release()
    monkeypatch.chdir(tmp_path)
    relative = _config(tmp_path, f"models/{model.name}", f"./models/../models/{detector.name}")
    plan = pipeline.prepare(relative)  # not refused as "other settings"
    plan.release()
    provenance = schema.Provenance.from_schema(plan.faces_schema)
    assert (provenance.model_sha256, provenance.detector_sha256) == (
        registry.file_sha256(model),
        registry.file_sha256(detector),
    )


def test_face_crops_record_no_detector(emotion_path: Path, tmp_path: Path) -> None:
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "00001.jpg").write_bytes(b"not decoded by prepare")
    config = ExtractConfig(
        inputs=(str(tmp_path / "clip"),),
        output=str(tmp_path / "out"),
        model=str(emotion_path),
        detector="no_such_detector",  # never loaded for face crops
        frame_folders=True,
        faces_cropped=True,
    )
    plan = pipeline.prepare(config)
    plan.release()
    provenance = schema.Provenance.from_schema(plan.faces_schema)
    assert (provenance.detector, provenance.detector_sha256) == (None, None)


@pytest.mark.slow
def test_a_rerun_with_every_input_finished_starts_no_ray(
    emotion_path: Path, scrfd_path: Path, tmp_path: Path
) -> None:
    """The unit conftest makes ray.init an error: the rerun returns without it, and still writes its runs
    row (the skipped video counted)."""
    config = _config(tmp_path, str(emotion_path), str(scrfd_path))
    plan = pipeline.prepare(config)
    (source,) = plan.sources
    row = {"video_id": source.video_id, "source_uri": source.source_uri, "status": "ok", "run_id": "earlier"}
    plan.output.commit_video(source.video_id, None, pa.Table.from_pylist([row], schema.VIDEOS_BASE))
    result = pipeline.run(plan)
    assert (result.videos, result.run["videos"], result.run["videos_skipped"]) == ([], 1, 1)
    assert plan.output.fs.exists(plan.output.run_path(plan.run_id))
    assert not (tmp_path / "out" / LEASE_FILE).exists()
