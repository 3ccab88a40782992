"""The extraction job, top to bottom: sources -> probe -> plan -> decode -> faces -> stage -> per-video pass.

1. List the inputs (sources.py) and drop the videos an earlier run already finished.
2. Probe each video (Ray tasks) and plan its time segments (decode.py); segments fully staged by an
   interrupted run are not redone. A video that cannot be probed fails alone, never the job.
3. One streaming Ray Data chain over the segments: decode the sampled frames in CPU tasks, then one
   actor pool holding the face detector and the emotion model (`FaceStage`; GPU where present), then
   staging tasks (output.py), one file per segment piece. The driver follows which frames are staged.
4. The per-video pass (Ray tasks), started for each video as soon as its last frame is staged: read a
   video's staged frames, check that every sampled frame is there, link faces into tracks (track.py),
   write `faces/` and the video's `videos/` row, drop its staging. A video with any failure gets a failed
   row and no faces.
5. The run's `runs/` row, written also when the job fails midway (with what ended it), so that every run
   that started work leaves its record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import ray

from emotibatch import __version__, schema
from emotibatch.cluster import connected
from emotibatch.config import ExtractConfig
from emotibatch.extract.decode import (
    FRAMES_PER_BLOCK,
    Segment,
    VideoJob,
    decode_blocks,
    frames_to_decode,
    plan_video,
    work_item,
)
from emotibatch.extract.face_stage import FaceStage
from emotibatch.extract.finalize import finalize_video
from emotibatch.extract.output import Lease, Output, stage_block, video_key
from emotibatch.inference.detect import FaceDetector
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.runtime import providers_for
from emotibatch.io.redact import redact_uri
from emotibatch.io.sources import VideoSource, list_sources
from emotibatch.io.storage import one_line

log = logging.getLogger(__name__)

# A decode worker's own footprint (Python, pyarrow, decord, FFmpeg), measured at about 200 MiB.
DECODE_BASE_MEMORY = 256 * 2**20
# Staging writes a few small files per block and the per-video pass mostly waits on storage. Staging
# reserves no CPU (one task per face actor at a time) and the pass half a CPU, so that both run beside
# decode tasks and face actors that hold every CPU of a small node: each video is committed while later
# ones are still being processed, not after the whole dataset.
STAGE_CPUS = 0.0
FINALIZE_CPUS = 0.5


@dataclass(frozen=True)
class RunResult:
    """What a run did: this run's rows of the videos table, and its row of the runs table. A video whose
    commit failed is among `videos` as failed, though `videos/` has no row for it (see `_committed_row`)."""

    run_id: str
    output: str
    videos: list[dict]
    run: dict

    @property
    def failed(self) -> list[dict]:
        return [v for v in self.videos if v["status"] == "failed"]


class Progress:
    """What the driver tells as it runs, for a person to watch (the CLI's display); silent here. Kept out of
    the results: a run does the same with any progress."""

    def planned(self, videos: int, frames: int) -> None:
        """This run's work, once probed: `videos` to commit, `frames` sampled frames still to stage."""

    def staged(self, frames: int, faces: int) -> None:
        """`frames` more sampled frames staged, holding `faces` faces."""

    def committed(self, videos: int) -> None:
        """`videos` more videos' per-video passes ended (committed ok or failed)."""


SILENT = Progress()


# -- 2. probe and plan --------------------------------------------------------------------------------


def probe_all(sources: list[VideoSource], config: ExtractConfig) -> list[VideoJob]:
    """Probe and plan every source in parallel Ray tasks (decode.plan_video). plan_video turns every error
    into the video's own; a task that still fails (its worker died, Ray could not run it) fails its video
    only, and a later run tries it again."""
    task = ray.remote(num_cpus=config.decode_cpus)(plan_video)
    options = {"storage_options": config.storage_options, "frame_rate": config.frame_rate}
    refs = [task.remote(s, config.sampling, config.segment_seconds, **options) for s in sources]
    jobs = []
    for source, ref in zip(sources, refs, strict=True):
        try:
            jobs.append(ray.get(ref))
        except ray.exceptions.RayError as exc:
            error = f"could not probe {source.source_uri}: {type(exc).__name__}; run the job again"
            jobs.append(VideoJob(source, None, error, sampling=config.sampling))
    return jobs


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
    """A checked job: models resolved, output leased, writable and compatible, inputs listed. No Ray needed.

    The plan holds the output's lease from `prepare` on: `run` and `execute` release it when they end, and
    whoever prepares a plan that never runs must call `release`.
    """

    config: ExtractConfig
    output: Output
    sources: tuple[VideoSource, ...]
    faces_schema: pa.Schema
    frames_schema: pa.Schema
    run_id: str
    started: datetime
    lease: Lease

    def release(self) -> None:
        self.lease.release()


def prepare(config: ExtractConfig) -> Plan:
    """Everything that can fail because of the arguments, done before any work starts.

    Raises ValueError (bad inputs, settings, models; output.OutputBusy when another run holds the
    output), ModelUnavailableError (offline) or OSError (unwritable output): all are the caller's to fix.
    The output is leased before it is checked or cleared, so that --overwrite never deletes another
    run's work.
    """
    providers_for(config.device)  # --device cuda without the CUDA provider: the install hint, before any work
    started = datetime.now(timezone.utc)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    common = dict(device="cpu", model_dir=config.model_dir, storage_options=config.storage_options)
    model = EmotionModel.load(config.model, **common)
    settings = model.settings
    detector = None
    if not config.faces_cropped:
        detector = FaceDetector.load(config.detector, input_size=config.det_size, **common)
    public = config.public()
    provenance = schema.Provenance(
        classes=settings.classes,
        model=public["model"],
        model_sha256=model.sha256,
        detector=None if detector is None else public["detector"],
        detector_sha256=None if detector is None else detector.sha256,
        settings=public,
        emotibatch=__version__,
        run_id=run_id,
    )
    n_classes, dim = len(settings.classes), settings.feature_dim
    faces_schema = provenance.on(schema.faces_schema(n_classes, dim, config.features_dtype))
    frames_schema = schema.frames_schema(n_classes, dim, config.features_dtype)
    sources = list_sources(
        config.inputs, frame_folders=config.frame_folders, storage_options=config.storage_options
    )
    output = Output(config.output, config.storage_options)
    inside = [uri for uri in (*config.inputs, *(s.uri for s in sources)) if output.contains(uri)]
    if inside:
        raise ValueError(
            f"the input {redact_uri(inside[0])} lies inside the output {redact_uri(config.output)}; "
            "choose an --output outside the inputs"
        )
    lease = Lease(output, run_id).acquire()
    try:
        # The models' files, not their names: a file replaced in place would mix two models' rows in one
        # output, while the same file named by another path is the same model.
        models = {"model_sha256": model.sha256, "detector_sha256": provenance.detector_sha256}
        output.check_settings(config.identity() | models, overwrite=config.overwrite)
    except BaseException:
        lease.release()
        raise
    return Plan(config, output, tuple(sources), faces_schema, frames_schema, run_id, started, lease)


def extract(config: ExtractConfig) -> RunResult:
    """Prepare, then run on the Ray cluster at `config.address` (an embedded local one by default)."""
    return run(prepare(config))


def run(plan: Plan, progress: Progress = SILENT, *, verbose: bool = False) -> RunResult:
    """Run a prepared job on the cluster `--address` names, or an embedded local Ray (cluster.connected,
    quiet unless `verbose`), telling `progress` how it goes.

    A rerun that finds every input finished starts no Ray (seconds, not a cluster's start-up): it only
    writes its runs row."""
    try:
        finished = plan.output.finished()
        idle = all(source.video_id in finished for source in plan.sources)
        with contextlib.nullcontext() if idle else connected(plan.config.address, verbose=verbose):
            return _execute(plan, progress, finished)
    finally:
        plan.release()


def _staged_frames(plan: Plan, work: list[dict], jobs: list[VideoJob]) -> ray.data.Dataset:
    """The streaming chain of step 3 over `work` (segments): rows of the frames staged."""
    config = plan.config
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU") else 0.0
    actors, gpus = _pool_size(config, gpus)
    return (
        ray.data.from_items(work)
        .map_batches(
            decode_blocks,
            fn_kwargs={
                "storage_options": config.storage_options,
                "num_threads": max(1, int(config.decode_cpus)),
            },
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
        .map_batches(
            stage_block,
            fn_kwargs={"output": plan.output, "schema": plan.frames_schema},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=STAGE_CPUS,
            compute=ray.data.TaskPoolStrategy(size=actors),
        )
    )


def _extract_and_commit(
    plan: Plan, jobs: list[VideoJob], pending: dict[str, list[Segment]], progress: Progress
) -> list[dict]:
    """Steps 3 and 4: stream the `pending` segments through the chain, and start each video's per-video
    pass as soon as its last pending frame is staged (at once when nothing is pending; at the end when a
    segment failed, and the pass says why). Returns the videos rows in the order of `jobs`."""
    finalize = ray.remote(num_cpus=FINALIZE_CPUS)(finalize_video)
    committing: dict[str, ray.ObjectRef] = {}
    running: list[ray.ObjectRef] = []  # passes started and not yet seen ending, for `progress`
    work, waiting = [], {}
    for job in jobs:
        segments = pending[job.source.video_id]
        work += [work_item(job, segment) for segment in segments]
        waiting[job.source.video_id] = (job, {i for segment in segments for i in segment.frame_indices})
    progress.planned(len(jobs), sum(len(left) for _, left in waiting.values()))

    def commit(video_id: str, *, force: bool = False) -> None:
        """Start the video's pass once nothing of it is pending, or now when `force`d."""
        job, left = waiting[video_id]
        if video_id not in committing and (force or not left):
            committing[video_id] = finalize.remote(job, plan.output, plan.faces_schema, plan.run_id)
            running.append(committing[video_id])

    def ended() -> None:
        """Tell `progress` of the passes that ended since last asked; waits for none."""
        if running:
            done, running[:] = ray.wait(running, num_returns=len(running), timeout=0, fetch_local=False)
            if done:
                progress.committed(len(done))

    for video_id in waiting:
        commit(video_id)
    if work:
        for staged in _staged_frames(plan, work, jobs).iter_batches(batch_size=None, batch_format="pyarrow"):
            frames = 0
            for video_id, frame_index in zip(
                staged["video_id"].to_pylist(), staged["frame_index"].to_pylist()
            ):
                left = waiting[video_id][1]
                frames += frame_index in left
                left.discard(frame_index)
                commit(video_id)
            progress.staged(frames, pc.sum(staged["faces"]).as_py() or 0)
            ended()
    for video_id in waiting:
        commit(video_id, force=True)
    while running:
        done, running[:] = ray.wait(running, num_returns=1, fetch_local=False)
        progress.committed(len(done))
    return [_committed_row(job, committing[job.source.video_id], plan.run_id) for job in jobs]


def _committed_row(job: VideoJob, ref: ray.ObjectRef, run_id: str) -> dict:
    """The videos row the per-video pass committed. A pass that failed (its commit could not be written,
    its worker died) fails its video only: the run reports it failed, with no row in `videos/`, so a
    rerun does it again."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        error = f"could not commit {job.source.source_uri}: {one_line(cause)}; run the job again"
        return {
            "video_id": job.source.video_id,
            "source_uri": job.source.source_uri,
            "status": "failed",
            "error": error,
            "frame_count": None,
            "frames_sampled": 0,
            "faces": 0,
            "tracks": 0,
            "run_id": run_id,
        }


def execute(plan: Plan, progress: Progress = SILENT) -> RunResult:
    """Run a prepared job on the current Ray cluster (see module docstring), telling `progress` how it goes;
    return what it did. Releases the plan's lease when it ends, also on an error or an interrupt."""
    try:
        return _execute(plan, progress, plan.output.finished())
    finally:
        plan.release()


def _execute(plan: Plan, progress: Progress, finished: set[str]) -> RunResult:
    """`execute` given the ids of the videos earlier runs finished (read once by the caller)."""
    config, output, sources, run_id = plan.config, plan.output, plan.sources, plan.run_id
    todo = [s for s in sources if s.video_id not in finished]
    log.info(
        "%d inputs: %d finished by earlier runs, %d to do", len(sources), len(sources) - len(todo), len(todo)
    )

    # A video whose staging outlived its commit (a task retried after the commit) is dropped here.
    by_key = {video_key(video_id): video_id for video_id in finished}
    for key in output.staged_keys() & by_key.keys():
        output.drop_staged(by_key[key])

    skipped, decoded = len(sources) - len(todo), 0
    try:
        jobs = probe_all(todo, config) if todo else []
        pending = {job.source.video_id: pending_segments(job, output) for job in jobs}
        decoded = sum(
            frames_to_decode(job.source, job.info, segment.frame_indices)
            for job in jobs
            for segment in pending[job.source.video_id]
        )
        rows = _extract_and_commit(plan, jobs, pending, progress)
    except BaseException as exc:
        # The run still gets its row, saying what ended it; the exception goes on to the caller (exit 1).
        try:
            _write_run(plan, skipped, decoded, _committed(plan), exc)
        except Exception:
            log.exception("could not write the runs row of run %s", run_id)
        raise
    return RunResult(run_id, config.output, rows, _write_run(plan, skipped, decoded, rows, None))


def _committed(plan: Plan) -> list[dict]:
    """The videos rows this run committed: what a run that failed midway did."""
    videos = plan.output.read_tables("videos")
    return [] if videos is None else [r for r in videos.to_pylist() if r["run_id"] == plan.run_id]


def _write_run(
    plan: Plan, skipped: int, decoded: int, rows: list[dict], failure: BaseException | None
) -> dict:
    """Write and return the run's row: `decoded` frames the decoder was to put out for this run's
    segments (decode.frames_to_decode); `error` says what ended a run early (`failure`), else null."""
    config, output, run_id = plan.config, plan.output, plan.run_id
    ended = datetime.now(timezone.utc)
    wall = (ended - plan.started).total_seconds()
    sampled = sum(r["frames_sampled"] for r in rows)
    faces = sum(r["faces"] for r in rows)
    run = {
        "run_id": run_id,
        "started_at": plan.started,
        "ended_at": ended,
        "settings": json.dumps(config.public(), sort_keys=True),
        "videos": len(plan.sources),
        "videos_ok": sum(r["status"] == "ok" for r in rows),
        "videos_failed": sum(r["status"] == "failed" for r in rows),
        "videos_skipped": skipped,
        "frames_decoded": decoded,
        "frames_sampled": sampled,
        "faces": faces,
        "tracks": sum(r["tracks"] for r in rows),
        "wall_s": wall,
        "frames_per_s": sampled / wall if wall else 0.0,
        "faces_per_s": faces / wall if wall else 0.0,
        "error": None if failure is None else f"the run ended early: {one_line(failure)}",
    }
    output.write_table(output.run_path(run_id), pa.Table.from_pylist([run], schema=schema.RUNS))
    return run
