"""The embedded local Ray keeps idle workers even when the job reserves every CPU."""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def test_an_idle_worker_survives_while_every_cpu_is_reserved() -> None:
    """Ray keeps as many idle workers as there are unreserved CPUs; an extract reserves them all (face
    actors, decode tasks), and each short task (probe, staging, per-video pass) would otherwise start a
    new process."""
    reserved = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
    ray.get(reserved.ready())

    def worker_pid() -> int:
        return os.getpid()

    pid = ray.remote(num_cpus=0)(worker_pid)
    try:
        first = ray.get(pid.remote())
        time.sleep(3)  # Ray kills an idle worker beyond its limit after 1 s
        assert ray.get(pid.remote()) == first
    finally:
        remove_placement_group(reserved)
