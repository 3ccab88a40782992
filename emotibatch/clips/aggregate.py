"""Clip, track and window descriptors from an extract output's faces: EmotiEffLib's clip-level recipes.

Recipes (docs/corpora.md), over the `features` column (optionally with `emotion_probs` appended):

- `afew`: one face per frame (the highest-scoring: face_index 0), mean||std||min||max over frames,
  L2-normalised (what the AFEW LinearSVC was tuned on);
- `vgaf`: every face; per frame mean||std over its faces, then mean||std of those over frames;
- `engagewild`: one face per frame, std over frames.

A descriptor is made per video, per track (`per_track`) and/or per time window (`windows` seconds long,
every `window_step` seconds). faces/ holds one file per video, so the job streams over files (on Ray Data
when `on_ray`, else one after another in this process): each task reads one video's file, pools it and
yields that video's rows. Memory is bounded by the largest
video, never by the corpus, and nothing is shuffled. Clips the extract finished without a face keep a row
(has_faces false, null descriptor); videos it failed are skipped and reported.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from emotibatch import __version__, schema
from emotibatch.cluster import connected
from emotibatch.extract.output import Output
from emotibatch.io.redact import redact_uri

RecipeName = Literal["afew", "vgaf", "engagewild"]
# What a descriptor means, hence what a model trained on it depends on; windows and tracks only group rows.
RECIPE_IDENTITY = ("name", "emotion_probs")
FACE_COLUMNS = ["frame_index", "timestamp_s", "face_index", "track_id", "features"]


# -- recipes: pure per-video functions -------------------------------------------------------------------


def _mean_std_min_max(frames: np.ndarray, x: np.ndarray) -> np.ndarray:
    v = np.concatenate([x.mean(0), x.std(0), x.min(0), x.max(0)])
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _frame_mean_std(frames: np.ndarray, x: np.ndarray) -> np.ndarray:
    """mean||std over each frame's faces (rows of a frame are contiguous), then mean||std over frames."""
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    counts = np.diff(np.r_[starts, len(frames)])[:, None]
    mean = np.add.reduceat(x, starts, axis=0) / counts
    dev = x - np.repeat(mean, counts[:, 0], axis=0)
    per_frame = np.hstack([mean, np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / counts)])
    return np.concatenate([per_frame.mean(0), per_frame.std(0)])


def _std(frames: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x.std(0)


@dataclass(frozen=True)
class _Pool:
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (frame index per row, per-face matrix) -> vector
    factor: int  # descriptor width / per-face width
    one_face_per_frame: bool  # keep face_index 0 only (a track is one face per frame already)


POOLS: dict[str, _Pool] = {
    "afew": _Pool(_mean_std_min_max, 4, True),
    "vgaf": _Pool(_frame_mean_std, 4, False),
    "engagewild": _Pool(_std, 1, True),
}


@dataclass(frozen=True)
class Recipe:
    """A recipe and how its rows are grouped; checked where it is made."""

    name: RecipeName
    windows: float | None = None  # window length in seconds; None: the whole clip
    window_step: float | None = None  # seconds between window starts; None: the window length
    per_track: bool = False
    emotion_probs: bool = False  # append emotion_probs to each face's features

    def __post_init__(self) -> None:
        problems = []
        if self.name not in POOLS:
            problems.append(f"recipe must be one of {sorted(POOLS)}, got {self.name!r}")
        if self.windows is not None and self.windows <= 0:
            problems.append(f"--windows must be > 0 seconds, got {self.windows}")
        if self.window_step is not None and (self.windows is None or self.window_step <= 0):
            problems.append("--window-step needs --windows and must be > 0 seconds")
        if problems:
            raise ValueError("; ".join(problems))

    def width(self, feature_dim: int, n_classes: int) -> int:
        return POOLS[self.name].factor * (feature_dim + (n_classes if self.emotion_probs else 0))

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _window_starts(duration_s: float, last_face_s: float | None, length: float, step: float) -> np.ndarray:
    """Starts 0, step, 2 step, ... until a window reaches the clip's end and one holds its last face.

    Windows are half-open, [start, start + length): a face at exactly a window's end is in the next one.
    """
    to_end = math.ceil((duration_s - length) / step - 1e-9)
    to_face = 0 if last_face_s is None else math.floor((last_face_s - length) / step + 1e-9) + 1
    last = max(0, to_end, to_face)
    return np.round(np.arange(last + 1) * step, 9)  # 3 * 0.1 is 0.30000000000000004: it would miss 0.3


def describe_video(
    video_id: str,
    faces: pa.Table | None,
    recipe: Recipe,
    width: int,
    duration_s: float | None = None,
) -> pa.Table:
    """One video's descriptor rows (`descriptor_schema`) from its faces table (None or empty: no faces).

    Whole-clip windows without faces keep a null row (timelines need every window); a track gets rows
    only for the windows it appears in. The windows span `duration_s` and every face, even one past it.
    """
    pool = POOLS[recipe.name]
    out_schema = schema.descriptor_schema(
        width, per_track=recipe.per_track, windows=recipe.windows is not None
    )
    # Subsets are row indices in time order (a frame's faces stay together); rows are never reordered.
    if faces is None or not len(faces):
        times = frames = x = np.zeros(0)
        subsets: list[tuple[int | None, np.ndarray]] = [(None, np.zeros(0, np.int64))]
    else:
        times = faces["timestamp_s"].to_numpy()
        frames = faces["frame_index"].to_numpy()
        x = schema.as_matrix(faces["features"])
        if recipe.emotion_probs:
            x = np.hstack([x, schema.as_matrix(faces["emotion_probs"])])
        if recipe.per_track:
            tracks = faces["track_id"].to_numpy()
            by_track = np.lexsort((times, tracks))
            groups = np.split(by_track, np.flatnonzero(np.diff(tracks[by_track])) + 1)
            subsets = [(int(tracks[g[0]]), g) for g in groups]
        else:
            order = np.argsort(times, kind="stable")
            if pool.one_face_per_frame:
                order = order[faces["face_index"].to_numpy()[order] == 0]
            subsets = [(None, order)]

    if recipe.windows is None:
        spans: np.ndarray | None = None
    else:
        last_face = float(times.max()) if len(times) else None
        starts = _window_starts(
            duration_s or 0.0, last_face, recipe.windows, recipe.window_step or recipe.windows
        )
        spans = np.stack([starts, starts + recipe.windows], axis=1)

    rows: list[tuple[int | None, float | None, float | None, np.ndarray]] = []
    for track, idx in subsets:
        if spans is None:
            rows.append((track, None, None, idx))
            continue
        first = np.searchsorted(times[idx], spans[:, 0])
        last = np.searchsorted(times[idx], spans[:, 1])
        for (start, stop), a, b in zip(spans.tolist(), first, last):
            if b > a or track is None:
                rows.append((track, start, stop, idx[a:b]))

    values = np.zeros((len(rows), width), np.float32)
    for i, (_, _, _, sel) in enumerate(rows):
        if len(sel):
            values[i] = pool.fn(frames[sel], x[sel])
    has_faces = np.array([len(r[3]) > 0 for r in rows], bool)
    columns: dict[str, Any] = {
        "video_id": [video_id] * len(rows),
        "track_id": [r[0] for r in rows],
        "window_start_s": [r[1] for r in rows],
        "window_end_s": [r[2] for r in rows],
        "n_frames": [int(np.count_nonzero(np.diff(frames[r[3]])) + 1) if len(r[3]) else 0 for r in rows],
        "n_faces": [len(r[3]) for r in rows],
        "has_faces": has_faces,
        "descriptor": pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1)), width, mask=pa.array(~has_faces)
        ),
    }
    return pa.table({name: columns[name] for name in out_schema.names}, schema=out_schema)


# -- the job ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregateResult:
    """What an aggregation did; `table` holds the descriptors when no output was given."""

    rows: int
    clips: int
    clips_without_faces: int
    failed: tuple[tuple[str, str], ...]  # (video_id, error) of videos the extract failed: skipped
    output: str | None
    table: pa.Table | None


@dataclass(frozen=True)
class _Plan:
    source: Output
    recipe: Recipe
    items: list[dict[str, Any]]  # one per ok video: video_id, faces file (None without faces), duration_s
    faces: int  # face rows over those videos, from the videos table
    failed: tuple[tuple[str, str], ...]
    width: int
    schema: pa.Schema  # descriptor_schema with the provenance


def is_extract_output(path: str, storage_options: dict | None = None) -> bool:
    source = Output(path, storage_options)
    return source.fs.exists(source.join("videos"))


def _plan(features: str, recipe: Recipe, storage_options: dict | None) -> _Plan:
    """Read the videos table and one faces file's schema: everything that can fail before any work."""
    source = Output(features, storage_options)
    videos = source.read_tables("videos")
    if videos is None:
        raise ValueError(f"{redact_uri(features)}: no videos/ table; give the output of `emotibatch extract`")
    items, failed, faces = [], [], 0
    for row in videos.select(["video_id", "status", "error", "faces", "duration_s"]).to_pylist():
        if row["status"] != "ok":
            failed.append((row["video_id"], row["error"] or "failed"))
            continue
        faces += row["faces"] or 0
        path = source.faces_path(row["video_id"]) if row["faces"] else None
        items.append({"video_id": row["video_id"], "path": path, "duration_s": row["duration_s"]})
    # Any faces file gives the schema: the extract writes an empty one for a clip without faces.
    candidates = [i["path"] for i in items if i["path"]] + [
        source.faces_path(i["video_id"]) for i in items if not i["path"]
    ]
    path = next((p for p in candidates if source.fs.exists(p)), None)
    if path is None:
        raise ValueError(f"{redact_uri(features)}: no faces/ file of a finished video; nothing to aggregate")
    faces_schema = pq.read_schema(path, filesystem=source.fs)
    if "features" not in faces_schema.names:
        raise ValueError(
            f"{redact_uri(features)} holds no feature vectors: it was extracted with --features-dtype none. The recipes "
            "need them: run `emotibatch extract` again with --features-dtype float32 or float16"
        )
    provenance = schema.Provenance.from_schema(faces_schema)
    feature_dim = faces_schema.field("features").type.list_size
    width = recipe.width(feature_dim, len(provenance.classes))
    info = {
        "emotibatch": __version__,
        "recipe": recipe.params(),
        "emotion_model": emotion_model(provenance, feature_dim),
        "detector": provenance.detector,
        "detector_sha256": provenance.detector_sha256,
        "sampling": provenance.settings.get("sampling"),
        "features": redact_uri(features),
        "features_dtype": str(faces_schema.field("features").type.value_type),
    }
    out_schema = schema.with_metadata(
        schema.descriptor_schema(width, per_track=recipe.per_track, windows=recipe.windows is not None), info
    )
    items = sorted(items, key=lambda i: i["video_id"])
    return _Plan(source, recipe, items, faces, tuple(failed), width, out_schema)


def emotion_model(provenance: schema.Provenance, feature_dim: int) -> dict[str, Any]:
    """The emotion model behind a faces table, as models trained on its descriptors record it.

    `name` is the model's file stem, so a registry name and a path to the same file agree; `sha256` is
    its file's, where the extract recorded it.
    """
    name = PurePosixPath(provenance.model.rstrip("/")).name.removesuffix(".onnx")
    return {
        "name": name,
        "model": provenance.model,
        "sha256": provenance.model_sha256,
        "classes": list(provenance.classes),
        "feature_dim": feature_dim,
    }


def emotion_model_mismatch(want: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    """Why features of emotion model `got` cannot stand in for those of `want` (`emotion_model` dicts),
    or None: another name or width, or the same name on another file (compared where both know it)."""
    if (got.get("name"), got.get("feature_dim")) != (want.get("name"), want.get("feature_dim")):
        return (
            f"emotion model {got.get('name')!r} ({got.get('feature_dim')}-d), not {want.get('name')!r} "
            f"({want.get('feature_dim')}-d)"
        )
    if want.get("sha256") and got.get("sha256") and want["sha256"] != got["sha256"]:
        return (
            f"emotion model {got.get('name')!r} from another file (sha256 {got['sha256'][:12]}..., "
            f"not {want['sha256'][:12]}...)"
        )
    return None


def _describe_items(batch: pa.Table, source: Output, recipe: Recipe, width: int) -> Iterator[pa.Table]:
    """Ray Data UDF: plan items in, each video's descriptor rows out, one video in memory at a time."""
    columns = [*FACE_COLUMNS, "emotion_probs"] if recipe.emotion_probs else FACE_COLUMNS
    for item in batch.to_pylist():
        # One thread: tasks run in parallel already, and pyarrow's pool would fight them for the CPUs.
        faces = (
            pq.read_table(item["path"], columns=columns, filesystem=source.fs, use_threads=False)
            if item["path"]
            else None
        )
        yield describe_video(item["video_id"], faces, recipe, width, item["duration_s"])


class DescriptorSink(Datasink[int]):
    """Writes each task's rows as one Parquet file under the output, cast to the schema with provenance."""

    def __init__(self, output: Output, schema: pa.Schema) -> None:
        self.output = output
        self.schema = schema
        self.rows = 0

    def write(self, blocks: Iterable[Block], ctx) -> int:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t.select(self.schema.names).cast(self.schema) for t in tables if len(t)]
        if tables:
            _write_part(self.output, pa.concat_tables(tables), ctx.task_idx)
        return sum(len(t) for t in tables)

    def on_write_complete(self, write_result: WriteResult[int]) -> None:
        self.rows = int(sum(write_result.write_returns))


def _write_part(output: Output, table: pa.Table, index: int) -> None:
    output.write_table(output.join(f"part-{index:05d}-{uuid.uuid4().hex[:8]}.parquet"), table)


def _prepare_output(output: str, storage_options: dict | None, overwrite: bool) -> Output:
    out = Output(output, storage_options)
    existing = out.fs.glob(out.join("*.parquet"))
    if existing and not overwrite:
        raise ValueError(
            f"{redact_uri(output)} already holds Parquet files; use another --output, or --overwrite"
        )
    for path in existing:
        out.fs.rm(path)
    out.fs.makedirs(out.path, exist_ok=True)
    return out


# Face rows from which a local Ray pays for its start-up: below, one process pools them sooner
# (docs/benchmarks.md, "In-process or Ray").
RAY_MIN_FACES = 1_000_000


def on_ray(address: str | None, faces: int) -> bool:
    """Ray when a cluster is named (`address`, RAY_ADDRESS as inside `ray job submit`) or this driver is
    connected already, or when `faces` rows are enough to gain from an embedded local Ray."""
    named = bool(address or os.environ.get("RAY_ADDRESS")) or ray.is_initialized()
    return named or faces >= RAY_MIN_FACES


def aggregate(
    features: str,
    recipe: Recipe | RecipeName,
    output: str | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    address: str | None = None,
) -> AggregateResult:
    """Descriptors of every finished clip of the extract output `features`.

    Written as Parquet files under `output`, or returned in `AggregateResult.table` (sorted) when it is
    None. Runs in this process unless `on_ray`: a small output is done before Ray would have started.
    """
    recipe = recipe if isinstance(recipe, Recipe) else Recipe(recipe)
    plan = _plan(features, recipe, storage_options)
    out = _prepare_output(output, storage_options, overwrite) if output is not None else None
    table: pa.Table | None = None
    if not plan.items or not on_ray(address, plan.faces):
        batch = pa.Table.from_pylist(plan.items)
        table = _concat(_describe_items(batch, plan.source, recipe, plan.width), plan.schema)
        rows = len(table)
        if out is not None and rows:
            _write_part(out, table, 0)
    else:
        with connected(address):
            dataset = ray.data.from_items(plan.items).map_batches(
                _describe_items,
                fn_kwargs={"source": plan.source, "recipe": recipe, "width": plan.width},
                batch_size=1,
                batch_format="pyarrow",
            )
            if out is not None:
                sink = DescriptorSink(out, plan.schema)
                dataset.write_datasink(sink)
                rows = sink.rows
            else:
                table = _concat(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), plan.schema)
                rows = len(table)
    if out is not None and not rows:  # an empty output still says what it is
        _write_part(out, plan.schema.empty_table(), 0)
    return AggregateResult(
        rows=rows,
        clips=len(plan.items),
        clips_without_faces=sum(i["path"] is None for i in plan.items),
        failed=plan.failed,
        output=output,
        table=None if out is not None else _sorted(table),
    )


def _concat(tables: Iterable[pa.Table], out_schema: pa.Schema) -> pa.Table:
    tables = [t.select(out_schema.names).cast(out_schema) for t in tables if len(t)]
    return pa.concat_tables(tables) if tables else out_schema.empty_table()


def _sorted(table: pa.Table) -> pa.Table:
    keys = [k for k in ("video_id", "track_id", "window_start_s") if k in table.schema.names]
    return table.sort_by([(k, "ascending") for k in keys])


def read_descriptors(path: str, storage_options: dict | None = None) -> pa.Table:
    """An aggregate output as one table, in a fixed order (so that a fit is reproducible)."""
    source = Output(path, storage_options)
    files = sorted(source.fs.glob(source.join("*.parquet")))
    if not files:
        raise ValueError(
            f"{redact_uri(path)}: neither an extract output (no videos/) nor an aggregate output (no Parquet)"
        )
    tables = [pq.read_table(f, filesystem=source.fs) for f in files]
    if "recipe" not in schema.read_metadata(tables[0].schema):
        raise ValueError(f"{redact_uri(path)}: these Parquet files are not an `emotibatch aggregate` output")
    return _sorted(pa.concat_tables(tables))


def load_descriptors(
    features: str,
    recipe: Recipe,
    *,
    storage_options: dict | None = None,
    address: str | None = None,
) -> pa.Table:
    """Descriptors made with `recipe`: aggregated from an extract output, or read from an aggregate output
    (refused when that was made with another recipe rather than silently used)."""
    if is_extract_output(features, storage_options):
        return aggregate(features, recipe, storage_options=storage_options, address=address).table
    table = read_descriptors(features, storage_options)
    stored = schema.read_metadata(table.schema)["recipe"]
    wanted = recipe.params()
    if any(stored.get(k) != wanted[k] for k in RECIPE_IDENTITY):
        got, want = ({k: r.get(k) for k in RECIPE_IDENTITY} for r in (stored, wanted))
        raise ValueError(
            f"{redact_uri(features)} was aggregated with recipe {got}, not {want}; give --recipe to match"
        )
    return table


# -- synthetic extract outputs (tests and benchmarks) ----------------------------------------------------
