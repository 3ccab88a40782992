"""Thin command line over the library: each command parses, makes one library call and prints.

The library (Ray, pyarrow, scikit-learn, the decoders) is imported inside the commands that use it:
`emotibatch --help`, and a command that never needs Ray, do not pay seconds for importing it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import click

from emotibatch.clips.labels import DAISEE_TARGETS, READERS
from emotibatch.io.redact import clean_text, install_log_filter, redact_uri

if TYPE_CHECKING:
    from emotibatch.extract import pipeline
    from emotibatch.extract.decode import Sampling


@contextlib.contextmanager
def library_errors(*, usage: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """Turn library errors into a one-line CLI error instead of a traceback: exit 2 for `usage` errors (the
    library's ValueError: a missing labels file, a folder that is not an extract output, an unknown video),
    1 for the rest."""
    try:
        yield
    except usage as exc:
        raise click.UsageError(clean_text(str(exc))) from exc
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(clean_text(str(exc))) from exc


def _storage_options(ctx: click.Context, param: click.Parameter, value: str | None) -> dict:
    try:
        options = json.loads(value) if value else {}
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise click.BadParameter("must be a JSON object")
    return options


storage_options_option = click.option(
    "--storage-options",
    callback=_storage_options,
    metavar="JSON",
    help="fsspec storage options as a JSON object, e.g. '{\"anon\": true}'.",
)


class LazyChoice(click.Choice):
    """A choice among a library module's names, imported when the choice is first shown or checked."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(sorted(self._load()))


def _pools() -> Iterable[str]:
    from emotibatch.clips.aggregate import POOLS

    return POOLS


def _estimators() -> Iterable[str]:
    from emotibatch.clips.classify import ESTIMATORS

    return ESTIMATORS


@click.group(context_settings={"show_default": True})
@click.version_option(package_name="emotibatch")
def cli() -> None:
    """Facial emotion recognition at cluster scale on Ray Data."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_log_filter()


@cli.group()
def models() -> None:
    """List and fetch the registered models (cache: $EMOTIBATCH_CACHE or ~/.cache/emotibatch)."""


@models.command("list")
def models_list() -> None:
    """Show the registered models and whether the cache holds them."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from emotibatch.inference import registry

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for header in ("name", "kind", "input", "classes", "dim", "VA", "cached"):
        table.add_column(header, no_wrap=True)
    table.add_column("licence", overflow="fold")
    for card in registry.list_cards():
        table.add_row(
            card.name,
            card.kind,
            str(card.input_size or "-"),
            str(len(card.classes) or "-"),
            str(card.feature_dim or "-"),
            "yes" if card.has_va else "no",
            "yes" if registry.is_cached(card.name) else "no",
            card.license,
        )
    Console().print(table)


@models.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--output",
    "-o",
    metavar="DIR_OR_URI",
    help="Also copy <name>.onnx there (for --model-dir on offline nodes).",
)
@click.option("--sha256", metavar="HEX", help="Pin the sha256 of a model that has no published hash.")
@storage_options_option
def models_pull(
    names: tuple[str, ...], output: str | None, sha256: str | None, storage_options: dict
) -> None:
    """Fetch and verify models into the cache, and optionally copy them to DIR_OR_URI."""
    from emotibatch.inference import registry

    if sha256 and len(names) != 1:
        raise click.UsageError("--sha256 pins one model: give exactly one NAME")
    with library_errors():
        for name in names:
            if sha256:
                registry.pin_sha256(name, sha256)
            if output:
                click.echo(f"{name}: {registry.export(name, output, storage_options=storage_options)}")
            else:
                click.echo(f"{name}: {registry.resolve(name, storage_options=storage_options)}")


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a job stopped by Ctrl-C
# Library defaults shown by --help without importing the library (tests/unit/test_cli_options.py checks
# them against progress.PLAIN_INTERVAL_S and reports.render.MAX_LABELS).
PROGRESS_INTERVAL_S = 30.0
MAX_LABELS = 8


@contextlib.contextmanager
def resumable() -> Iterator[None]:
    """Ctrl-C stops the run cleanly (the library releases the output's lease and writes the run's row on
    the way out), says how to go on, and exits 130 rather than click's "Aborted!" with 1."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume; finished videos are kept", err=True)
        sys.exit(EXIT_INTERRUPTED)


verbose_option = click.option(
    "--verbose", is_flag=True, help="Show Ray's own logs, warnings and progress bars (off: only errors)."
)
progress_interval_option = click.option(
    "--progress-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=PROGRESS_INTERVAL_S,
    metavar="SECONDS",
    help="Seconds between progress lines when stderr is not a terminal (logs, `ray job submit`).",
)


def _sampling(fps: float | None, every: int | None, all_frames: bool, keyframes: bool) -> Sampling:
    from emotibatch.extract.decode import Sampling

    if fps is not None and not fps > 0:
        raise click.UsageError(f"--fps must be > 0, got {fps}")
    if every is not None and every < 1:
        raise click.UsageError(f"--every must be >= 1, got {every}")
    chosen = [
        name for name, value in (("--fps", fps), ("--every", every), ("--all-frames", all_frames)) if value
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of --fps, --every, --all-frames (got {', '.join(chosen)})")
    if keyframes and (every is not None or all_frames):
        raise click.UsageError("--keyframes takes --fps F as an upper bound or nothing")
    if keyframes:
        return (
            Sampling("fps", fps, frames="keyframes")
            if fps is not None
            else Sampling("all", frames="keyframes")
        )
    if fps is not None:
        return Sampling("fps", fps)
    if every is not None:
        return Sampling("every", every)
    return Sampling("all")


@cli.command(
    epilog="Exit codes: 0 every input ok, 3 some inputs failed (see OUTPUT/videos), 2 bad usage "
    "(options, models, inputs or output rejected before any work), 1 anything else."
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--output", "-o", required=True, metavar="DIR_OR_URI", help="Where faces/, videos/ and runs/ go."
)
@click.option("--model", default="enet_b0_8_best_vgaf", help="ONNX emotion model: name, path or URI.")
@click.option("--detector", default="det_10g", help="SCRFD detector: name, path or URI.")
@click.option("--model-dir", metavar="DIR_OR_URI", help="Where pulled models live (offline clusters).")
@click.option("--fps", type=float, help="Sample the frame nearest to each k/F seconds from the video start.")
@click.option("--every", type=int, help="Sample frames 0, N, 2N, ...")
@click.option("--all-frames", is_flag=True, help="Every frame (the default; what ABAW annotations need).")
@click.option("--segment-seconds", type=float, default=60.0, help="Split long videos into segments.")
@click.option(
    "--keyframes",
    is_flag=True,
    help="Decode only keyframes (all of them; with --fps F at most F a second): the real rate is bounded "
    "by the keyframe interval (videos/ records it as sampled_fps).",
)
@click.option(
    "--frame-folders",
    is_flag=True,
    help="Each folder of images found is one video, its images the frames (00001.jpg = frame 0); without "
    "it each image is an input of its own.",
)
@click.option("--frame-rate", type=float, default=30.0, help="Frame rate of frame folders.")
@click.option("--faces-cropped", is_flag=True, help="Each frame-folder image is already a face crop.")
@click.option("--min-face", type=int, default=0, help="Drop faces smaller than PX.")
@click.option("--det-thresh", type=float, default=0.5, help="Face detection threshold.")
@click.option("--max-faces", type=int, help="Keep the N highest-scoring faces per frame.")
@click.option("--margin", type=float, default=0.0, help="Grow face boxes by this fraction.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="Where the models run (auto: CUDA where onnxruntime has it, else the CPU).",
)
@click.option("--address", help="Ray cluster address (default: an embedded local Ray; `auto` in a Ray job).")
@click.option("--workers", type=int, help="Face actors at most (default: one per GPU, or half the CPUs).")
@click.option("--gpus-per-worker", type=float, help="GPUs per face actor (default 1 where GPUs exist).")
@click.option("--cpus-per-worker", type=float, default=1.0, help="CPUs per face actor.")
@click.option("--decode-cpus", type=float, default=1.0, help="CPUs per decode task.")
@click.option(
    "--batch-size",
    type=int,
    help="Faces per emotion-model batch (default 64 on a GPU, 16 on the CPU, where larger batches run no "
    "faster and hold more memory).",
)
@click.option(
    "--detect-batch-size",
    type=int,
    help="Frames per face-detector call (default 16 on a GPU, 4 on the CPU, where each frame of a call "
    "holds 40-60 MiB).",
)
@click.option(
    "--features-dtype",
    type=click.Choice(["float32", "float16", "none"]),
    default="float32",
    help="Store feature vectors as float32 or float16, or not at all (`none`: the backbones were trained "
    "for face identification, so features can re-identify people).",
)
@click.option("--overwrite", is_flag=True, help="Replace an output made with other settings.")
@storage_options_option
@verbose_option
@progress_interval_option
def extract(
    inputs: tuple[str, ...],
    fps,
    every,
    all_frames,
    keyframes,
    storage_options,
    verbose,
    progress_interval,
    **options,
) -> None:
    """Detect faces and their emotions in INPUT... (videos, images, folders, globs, URIs or CSV/Parquet
    manifests).

    Reruns with the same arguments skip finished videos, retry failed ones and never duplicate rows.
    """
    from emotibatch.config import ExtractConfig
    from emotibatch.extract import pipeline

    try:
        config = ExtractConfig(
            inputs=inputs,
            sampling=_sampling(fps, every, all_frames, keyframes),
            storage_options=storage_options,
            **options,
        )
    except ValueError as exc:
        raise click.UsageError(clean_text(str(exc))) from None
    try:
        plan = pipeline.prepare(config)
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.UsageError(clean_text(str(exc))) from None
    from emotibatch import progress

    with resumable(), library_errors(usage=()), progress.for_stream(sys.stderr, progress_interval) as shown:
        result = pipeline.run(plan, shown, verbose=verbose)
    _summary(result)
    sys.exit(EXIT_SOME_FAILED if result.failed else EXIT_OK)


def _summary(result: pipeline.RunResult) -> None:
    """The run's counts and each failed video, every user-given text (ids, paths, errors) printed literally:
    rich reads `[...]` in a plain string as markup (`lecture[red].mp4` would lose `[red]`, an error
    quoting `[/]` would crash the summary)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    run = result.run
    console = Console()
    table = Table(title=Text(f"run {result.run_id}"), box=box.SIMPLE_HEAD, show_header=False)
    table.add_column(justify="right")
    table.add_column()
    for label, value in (
        ("videos ok", run["videos_ok"]),
        ("videos failed", run["videos_failed"]),
        ("finished earlier", run["videos_skipped"]),
        ("frames decoded", run["frames_decoded"]),
        ("frames sampled", run["frames_sampled"]),
        ("faces", run["faces"]),
        ("tracks", run["tracks"]),
        ("frames/s", f"{run['frames_per_s']:.1f}"),
        ("faces/s", f"{run['faces_per_s']:.1f}"),
        ("output", redact_uri(result.output)),
    ):
        table.add_row(label, Text(str(value)))
    console.print(table)
    for video in result.failed:
        console.print(Text.assemble(("failed", "red"), f" {video['video_id']}: {video['error']}"))


@cli.command()
@click.option(
    "--output",
    "-o",
    "directory",
    metavar="DIR",
    show_default=False,
    help="Where inputs, models and outputs go  [default: a new temporary folder]",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="Where the models run."
)
def demo(directory: str | None, device: str) -> None:
    """Make sample videos, run the whole job on them locally, show a few rows and what to try next."""
    import pyarrow.parquet as pq
    from rich.console import Console

    from emotibatch.demo import run_demo

    with library_errors():
        result = run_demo(directory, device=device, say=click.echo)
    console = Console()
    _summary(result.result)
    faces = pq.read_table(f"{result.result.output}/faces", columns=DEMO_COLUMNS)
    console.print(f"faces/: {faces.num_rows} rows; the first few:")
    console.print(faces.slice(0, 8).to_pandas().to_string(index=False), markup=False, highlight=False)
    console.print(f"Outputs: {result.result.output}/faces, /videos, /runs (Parquet).", markup=False)
    click.echo("Next, try:")
    for command in result.next_commands:
        click.echo(f"  {command}")


DEMO_COLUMNS = ["video_id", "frame_index", "timestamp_s", "face_index", "track_id", "emotion", "det_score"]


REPORTED_FAILURES = 10
address_option = click.option(
    "--address",
    help="Ray cluster address. Without it (or RAY_ADDRESS) the work runs in this process, or on an embedded "
    "local Ray when the extract is large enough to gain from one (clips/aggregate.py RAY_MIN_FACES).",
)
windows_option = click.option(
    "--windows", type=float, metavar="SECONDS", help="One descriptor per window of SECONDS (timelines)."
)
window_step_option = click.option(
    "--window-step", type=float, metavar="SECONDS", help="Seconds between window starts (default: --windows)."
)
per_track_option = click.option(
    "--per-track", is_flag=True, help="One descriptor per face track, not per clip."
)
smooth_option = click.option(
    "--smooth",
    type=click.IntRange(min=0),
    metavar="K",
    show_default=False,
    help="ABAW: centred mean over +-K frames before deciding  [default: expression 50, VA 50, AU 5]",
)
# The ABAW tasks, named here so that `--help` imports no library (clips/abaw.py HEADERS; a test checks).
ABAW_TASKS = ("abaw-au", "abaw-expr", "abaw-va")
ABAW_MTL = "abaw-mtl"
ABAW_LABELS = (
    "Aff-Wild2's annotation folder as it ships (EXPR_Set, VA_Set or AU_Set, then Train_Set or "
    "Validation_Set: <video>.txt, a header line, then line i for frame i-1), or the multi-task CSV "
    "(image,valence,arousal,expression,aus)"
)
ABAW_MTL_LABELS = (
    "the multi-task CSV (image,valence,arousal,expression,aus) for --labels and --val: the three heads, "
    "each in OUTPUT/<task>, scored by their sum"
)


@cli.command("aggregate")
@click.option("--extract", required=True, metavar="DIR_OR_URI", help="An extract output (faces/, videos/).")
@click.option("--recipe", required=True, type=LazyChoice(_pools), help="EmotiEffLib's clip recipe.")
@windows_option
@window_step_option
@per_track_option
@click.option("--emotion-probs", is_flag=True, help="Append the emotion probabilities to the features.")
@click.option("--output", "-o", required=True, metavar="DIR_OR_URI", help="Where the Parquet files go.")
@click.option("--overwrite", is_flag=True, help="Replace the Parquet files already in --output.")
@address_option
@storage_options_option
def aggregate_command(
    extract,
    recipe,
    windows,
    window_step,
    per_track,
    emotion_probs,
    output,
    overwrite,
    address,
    storage_options,
) -> None:
    """Clip descriptors (AFEW, VGAF or EngageWild recipe) from an extract output.

    Clips without faces keep a row (has_faces false, null descriptor); videos the extract failed are skipped.
    """
    from emotibatch.clips.aggregate import Recipe, aggregate

    try:
        chosen = Recipe(recipe, windows, window_step, per_track, emotion_probs)
    except ValueError as exc:
        raise click.UsageError(clean_text(str(exc))) from None
    with library_errors():
        result = aggregate(
            extract, chosen, output, overwrite=overwrite, storage_options=storage_options, address=address
        )
    click.echo(
        f"{result.rows} descriptor rows from {result.clips} clips ({result.clips_without_faces} without faces: "
        f"null descriptor) -> {redact_uri(output)}"
    )
    for video_id, error in result.failed[:REPORTED_FAILURES]:
        click.echo(f"skipped failed video {video_id}: {error}")
    if len(result.failed) > REPORTED_FAILURES:
        click.echo(
            f"... {len(result.failed)} failed videos in all (status failed in {redact_uri(extract)}/videos)"
        )


def _label_formats() -> str:
    """`fit --help`'s list of label formats: each reader's docstring, so that a new reader lists itself."""
    return (
        "\b\nLabel formats (--labels, --val), by --task:\n"
        + "\n".join(
            f"  {task}: {' '.join((reader.__doc__ or '').split())}"
            for task, reader in sorted(READERS.items())
        )
        + "".join(f"\n  {task}: {ABAW_LABELS}" for task in ABAW_TASKS)
        + f"\n  {ABAW_MTL}: {ABAW_MTL_LABELS}"
    )


@cli.command("fit", epilog=_label_formats())
@click.option(
    "--extract", required=True, metavar="DIR_OR_URI", help="An extract output or an aggregate output."
)
@click.option(
    "--labels",
    "labels_path",
    required=True,
    metavar="PATH",
    help="Labels in the task's format (below).",
)
@click.option(
    "--task",
    required=True,
    type=click.Choice([*sorted(READERS), *ABAW_TASKS, ABAW_MTL]),
    help="The corpus whose labels and recipe to use (generic: a CSV of video_id,label; abaw-*: a frame-level "
    "head on the extract's faces).",
)
@click.option("--val", metavar="PATH", help="Validation labels (default: cross-validation, --folds).")
@click.option(
    "--val-extract",
    metavar="DIR_OR_URI",
    help="The validation clips' extract or aggregate output, if not in --extract.",
)
@click.option(
    "--output", "-o", required=True, metavar="DIR", help="The classifier folder: model, card, metrics, plot."
)
@click.option(
    "--target", type=click.Choice(DAISEE_TARGETS), help="DAiSEE's label column (default engagement)."
)
@click.option("--recipe", type=LazyChoice(_pools), help="The descriptors' recipe (default: the task's).")
@click.option("--emotion-probs", is_flag=True, help="Descriptors with emotion probabilities appended.")
@click.option(
    "--estimator",
    type=LazyChoice(_estimators),
    help="One of the task's kind (default: afew linearsvc, vgaf svc-rbf, engagewild ridge, others logistic).",
)
@click.option("--folds", type=click.IntRange(min=2), default=5, help="Cross-validation folds without --val.")
@click.option("--seed", type=int, default=0, help="Seed of the folds and the estimator.")
@smooth_option
@address_option
@storage_options_option
def fit_command(
    extract,
    labels_path,
    task,
    val,
    val_extract,
    output,
    target,
    recipe,
    emotion_probs,
    estimator,
    folds,
    seed,
    smooth,
    address,
    storage_options,
) -> None:
    """Fit the task's recipe model on labelled clip descriptors (ABAW tasks: a frame-level head on the
    extract's faces); evaluate; save it with skops to --output."""
    if task in (*ABAW_TASKS, ABAW_MTL):
        _fit_abaw(extract, labels_path, task, output, val, val_extract, smooth, seed, storage_options)
        return
    if smooth is not None:
        raise click.UsageError("--smooth applies to the ABAW tasks only")
    from emotibatch.clips import classify

    with library_errors():
        model = classify.fit(
            extract,
            labels_path,
            task,
            output,
            val=val,
            val_features=val_extract,
            target=target,
            recipe=recipe,
            emotion_probs=emotion_probs,
            estimator=estimator,
            n_splits=folds,
            seed=seed,
            storage_options=storage_options,
            address=address,
        )
    click.echo(f"train labels: {model.join_}")
    if model.val_join_ is not None:
        click.echo(f"val labels: {model.val_join_}")
    scores = {k: v for k, v in model.metrics_.items() if isinstance(v, float)}
    click.echo(f"{model.metrics_['validation']}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    click.echo(f"model, card, metrics and plot in {output}")


def _fit_abaw(extract, labels, task, output, val, val_extract, smooth, seed, storage_options) -> None:
    from emotibatch.clips import abaw_heads

    if val is None:
        raise click.UsageError(f"{task} needs --val (the corpus's Validation_Set): scores are reported on it")
    common = {"val": val, "val_extract": val_extract, "smooth": smooth, "seed": seed}
    with library_errors():
        if task == ABAW_MTL:
            mtl = abaw_heads.fit_mtl(extract, labels, output, **common, storage_options=storage_options)
            models = mtl.heads
        else:
            models = {
                task: abaw_heads.fit(extract, labels, task, output, **common, storage_options=storage_options)
            }
    for name, model in models.items():
        click.echo(f"{name} train annotations: {model.card['train_join']}")
        click.echo(f"{name} val annotations: {model.card['val_join']}")
        _echo_scores(name, model.metrics["scores"])
    if task == ABAW_MTL:
        _echo_scores(f"{ABAW_MTL} (sum)", mtl.metrics["scores"])
    click.echo(f"heads, cards, metrics and plots in {output}")


def _echo_scores(name: str, scores: dict) -> None:
    for candidate, views in scores.items():
        shown = ", ".join(f"{view.replace('_', ' ')} {part['score']:.3f}" for view, part in views.items())
        click.echo(f"{name} {candidate.replace('_', ' ')}: {shown}")


@cli.command("predict")
@click.option(
    "--extract", required=True, metavar="DIR_OR_URI", help="An extract output or an aggregate output."
)
@click.option(
    "--classifier", required=True, metavar="DIR", help="A classifier folder written by `emotibatch fit`."
)
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="FILE_OR_URI",
    help="The predictions Parquet file (ABAW heads: a folder of challenge files).",
)
@windows_option
@window_step_option
@per_track_option
@click.option(
    "--sample",
    metavar="FILE",
    help="ABAW: a sample submission; also write the single file in its row order (refused if a row is missing).",
)
@smooth_option
@address_option
@storage_options_option
def predict_command(
    extract, classifier, output, windows, window_step, per_track, sample, smooth, address, storage_options
):
    """Predict every clip (or track, or window); clips without faces get a null prediction.

    With an ABAW head, --output is a folder of challenge files: <video>.txt per video, and the --sample file.
    """
    from emotibatch.clips import abaw_heads, classify

    task = abaw_heads.abaw_task(classifier)
    if task == ABAW_MTL and sample is not None:
        raise click.UsageError(
            f"--sample takes one task's sample file: predict with {classifier}/<task> (one of the heads)"
        )
    if task is not None:
        with library_errors():
            if task == ABAW_MTL:
                results = abaw_heads.predict_mtl(
                    extract, classifier, output, smooth=smooth, storage_options=storage_options
                )
            else:
                results = {
                    task: abaw_heads.predict(
                        extract,
                        classifier,
                        output,
                        sample=sample,
                        smooth=smooth,
                        storage_options=storage_options,
                    )
                }
        for name, result in results.items():
            click.echo(
                f"{name}: {result.lines} lines of {result.videos} videos ({len(result.videos_without_faces)} "
                f"without a face: the training prior) -> {len(result.files)} files"
            )
        click.echo(f"challenge files in {output}")
        for video_id in next(iter(results.values())).failed[:REPORTED_FAILURES]:
            click.echo(f"skipped failed video {video_id} (status failed in {redact_uri(extract)}/videos)")
        return
    if sample is not None or smooth is not None:
        raise click.UsageError("--sample and --smooth apply to ABAW heads only")

    with library_errors():
        table = classify.predict(
            extract,
            classifier,
            output,
            windows=windows,
            window_step=window_step,
            per_track=per_track,
            storage_options=storage_options,
            address=address,
        )
    nulls = table["prediction"].null_count
    click.echo(f"{len(table)} predictions ({nulls} without faces: null) -> {redact_uri(output)}")


@cli.command("report")
@click.option("--extract", required=True, metavar="DIR_OR_URI", help="The extract output to report.")
@click.option("--video", "videos", multiple=True, metavar="ID", help="Report this video only (repeatable).")
@click.option(
    "--output", "-o", metavar="FILE_OR_URI", help="Where the report goes  [default: EXTRACT/report.html]"
)
@click.option(
    "--predictions",
    multiple=True,
    metavar="FILE_OR_URI",
    help="An `emotibatch predict` output to show per video (repeatable).",
)
@click.option(
    "--engagement",
    metavar="FILE_OR_URI",
    help="Engagement per window (Parquet: video_id, track_id, window_start_s, window_end_s, and prob_Engaged "
    "or score), such as `emotibatch predict --windows S --per-track` writes.",
)
@click.option(
    "--thumbnails",
    is_flag=True,
    help="Embed a small crop of each track's best face, read from the source video. Faces are personal "
    "data: off by default.",
)
@storage_options_option
def report_command(extract, videos, output, predictions, engagement, thumbnails, storage_options) -> None:
    """One self-contained HTML report of an extract output: the run, then each video over time.

    The file has no scripts and makes no requests: it opens from disk or from a bucket.
    """
    from emotibatch.reports.report import write_report

    target = output or f"{extract.rstrip('/')}/report.html"
    with library_errors():
        write_report(
            extract,
            target,
            videos=videos or None,
            predictions=predictions,
            engagement=engagement,
            thumbnails=thumbnails,
            storage_options=storage_options,
        )
    click.echo(f"report -> {redact_uri(target)}")


@cli.command("render")
@click.argument("video")
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="FILE_OR_URI",
    help="The preview clip: .mp4 (H.264) or .gif (at most 10 frames/s, 640 px wide, 60 s).",
)
@click.option(
    "--extract", required=True, metavar="DIR_OR_URI", help="The extract output holding VIDEO's faces."
)
@click.option("--start", type=float, default=0.0, metavar="S", help="First second.")
@click.option("--end", type=float, metavar="S", help="Last second (exclusive)  [default: the end]")
@click.option(
    "--max-labels",
    type=click.IntRange(min=0),
    default=MAX_LABELS,
    metavar="N",
    help="Label at most N faces per frame, the largest; the others keep their boxes.",
)
@storage_options_option
def render_command(video, output, extract, start, end, max_labels, storage_options) -> None:
    """A preview clip of VIDEO with face boxes, track ids and emotions drawn on.

    VIDEO is the video file or its video_id in the extract's videos table. Only sampled frames have
    faces: a frame between two sampled frames shows the boxes of the nearest sampled frame before it.
    """
    from emotibatch.reports.render import render_clip

    with library_errors():
        result = render_clip(
            video,
            output,
            extract,
            start_s=start,
            end_s=end,
            max_labels=max_labels,
            storage_options=storage_options,
        )
    click.echo(
        f"{result.frames} frames of {result.video_id} from frame {result.first_frame} -> {redact_uri(output)}"
    )


# `emotibatch extract` options that apply to lectures: the same names, defaults and help.
NIGHTLY_EXTRACT_OPTIONS = (
    "model",
    "detector",
    "model_dir",
    "segment_seconds",
    "min_face",
    "det_thresh",
    "max_faces",
    "margin",
    "device",
    "address",
    "workers",
    "gpus_per_worker",
    "cpus_per_worker",
    "decode_cpus",
    "batch_size",
    "detect_batch_size",
    "features_dtype",
    "storage_options",
)


@cli.command(
    "nightly",
    epilog="Exit codes: 0 the run completed, even with failed lectures (listed in OUTPUT/date=.../failures.json "
    "and the log, tried again by the next run), 3 with --strict when some lecture failed, 2 bad usage "
    "(options, models, prefix or output rejected before any work), 1 the run could not complete.",
)
@click.argument("prefix")
@click.option(
    "--output", "-o", required=True, metavar="DIR_OR_URI", help="Where date=YYYY-MM-DD/ and _nightly/ go."
)
@click.option(
    "--fps",
    type=float,
    help="Sample the frame nearest to each k/F seconds (nightly.LECTURE_SAMPLING)  [default: 1.0]",
)
@click.option(
    "--keyframes",
    is_flag=True,
    help="Decode only keyframes, at most --fps a second: the real rate is bounded by the keyframe interval.",
)
@click.option(
    "--settle-minutes",
    type=float,
    default=30.0,
    help="Leave files modified more recently for a later run (uploads in progress).",
)
@click.option(
    "--completion-marker",
    metavar="SUFFIX",
    help="Process lecture.mp4 only once lecture.mp4SUFFIX exists (e.g. .done).",
)
@click.option(
    "--engagement-model",
    metavar="PATH_OR_NAME",
    default="auto",
    help="auto: EmotiEffLib's pretrained head (enet_b0 features, tracks of 128+ face frames) when it can be "
    "had, cached or pulled, else none, said in the night's log and pages; none; "
    "engagement_single_attention or its h5 file; or a classifier folder from `emotibatch fit`.",
)
@click.option(
    "--engagement-window",
    type=float,
    default=60.0,
    metavar="SECONDS",
    help="Timeline window of a fitted engagement model.",
)
@click.option("--date", "night", type=click.DateTime(["%Y-%m-%d"]), help="The night (default: today, UTC).")
@click.option("--strict", is_flag=True, help="Exit 3 when some lecture failed.")
@verbose_option
@progress_interval_option
def nightly_command(
    prefix: str,
    output: str,
    fps: float | None,
    keyframes: bool,
    settle_minutes: float,
    completion_marker: str | None,
    engagement_model: str,
    engagement_window: float,
    night: datetime.datetime | None,
    strict: bool,
    verbose: bool,
    progress_interval: float,
    **options,
) -> None:
    """Extract and summarise the new, fully uploaded lectures under PREFIX (a directory or any fsspec URI).

    Run it nightly (cron, `ray job submit ... -- python jobs/nightly_lectures.py`): lectures processed by an
    earlier run, and uploads still in progress, are left alone; see emotibatch/nightly.py for the rules and
    the layout under --output.
    """
    from emotibatch import nightly, progress
    from emotibatch.config import ExtractConfig

    if fps is None and not keyframes:
        sampling = nightly.LECTURE_SAMPLING
    else:
        sampling = _sampling(nightly.LECTURE_SAMPLING.value if fps is None else fps, None, False, keyframes)
    try:
        config = nightly.NightlyConfig(
            ExtractConfig(inputs=(prefix,), output=output, sampling=sampling, **options),
            settle_minutes=settle_minutes,
            completion_marker=completion_marker,
            engagement_model=engagement_model,
            engagement_window_s=engagement_window,
            night=night.date() if night else None,
        )
        plan = nightly.prepare(config)
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    with resumable(), library_errors(usage=()), progress.for_stream(sys.stderr, progress_interval) as shown:
        result = nightly.run(plan, shown, verbose=verbose)
    for line in result.describe():
        click.echo(line)
    sys.exit(EXIT_SOME_FAILED if strict and result.failed else EXIT_OK)


nightly_command.params += [p for p in extract.params if p.name in NIGHTLY_EXTRACT_OPTIONS]
