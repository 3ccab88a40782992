"""Connecting to Ray: a running cluster, or an embedded local Ray started the way cluster nodes are.

Kept apart from the extract job so that whatever only needs a Ray connection (aggregate, nightly, tests,
benchmarks) does not import the models' runtime: a module a Ray task pickles by reference is imported again
in every worker that runs it.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Connect to the Ray cluster at `address` (or RAY_ADDRESS, as inside `ray job submit`), else start an
    embedded local Ray (`start_local_ray`); do nothing when already connected. Disconnects what it opened."""
    started = not ray.is_initialized()
    if started and (address or os.environ.get("RAY_ADDRESS")):
        ray.init(address=address)
    elif started:
        start_local_ray()
    try:
        yield
    finally:
        if started:
            ray.shutdown()
