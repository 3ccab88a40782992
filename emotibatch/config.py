"""Job settings: frozen dataclasses, checked where they are made, before any work starts.

`Sampling` lives here rather than beside the decoder that applies it, so that settings import no decoding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from emotibatch.io.redact import redact_uri, scrub
from emotibatch.schema import FeaturesDtype

# Where the models run: "auto" is CUDA where onnxruntime has it, else the CPU (runtime.py).
Device = Literal["auto", "cpu", "cuda"]
DEVICES = ("auto", "cpu", "cuda")

# Settings that change what a row says; an output made with other values is not resumed into. The models
# are not here by name: `pipeline.prepare` adds their files' sha256, as the same file may be spelt many ways.
IDENTITY = (
    "sampling",
    "det_size",
    "det_thresh",
    "min_face",
    "max_faces",
    "margin",
    "features_dtype",
    "frame_folders",
    "frame_rate",
    "faces_cropped",
)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are processed: `all`, `every` N-th (int >= 1) or `fps` F per second (> 0).

    `frames="keyframes"`: only keyframes, which decode without their predecessors (decode.py); with
    `all` every keyframe, with `fps` F at most F a second, so the real rate is also bounded by the video's
    keyframe interval. (Not a boolean `keyframes`: settings keys holding "key" are redacted as secrets.)
    """

    mode: Literal["all", "every", "fps"] = "all"
    value: float | int | None = None
    frames: Literal["any", "keyframes"] = "any"

    def __post_init__(self) -> None:
        value = self.value
        if self.frames not in ("any", "keyframes"):
            raise ValueError(f"sampling frames must be 'any' or 'keyframes', got {self.frames!r}")
        if self.frames == "keyframes" and self.mode == "every":
            raise ValueError("--keyframes takes --fps F as an upper bound or nothing, not --every")
        if self.mode == "all":
            if value is not None:
                raise ValueError(f"sampling 'all' takes no value, got {value!r}")
        elif self.mode == "every":
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"sampling 'every' needs an integer >= 1, got {value!r}")
        elif self.mode == "fps":
            if not (
                isinstance(value, int | float | np.number)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"sampling 'fps' needs a frame rate > 0, got {value!r}")
        else:
            raise ValueError(f"sampling mode must be 'all', 'every' or 'fps', got {self.mode!r}")

    def label(self) -> str:
        """The rule in words, as the videos table records it: "fps 1", "keyframes fps 1", "all", ..."""
        keyframes = self.frames == "keyframes"
        words = (["keyframes"] if keyframes else []) + (
            [] if self.mode == "all" and keyframes else [self.mode]
        )
        return " ".join(words + ([f"{self.value:g}"] if self.value is not None else []))


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `emotibatch extract` does; see `emotibatch extract --help` for each field."""

    inputs: tuple[str, ...]
    output: str
    model: str = "enet_b0_8_best_vgaf"
    detector: str = "det_10g"
    sampling: Sampling = field(default_factory=Sampling)
    segment_seconds: float | None = 60.0
    det_size: tuple[int, int] = (640, 640)
    det_thresh: float = 0.5
    min_face: int = 0
    max_faces: int | None = None
    margin: float = 0.0
    device: Device = "auto"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0
    batch_size: int | None = None  # EmotionModel's default for the device
    detect_batch_size: int | None = None  # FaceDetector's default for the device
    features_dtype: FeaturesDtype = "float32"
    frame_folders: bool = False
    frame_rate: float = 30.0
    faces_cropped: bool = False
    model_dir: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("give at least one INPUT")
        if not self.output:
            problems.append("--output is required")
        if self.segment_seconds is not None and self.segment_seconds <= 0:
            problems.append(f"--segment-seconds must be > 0, got {self.segment_seconds}")
        if not 0 < self.det_thresh < 1:
            problems.append(f"--det-thresh must be in (0, 1), got {self.det_thresh}")
        if self.min_face < 0:
            problems.append(f"--min-face must be >= 0, got {self.min_face}")
        if self.max_faces is not None and self.max_faces < 1:
            problems.append(f"--max-faces must be >= 1, got {self.max_faces}")
        if self.margin < 0:
            problems.append(f"--margin must be >= 0, got {self.margin}")
        if self.device not in DEVICES:
            problems.append(f"--device must be one of {DEVICES}, got {self.device!r}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and not 0 <= self.gpus_per_worker <= 8:
            problems.append(f"--gpus-per-worker must be in [0, 8], got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0 or self.decode_cpus <= 0:
            problems.append("--cpus-per-worker and --decode-cpus must be > 0")
        if any(b is not None and b < 1 for b in (self.batch_size, self.detect_batch_size)):
            problems.append("--batch-size and --detect-batch-size must be >= 1")
        if self.features_dtype not in ("float32", "float16", "none"):
            problems.append(f"--features-dtype must be float32, float16 or none, got {self.features_dtype!r}")
        if self.frame_rate <= 0:
            problems.append(f"--frame-rate must be > 0, got {self.frame_rate}")
        if self.sampling.frames == "keyframes" and self.frame_folders:
            problems.append("--keyframes applies to videos; a frame folder's images are all decoded alike")
        if self.faces_cropped and not self.frame_folders:
            problems.append("--faces-cropped applies to --frame-folders inputs only")
        if any(v % 32 or v <= 0 for v in self.det_size):
            problems.append(f"--det-size must be positive multiples of 32, got {self.det_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def identity(self) -> dict[str, Any]:
        """The settings an existing output must have been made with to be resumed, but for the models
        (their spelling is no identity: `pipeline.prepare` adds their files' sha256)."""
        public = self.public()
        return {k: public[k] for k in IDENTITY}

    def public(self) -> dict[str, Any]:
        """All settings as JSON-able values with credentials removed: safe for logs and Parquet metadata.

        Every string at any depth is scrubbed, not only the URI fields: an `--address` or a storage option's
        endpoint_url may carry `user:password@` too.
        """
        data = asdict(self)
        data["sampling"] = {
            "mode": self.sampling.mode,
            "value": self.sampling.value,
            "frames": self.sampling.frames,
        }
        data["inputs"] = [redact_uri(i) for i in self.inputs]
        for name in ("output", "model", "detector", "model_dir", "address"):
            data[name] = redact_uri(data[name]) if data[name] else data[name]
        data["det_size"] = list(self.det_size)
        return scrub(json.loads(json.dumps(data, default=str)))
