"""Every Arrow schema the job writes, and the one metadata key that carries provenance.

Tables under an extract output:
- `faces/`: one row per detected face per sampled frame (`faces_schema`);
- `videos/`: one row per input, ok or failed (`videos_schema`): the commit record of a video;
- `runs/`: one row per run (`RUNS`).
`FRAMES` is internal: one row per sampled frame with its faces nested, as staged between extraction and
the per-video pass that tracks faces and writes `faces/`.
What made a faces table (`Provenance`: classes, both models' files, the run's settings with credentials
removed) travels as JSON under `METADATA_KEY`; so does the provenance of aggregate and predict outputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

METADATA_KEY = b"emotibatch"
FeaturesDtype = Literal["float32", "float16", "none"]


def vector(size: int, dtype: pa.DataType | None = None) -> pa.DataType:
    """A fixed-size float vector (boxes, landmarks, probabilities, features), float32 unless told."""
    return pa.list_(dtype or pa.float32(), size)


def descriptor_schema(width: int, *, per_track: bool, windows: bool) -> pa.Schema:
    """The aggregate output: one row per clip (or track, or window); the descriptor is null without faces."""
    fields = [pa.field("video_id", pa.string(), nullable=False)]
    if per_track:
        fields.append(pa.field("track_id", pa.int64()))  # null on the row of a clip without faces
    if windows:
        fields += [pa.field("window_start_s", pa.float64()), pa.field("window_end_s", pa.float64())]
    fields += [
        pa.field("n_frames", pa.int64(), nullable=False),  # frames the descriptor pools over
        pa.field("n_faces", pa.int64(), nullable=False),  # face rows it pools over
        pa.field("has_faces", pa.bool_(), nullable=False),
        pa.field("descriptor", vector(width)),
    ]
    return pa.schema(fields)


def as_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """[N, width] float32 view of a fixed-size-list column (a copy where float16 features are widened)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = pc.list_flatten(column).to_numpy().reshape(-1, column.type.list_size)
    return values.astype(np.float32, copy=False)


def features_type(dtype: FeaturesDtype) -> pa.DataType | None:
    return {"float32": pa.float32(), "float16": pa.float16(), "none": None}[dtype]


def with_metadata(schema: pa.Schema, info: Mapping[str, Any]) -> pa.Schema:
    """`schema` carrying `info` as JSON under `METADATA_KEY` (aggregate and predict outputs)."""
    return schema.with_metadata({METADATA_KEY: json.dumps(info, sort_keys=True).encode()})


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The JSON written by `with_metadata`, or {} for a table that has none."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Provenance:
    """What made a faces table, in its schema metadata: written by `on`, read by `from_schema`.

    The models are identified by their files' sha256 (the same file under another name or path is the
    same model; a file replaced in place is another); `model` and `detector` say how they were given
    (a registry name, or a path or URI with credentials removed), for people. `detector` and
    `detector_sha256` are None for face crops (`--faces-cropped`) and, like `model_sha256`, in outputs
    written before emotibatch recorded them. `settings` is the run's `ExtractConfig.public()`.
    """

    classes: tuple[str, ...]
    model: str
    model_sha256: str | None
    detector: str | None
    detector_sha256: str | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    emotibatch: str | None = None  # the version that wrote the table
    run_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            raise ValueError(f"provenance needs the model's class names, got {list(self.classes)}")
        for name in ("model_sha256", "detector_sha256"):
            value = getattr(self, name)
            if value is not None and not _SHA256.fullmatch(value):
                raise ValueError(f"provenance {name} must be a lowercase sha256 hex digest, got {value!r}")

    def on(self, schema: pa.Schema) -> pa.Schema:
        """`schema` carrying this provenance."""
        info = {
            "emotibatch": self.emotibatch,
            "run_id": self.run_id,
            "classes": list(self.classes),
            "model": self.model,
            "model_sha256": self.model_sha256,
            "detector": self.detector,
            "detector_sha256": self.detector_sha256,
            "settings": dict(self.settings),
        }
        return with_metadata(schema, info)

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> Provenance:
        """The provenance of a faces table, also one written before the sha256s were recorded; ValueError
        for a table without it (not written by `emotibatch extract`)."""
        info = read_metadata(schema)
        if "classes" not in info:
            raise ValueError(
                "this faces table carries no emotibatch provenance (class names, models): read a faces/ "
                "file written by `emotibatch extract`"
            )
        return cls(
            classes=tuple(info["classes"]),
            model=str(info.get("model") or "unknown"),
            model_sha256=info.get("model_sha256"),
            detector=info.get("detector"),
            detector_sha256=info.get("detector_sha256"),
            settings=info.get("settings") or {},
            emotibatch=info.get("emotibatch"),
            run_id=info.get("run_id"),
        )


def faces_schema(n_classes: int, feature_dim: int, features: FeaturesDtype) -> pa.Schema:
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("bbox", vector(4), nullable=False),
        pa.field("det_score", pa.float32()),  # null when the input frames are face crops already
        pa.field("landmarks", vector(10)),  # x, y of eyes, nose, mouth corners; null for face crops
        pa.field("emotion", pa.string(), nullable=False),
        pa.field("emotion_probs", vector(n_classes), nullable=False),
        pa.field("valence", pa.float32()),
        pa.field("arousal", pa.float32()),
    ]
    dtype = features_type(features)
    if dtype is not None:
        fields.append(pa.field("features", vector(feature_dim, dtype), nullable=False))
    return pa.schema(fields)


def frames_schema(n_classes: int, feature_dim: int, features: FeaturesDtype) -> pa.Schema:
    """Staged per-frame rows: each list column holds that frame's faces in detector order."""
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),  # -1 on the row that reports an error
        pa.field("error", pa.string()),  # a decode failure of this segment, or decode.LOST_FRAME
        pa.field("decode_s", pa.float64(), nullable=False),
        pa.field("infer_s", pa.float64(), nullable=False),
        pa.field("bbox", pa.list_(vector(4))),
        pa.field("det_score", pa.list_(pa.float32())),
        pa.field("landmarks", pa.list_(vector(10))),
        pa.field("emotion_probs", pa.list_(vector(n_classes))),
        pa.field("valence", pa.list_(pa.float32())),
        pa.field("arousal", pa.list_(pa.float32())),
    ]
    dtype = features_type(features)
    if dtype is not None:
        fields.append(pa.field("features", pa.list_(vector(feature_dim, dtype))))
    return pa.schema(fields)


VIDEOS_BASE = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        # "video", "image" (a still: one frame) or "frames" (a frame folder); null in rows written before
        # emotibatch recorded it.
        pa.field("kind", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
        pa.field("error", pa.string()),
        pa.field("fps", pa.float64()),
        pa.field("frame_count", pa.int64()),  # frames that decode
        pa.field("frame_count_claimed", pa.int64()),  # the container's count; null where it states none
        pa.field("warning", pa.string()),  # an ok video whose container is not what it claims
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("frames_sampled", pa.int64()),  # sampled frames that decoded: one faces row per face
        pa.field("frames_lost", pa.int64()),  # sampled frames that did not decode: no rows
        pa.field("sampling", pa.string()),  # the rule that ran (config.Sampling.label): "keyframes fps 1"
        pa.field("sampled_fps", pa.float64()),  # the achieved rate: frames_sampled / duration_s
        pa.field("faces", pa.int64()),
        pa.field("tracks", pa.int64()),
        pa.field("decode_s", pa.float64()),
        pa.field("infer_s", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


def videos_schema(extra: pa.Schema | None = None) -> pa.Schema:
    """The videos table: base columns, then a manifest's extra columns (types inferred from the manifest)."""
    if extra is None:
        return VIDEOS_BASE
    clashes = set(extra.names) & set(VIDEOS_BASE.names)
    if clashes:
        raise ValueError(f"manifest columns {sorted(clashes)} clash with the videos table; rename them")
    return pa.schema(list(VIDEOS_BASE) + list(extra))


RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ended_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("settings", pa.string(), nullable=False),  # JSON, credentials removed
        pa.field("videos", pa.int64(), nullable=False),
        pa.field("videos_ok", pa.int64(), nullable=False),
        pa.field("videos_failed", pa.int64(), nullable=False),
        pa.field("videos_skipped", pa.int64(), nullable=False),  # finished by an earlier run
        pa.field("frames_decoded", pa.int64(), nullable=False),  # the decoder's output for the sampled ones
        pa.field("frames_sampled", pa.int64(), nullable=False),
        pa.field("faces", pa.int64(), nullable=False),
        pa.field("tracks", pa.int64(), nullable=False),
        pa.field("wall_s", pa.float64(), nullable=False),
        pa.field("frames_per_s", pa.float64(), nullable=False),
        pa.field("faces_per_s", pa.float64(), nullable=False),
        pa.field("error", pa.string()),  # what ended the run early (the job exited 1), else null
    ]
)


# The nightly lecture job (nightly.py): which lectures were processed, and its summaries.
NIGHTLY_PROCESSED = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),  # redacted
        pa.field("size", pa.int64(), nullable=False),
        pa.field("stamp", pa.string(), nullable=False),  # ETag, else modification time
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok: processed; failed: tried again next run
        pa.field("error", pa.string()),
        pa.field("night", pa.date32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
NIGHTLY_TIMELINE = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("window_start_s", pa.float64(), nullable=False),
        pa.field("window_end_s", pa.float64(), nullable=False),  # pretrained head: its last frame's time
        pa.field("n_frames", pa.int64(), nullable=False),
        # As `emotibatch predict` writes them: the label or level, and the value the summaries average:
        # P(Engaged) (pretrained head), the regression score, or the expected level (classifier of levels).
        pa.field("prediction", pa.string()),
        pa.field("score", pa.float64()),
    ]
)


def _shares(classes: Sequence[str]) -> list[pa.Field]:
    return [pa.field(f"share_{c}", pa.float64()) for c in classes]


def lecture_schema(classes: Sequence[str]) -> pa.Schema:
    """One row per lecture; emotion shares are null for a lecture without faces."""
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("night", pa.date32(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("duration_s", pa.float64()),
            pa.field("frames_sampled", pa.int64()),
            pa.field("frames_with_faces", pa.int64()),
            pa.field("faces", pa.int64()),
            pa.field("tracks", pa.int64()),
            *_shares(classes),
            pa.field("valence_mean", pa.float64()),
            pa.field("arousal_mean", pa.float64()),
            pa.field("engagement_model", pa.string()),
            pa.field("engagement_mean", pa.float64()),
            pa.field("engagement_tracks_scored", pa.int64()),
            pa.field("engagement_tracks_unscored", pa.int64()),
        ]
    )


def track_schema(classes: Sequence[str]) -> pa.Schema:
    """One row per face track; `engagement_note` says why a track has no engagement score."""
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("track_id", pa.int64(), nullable=False),
            pa.field("first_s", pa.float64(), nullable=False),
            pa.field("last_s", pa.float64(), nullable=False),
            pa.field("frames", pa.int64(), nullable=False),
            *_shares(classes),
            pa.field("valence_mean", pa.float64()),
            pa.field("arousal_mean", pa.float64()),
            pa.field("engagement_mean", pa.float64()),
            pa.field("engagement_windows", pa.int64()),
            pa.field("engagement_note", pa.string()),
        ]
    )
