"""`ray job submit ... -- python jobs/nightly_lectures.py PREFIX --output OUT`: the nightly lecture job.

Extracts the lectures under PREFIX that no earlier run processed and that finished uploading, into
OUT/date=YYYY-MM-DD/, with per-lecture summaries; see emotibatch/nightly.py for the rules and the layout.
Exit codes: 0 the run completed (failed lectures are listed in the night's failures.json and the log,
and tried again by the next run), 3 with --strict when some lecture failed, 2 bad usage (options, models,
prefix or output rejected before any work), 1 the run could not complete.
"""

import datetime
import logging
import sys

import click

from emotibatch import nightly
from emotibatch.cli import EXIT_OK, EXIT_SOME_FAILED, extract, library_errors
from emotibatch.config import ExtractConfig
from emotibatch.extract.decode import Sampling

# `emotibatch extract` options that apply to lectures: the same names, defaults and help.
EXTRACT_OPTIONS = (
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


@click.command(
    epilog="Exit codes: 0 the run completed, even with failed lectures (listed in OUT/date=.../failures.json "
    "and the log, tried again by the next run), 3 with --strict when some lecture failed, 2 bad usage "
    "(options, models, prefix or output rejected before any work), 1 the run could not complete."
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
def nightly_lectures(
    prefix: str,
    output: str,
    fps: float,
    settle_minutes: float,
    completion_marker: str | None,
    engagement_model: str | None,
    engagement_window: float,
    night: datetime.datetime | None,
    strict: bool,
    **options,
) -> None:
    """Extract and summarise the new, fully uploaded lectures under PREFIX (a directory or any fsspec URI)."""
    try:
        config = nightly.NightlyConfig(
            ExtractConfig(inputs=(prefix,), output=output, sampling=Sampling("fps", fps), **options),
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


nightly_lectures.params += [p for p in extract.params if p.name in EXTRACT_OPTIONS]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    nightly_lectures(prog_name="jobs/nightly_lectures.py")
