"""`emotibatch demo`: sample videos made on the spot, the whole job run locally, a look at the rows.

It uses the real default models when they are cached or downloadable. Offline it says so and runs on
generated stand-in models (standins.py) instead: random weights, so the emotions mean nothing, but every
step of the job runs for real. The sample videos' "faces" are the squares the stand-in detector finds;
a real detector finds no faces in them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.inference import registry
from emotibatch.io.redact import clean_text
from emotibatch.testing import samples, standins

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demo:
    result: pipeline.RunResult
    models_note: str


def choose_models(directory: Path) -> tuple[str, str, str]:
    """The default models if they can be had, else generated stand-ins; and a sentence saying which."""
    default = ExtractConfig(inputs=("-",), output="-")
    try:
        for name in (default.model, default.detector):
            registry.resolve(name)
    except (registry.ModelUnavailableError, registry.IntegrityError) as exc:
        model = standins.make_emotion_model(directory / "standin_emotion.onnx")
        detector = standins.make_scrfd_model(directory / "standin_scrfd.onnx")
        note = (
            f"The default models could not be had ({exc.__class__.__name__}: {clean_text(str(exc).splitlines()[0])}). "
            f"Using generated stand-in models in {directory}: random weights, so the emotions are meaningless, "
            "but every step of the job runs for real. Pull the real ones with `emotibatch models pull`."
        )
        return str(model), str(detector), note
    note = (
        f"Using the real models {default.model} and {default.detector}; the sample videos hold squares, "
        "not faces, so expect few or no faces."
    )
    return default.model, default.detector, note


def run_demo(directory: str | Path, *, device: str = "auto") -> Demo:
    directory = Path(directory)
    inputs = directory / "inputs"
    samples.make_sample_set(inputs)
    model, detector, note = choose_models(directory / "models")
    log.info(note)
    config = ExtractConfig(
        inputs=(str(inputs),),
        output=str(directory / "output"),
        model=model,
        detector=detector,
        sampling=Sampling("fps", 5.0),
        segment_seconds=2.0,
        device=device,
        overwrite=True,
    )
    return Demo(pipeline.extract(config), note)
