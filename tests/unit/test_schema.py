"""schema.Provenance: the one record of what made a faces table, and how it reads back."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from emotibatch import schema
from emotibatch.reports import report

FACES = schema.faces_schema(3, 4, "float32")
SETTINGS = {"sampling": {"mode": "every", "value": 5}, "model": "enet_b0_8_best_vgaf"}


def test_it_reads_back_what_it_wrote() -> None:
    written = schema.Provenance(
        classes=("Anger", "Happiness", "Neutral"),
        model="enet_b0_8_best_vgaf",
        model_sha256="a" * 64,
        detector="det_10g",
        detector_sha256="b" * 64,
        settings=SETTINGS,
        emotibatch="1.0",
        run_id="20260101T000000Z-0123abcd",
    )
    on = written.on(FACES)
    assert on.remove_metadata() == FACES
    assert schema.Provenance.from_schema(on) == written


def test_it_reads_faces_files_written_before_the_detector_was_hashed() -> None:
    """The JSON `pipeline.prepare` wrote until the detector's sha256 was recorded, key for key."""
    info = {
        "emotibatch": "0.9",
        "run_id": "r1",
        "classes": ["Anger", "Happiness", "Neutral"],
        "model": "/models/enet_b0_8_best_vgaf.onnx",
        "model_sha256": "a" * 64,
        "detector": "det_10g",
        "settings": SETTINGS,
    }
    old = FACES.with_metadata({schema.METADATA_KEY: json.dumps(info).encode()})
    got = schema.Provenance.from_schema(old)
    assert (got.classes, got.model, got.model_sha256) == (
        ("Anger", "Happiness", "Neutral"),
        info["model"],
        "a" * 64,
    )
    assert (got.detector, got.detector_sha256, got.settings, got.run_id) == ("det_10g", None, SETTINGS, "r1")


def test_a_table_without_provenance_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"no emotibatch provenance.*written by `emotibatch extract`"):
        schema.Provenance.from_schema(pa.schema([pa.field("video_id", pa.string())]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classes": ()}, "class names"),
        ({"model_sha256": "A" * 64}, "model_sha256 must be a lowercase sha256"),
        ({"detector_sha256": "b" * 40}, "detector_sha256 must be a lowercase sha256"),
    ],
)
def test_it_is_checked_where_it_is_made(fields: dict, message: str) -> None:
    given = {"classes": ("Neutral",), "model": "m", "model_sha256": None, "detector": None} | fields
    with pytest.raises(ValueError, match=message):
        schema.Provenance(detector_sha256=given.pop("detector_sha256", None), **given)


def test_the_report_names_both_model_files() -> None:
    row = {"video_id": "v", "source_uri": "v.mp4", "status": "ok", "run_id": "r1"}
    videos = pa.Table.from_pylist([row], schema=schema.VIDEOS_BASE)
    provenance = schema.Provenance(("Neutral",), "enet_b0_8_best_vgaf", "a" * 64, "det_10g", "b" * 64)
    sections = report.overview_sections(
        videos, None, shown={}, counts={}, dominant={}, classes=["Neutral"], provenance=provenance
    )
    models = next(s for s in sections if s.anchor == "models").html()
    assert f"enet_b0_8_best_vgaf (sha256 {'a' * 64})" in models and f"det_10g (sha256 {'b' * 64})" in models
