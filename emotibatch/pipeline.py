"""The extraction job, top to bottom: sources -> probe -> plan -> decode -> faces -> stage -> per-video pass.

1. List the inputs (sources.py) and drop the videos an earlier run already finished.
2. Probe each video (Ray tasks) and plan its time segments (decode.py); segments fully staged by an
   interrupted run are not redone.
3. One streaming Ray Data chain over the segments: decode the sampled frames in CPU tasks, then one
   actor pool holding the face detector and the emotion model (`FaceStage`; GPU where present), then the
   staging Datasink (sink.py), one file per segment piece.
4. The per-video pass (Ray tasks): read a video's staged frames, check that every sampled frame is there,
   link faces into tracks (track.py), write `faces/` and the video's `videos/` row, drop its staging. A
   video with any failure gets a failed row and no faces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from emotibatch import __version__, schema
from emotibatch.config import ExtractConfig
from emotibatch.decode import (
    DecodeError,
    Segment,
    VideoInfo,
    decode_segment,
    plan_segments,
    probe,
    sample_indices,
)
from emotibatch.detect import FaceDetector
from emotibatch.embed import EmotionModel
from emotibatch.preprocess import crop_faces
from emotibatch.sink import Output, StagingSink
from emotibatch.sources import VideoSource, list_sources
from emotibatch.track import assign_tracks, count_tracks

log = logging.getLogger(__name__)

FRAMES_PER_BLOCK = 16
# A decode worker's own footprint (Python, pyarrow, decord, FFmpeg), measured at about 200 MiB.
DECODE_BASE_MEMORY = 256 * 2**20


@dataclass(frozen=True)
class VideoJob:
    """A probed video and its plan: what the per-video pass checks the staged frames against."""

    source: VideoSource
    info: VideoInfo | None
    error: str | None
    indices: tuple[int, ...] = ()
    segments: tuple[Segment, ...] = field(default=())


@dataclass(frozen=True)
class RunResult:
    """What a run did: this run's rows of the videos table, and its row of the runs table."""

    run_id: str
    output: str
    videos: list[dict]
    run: dict

    @property
    def failed(self) -> list[dict]:
        return [v for v in self.videos if v["status"] == "failed"]


# -- 2. probe and plan --------------------------------------------------------------------------------


def _probe(source: VideoSource, config: ExtractConfig) -> VideoJob:
    try:
        info = probe(source, storage_options=config.storage_options, frame_rate=config.frame_rate)
    except DecodeError as exc:
        return VideoJob(source, None, str(exc))
    except OSError as exc:  # unreadable in a way the decoder has no message for: fail this video only
        return VideoJob(source, None, _unreadable(source, exc))
    indices = sample_indices(info, config.sampling)
    if not len(indices):
        return VideoJob(source, info, None)
    segments = plan_segments(info, indices, config.segment_seconds, video_id=source.video_id)
    return VideoJob(source, info, None, tuple(int(i) for i in indices), tuple(segments))


def _unreadable(source: VideoSource, exc: OSError) -> str:
    """An OSError as a message: its reason only, since its text may quote a signed URL."""
    return f"cannot read {source.source_uri}: {exc.strerror or type(exc).__name__}; check the path and access"


def probe_all(sources: list[VideoSource], config: ExtractConfig) -> list[VideoJob]:
    """Probe every source in parallel Ray tasks; a video that cannot be read gets its error, not an exception."""
    task = ray.remote(num_cpus=config.decode_cpus)(_probe)
    return ray.get([task.remote(s, config) for s in sources])


def pending_segments(job: VideoJob, output: Output) -> list[Segment]:
    """The job's segments not fully staged by an earlier run; partial or failed pieces are dropped."""
    coverage = output.staged_coverage(job.source.video_id)
    pending = []
    for segment in job.segments:
        frames, failed = coverage.get(segment.segment_index, (set(), False))
        if failed or not frames.issuperset(segment.frame_indices):
            if frames or failed:
                output.drop_staged(job.source.video_id, segment.segment_index)
            pending.append(segment)
    return pending


# -- 3. decode and faces -----------------------------------------------------------------------------


def _work_item(job: VideoJob, segment: Segment) -> dict:
    """A segment as plain columns (Arrow structs), so Ray Data carries it without pickling."""
    source = {"uri": job.source.uri, "video_id": job.source.video_id, "kind": job.source.kind}
    return {"source": source, "info": asdict(job.info), "segment": asdict(segment)}


def decode_segments(batch: pa.Table, config: ExtractConfig) -> Iterator[pa.Table]:
    """Ray Data UDF: segment rows in, their sampled frames out as blocks of raw RGB bytes.

    A decode failure ends the segment with one row carrying the error (frame_index -1): the per-video
    pass then fails the whole video, so no partial rows survive.
    """
    for item in batch.to_pylist():
        source = VideoSource(**item["source"])
        info = VideoInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in item["info"].items()})
        segment = Segment(**item["segment"])
        rows: list[tuple[int, bytes, int, int, float]] = []
        started = time.perf_counter()
        try:
            for index, _, frame in decode_segment(
                source,
                info,
                segment,
                storage_options=config.storage_options,
                num_threads=max(1, int(config.decode_cpus)),
            ):
                now = time.perf_counter()
                rows.append((index, frame.tobytes(), frame.shape[0], frame.shape[1], now - started))
                started = now
                if len(rows) == FRAMES_PER_BLOCK:
                    yield _frame_block(source.video_id, segment.segment_index, rows)
                    rows = []
        except (DecodeError, OSError) as exc:  # OSError: storage failing after the probe succeeded
            error = exc if isinstance(exc, DecodeError) else _unreadable(source, exc)
            rows.append((-1, b"", 0, 0, time.perf_counter() - started))
            yield _frame_block(source.video_id, segment.segment_index, rows, error=str(error))
            continue
        if rows:
            yield _frame_block(source.video_id, segment.segment_index, rows)


def _frame_block(
    video_id: str,
    segment_index: int,
    rows: list[tuple[int, bytes, int, int, float]],
    error: str | None = None,
) -> pa.Table:
    index, pixels, height, width, seconds = zip(*rows)
    n = len(rows)
    return pa.table(
        {
            "video_id": pa.array([video_id] * n, pa.string()),
            "segment_index": pa.array([segment_index] * n, pa.int32()),
            "frame_index": pa.array(index, pa.int64()),
            "pixels": pa.array(pixels, pa.binary()),
            "height": pa.array(height, pa.int32()),
            "width": pa.array(width, pa.int32()),
            "decode_s": pa.array(seconds, pa.float64()),
            "error": pa.array([None] * (n - 1) + [error], pa.string()),
        }
    )


class FaceStage:
    """Ray Data actor: detector and emotion model loaded once; frames in, per-frame faces out."""

    def __init__(self, config: ExtractConfig, frames_schema: pa.Schema) -> None:
        self.config = config
        self.schema = frames_schema
        common = dict(
            device=config.device, model_dir=config.model_dir, storage_options=config.storage_options
        )
        self.detector = (
            None
            if config.faces_cropped
            else FaceDetector.load(
                config.detector,
                input_size=config.det_size,
                det_thresh=config.det_thresh,
                batch_size=config.detect_batch_size,
                **common,
            )
        )
        self.model = EmotionModel.load(config.model, batch_size=config.batch_size, **common)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n = len(batch)
        errors = batch["error"].to_pylist()
        heights, widths = batch["height"].to_pylist(), batch["width"].to_pylist()
        pixels = batch["pixels"].to_pylist()
        ok = [i for i in range(n) if errors[i] is None]
        frames = [np.frombuffer(pixels[i], np.uint8).reshape(heights[i], widths[i], 3) for i in ok]
        boxes, scores, landmarks = self._faces(frames)
        crops = [c for frame, b in zip(frames, boxes) for c in crop_faces(frame, b, self.config.margin)]
        out = self.model.predict(crops)
        counts = np.zeros(n, np.int64)
        counts[ok] = [len(b) for b in boxes]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        seconds = (time.perf_counter() - started) / max(n, 1)

        def nested(values: np.ndarray | None, width: int | None, dtype: pa.DataType) -> pa.Array:
            if values is None:  # a model without valence/arousal, or face crops without detections
                flat = pa.nulls(int(offsets[-1]), dtype if width is None else schema.vector(width, dtype))
            elif width is None:
                flat = pa.array(values.astype(dtype.to_pandas_dtype()), dtype)
            else:
                flat = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.astype(dtype.to_pandas_dtype()).reshape(-1), dtype), width
                )
            return pa.ListArray.from_arrays(pa.array(offsets), flat)

        columns = {
            "video_id": batch["video_id"],
            "segment_index": batch["segment_index"],
            "frame_index": batch["frame_index"],
            "error": batch["error"],
            "decode_s": batch["decode_s"],
            "infer_s": pa.array(np.full(n, seconds)),
            "bbox": nested(_stack(boxes, (0, 4)), 4, pa.float32()),
            "det_score": nested(None if self.detector is None else _stack(scores, (0,)), None, pa.float32()),
            "landmarks": nested(
                None if self.detector is None else _stack(landmarks, (0, 10)), 10, pa.float32()
            ),
            "emotion_probs": nested(out.probs, len(out.classes), pa.float32()),
            "valence": nested(out.valence, None, pa.float32()),
            "arousal": nested(out.arousal, None, pa.float32()),
        }
        if "features" in self.schema.names:
            dtype = self.schema.field("features").type.value_type.value_type
            columns["features"] = nested(out.features, out.features.shape[1], dtype)
        return pa.table(columns).cast(self.schema)

    def _faces(self, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Boxes, scores and flat landmarks per frame after --min-face and --max-faces."""
        if self.detector is None:  # each image is one face
            boxes = [np.array([[0, 0, f.shape[1], f.shape[0]]], np.float32) for f in frames]
            return (
                boxes,
                [np.ones(1, np.float32)] * len(frames),
                [np.zeros((1, 10), np.float32)] * len(frames),
            )
        boxes, scores, landmarks = [], [], []
        for found in self.detector.detect(frames):
            keep = np.minimum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
            keep = np.flatnonzero(keep >= self.config.min_face)[: self.config.max_faces]
            boxes.append(found.boxes[keep])
            scores.append(found.scores[keep])
            landmarks.append(found.kps[keep].reshape(-1, 10))
        return boxes, scores, landmarks


def _stack(arrays: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty, np.float32)


# -- 4. the per-video pass -----------------------------------------------------------------------------


def finalize_video(job: VideoJob, output: Output, faces_schema: pa.Schema, run_id: str) -> dict:
    """Check, track and commit one video; return its videos row."""
    video_id = job.source.video_id
    row = _video_row(job, run_id)
    if job.error:
        return _commit(output, job, None, {**row, "status": "failed", "error": job.error})
    staged = output.read_staged(video_id) if job.indices else None
    if staged is not None and staged["error"].null_count < len(staged):
        error = next(e for e in staged["error"].to_pylist() if e is not None)
        return _commit(output, job, None, {**row, "status": "failed", "error": error})
    if staged is not None:
        staged = _unique_frames(staged)
    got = set() if staged is None else set(staged["frame_index"].to_pylist())
    missing = sorted(set(job.indices) - got)
    if missing:
        error = f"{len(missing)} sampled frames were not processed (first: {missing[0]}); run the job again"
        return _commit(output, job, None, {**row, "status": "failed", "error": error})
    faces = _faces_table(job, staged, faces_schema)
    row |= {
        "status": "ok",
        "frames_sampled": len(job.indices),
        "faces": len(faces),
        "tracks": count_tracks(faces["track_id"].to_numpy()),
        "decode_s": float(pc.sum(staged["decode_s"]).as_py() or 0.0) if staged is not None else 0.0,
        "infer_s": float(pc.sum(staged["infer_s"]).as_py() or 0.0) if staged is not None else 0.0,
    }
    return _commit(output, job, faces, row)


def _unique_frames(staged: pa.Table) -> pa.Table:
    """Frames sorted by index, each once (pieces staged twice by a retried task hold the same frame)."""
    staged = staged.sort_by("frame_index")
    index = staged["frame_index"].to_numpy()
    first = np.concatenate([[True], index[1:] != index[:-1]])
    return staged.filter(pa.array(first))


def _faces_table(job: VideoJob, staged: pa.Table | None, faces_schema: pa.Schema) -> pa.Table:
    if staged is None or not len(staged):
        return faces_schema.empty_table()
    staged = staged.combine_chunks()
    counts = pc.list_value_length(staged["bbox"]).to_numpy(zero_copy_only=False)
    frame_index = np.repeat(staged["frame_index"].to_numpy(), counts)
    face_index = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
    bbox = pc.list_flatten(staged["bbox"])
    tracks = assign_tracks(
        frame_index, schema.as_matrix(bbox), sampled_frames=np.asarray(job.indices, np.int64)
    )
    probs = pc.list_flatten(staged["emotion_probs"])
    labels = np.array(schema.read_metadata(faces_schema)["classes"])[schema.as_matrix(probs).argmax(axis=1)]
    n = len(frame_index)
    columns = {
        "video_id": pa.array([job.source.video_id] * n, pa.string()),
        "source_uri": pa.array([job.source.source_uri] * n, pa.string()),
        "frame_index": pa.array(frame_index, pa.int64()),
        "timestamp_s": pa.array(frame_index / job.info.fps, pa.float64()),
        "face_index": pa.array(face_index, pa.int32()),
        "track_id": pa.array(tracks, pa.int64()),
        "bbox": bbox,
        "det_score": pc.list_flatten(staged["det_score"]),
        "landmarks": pc.list_flatten(staged["landmarks"]),
        "emotion": pa.array(labels.tolist(), pa.string()),
        "emotion_probs": probs,
        "valence": pc.list_flatten(staged["valence"]),
        "arousal": pc.list_flatten(staged["arousal"]),
    }
    if "features" in faces_schema.names:
        columns["features"] = pc.list_flatten(staged["features"])
    return pa.table(columns).cast(faces_schema)


def _video_row(job: VideoJob, run_id: str) -> dict:
    info = job.info
    return {
        "video_id": job.source.video_id,
        "source_uri": job.source.source_uri,
        "status": "failed",
        "error": None,
        "fps": info.fps if info else None,
        "frame_count": info.frame_count if info else None,
        "duration_s": info.duration_s if info else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "frames_sampled": 0,
        "faces": 0,
        "tracks": 0,
        "decode_s": 0.0,
        "infer_s": 0.0,
        "run_id": run_id,
        **dict(job.source.extra),
    }


def _commit(output: Output, job: VideoJob, faces: pa.Table | None, row: dict) -> dict:
    output.commit_video(job.source.video_id, faces, pa.Table.from_pylist([row], schema=_row_schema(row)))
    return row


def _row_schema(row: dict) -> pa.Schema:
    base = set(schema.VIDEOS_BASE.names)
    extra = pa.Table.from_pylist([{k: v for k, v in row.items() if k not in base}]).schema
    return schema.videos_schema(extra if len(extra) else None)


# -- the job -------------------------------------------------------------------------------------------


def _decode_memory(jobs: list[VideoJob]) -> int:
    """Memory a decode task holds: a block of the largest frames, a copy as bytes, and decord's buffers.

    Declaring it keeps Ray from fusing decoding into the face actors, so decoders scale on their own.
    """
    largest = max((j.info.width * j.info.height * 3 for j in jobs if j.info), default=1)
    return DECODE_BASE_MEMORY + 4 * FRAMES_PER_BLOCK * largest


def _pool_size(config: ExtractConfig, gpus: float) -> tuple[int, float]:
    """Actors and GPUs per actor: one actor per GPU share, else half the CPUs (the rest decode)."""
    resources = ray.cluster_resources()
    if gpus:
        return config.workers or max(1, int(resources.get("GPU", 0) / gpus)), gpus
    cpus = resources.get("CPU", 1)
    return config.workers or max(1, int(cpus // (2 * config.cpus_per_worker))), 0.0


@dataclass(frozen=True)
class Plan:
    """A checked job: models resolved, output writable and compatible, inputs listed. No Ray needed."""

    config: ExtractConfig
    output: Output
    sources: tuple[VideoSource, ...]
    faces_schema: pa.Schema
    frames_schema: pa.Schema
    run_id: str
    started: datetime


def prepare(config: ExtractConfig) -> Plan:
    """Everything that can fail because of the arguments, done before any work starts.

    Raises ValueError (bad inputs, settings, models), ModelUnavailableError (offline) or OSError
    (unwritable output): all are the caller's to fix.
    """
    started = datetime.now(timezone.utc)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    common = dict(device="cpu", model_dir=config.model_dir, storage_options=config.storage_options)
    model = EmotionModel.load(config.model, **common)
    settings = model.settings
    if not config.faces_cropped:
        FaceDetector.load(config.detector, input_size=config.det_size, **common)
    public = config.public()
    info = {
        "emotibatch": __version__,
        "run_id": run_id,
        "classes": list(settings.classes),
        "model": public["model"],
        "model_sha256": model.sha256,
        "detector": None if config.faces_cropped else public["detector"],
        "settings": public,
    }
    n_classes, dim = len(settings.classes), settings.feature_dim
    faces_schema = schema.with_metadata(schema.faces_schema(n_classes, dim, config.features_dtype), info)
    frames_schema = schema.frames_schema(n_classes, dim, config.features_dtype)
    sources = list_sources(
        config.inputs, frame_folders=config.frame_folders, storage_options=config.storage_options
    )
    output = Output(config.output, config.storage_options)
    # The model's file, not only its name: a replaced file would mix two models' features in one output.
    output.check_settings(config.identity() | {"model_sha256": model.sha256}, overwrite=config.overwrite)
    return Plan(config, output, tuple(sources), faces_schema, frames_schema, run_id, started)


def extract(config: ExtractConfig) -> RunResult:
    """Prepare, then run on the Ray cluster at `config.address` (an embedded local one by default)."""
    return run(prepare(config))


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Connect to the Ray cluster at `address` (or RAY_ADDRESS, as inside `ray job submit`), else start an
    embedded local Ray without a dashboard; do nothing when already connected. Disconnects what it opened."""
    started = not ray.is_initialized()
    if started and (address or os.environ.get("RAY_ADDRESS")):
        ray.init(address=address)
    elif started:
        ray.init(include_dashboard=False)  # embedded: no dashboard or job API to expose
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run(plan: Plan) -> RunResult:
    """Run a prepared job on the cluster `--address` names, or an embedded local Ray (see `connected`)."""
    with connected(plan.config.address):
        return execute(plan)


def execute(plan: Plan) -> RunResult:
    """Run a prepared job on the current Ray cluster (see module docstring); return what it did."""
    config, output, sources, run_id = plan.config, plan.output, plan.sources, plan.run_id
    finished = output.finished()
    todo = [s for s in sources if s.video_id not in finished]
    log.info(
        "%d inputs: %d finished by earlier runs, %d to do", len(sources), len(sources) - len(todo), len(todo)
    )

    jobs = probe_all(todo, config) if todo else []
    work = [_work_item(job, seg) for job in jobs for seg in pending_segments(job, output)]
    if work:
        gpus = config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU") else 0.0
        actors, gpus = _pool_size(config, gpus)
        (
            ray.data.from_items(work)
            .map_batches(
                decode_segments,
                fn_kwargs={"config": config},
                batch_size=1,
                batch_format="pyarrow",
                num_cpus=config.decode_cpus,
                memory=_decode_memory(jobs),
            )
            .map_batches(
                FaceStage,
                fn_constructor_args=(config, plan.frames_schema),
                batch_size=FRAMES_PER_BLOCK,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_gpus=gpus,
                num_cpus=config.cpus_per_worker,
            )
            .write_datasink(StagingSink(output, plan.frames_schema))
        )
    finalize = ray.remote(num_cpus=1)(finalize_video)
    rows = ray.get([finalize.remote(job, output, plan.faces_schema, run_id) for job in jobs])
    ended = datetime.now(timezone.utc)
    wall = (ended - plan.started).total_seconds()
    sampled = sum(r["frames_sampled"] for r in rows)
    faces = sum(r["faces"] for r in rows)
    run = {
        "run_id": run_id,
        "started_at": plan.started,
        "ended_at": ended,
        "settings": json.dumps(config.public(), sort_keys=True),
        "videos": len(sources),
        "videos_ok": sum(r["status"] == "ok" for r in rows),
        "videos_failed": sum(r["status"] == "failed" for r in rows),
        "videos_skipped": len(sources) - len(todo),
        "frames_decoded": sum((r["frame_count"] or 0) for r in rows if r["status"] == "ok"),
        "frames_sampled": sampled,
        "faces": faces,
        "tracks": sum(r["tracks"] for r in rows),
        "wall_s": wall,
        "frames_per_s": sampled / wall if wall else 0.0,
        "faces_per_s": faces / wall if wall else 0.0,
    }
    output.write_table(
        output.join("runs", f"{run_id}.parquet"), pa.Table.from_pylist([run], schema=schema.RUNS)
    )
    return RunResult(run_id, config.output, rows, run)
