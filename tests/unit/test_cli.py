"""`emotibatch models`: CliRunner checks of exit codes, output and the files written. No network: copies come
from a model dir, the way offline nodes get them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

from emotibatch.cli import cli
from emotibatch.inference import registry

ONNX = b"fake detector " + bytes(range(256)) * 32


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def offline_dir(tmp_path: Path) -> Path:
    """A model dir holding a fake det_10g, as `models pull --output` would have written it."""
    path = tmp_path / "models"
    path.mkdir()
    (path / "det_10g.onnx").write_bytes(ONNX)
    return path


@pytest.fixture
def runner(cache: Path, offline_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(registry, "_license_shown", set())
    return CliRunner(
        env={registry.CACHE_ENV: str(cache), registry.MODEL_DIR_ENV: str(offline_dir), "COLUMNS": "200"}
    )


def test_models_list_shows_every_card_and_what_is_cached(runner: CliRunner, cache: Path) -> None:
    cache.mkdir()
    (cache / "enet_b2_7.onnx").write_bytes(b"x")
    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert set(registry.CARDS) <= set(rows)
    assert rows["enet_b2_7"] == ["enet_b2_7", "emotion", "260", "7", "1408", "no", "yes", "Apache-2.0"]
    assert rows["mbf_va_mtl"] == ["mbf_va_mtl", "emotion", "112", "8", "512", "yes", "no", "Apache-2.0"]
    assert rows["det_10g"][:7] == ["det_10g", "detector", "-", "-", "-", "no", "no"]
    assert "non-commercial research only" in " ".join(rows["det_10g"])


def test_models_pull_to_dir_writes_the_model_dir_layout(
    runner: CliRunner, tmp_path: Path, cache: Path
) -> None:
    out = tmp_path / "exported"
    result = runner.invoke(cli, ["models", "pull", "det_10g", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "det_10g.onnx").read_bytes() == ONNX
    assert (cache / "det_10g.onnx").read_bytes() == ONNX
    assert f"det_10g: {out}/det_10g.onnx" in result.output


def test_models_pull_to_fsspec_uri(runner: CliRunner, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    try:
        result = runner.invoke(
            cli, ["models", "pull", "det_10g", "--output", f"memory://{tmp_path.name}/models"]
        )
        assert result.exit_code == 0, result.output
        assert fs.cat(f"/{tmp_path.name}/models/det_10g.onnx") == ONNX
    finally:
        fs.rm(f"/{tmp_path.name}", recursive=True)


def test_models_pull_sha256_pin(runner: CliRunner, cache: Path) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    result = runner.invoke(cli, ["models", "pull", "det_10g", "--sha256", wrong])
    assert result.exit_code == 1
    assert f"expected sha256 {wrong}, got {hashlib.sha256(ONNX).hexdigest()}" in result.output
    assert not (cache / "det_10g.onnx").exists()

    right = hashlib.sha256(ONNX).hexdigest()
    result = runner.invoke(cli, ["models", "pull", "det_10g", "--sha256", right])
    assert result.exit_code == 0, result.output
    assert f"det_10g: {cache}/det_10g.onnx" in result.output
    assert json.loads((cache / "pins.json").read_text()) == {"det_10g": right}


def test_models_pull_library_errors_exit_with_message(runner: CliRunner, offline_dir: Path) -> None:
    (offline_dir / "enet_b0_8_best_vgaf.onnx").write_bytes(ONNX)
    result = runner.invoke(cli, ["models", "pull", "enet_b0_8_best_vgaf"])
    assert result.exit_code == 1
    assert "Error: model enet_b0_8_best_vgaf from" in result.output
    assert "expected git blob SHA-1 49772db4e87ee6df57087fba131832a959e5c64d" in result.output
    assert "Traceback" not in result.output

    result = runner.invoke(cli, ["models", "pull", "no_such_model"])
    assert result.exit_code == 2  # bad usage: an unknown name
    assert "registered models: enet_b0_8_best_vgaf" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["models", "pull"],
        ["models", "pull", "det_10g", "det_500m", "--sha256", "0" * 64],
        ["models", "pull", "det_10g", "--storage-options", "{not json"],
        ["models", "pull", "det_10g", "--storage-options", "[1]"],
    ],
)
def test_models_pull_usage_errors_exit_2(runner: CliRunner, args: list[str], cache: Path) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert not cache.exists()


@pytest.mark.slow
def test_python_dash_m_pulls_and_shows_the_licence_once_on_stderr(cache: Path, offline_dir: Path) -> None:
    env = {**os.environ, registry.CACHE_ENV: str(cache), registry.MODEL_DIR_ENV: str(offline_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "emotibatch", "models", "pull", "det_10g", "det_10g"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"det_10g: {cache}/det_10g.onnx\n" * 2
    assert result.stderr.count("non-commercial research only") == 1
    assert "trusted this first copy" in result.stderr
