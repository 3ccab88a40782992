"""Recipes on hand-made faces tables (no Ray), and the aggregation of synthetic extract outputs in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from emotibatch import schema
from emotibatch.cli import cli
from emotibatch.clips.aggregate import (
    Recipe,
    aggregate,
    describe_video,
    load_descriptors,
    read_descriptors,
)
from emotibatch.testing.samples import write_synthetic_extract

# Three frames: frame 0 and 2 with two faces (tracks 0 and 1), frame 1 with one (track 0); fps 2.
FRAMES = [0, 0, 1, 2, 2]
FACES = [0, 1, 0, 0, 1]
TRACKS = [0, 1, 0, 0, 1]
FEATURES = np.array([[1, 2], [5, 0], [3, 4], [2, 2], [7, 1]], np.float32)
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4], [0.1, 0.9]], np.float32)


def faces_table(dtype: str = "float32") -> pa.Table:
    return pa.table(
        {
            "frame_index": pa.array(FRAMES, pa.int64()),
            "timestamp_s": pa.array(np.array(FRAMES) / 2.0),
            "face_index": pa.array(FACES, pa.int32()),
            "track_id": pa.array(TRACKS, pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(FEATURES.reshape(-1).astype(dtype)), 2),
            "emotion_probs": pa.FixedSizeListArray.from_arrays(pa.array(PROBS.reshape(-1)), 2),
        }
    )


def descriptors(table: pa.Table) -> list[np.ndarray | None]:
    return [None if d is None else np.array(d) for d in table["descriptor"].to_pylist()]


def test_afew_pools_the_best_face_of_each_frame_l2_normalised() -> None:
    out = describe_video("v", faces_table(), Recipe("afew"), width=8)
    best = FEATURES[[0, 2, 3]]
    expected = np.concatenate([best.mean(0), best.std(0), best.min(0), best.max(0)])
    # descriptors are stored as float32 after pooling a few faces: a few eps32 relative
    np.testing.assert_allclose(descriptors(out)[0], expected / np.linalg.norm(expected), rtol=1e-6)
    assert out.drop_columns(["descriptor"]).to_pylist() == [
        {"video_id": "v", "n_frames": 3, "n_faces": 3, "has_faces": True}
    ]
    assert out.schema.field("descriptor").type == schema.vector(8)


def test_vgaf_pools_every_face_per_frame_then_over_frames() -> None:
    out = describe_video("v", faces_table(), Recipe("vgaf"), width=8)
    per_frame = []
    for frame in (0, 1, 2):
        x = FEATURES[np.array(FRAMES) == frame]
        per_frame.append(np.concatenate([x.mean(0), x.std(0)]))
    per_frame = np.array(per_frame)
    np.testing.assert_allclose(
        descriptors(out)[0], np.concatenate([per_frame.mean(0), per_frame.std(0)]), rtol=1e-6
    )  # float32 storage after two pooling steps: a few eps32 relative
    assert (out["n_frames"][0].as_py(), out["n_faces"][0].as_py()) == (3, 5)


def test_engagewild_is_the_std_over_frames_with_probs_appended_on_request() -> None:
    out = describe_video("v", faces_table(), Recipe("engagewild", emotion_probs=True), width=4)
    best = np.hstack([FEATURES, PROBS])[[0, 2, 3]]
    np.testing.assert_allclose(descriptors(out)[0], best.std(0), rtol=1e-6)  # float32 storage: a few eps32


def test_float16_features_are_widened_before_pooling() -> None:
    half = describe_video("v", faces_table("float16"), Recipe("afew"), width=8)
    full = describe_video("v", faces_table(), Recipe("afew"), width=8)
    # float16 keeps 11 significant bits: each feature moves by <= 2^-11 ~ 4.9e-4 relative, and the pooled,
    # L2-normalised descriptor (mean, std, min, max over 3 frames) by about as much again
    np.testing.assert_allclose(descriptors(half)[0], descriptors(full)[0], rtol=2 * 2.0**-11)


def test_per_track_windows_keep_null_clip_windows_and_only_the_windows_a_track_is_in() -> None:
    # Timestamps 0, 0.5, 1.0 s; windows of 1 s every 0.5 s over a 2 s clip: [0,1) [0.5,1.5) [1,2).
    out = describe_video("v", faces_table(), Recipe("engagewild", windows=1.0, window_step=0.5), 2, 2.0)
    rows = out.drop_columns(["descriptor"]).to_pylist()
    assert [(r["window_start_s"], r["window_end_s"], r["n_frames"]) for r in rows] == [
        (0.0, 1.0, 2),
        (0.5, 1.5, 2),
        (1.0, 2.0, 1),
    ]
    # the std of two rows, stored as float32: one rounding
    np.testing.assert_allclose(
        descriptors(out)[0], FEATURES[[0, 2]].std(0), rtol=float(np.finfo(np.float32).eps)
    )

    tracks = describe_video("v", faces_table(), Recipe("afew", windows=0.5, per_track=True), 8, 2.0)
    keys = [(r["track_id"], r["window_start_s"]) for r in tracks.drop_columns(["descriptor"]).to_pylist()]
    assert keys == [(0, 0.0), (0, 0.5), (0, 1.0), (1, 0.0), (1, 1.0)]  # track 1 is absent at 0.5 s


@pytest.mark.parametrize("duration_s", [None, 0.6])
def test_windows_hold_every_face_even_past_the_container_duration(duration_s: float | None) -> None:
    # Frames at 0, 0.5 and 1.0 s: the last face sits on a window boundary, past a short container duration.
    out = describe_video("v", faces_table(), Recipe("afew", windows=0.5), 8, duration_s=duration_s)
    rows = out.drop_columns(["descriptor"]).to_pylist()
    assert [r["window_start_s"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["n_faces"] for r in rows] == [1, 1, 1]  # one face per frame (AFEW)


def test_a_clip_without_faces_keeps_null_rows() -> None:
    one = describe_video("empty", None, Recipe("afew"), width=8)
    assert one.to_pylist() == [
        {"video_id": "empty", "n_frames": 0, "n_faces": 0, "has_faces": False, "descriptor": None}
    ]
    windows = describe_video("empty", None, Recipe("vgaf", windows=2.0, per_track=True), 8, duration_s=5.0)
    assert [(r["track_id"], r["window_start_s"], r["has_faces"]) for r in windows.to_pylist()] == [
        (None, 0.0, False),
        (None, 2.0, False),
        (None, 4.0, False),
    ]
    assert windows["descriptor"].null_count == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mean"}, "recipe must be one of"),
        ({"name": "afew", "windows": 0.0}, "--windows must be > 0"),
        ({"name": "afew", "window_step": 1.0}, "--window-step needs --windows"),
    ],
)
def test_recipe_settings_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


# -- whole outputs, in-process ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 clips with faces (2 per frame), one without, one failed; float16 features."""
    root = tmp_path_factory.mktemp("extract")
    means = {f"clip{i}": np.full(6, i, np.float32) for i in range(4)} | {"noface": None}
    write_synthetic_extract(
        root,
        means,
        frames=6,
        faces_per_frame=2,
        features_dtype="float16",
        failed=["broken"],
        model="/m/enet_b2_8.onnx",
    )
    return root


def test_aggregate_keeps_clips_without_faces_skips_failed_and_records_provenance(extract: Path) -> None:
    result = aggregate(str(extract), "afew")
    assert (result.rows, result.clips, result.clips_without_faces) == (5, 5, 1)
    assert result.failed == (("broken", "cannot decode"),)
    table = result.table
    assert table["video_id"].to_pylist() == ["clip0", "clip1", "clip2", "clip3", "noface"]
    assert table["has_faces"].to_pylist() == [True] * 4 + [False]
    assert table["descriptor"].null_count == 1
    assert table.schema.field("descriptor").type == schema.vector(24)
    meta = schema.read_metadata(table.schema)
    assert meta["recipe"] == {
        "name": "afew",
        "windows": None,
        "window_step": None,
        "per_track": False,
        "emotion_probs": False,
    }
    assert meta["emotion_model"]["name"] == "enet_b2_8"
    assert (meta["emotion_model"]["feature_dim"], meta["features_dtype"]) == (6, "halffloat")


def test_aggregate_writes_an_output_that_reads_back_and_is_not_overwritten_silently(
    extract: Path, tmp_path: Path
) -> None:
    out = tmp_path / "agg"
    result = aggregate(str(extract), Recipe("vgaf", emotion_probs=True), str(out))
    assert result.table is None and result.rows == 5
    table = read_descriptors(str(out))
    assert table.schema.field("descriptor").type.list_size == 4 * (6 + 8)
    assert schema.read_metadata(table.schema)["recipe"]["emotion_probs"] is True
    with pytest.raises(ValueError, match="already holds Parquet files"):
        aggregate(str(extract), "vgaf", str(out))
    aggregate(str(extract), "engagewild", str(out), overwrite=True)
    assert read_descriptors(str(out)).schema.field("descriptor").type.list_size == 6
    with pytest.raises(ValueError, match=r"aggregated with recipe .*engagewild.*, not .*afew"):
        load_descriptors(str(out), Recipe("afew"))


def test_an_extract_without_features_is_refused_clearly(tmp_path: Path) -> None:
    write_synthetic_extract(tmp_path, {"a": np.zeros(4)}, features_dtype="none")
    with pytest.raises(ValueError, match="--features-dtype none"):
        aggregate(str(tmp_path), "afew")
    with pytest.raises(ValueError, match="no videos/ table"):
        aggregate(str(tmp_path / "faces"), "afew")


def test_cli_aggregate_writes_track_windows_and_exits_2_on_bad_options(extract: Path, tmp_path: Path) -> None:
    out = tmp_path / "agg"
    args = ["aggregate", "--extract", extract, "--recipe", "engagewild", "--windows", "0.5", "--per-track"]
    result = CliRunner().invoke(cli, [*map(str, args), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "clips (1 without faces" in result.output
    assert "skipped failed video broken: cannot decode" in result.output
    table = pq.read_table(out)
    assert {"track_id", "window_start_s", "window_end_s"} <= set(table.schema.names)
    # 4 clips x 2 tracks x 2 windows (6 frames at 10 fps), and one null row per window of the empty clip
    # (whose videos row says 0.6 s: windows at 0 and 0.5 s).
    assert table.num_rows == 4 * 2 * 2 + 2
    assert json.loads(table.schema.metadata[schema.METADATA_KEY])["recipe"]["per_track"] is True

    bad = CliRunner().invoke(
        cli, ["aggregate", "--extract", str(extract), "--recipe", "afew", "--window-step", "1"]
    )
    assert bad.exit_code == 2 and "--output" in bad.output
    bad = CliRunner().invoke(
        cli,
        ["aggregate", "--extract", str(extract), "--recipe", "afew", "-o", str(out), "--window-step", "1"],
    )
    assert bad.exit_code == 2 and "--window-step needs --windows" in bad.output
