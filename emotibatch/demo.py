"""`emotibatch demo`: sample videos made on the spot, the whole job run locally, a look at the rows.

It uses the real default models when they are cached or downloadable. Offline it says so and runs on
generated stand-in models (standins.py) instead: random weights, so the emotions mean nothing, but every
step of the job runs for real. The sample videos' "faces" are the squares the stand-in detector finds;
a real detector finds no faces in them.

Everything goes into one folder it names: the one given, else a new temporary folder, never the
current directory (which is often a checkout of this repository). Each step is said as it starts, and the
demo ends with the commands to try next on its own output (`report`, `render`), in the CLI's vocabulary.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.inference import registry
from emotibatch.io.redact import clean_text
from emotibatch.testing import samples, standins

DEMO_SAMPLING = Sampling("fps", 5.0)


@dataclass(frozen=True)
class Demo:
    directory: Path
    result: pipeline.RunResult
    models_note: str
    next_commands: tuple[str, ...]


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


def next_commands(directory: Path, output: Path, video_id: str) -> tuple[str, ...]:
    """What to run next on the demo's output: its report and a preview clip of one video."""
    q = shlex.quote
    return (
        f"emotibatch report --extract {q(str(output))} -o {q(str(directory / 'report.html'))}",
        f"emotibatch render {q(video_id)} --extract {q(str(output))} -o {q(str(directory / 'preview.mp4'))}",
    )


def run_demo(
    directory: str | Path | None = None, *, device: str = "auto", say: Callable[[str], None] = print
) -> Demo:
    """Run the demo in `directory` (default: a new temporary folder), saying each step with `say`."""
    directory = Path(
        tempfile.mkdtemp(prefix="emotibatch-demo-") if directory is None else directory
    ).resolve()
    say(f"Demo folder: {directory}")
    inputs, output = directory / "inputs", directory / "output"
    say(f"1/3 Making {len(samples.SAMPLE_SET)} sample videos in {inputs}")
    videos = samples.make_sample_set(inputs)
    say("2/3 Finding the models")
    model, detector, note = choose_models(directory / "models")
    say(note)
    say(f"3/3 Extracting faces and emotions at {DEMO_SAMPLING.value:g} frames/s on a local Ray into {output}")
    config = ExtractConfig(
        inputs=(str(inputs),),
        output=str(output),
        model=model,
        detector=detector,
        sampling=DEMO_SAMPLING,
        segment_seconds=2.0,
        device=device,
        overwrite=True,
    )
    result = pipeline.extract(config)
    with_faces = [v["video_id"] for v in result.videos if v["status"] == "ok" and v.get("faces")]
    video_id = with_faces[0] if with_faces else videos[0].stem
    return Demo(directory, result, note, next_commands(directory, output, video_id))
