"""Run an extraction on a three-node `ray.cluster_utils.Cluster` and report where its work ran.

`python tests/jobs/multinode.py SETTINGS_JSON REPORT_JSON`: SETTINGS_JSON holds ExtractConfig fields
(sampling as {"mode", "value"}). The head has no CPUs, so all work lands on the two worker nodes (2 CPUs
each: a face actor and a decode task fit on either). REPORT_JSON gets the worker node ids, the node of
each decode task and of each face actor (Ray's state API, through the head's dashboard), and the run's
videos rows. Run it in its own process: a Cluster cannot share a process with another `ray.init`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from jobs_helpers import free_port  # this script's directory is sys.path[0]
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling


def main(settings_path: str, report_path: str) -> None:
    settings = json.loads(Path(settings_path).read_text())
    settings["sampling"] = Sampling(**settings["sampling"])
    settings["inputs"] = tuple(settings["inputs"])
    config = ExtractConfig(**settings)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            # Ray's fixed defaults (8265, 52365) may belong to another cluster on this machine.
            "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
        },
    )
    try:
        workers = [cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        result = pipeline.extract(config)
        tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
        actors = list_actors(detail=True, limit=10_000, raise_on_missing_output=False)
        report = {
            "workers": [w.node_id for w in workers],
            "decode_nodes": [t.node_id for t in tasks if "decode_blocks" in t.name and t.state == "FINISHED"],
            # Placed actors only: the pool may ask for an actor it cancels before Ray places it.
            "face_actor_nodes": [a.node_id for a in actors if "FaceStage" in a.class_name and a.node_id],
            "videos": result.videos,
        }
        Path(report_path).write_text(json.dumps(report, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
