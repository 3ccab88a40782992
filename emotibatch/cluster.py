"""Connecting to Ray: a running cluster, or an embedded local Ray started the way cluster nodes are.

Kept apart from the extract job so that whatever only needs a Ray connection (aggregate, nightly, tests,
benchmarks) does not import the models' runtime: a module a Ray task pickles by reference is imported again
in every worker that runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import ray

# Idle worker processes an embedded Ray keeps for the next task. Ray keeps as many as there are unreserved
# CPUs, and an extract reserves them all (decode tasks, face actors), so without this every probe, staging
# and per-video task would start a new process and import into it: ~3 s of a 16-s run on 2 CPUs.
IDLE_WORKERS = 4


def start_local_ray(**options) -> None:
    """Start an embedded local Ray (`options` go to ray.init): no dashboard or job API to expose, and
    `IDLE_WORKERS` idle workers kept. Clusters set the same with RAY_num_workers_soft_limit (cluster.yaml)."""
    ray.init(include_dashboard=False, _system_config={"num_workers_soft_limit": IDLE_WORKERS}, **options)


def quiet(verbose: bool) -> dict:
    """Silence Ray's own output unless `verbose`; return the ray.init options that do the rest.

    What a person cannot act on: Ray Data's progress bars (block units, a total that shrinks; "tqdm is not
    installed" without tqdm) and its execution plan, the memory detector's hint, Ray's start-up and
    token-auth warnings (loggers under `ray`), and what workers and the raylet print (object-store
    spilling, each with an ANSI-coloured prefix). Errors still surface: a failed video says why in its own
    row, and a failed job raises. `--verbose` keeps all of it, as Ray sets it.
    """
    from ray.data import DataContext
    from ray.data._internal.issue_detection.detectors import HighMemoryIssueDetector

    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    detection = context.issue_detectors_config
    if not verbose:
        detection.detectors = [d for d in detection.detectors if d is not HighMemoryIssueDetector]
    return {"log_to_driver": verbose, "logging_level": level}


@contextlib.contextmanager
def connected(address: str | None, *, verbose: bool = False) -> Iterator[None]:
    """Connect to the Ray cluster at `address` (or RAY_ADDRESS, as inside `ray job submit`), else start an
    embedded local Ray (`start_local_ray`); do nothing when already connected. Ray's own output is off
    unless `verbose` (`quiet`). Disconnects what it opened."""
    started = not ray.is_initialized()
    options = quiet(verbose)
    if started and (address or os.environ.get("RAY_ADDRESS")):
        ray.init(address=address, **options)
    elif started:
        start_local_ray(**options)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
