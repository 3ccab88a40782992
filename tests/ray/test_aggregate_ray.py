"""Aggregation on the session's local Ray: the streamed job equals the in-process one, on a real extract
output (stand-in models, generated videos) and on a synthetic one with failed and faceless clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from e2e import invoke

from emotibatch import schema
from emotibatch.clips import aggregate as aggregate_module
from emotibatch.clips.aggregate import Recipe, aggregate, read_descriptors
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.inference import registry
from emotibatch.testing.samples import write_synthetic_extract

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def in_process(monkeypatch: pytest.MonkeyPatch, *args) -> aggregate_module.AggregateResult:
    """`aggregate` as it runs without a cluster (connected to Ray, it runs on Ray whatever the size)."""
    with monkeypatch.context() as patch:
        patch.setattr(aggregate_module, "on_ray", lambda address, faces: False)
        return aggregate(*args)


@pytest.fixture(scope="module")
def real_extract(make_config, videos, tmp_path_factory) -> str:
    """--every 10 over `known` (3 tracks), `small` (2) and `noface`, float16 features."""
    config = make_config(
        [videos["known"], videos["small"], videos["noface"]],
        tmp_path_factory.mktemp("aggregate") / "out",
        sampling=Sampling("every", 10),
        features_dtype="float16",
    )
    pipeline.extract(config)
    return config.output


@pytest.mark.parametrize(
    "recipe",
    [Recipe("afew"), Recipe("vgaf", emotion_probs=True), Recipe("engagewild", windows=1.0, per_track=True)],
    ids=["afew", "vgaf-probs", "engagewild-windows-tracks"],
)
def test_ray_aggregation_of_a_real_extract_equals_the_in_process_one(
    real_extract: str, recipe: Recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = aggregate(real_extract, recipe, str(tmp_path / "agg"))
    assert (result.clips, result.clips_without_faces, result.failed) == (3, 1, ())
    streamed = read_descriptors(str(tmp_path / "agg"))
    local = in_process(monkeypatch, real_extract, recipe).table
    assert streamed.to_pylist() == local.to_pylist() and result.rows == len(local)
    assert schema.read_metadata(streamed.schema) == schema.read_metadata(local.schema)
    whole_clip = [r for r in streamed.to_pylist() if r["video_id"] == "noface"]
    assert whole_clip and all(not r["has_faces"] and r["descriptor"] is None for r in whole_clip)
    model = schema.read_metadata(streamed.schema)["emotion_model"]
    assert model["name"] == "enet_b0_8_best_vgaf"
    assert model["sha256"] == registry.file_sha256(model["model"])  # recorded by the extract


def test_ray_aggregation_in_memory_and_through_the_cli(
    real_extract: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    means = {f"clip{i:02d}": np.full(8, i, np.float32) for i in range(12)} | {"noface": None}
    write_synthetic_extract(tmp_path / "ext", means, frames=5, faces_per_frame=3, failed=["broken"])
    result = aggregate(str(tmp_path / "ext"), "vgaf")
    assert (
        result.table.to_pylist() == in_process(monkeypatch, str(tmp_path / "ext"), "vgaf").table.to_pylist()
    )
    assert result.failed == (("broken", "cannot decode"),)
    assert result.table["has_faces"].to_pylist() == [True] * 12 + [False]

    out = tmp_path / "cli"
    ran = invoke(["aggregate", "--extract", real_extract, "--recipe", "afew", "--output", out])
    assert ran.exit_code == 0, ran.output
    assert "3 descriptor rows from 3 clips (1 without faces" in ran.output
    assert read_descriptors(str(out))["has_faces"].to_pylist() == [True, False, True]  # known, noface, small
