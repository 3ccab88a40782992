"""cluster.yaml passes Ray's own cluster-launcher validation and keeps the head's API on loopback; what
`ray up` syncs and `ray job submit` uploads leaves model files out."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.runtime_env.packaging import create_package
from ray._private.thirdparty.pathspec import PathSpec
from ray.autoscaler._private.util import prepare_config, validate_config

from emotibatch import cluster

ROOT = Path(__file__).parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


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
    assert ".gitignore" in config["rsync_filter"]  # so `ray up` syncs no model files (models/README.md)


def test_nodes_keep_as_many_idle_workers_as_the_embedded_ray(config: dict) -> None:
    setting = f"RAY_num_workers_soft_limit={cluster.IDLE_WORKERS} ray start"
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any(setting in command for command in config[commands]), commands


@pytest.mark.parametrize(
    "read_gitignore", [True, False], ids=["gitignore", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"]
)
def test_the_job_working_dir_leaves_model_files_out(tmp_path: Path, read_gitignore: bool) -> None:
    """What `ray job submit --working-dir .` uploads, packed by Ray's own code from the repository's ignore
    files: models/ (pulled weights, fitted classifiers) never goes, the code does."""
    tree = tmp_path / "tree"
    for name in (".gitignore", ".rayignore"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tree / name)
    kept = ["emotibatch/cli.py", "benchmarks/models.py", "jobs/extract.py"]
    for name in [*kept, "models/det_10g.onnx", "models/afew/model.skops", "models/README.md"]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"x")
    package = tmp_path / "package.zip"
    create_package(str(tree), package, include_gitignore=read_gitignore)
    uploaded = {name for name in zipfile.ZipFile(package).namelist() if not name.endswith("/")}
    assert set(kept) <= uploaded
    assert not {name for name in uploaded if name.startswith("models/") and name != "models/README.md"}


def test_git_keeps_only_the_readme_of_models() -> None:
    """`.gitignore` (also what cluster.yaml's rsync_filter applies) ignores model files, not the README."""
    rules = PathSpec.from_lines("gitwildmatch", (ROOT / ".gitignore").read_text().splitlines())
    # A fitted classifier is a directory: git (and rsync) skip an ignored directory whole.
    assert rules.match_file("models/det_10g.onnx") and rules.match_file("models/afew")
    assert not rules.match_file("models/README.md") and not rules.match_file("benchmarks/models.py")
