"""Thin command line over the library: each command parses, makes one library call and prints."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Iterator

import click
import pyarrow.parquet as pq
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from emotibatch import nightly
from emotibatch.clips import classify
from emotibatch.clips.aggregate import POOLS, Recipe, aggregate
from emotibatch.clips.labels import DAISEE_TARGETS
from emotibatch.config import ExtractConfig
from emotibatch.demo import run_demo
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.inference import registry
from emotibatch.io.redact import clean_text, install_log_filter, redact_uri
from emotibatch.reports.render import render_clip
from emotibatch.reports.report import write_report


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn library errors into a one-line CLI error (exit 1) instead of a traceback."""
    try:
        yield
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


@click.group()
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
    "--to", metavar="DIR_OR_URI", help="Also copy <name>.onnx there (for --model-dir on offline nodes)."
)
@click.option("--sha256", metavar="HEX", help="Pin the sha256 of a model that has no published hash.")
@storage_options_option
def models_pull(names: tuple[str, ...], to: str | None, sha256: str | None, storage_options: dict) -> None:
    """Fetch and verify models into the cache, and optionally copy them to DIR_OR_URI."""
    if sha256 and len(names) != 1:
        raise click.UsageError("--sha256 pins one model: give exactly one NAME")
    with library_errors():
        for name in names:
            if sha256:
                registry.pin_sha256(name, sha256)
            if to:
                click.echo(f"{name}: {registry.export(name, to, storage_options=storage_options)}")
            else:
                click.echo(f"{name}: {registry.resolve(name, storage_options=storage_options)}")


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3


def _sampling(fps: float | None, every: int | None, all_frames: bool, keyframes: bool) -> Sampling:
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
@click.option(
    "--model", default="enet_b0_8_best_vgaf", show_default=True, help="Emotion model: name, path or URI."
)
@click.option("--detector", default="det_10g", show_default=True, help="SCRFD detector: name, path or URI.")
@click.option("--model-dir", metavar="DIR_OR_URI", help="Where pulled models live (offline clusters).")
@click.option("--fps", type=float, help="Sample the frame nearest to each k/F seconds from the video start.")
@click.option("--every", type=int, help="Sample frames 0, N, 2N, ...")
@click.option("--all-frames", is_flag=True, help="Every frame (the default; what ABAW annotations need).")
@click.option(
    "--keyframes",
    is_flag=True,
    help="Decode only keyframes (all of them; with --fps F at most F a second): the real rate is bounded "
    "by the keyframe interval (videos/ records it as sampled_fps).",
)
@click.option(
    "--segment-seconds", type=float, default=60.0, show_default=True, help="Split long videos into segments."
)
@click.option(
    "--frame-folders", is_flag=True, help="Inputs are folders of frame images (00001.jpg = frame 0)."
)
@click.option(
    "--frame-rate", type=float, default=30.0, show_default=True, help="Frame rate of frame folders."
)
@click.option("--faces-cropped", is_flag=True, help="Each frame-folder image is already a face crop.")
@click.option("--min-face", type=int, default=0, show_default=True, help="Drop faces smaller than PX.")
@click.option("--det-thresh", type=float, default=0.5, show_default=True, help="Face detection threshold.")
@click.option("--max-faces", type=int, help="Keep the N highest-scoring faces per frame.")
@click.option(
    "--margin", type=float, default=0.0, show_default=True, help="Grow face boxes by this fraction."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--address", help="Ray cluster address (default: an embedded local Ray; `auto` in a Ray job).")
@click.option("--workers", type=int, help="Face actors at most (default: one per GPU, or half the CPUs).")
@click.option("--gpus-per-worker", type=float, help="GPUs per face actor (default 1 where GPUs exist).")
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True, help="CPUs per face actor.")
@click.option("--decode-cpus", type=float, default=1.0, show_default=True, help="CPUs per decode task.")
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
    show_default=True,
    help="Store feature vectors as float32 or float16, or not at all (`none`: the backbones were trained "
    "for face identification, so features can re-identify people).",
)
@click.option("--overwrite", is_flag=True, help="Replace an output made with other settings.")
@storage_options_option
def extract(inputs: tuple[str, ...], fps, every, all_frames, keyframes, storage_options, **options) -> None:
    """Detect faces and their emotions in INPUT... (videos, folders, globs, URIs or CSV/Parquet manifests).

    Reruns with the same arguments skip finished videos, retry failed ones and never duplicate rows.
    """
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
    with library_errors():
        result = pipeline.run(plan)
    _summary(result)
    sys.exit(EXIT_SOME_FAILED if result.failed else EXIT_OK)


def _summary(result: pipeline.RunResult) -> None:
    """The run's counts and each failed video, every user-given text (ids, paths, errors) printed literally:
    rich reads `[...]` in a plain string as markup (`lecture[red].mp4` would lose `[red]`, an error
    quoting `[/]` would crash the summary)."""
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
    "--dir", "directory", default="emotibatch-demo", show_default=True, help="Where inputs and outputs go."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def demo(directory: str, device: str) -> None:
    """Make sample videos, run the whole job on them locally and show a few rows."""
    with library_errors():
        result = run_demo(directory, device=device)
    console = Console()
    console.print(result.models_note, markup=False, highlight=False)
    _summary(result.result)
    faces = pq.read_table(f"{result.result.output}/faces", columns=DEMO_COLUMNS)
    console.print(f"faces/: {faces.num_rows} rows; the first few:")
    console.print(faces.slice(0, 8).to_pandas().to_string(index=False), markup=False, highlight=False)
    console.print(f"Outputs: {result.result.output}/faces, /videos, /runs (Parquet).", markup=False)


DEMO_COLUMNS = ["video_id", "frame_index", "timestamp_s", "face_index", "track_id", "emotion", "det_score"]


REPORTED_FAILURES = 10
address_option = click.option("--address", help="Ray cluster address (default: an embedded local Ray).")
local_option = click.option("--local", is_flag=True, help="Run in this process without Ray (small outputs).")
windows_option = click.option(
    "--windows", type=float, metavar="SECONDS", help="One descriptor per window of SECONDS (timelines)."
)
window_step_option = click.option(
    "--window-step", type=float, metavar="SECONDS", help="Seconds between window starts (default: --windows)."
)
per_track_option = click.option(
    "--per-track", is_flag=True, help="One descriptor per face track, not per clip."
)


@cli.command("aggregate")
@click.option("--features", required=True, metavar="DIR_OR_URI", help="An extract output (faces/, videos/).")
@click.option("--recipe", required=True, type=click.Choice(sorted(POOLS)), help="EmotiEffLib's clip recipe.")
@windows_option
@window_step_option
@per_track_option
@click.option("--emotion-probs", is_flag=True, help="Append the emotion probabilities to the features.")
@click.option("--output", "-o", required=True, metavar="DIR_OR_URI", help="Where the Parquet files go.")
@click.option("--overwrite", is_flag=True, help="Replace the Parquet files already in --output.")
@address_option
@local_option
@storage_options_option
def aggregate_command(
    features,
    recipe,
    windows,
    window_step,
    per_track,
    emotion_probs,
    output,
    overwrite,
    address,
    local,
    storage_options,
) -> None:
    """Clip descriptors (AFEW, VGAF or EngageWild recipe) from an extract output, streamed on Ray Data.

    Clips without faces keep a row (has_faces false, null descriptor); videos the extract failed are skipped.
    """
    try:
        chosen = Recipe(recipe, windows, window_step, per_track, emotion_probs)
    except ValueError as exc:
        raise click.UsageError(clean_text(str(exc))) from None
    with library_errors():
        result = aggregate(
            features,
            chosen,
            output,
            overwrite=overwrite,
            storage_options=storage_options,
            address=address,
            local=local,
        )
    click.echo(
        f"{result.rows} descriptor rows from {result.clips} clips ({result.clips_without_faces} without faces: "
        f"null descriptor) -> {redact_uri(output)}"
    )
    for video_id, error in result.failed[:REPORTED_FAILURES]:
        click.echo(f"skipped failed video {video_id}: {error}")
    if len(result.failed) > REPORTED_FAILURES:
        click.echo(
            f"... {len(result.failed)} failed videos in all (status failed in {redact_uri(features)}/videos)"
        )


@cli.command("fit")
@click.option(
    "--features", required=True, metavar="DIR_OR_URI", help="An extract output or an aggregate output."
)
@click.option(
    "--labels",
    "labels_path",
    required=True,
    metavar="PATH",
    help="Labels in the corpus's format (AFEW: its folder).",
)
@click.option("--task", required=True, type=click.Choice(sorted(classify.TASKS)))
@click.option("--val", metavar="PATH", help="Validation labels (default: 5-fold cross-validation).")
@click.option(
    "--val-features",
    metavar="DIR_OR_URI",
    help="The validation clips' extract or aggregate output, if not in --features.",
)
@click.option("--out", required=True, metavar="MODEL_DIR", help="Where model, card, metrics and plot go.")
@click.option(
    "--target", type=click.Choice(DAISEE_TARGETS), help="DAiSEE's label column (default engagement)."
)
@click.option(
    "--recipe", type=click.Choice(sorted(POOLS)), help="The descriptors' recipe (default: the task's)."
)
@click.option("--emotion-probs", is_flag=True, help="Descriptors with emotion probabilities appended.")
@click.option(
    "--estimator",
    type=click.Choice(sorted(classify.ESTIMATORS)),
    help="One of the task's kind (default: afew linearsvc, vgaf svc-rbf, engagewild ridge, others logistic).",
)
@click.option("--folds", type=int, default=5, show_default=True, help="Cross-validation folds without --val.")
@click.option("--seed", type=int, default=0, show_default=True)
@address_option
@local_option
@storage_options_option
def fit_command(
    features,
    labels_path,
    task,
    val,
    val_features,
    out,
    target,
    recipe,
    emotion_probs,
    estimator,
    folds,
    seed,
    address,
    local,
    storage_options,
) -> None:
    """Fit the task's recipe model on labelled clip descriptors; evaluate; save it with skops to MODEL_DIR."""
    with library_errors():
        model = classify.fit(
            features,
            labels_path,
            task,
            out,
            val=val,
            val_features=val_features,
            target=target,
            recipe=recipe,
            emotion_probs=emotion_probs,
            estimator=estimator,
            n_splits=folds,
            seed=seed,
            storage_options=storage_options,
            address=address,
            local=local,
        )
    click.echo(f"train labels: {model.join_}")
    if model.val_join_ is not None:
        click.echo(f"val labels: {model.val_join_}")
    scores = {k: v for k, v in model.metrics_.items() if isinstance(v, float)}
    click.echo(f"{model.metrics_['validation']}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    click.echo(f"model, card, metrics and plot in {out}")


@cli.command("predict")
@click.option(
    "--features", required=True, metavar="DIR_OR_URI", help="An extract output or an aggregate output."
)
@click.option("--model", "model_dir", required=True, metavar="MODEL_DIR", help="Made by `emotibatch fit`.")
@click.option("--out", required=True, metavar="FILE_OR_URI", help="The predictions Parquet file.")
@windows_option
@window_step_option
@per_track_option
@address_option
@local_option
@storage_options_option
def predict_command(
    features, model_dir, out, windows, window_step, per_track, address, local, storage_options
):
    """Predict every clip (or track, or window); clips without faces get a null prediction."""
    with library_errors():
        table = classify.predict(
            features,
            model_dir,
            out,
            windows=windows,
            window_step=window_step,
            per_track=per_track,
            storage_options=storage_options,
            address=address,
            local=local,
        )
    nulls = table["prediction"].null_count
    click.echo(f"{len(table)} predictions ({nulls} without faces: null) -> {redact_uri(out)}")


@cli.command("report")
@click.argument("extract_dir", metavar="OUT")
@click.option("--video", "videos", multiple=True, metavar="ID", help="Report this video only (repeatable).")
@click.option(
    "--html", "html_path", metavar="PATH_OR_URI", help="Where the report goes  [default: OUT/report.html]"
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
def report_command(
    extract_dir, videos, html_path, predictions, engagement, thumbnails, storage_options
) -> None:
    """One self-contained HTML report of the extract output OUT: the run, then each video over time.

    The file has no scripts and makes no requests: it opens from disk or from a bucket.
    """
    target = html_path or f"{extract_dir.rstrip('/')}/report.html"
    with library_errors():
        write_report(
            extract_dir,
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
@click.option("--output", "-o", required=True, metavar="FILE_OR_URI", help="The preview clip (MP4, H.264).")
@click.option(
    "--extract", required=True, metavar="DIR_OR_URI", help="The extract output holding VIDEO's faces."
)
@click.option("--start", type=float, default=0.0, show_default=True, metavar="S", help="First second.")
@click.option("--end", type=float, metavar="S", help="Last second (exclusive)  [default: the end]")
@storage_options_option
def render_command(video, output, extract, start, end, storage_options) -> None:
    """A preview clip of VIDEO with face boxes, track ids and emotions drawn on.

    VIDEO is the video file or its video_id in the extract's videos table. Only sampled frames have
    faces: a frame between two sampled frames shows the boxes of the nearest sampled frame before it.
    """
    with library_errors():
        result = render_clip(
            video, output, extract, start_s=start, end_s=end, storage_options=storage_options
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
    epilog="Exit codes: 0 the run completed, even with failed lectures (listed in OUT/date=.../failures.json "
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
    default=nightly.LECTURE_SAMPLING.value,
    show_default=True,
    help="Sample the frame nearest to each k/F seconds.",
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
    show_default=True,
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
    help="engagement_single_attention (EmotiEffLib's head: enet_b0 features, tracks of 128+ face frames), "
    "its h5 file, or a MODEL_DIR from `emotibatch fit`.",
)
@click.option(
    "--engagement-window",
    type=float,
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Timeline window of a fitted engagement model.",
)
@click.option("--date", "night", type=click.DateTime(["%Y-%m-%d"]), help="The night (default: today, UTC).")
@click.option("--strict", is_flag=True, help="Exit 3 when some lecture failed.")
def nightly_command(
    prefix: str,
    output: str,
    fps: float,
    keyframes: bool,
    settle_minutes: float,
    completion_marker: str | None,
    engagement_model: str | None,
    engagement_window: float,
    night: datetime.datetime | None,
    strict: bool,
    **options,
) -> None:
    """Extract and summarise the new, fully uploaded lectures under PREFIX (a directory or any fsspec URI).

    Run it nightly (cron, `ray job submit ... -- python jobs/nightly_lectures.py`): lectures processed by an
    earlier run, and uploads still in progress, are left alone; see emotibatch/nightly.py for the rules and
    the layout under OUT.
    """
    try:
        config = nightly.NightlyConfig(
            ExtractConfig(
                inputs=(prefix,),
                output=output,
                sampling=Sampling("fps", fps, frames="keyframes" if keyframes else "any"),
                **options,
            ),
            settle_minutes=settle_minutes,
            completion_marker=completion_marker,
            engagement_model=engagement_model,
            engagement_window_s=engagement_window,
            night=night.date() if night else None,
        )
        plan = nightly.prepare(config)
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.UsageError(str(exc)) from None
    with library_errors():
        result = nightly.run(plan)
    for line in result.describe():
        click.echo(line)
    sys.exit(EXIT_SOME_FAILED if strict and result.failed else EXIT_OK)


nightly_command.params += [p for p in extract.params if p.name in NIGHTLY_EXTRACT_OPTIONS]
