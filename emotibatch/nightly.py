"""The nightly lecture job: lectures uploaded under a prefix since the last run -> that night's outputs.

A lecture is a video file under the prefix (any fsspec URI), known by its path relative to the prefix
(`video_id`, extension kept: stable from night to night and unique by construction) and by its size and
ETag (or modification time where the store has no ETag). `prepare` lists the prefix once and takes:

- lectures processed already: a row with status ok in the processed manifest for the same redacted URI,
  size and stamp (a re-uploaded lecture has another stamp, so it is processed again);
- uploads still in progress, left for a later run: modified less than `settle_minutes` ago, or without
  their completion marker (`lecture.mp4` + `completion_marker`, e.g. `lecture.mp4.done`) when one is
  configured. A store that reports no modification time cannot be aged: configure a marker there;
- the rest, to do tonight: written to an input manifest (uri, video_id, size, stamp) that the extract
  job (`pipeline.prepare`, then `pipeline.execute`) reads, so the videos rows carry the stamp.

`run` extracts them into the night's output, summarises every lecture that ended ok (Ray tasks, one per
lecture), then appends one row per lecture to the processed manifest: ok, or failed with the error.
Failed lectures are not processed as far as the next run is concerned: it tries them again. The manifest
is written last, so a run that dies half-way leaves every lecture to the next run; a rerun for the same
night resumes that night's extract output (its finished videos are not decoded again). One nightly run
at a time per OUT: two at once would each rewrite the manifest.

Layout under OUT:

    OUT/_nightly/processed.parquet               one row per lecture per run that tried it (schema.NIGHTLY_PROCESSED)
    OUT/_nightly/inputs/<night>-<id>.parquet     the input manifest of each run that had work
    OUT/date=YYYY-MM-DD/                         that night's extract output (faces/, videos/, runs/)
    OUT/date=YYYY-MM-DD/summaries/lectures/<video>.parquet    one row per lecture (schema.lecture_schema)
    OUT/date=YYYY-MM-DD/summaries/tracks/<video>.parquet      one row per face track (schema.track_schema)
    OUT/date=YYYY-MM-DD/summaries/engagement/<video>.parquet  engagement timelines (schema.NIGHTLY_TIMELINE:
                                                 `emotibatch predict`'s columns, `score` the value averaged)
    OUT/date=YYYY-MM-DD/reports/<video>.html     one self-contained HTML report per lecture (report.py)
    OUT/date=YYYY-MM-DD/index.html               the night's page, linking every lecture's report
    OUT/date=YYYY-MM-DD/failures.json            the latest run's failed lectures, with their errors
    OUT/courses.html                             the course view across nights, rebuilt by every run

Summaries: the share of each emotion is the fraction of a lecture's (or track's) face rows with that
label; at a fixed sampling rate every row stands for the same time of one face, so it is a share of face
time. Valence and arousal means are null for models without them. Engagement runs by default (`auto`):
EmotiEffLib's pretrained head where it can be had (cached, or pulled) and the emotion model gives its
features; where it cannot, the night goes on without it and says so in its log, its index and its
lecture pages (the engagement columns are then null). `none` turns it off; a model given by name or
path must load, or the run is refused before any work:

- EmotiEffLib's pretrained head (`engagement_single_attention`, or a path to its h5 file; engagement.py)
  scores windows of 128 consecutive face frames of one track, every frame, from enet_b0 features (1280-d):
  a track needs 128 face frames (at --fps 1, over two minutes of its face found in every sampled frame).
  Shorter tracks are not scored; their track row says why. Timeline `score`: P(Engaged).
- A model directory from `emotibatch fit` scores windows of `engagement_window_s` seconds of each track
  with its recipe, as `emotibatch predict --windows S --per-track` does: `score` is a regression model's
  (engagewild) score, or a classifier's (daisee) expected level under its probabilities.

A lecture's engagement is the mean over its timeline windows (all tracks): longer tracks weigh more.

The course view (`OUT/courses.html`) is made from what the nights wrote: every night's lecture summaries
(the latest night wins for a lecture processed twice), the processed manifest for the lectures whose
latest try failed, and this run's listing for the uploads still waiting. A course is a lecture's folder
under the prefix (`course1/week1.mp4` is in course1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from emotibatch import cluster, schema
from emotibatch.clips.aggregate import Recipe, describe_video, emotion_model, emotion_model_mismatch
from emotibatch.clips.classify import CARD_FILE, ClipModel
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.extract.output import Output, video_key
from emotibatch.inference import registry
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.engagement import (
    DEFAULT_WINDOW,
    ENGAGEMENT_CLASSES,
    FEATURE_DIM,
    EngagementModel,
    window_starts,
)
from emotibatch.io import files
from emotibatch.io.redact import clean_text, redact_uri
from emotibatch.io.sources import VIDEO_EXTENSIONS, open_fs, uri_of
from emotibatch.reports import report
from emotibatch.reports.summary import summarize_engagement

log = logging.getLogger(__name__)

LECTURE_SAMPLING = Sampling("fps", 1.0)
NIGHTLY_DIR = "_nightly"
PROCESSED_FILE = "processed.parquet"
FAILURES_FILE = "failures.json"
SUMMARIES = "summaries"
REPORTS = "reports"  # one self-contained HTML page per lecture; index.html beside them links them
COURSES_FILE = "courses.html"
AUTO_ENGAGEMENT = "auto"  # the pretrained head where it can be had (see the module docstring)
NO_ENGAGEMENT = "none"
PRETRAINED_ENGAGEMENT = "engagement_single_attention"
# What the summaries read of a faces file (and `features` with an engagement model).
FACE_COLUMNS = [
    "frame_index",
    "timestamp_s",
    "face_index",
    "track_id",
    "emotion",
    "emotion_probs",
    "valence",
    "arousal",
]
_MODIFIED_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")

# -- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NightlyConfig:
    """The nightly job's settings. `extract` holds the extraction settings: its one input is the prefix
    and its output is OUT (each night's run gets its own manifest and `OUT/date=...` in their place)."""

    extract: ExtractConfig
    settle_minutes: float = 30.0
    completion_marker: str | None = None
    engagement_model: str = AUTO_ENGAGEMENT  # or NO_ENGAGEMENT, a registry name, a path, a fit directory
    engagement_window_s: float = 60.0
    night: date | None = None  # default: the UTC date when the run is prepared

    def __post_init__(self) -> None:
        problems = []
        if len(self.extract.inputs) != 1:
            problems.append(
                f"give one PREFIX (a directory or object-store prefix), got {len(self.extract.inputs)}"
            )
        if self.extract.frame_folders or self.extract.overwrite:
            problems.append("lectures are video files, and a night's output is resumed, never overwritten")
        if self.settle_minutes < 0:
            problems.append(f"--settle-minutes must be >= 0, got {self.settle_minutes}")
        if self.completion_marker is not None and not self.completion_marker.strip():
            problems.append("--completion-marker must be a non-empty suffix, e.g. .done")
        if self.engagement_window_s <= 0:
            problems.append(f"--engagement-window must be > 0 seconds, got {self.engagement_window_s}")
        if not self.engagement_model.strip():
            problems.append(f"--engagement-model must name a model, {AUTO_ENGAGEMENT} or {NO_ENGAGEMENT}")
        if (
            self.engagement_model not in (AUTO_ENGAGEMENT, NO_ENGAGEMENT)
            and self.extract.features_dtype == "none"
        ):
            problems.append("--engagement-model needs the feature vectors: drop --features-dtype none")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def prefix(self) -> str:
        return self.extract.inputs[0]

    @property
    def output(self) -> str:
        return self.extract.output


# -- engagement ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedEngagement:
    """EmotiEffLib's attention head: P(Engaged) per window of 128 face frames of a track, every frame."""

    model: EngagementModel
    name: str

    def timelines(
        self, video_id: str, faces: pa.Table, duration_s: float | None
    ) -> tuple[pa.Table, dict[int, str]]:
        """Timeline rows of every track long enough, and {track: why it is not scored} for the others."""
        rows: dict[str, list] = {name: [] for name in schema.NIGHTLY_TIMELINE.names}
        notes: dict[int, str] = {}
        all_times = faces["timestamp_s"].to_numpy()
        for track, idx in _tracks(faces):
            try:
                starts = window_starts(len(idx), DEFAULT_WINDOW)
            except ValueError as exc:  # fewer face frames than one window: the message says what is needed
                notes[track] = str(exc)
                continue
            times = all_times[idx]
            scores = self.model.predict(schema.as_matrix(faces["features"].take(pa.array(idx))))
            rows["video_id"] += [video_id] * len(starts)
            rows["track_id"] += [track] * len(starts)
            rows["window_start_s"] += times[starts].tolist()
            rows["window_end_s"] += times[starts + DEFAULT_WINDOW - 1].tolist()
            rows["n_frames"] += [DEFAULT_WINDOW] * len(starts)
            rows["prediction"] += [ENGAGEMENT_CLASSES[i] for i in scores.argmax(axis=1)]
            rows["score"] += scores[:, ENGAGEMENT_CLASSES.index("Engaged")].tolist()
        return pa.table(rows, schema=schema.NIGHTLY_TIMELINE), notes


@dataclass(frozen=True)
class FittedEngagement:
    """A model from `emotibatch fit`, over windows of `window_s` seconds of each track."""

    model: ClipModel
    name: str
    window_s: float

    def timelines(
        self, video_id: str, faces: pa.Table, duration_s: float | None
    ) -> tuple[pa.Table, dict[int, str]]:
        card = self.model.card_
        recipe = Recipe(
            card["recipe"]["name"],
            windows=self.window_s,
            per_track=True,
            emotion_probs=card["recipe"]["emotion_probs"],
        )
        provenance = schema.Provenance.from_schema(faces.schema)
        dim = faces.schema.field("features").type.list_size
        width = recipe.width(dim, len(provenance.classes))
        descriptors = describe_video(video_id, faces, recipe, width, duration_s)
        descriptors = descriptors.filter(descriptors["has_faces"])
        info = {"recipe": recipe.params(), "emotion_model": emotion_model(provenance, dim)}
        descriptors = descriptors.cast(schema.with_metadata(descriptors.schema, info))
        predicted = self.model.predict(descriptors)
        if card["kind"] == "regression":
            value = predicted["score"].to_numpy(zero_copy_only=False)
        else:  # numeric levels, checked by load_engagement: the expected level
            value = sum(
                float(c) * predicted[f"prob_{c}"].to_numpy(zero_copy_only=False)
                for c in self.model.estimator_.classes_
            )
        table = pa.table(
            {
                "video_id": descriptors["video_id"],
                "track_id": descriptors["track_id"],
                "window_start_s": descriptors["window_start_s"],
                "window_end_s": descriptors["window_end_s"],
                "n_frames": descriptors["n_frames"],
                "prediction": pc.cast(predicted["prediction"], pa.string()),
                "score": pa.array(np.asarray(value, np.float64)),
            }
        )
        return table.cast(schema.NIGHTLY_TIMELINE), {}


Engagement = PretrainedEngagement | FittedEngagement


def load_engagement(model: str, extract: ExtractConfig, window_s: float = 60.0) -> Engagement:
    """The engagement model `model` (an `emotibatch fit` directory, a registry name, a path or a URI),
    refused here when it cannot use the features `extract`'s emotion model gives."""
    emotion = EmotionModel.load(
        extract.model, device="cpu", model_dir=extract.model_dir, storage_options=extract.storage_options
    )
    settings = emotion.settings
    if (Path(model) / CARD_FILE).is_file():
        fitted = ClipModel.load(model)
        card = fitted.card_
        # The emotion model alone decides the features: no detector is loaded for this check.
        got = schema.Provenance(settings.classes, extract.public()["model"], emotion.sha256, None, None)
        problem = emotion_model_mismatch(card["emotion_model"], emotion_model(got, settings.feature_dim))
        if problem:
            raise ValueError(
                f"{model} was not trained on the features lectures are extracted with: they come from "
                f"{problem}; use --model {card['emotion_model']['model']}"
            )
        classes = [str(c) for c in getattr(fitted.estimator_, "classes_", [])]
        if card["kind"] != "regression" and not (
            hasattr(fitted.estimator_, "predict_proba") and all(_is_number(c) for c in classes)
        ):
            raise ValueError(
                f"{model} is a {card['task']} classifier of classes {classes}: engagement needs a regression "
                "model (task engagewild) or a classifier of numeric levels with probabilities (task daisee)"
            )
        return FittedEngagement(fitted, model, window_s)
    path = registry.resolve(model, model_dir=extract.model_dir, storage_options=extract.storage_options)
    if settings.feature_dim != FEATURE_DIM:
        raise ValueError(
            f"the pretrained engagement head needs enet_b0 features ({FEATURE_DIM}-d), but {settings.name} gives "
            f"{settings.feature_dim}-d: extract with --model enet_b0_8_best_vgaf (or another enet_b0 model)"
        )
    return PretrainedEngagement(EngagementModel.load(path), redact_uri(model))


def choose_engagement(config: NightlyConfig) -> tuple[Engagement | None, str | None]:
    """The night's engagement model, or None and a sentence saying why none runs (see the module
    docstring). A model named by the user that cannot be used raises, as `load_engagement` does."""
    chosen = config.engagement_model
    if chosen == NO_ENGAGEMENT:
        return None, f"No engagement model ran: --engagement-model {NO_ENGAGEMENT}."
    if chosen != AUTO_ENGAGEMENT:
        return load_engagement(chosen, config.extract, config.engagement_window_s), None
    if config.extract.features_dtype == "none":
        return (
            None,
            "No engagement model ran: it needs the feature vectors, and --features-dtype none keeps none.",
        )
    try:
        return load_engagement(PRETRAINED_ENGAGEMENT, config.extract), None
    except (registry.ModelUnavailableError, registry.IntegrityError, ValueError) as exc:
        why = clean_text(str(exc).splitlines()[0])
        return None, f"No engagement model ran: EmotiEffLib's {PRETRAINED_ENGAGEMENT} cannot be used ({why})."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- summaries -----------------------------------------------------------------------------------------


def _tracks(faces: pa.Table) -> Iterator[tuple[int, np.ndarray]]:
    """(track_id, row indices in time order) per track, tracks in id order."""
    tracks = faces["track_id"].to_numpy()
    order = np.lexsort((faces["timestamp_s"].to_numpy(), tracks))
    for group in np.split(order, np.flatnonzero(np.diff(tracks[order])) + 1):
        if len(group):
            yield int(tracks[group[0]]), group


def _mean(column: pa.ChunkedArray, idx: np.ndarray) -> float | None:
    return pc.mean(column.take(pa.array(idx))).as_py()


def _share_values(labels: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    n = len(labels)
    return {f"share_{c}": (float(np.count_nonzero(labels == c)) / n if n else None) for c in classes}


def summarize_lecture(
    faces: pa.Table,
    video: dict[str, Any],
    *,
    night: date,
    run_id: str,
    engagement: Engagement | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """The lecture row, its track rows and (with an engagement model) its timelines, from its faces
    table (with its schema metadata) and its videos row. Engagement per track and per lecture are
    `reports.summary`'s, the numbers the report shows."""
    classes = list(schema.Provenance.from_schema(faces.schema).classes)
    video_id = video["video_id"]
    labels = np.asarray(faces["emotion"].to_pylist(), dtype=object)
    timeline, notes = engagement.timelines(video_id, faces, video["duration_s"]) if engagement else (None, {})
    scored = summarize_engagement(timeline, "score") if timeline is not None else None
    per_track = scored.tracks if scored is not None else {}
    tracks = []
    all_times = faces["timestamp_s"].to_numpy()
    for track, idx in _tracks(faces):
        times = all_times[idx]
        mean, windows = per_track.get(track, (None, 0 if engagement else None))
        tracks.append(
            {
                "video_id": video_id,
                "track_id": track,
                "first_s": float(times[0]),
                "last_s": float(times[-1]),
                "frames": len(idx),
                **_share_values(labels[idx], classes),
                "valence_mean": _mean(faces["valence"], idx),
                "arousal_mean": _mean(faces["arousal"], idx),
                "engagement_mean": mean,
                "engagement_windows": windows,
                "engagement_note": notes.get(track),
            }
        )
    everything = np.arange(len(faces))
    lecture = {
        "video_id": video_id,
        "source_uri": video["source_uri"],
        "night": night,
        "run_id": run_id,
        "duration_s": video["duration_s"],
        "frames_sampled": video["frames_sampled"],
        "frames_with_faces": len(pc.unique(faces["frame_index"])),
        "faces": len(faces),
        "tracks": len(tracks),
        **_share_values(labels, classes),
        "valence_mean": _mean(faces["valence"], everything) if len(faces) else None,
        "arousal_mean": _mean(faces["arousal"], everything) if len(faces) else None,
        "engagement_model": engagement.name if engagement else None,
        "engagement_mean": scored.room if scored is not None else None,
        "engagement_tracks_scored": len(per_track) if engagement else None,
        "engagement_tracks_unscored": len(tracks) - len(per_track) if engagement else None,
    }
    return (
        pa.Table.from_pylist([lecture], schema=schema.lecture_schema(classes)),
        pa.Table.from_pylist(tracks, schema=schema.track_schema(classes)),
        timeline,
    )


def _summarize(
    night_output: Output,
    video: dict[str, Any],
    night: date,
    run_id: str,
    engagement: Engagement | None,
    notes: tuple[str, ...] = (),
) -> list[str]:
    """Ray task: summarise one lecture from its faces file; return the files written. `notes` go on its
    page (why no engagement model ran)."""
    key = video_key(video["video_id"])
    columns = [*FACE_COLUMNS, *(["features"] if engagement else [])]
    faces = pq.read_table(
        night_output.faces_path(video["video_id"]), columns=columns, filesystem=night_output.fs
    )
    tables = summarize_lecture(faces, video, night=night, run_id=run_id, engagement=engagement)
    written = []
    for name, table in zip(("lectures", "tracks", "engagement"), tables):
        if table is not None:
            path = night_output.join(SUMMARIES, name, f"{key}.parquet")
            night_output.write_table(path, table)
            written.append(uri_of(night_output.fs, path))
    timeline = tables[2]
    written.append(
        report.write_report(
            night_output.root,
            uri_of(night_output.fs, night_output.join(REPORTS, f"{key}.html")),
            videos=[video["video_id"]],
            engagement=timeline if timeline is not None and len(timeline) else None,
            notes=notes,
            storage_options=night_output.storage_options,
        )
    )
    return written


# -- listing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lecture:
    """A lecture file under the prefix. `uri` is what is read (may hold credentials); `source_uri` not."""

    uri: str
    video_id: str
    size: int
    stamp: str

    @property
    def source_uri(self) -> str:
        return redact_uri(self.uri)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.source_uri, self.size, self.stamp)


@dataclass(frozen=True)
class Waiting:
    """An upload left for a later run, and why."""

    source_uri: str
    reason: str
    video_id: str


def _modified(info: dict[str, Any]) -> datetime | None:
    for key in _MODIFIED_KEYS:
        value = info.get(key)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, timezone.utc)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return None


def list_lectures(config: NightlyConfig) -> list[tuple[Lecture, datetime | None, bool]]:
    """Every video under the prefix, its modification time, and whether its completion marker exists
    (True when no marker is configured)."""
    fs, root = open_fs(config.prefix, config.extract.storage_options)
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    if not found and not fs.isdir(root):
        raise ValueError(f"{redact_uri(config.prefix)}: no such directory or prefix (nothing listed there)")
    lectures = []
    for path, info in sorted(found.items()):
        relative = posixpath.relpath(path, root)
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if hidden or posixpath.splitext(path)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        uri = uri_of(fs, path)
        stamp = files.stamp(info)
        marked = not config.completion_marker or path + config.completion_marker in found
        lectures.append((Lecture(uri, relative, int(info.get("size") or 0), stamp), _modified(info), marked))
    return lectures


# -- the job -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NightPlan:
    """A checked run: the lectures to do, those left for later, the extract plan (None: nothing to do)."""

    config: NightlyConfig
    night: date
    todo: tuple[Lecture, ...]
    waiting: tuple[Waiting, ...]
    processed_before: int
    extract: pipeline.Plan | None
    engagement: Engagement | None
    engagement_note: str | None = None  # why no engagement model runs (None: one does)


@dataclass(frozen=True)
class LectureOutcome:
    """What tonight did with one lecture; `files` are its outputs (faces, summaries, timelines)."""

    lecture: Lecture
    status: str  # ok or failed
    error: str | None = None
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class NightResult:
    """What a run did. `lectures` and their `files` are the night's new outputs (what reports build on)."""

    night: date
    run_id: str | None
    output: str
    night_output: str | None
    lectures: tuple[LectureOutcome, ...]
    waiting: tuple[Waiting, ...]
    processed_before: int
    failures_file: str | None = None
    engagement_note: str | None = None
    courses_file: str | None = None

    @property
    def failed(self) -> list[LectureOutcome]:
        return [o for o in self.lectures if o.status != "ok"]

    def describe(self) -> list[str]:
        """A short summary for the log and the terminal, then one line per failed lecture."""
        ok = len(self.lectures) - len(self.failed)
        lines = [
            f"night {self.night}: {len(self.lectures)} lectures tried ({ok} ok, {len(self.failed)} failed), "
            f"{len(self.waiting)} uploads waiting, {self.processed_before} processed by earlier runs"
            + (f"; outputs in {redact_uri(self.night_output)}" if self.night_output and self.lectures else "")
        ]
        if self.engagement_note and self.lectures:
            lines.append(self.engagement_note)
        if self.courses_file:
            lines.append(f"course view: {redact_uri(self.courses_file)}")
        lines += [f"failed {o.lecture.video_id}: {o.error}" for o in self.failed]
        if self.failures_file and self.failed:
            lines.append(f"failures listed in {redact_uri(self.failures_file)}")
        return lines


def _read_processed(root: Output) -> pa.Table:
    path = root.join(NIGHTLY_DIR, PROCESSED_FILE)
    if not root.fs.exists(path):
        return schema.NIGHTLY_PROCESSED.empty_table()
    return pq.read_table(path, filesystem=root.fs).cast(schema.NIGHTLY_PROCESSED)


def prepare(config: NightlyConfig) -> NightPlan:
    """List the prefix, choose tonight's lectures, write their manifest and prepare their extraction.

    Everything that can fail because of the arguments fails here (ValueError, OSError,
    ModelUnavailableError), before any work.
    """
    now = datetime.now(timezone.utc)
    night = config.night or now.date()
    root = Output(config.output, config.extract.storage_options)
    engagement, engagement_note = choose_engagement(config)
    processed_table = _read_processed(root).filter(pc.equal(pc.field("status"), "ok"))
    processed = set(
        zip(
            processed_table["source_uri"].to_pylist(),
            processed_table["size"].to_pylist(),
            processed_table["stamp"].to_pylist(),
        )
    )
    todo, waiting, before = [], [], 0
    settle = config.settle_minutes * 60
    for lecture, modified, marked in list_lectures(config):
        if lecture.key in processed:
            before += 1
        elif not marked:
            why = f"no completion marker {config.completion_marker} yet"
            waiting.append(Waiting(lecture.source_uri, why, lecture.video_id))
        elif modified is not None and (now - modified).total_seconds() < settle:
            age = (now - modified).total_seconds() / 60
            why = f"modified {age:.0f} min ago (< {config.settle_minutes:g} min)"
            waiting.append(Waiting(lecture.source_uri, why, lecture.video_id))
        else:
            todo.append(lecture)
    extract = None
    if todo:
        manifest = root.join(NIGHTLY_DIR, "inputs", f"{night.isoformat()}-{uuid.uuid4().hex[:8]}.parquet")
        rows = [
            {"uri": x.uri, "video_id": x.video_id, "source_size": x.size, "source_stamp": x.stamp}
            for x in todo
        ]
        root.write_table(manifest, pa.Table.from_pylist(rows))
        night_output = f"{config.output.rstrip('/')}/date={night.isoformat()}"
        extract = pipeline.prepare(
            replace(config.extract, inputs=(uri_of(root.fs, manifest),), output=night_output)
        )
    return NightPlan(config, night, tuple(todo), tuple(waiting), before, extract, engagement, engagement_note)


def run(
    plan: NightPlan, progress: pipeline.Progress = pipeline.SILENT, *, verbose: bool = False
) -> NightResult:
    """Extract, summarise and record tonight's lectures (see the module docstring), telling `progress` how
    the extract goes (Ray's own output off unless `verbose`); log a summary."""
    if plan.extract is None:
        result = NightResult(
            plan.night,
            None,
            plan.config.output,
            None,
            (),
            plan.waiting,
            plan.processed_before,
            engagement_note=plan.engagement_note,
            courses_file=write_course_view(plan),
        )
        for line in result.describe():
            log.info(line)
        return result
    night_output = Output(plan.extract.config.output, plan.extract.config.storage_options)
    run_id = plan.extract.run_id
    with cluster.connected(plan.config.extract.address, verbose=verbose):
        pipeline.execute(plan.extract, progress)
        videos = {r["video_id"]: r for r in night_output.read_tables("videos").to_pylist()}
        task = ray.remote(num_cpus=1)(_summarize)
        engagement = ray.put(plan.engagement)
        notes = (plan.engagement_note,) if plan.engagement_note else ()
        pending: dict[str, ray.ObjectRef] = {}
        outcomes: dict[str, LectureOutcome] = {}
        for lecture in plan.todo:
            row = videos.get(lecture.video_id)
            if row is None:
                outcomes[lecture.video_id] = LectureOutcome(lecture, "failed", "the extract wrote no result")
            elif row["status"] != "ok":
                outcomes[lecture.video_id] = LectureOutcome(lecture, "failed", row["error"])
            elif (row.get("source_size"), row.get("source_stamp")) != (lecture.size, lecture.stamp):
                error = "changed after an earlier run tonight processed it; it is processed on the next night"
                outcomes[lecture.video_id] = LectureOutcome(lecture, "failed", error)
            else:
                pending[lecture.video_id] = task.remote(
                    night_output, row, plan.night, run_id, engagement, notes
                )
        for lecture in plan.todo:
            if lecture.video_id in pending:
                faces = uri_of(night_output.fs, night_output.faces_path(lecture.video_id))
                try:
                    written = (faces, *ray.get(pending[lecture.video_id]))
                    outcomes[lecture.video_id] = LectureOutcome(lecture, "ok", files=written)
                except ray.exceptions.RayTaskError as exc:
                    error = f"summary failed: {type(exc.cause).__name__}: {clean_text(str(exc.cause))}"
                    outcomes[lecture.video_id] = LectureOutcome(lecture, "failed", error)
    lectures = tuple(outcomes[x.video_id] for x in plan.todo)
    if any(o.status == "ok" for o in lectures):
        reports = uri_of(night_output.fs, night_output.join(REPORTS))
        index = uri_of(night_output.fs, night_output.join("index.html"))
        report.write_index(
            reports,
            index,
            title=f"Lectures of {plan.night.isoformat()}",
            notes=[plan.engagement_note] if plan.engagement_note else [],
            links=[(f"../{COURSES_FILE}", "Every night's lectures, by course")],
            storage_options=night_output.storage_options,
        )
    failures = night_output.join(FAILURES_FILE)
    listed = {
        "night": plan.night.isoformat(),
        "run_id": run_id,
        "failures": [
            {"video_id": o.lecture.video_id, "source_uri": o.lecture.source_uri, "error": o.error}
            for o in lectures
            if o.status != "ok"
        ],
    }
    files.write_bytes(night_output.fs, failures, (json.dumps(listed, indent=1) + "\n").encode())
    _record(plan, run_id, lectures)
    courses = write_course_view(plan)
    result = NightResult(
        plan.night,
        run_id,
        plan.config.output,
        plan.extract.config.output,
        lectures,
        plan.waiting,
        plan.processed_before,
        uri_of(night_output.fs, failures),
        plan.engagement_note,
        courses,
    )
    for line in result.describe():
        (log.warning if line.startswith("failed") else log.info)(line)
    return result


def _record(plan: NightPlan, run_id: str, lectures: Sequence[LectureOutcome]) -> None:
    """Append this run's outcomes to the processed manifest (rewritten whole: one run at a time)."""
    root = Output(plan.config.output, plan.config.extract.storage_options)
    finished = datetime.now(timezone.utc)
    rows = [
        {
            "source_uri": o.lecture.source_uri,
            "size": o.lecture.size,
            "stamp": o.lecture.stamp,
            "video_id": o.lecture.video_id,
            "status": o.status,
            "error": o.error,
            "night": plan.night,
            "run_id": run_id,
            "finished_at": finished,
        }
        for o in lectures
    ]
    table = pa.concat_tables(
        [_read_processed(root), pa.Table.from_pylist(rows, schema=schema.NIGHTLY_PROCESSED)]
    )
    root.write_table(root.join(NIGHTLY_DIR, PROCESSED_FILE), table)


# -- the course view -----------------------------------------------------------------------------------


def _course(video_id: str) -> str:
    return posixpath.dirname(video_id) or "(no folder)"


def write_course_view(plan: NightPlan) -> str:
    """Rebuild OUT/courses.html (see the module docstring); returns its URI."""
    root = Output(plan.config.output, plan.config.extract.storage_options)
    summaries: dict[str, dict[str, Any]] = {}  # video_id: its latest night's lecture row
    for path in sorted(root.fs.glob(root.join("date=*", SUMMARIES, "lectures", "*.parquet"))):
        for row in pq.read_table(path, filesystem=root.fs).to_pylist():
            summaries[row["video_id"]] = row  # date=YYYY-MM-DD sorts by night: the latest wins
    classes = list(
        dict.fromkeys(
            k.removeprefix("share_") for r in summaries.values() for k in r if k.startswith("share_")
        )
    )
    latest = {r["video_id"]: r for r in _read_processed(root).sort_by("finished_at").to_pylist()}
    lectures = []
    for video_id, tried in latest.items():
        night = tried["night"].isoformat()
        row = summaries.get(video_id)
        if tried["status"] == "ok" and row is not None:
            lectures.append(
                report.CourseLecture(
                    _course(video_id),
                    video_id,
                    "ok",
                    row["night"].isoformat(),
                    duration_s=row["duration_s"],
                    faces=row["faces"],
                    engagement=row["engagement_mean"],
                    shares={c: row.get(f"share_{c}") for c in classes},
                    href=urllib.parse.quote(
                        f"date={row['night'].isoformat()}/{REPORTS}/{video_key(video_id)}.html", safe="/="
                    ),
                )
            )
        elif tried["status"] != "ok":
            lectures.append(
                report.CourseLecture(_course(video_id), video_id, "failed", night, tried["error"])
            )
    lectures += [
        report.CourseLecture(_course(w.video_id), w.video_id, "waiting", None, w.reason)
        for w in plan.waiting
        if w.video_id not in latest
    ]
    unscored = any(x.status == "ok" and x.engagement is None for x in lectures)
    note = "Engagement shows - where no engagement model scored the lecture (its night's page says why)."
    text = report.course_page(lectures, classes, "Lectures by course", note=note if unscored else "")
    path = root.join(COURSES_FILE)
    files.write_bytes(root.fs, path, text.encode())
    return uri_of(root.fs, path)
