"""cluster.yaml passes Ray's own cluster-launcher validation and keeps the head's API on loopback."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from emotibatch import cluster

CLUSTER_YAML = Path(__file__).parents[2] / "cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_validates_the_cluster_config(config: dict) -> None:
    validate_config(config)
    validate_config(prepare_config(config))


def test_a_misspelt_field_is_rejected(config: dict) -> None:
    config["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_the_head_does_no_work_and_keeps_its_dashboard_on_loopback(config: dict) -> None:
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["IamInstanceProfile"]["Arn"]
    assert any("[gpu,s3]" in command for command in config["setup_commands"])


def test_nodes_keep_as_many_idle_workers_as_the_embedded_ray(config: dict) -> None:
    setting = f"RAY_num_workers_soft_limit={cluster.IDLE_WORKERS} ray start"
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any(setting in command for command in config[commands]), commands
