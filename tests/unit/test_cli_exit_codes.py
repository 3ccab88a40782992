"""Every command keeps extract's exit codes (0 ok, 3 some inputs failed, 2 bad usage found before any work,
1 anything else), and its errors name the option to change. CliRunner, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from emotibatch.cli import EXIT_INTERRUPTED, EXIT_USAGE, cli
from emotibatch.extract import pipeline
from emotibatch.inference import runtime
from emotibatch.testing.samples import write_synthetic_extract

MEANS = {"a": np.zeros(4), "b": np.ones(4), "c": np.full(4, 2.0)}


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extract output of three videos, and generic labels for them (two classes)."""
    root = tmp_path_factory.mktemp("exit")
    write_synthetic_extract(root / "extract", MEANS, frames=4)
    (root / "labels.csv").write_text("video_id,label\na,x\nb,y\nc,x\n")
    return root / "extract"


def _invoke(args: list) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _fit(extract: Path, labels: Path, *more) -> list:
    out = extract.parent / "classifier"
    return [
        "fit",
        "--extract",
        extract,
        "--labels",
        labels,
        "--task",
        "generic",
        "-o",
        out,
        *more,
    ]


def _usage(args: list, *says: str) -> None:
    result = _invoke(args)
    assert result.exit_code == EXIT_USAGE, result.output
    for text in says:
        assert text in result.output
    assert "Traceback" not in result.output


def test_fit_without_its_labels_file_is_bad_usage(extract: Path) -> None:
    _usage(_fit(extract, extract.parent / "missing.csv"), "missing.csv: no such labels file")


def test_fit_on_too_few_clips_for_the_folds_names_folds(extract: Path) -> None:
    _usage(_fit(extract, extract.parent / "labels.csv"), "from 3 videos", "lower --folds")
    _usage(_fit(extract, extract.parent / "labels.csv", "--folds", 1), "'--folds'")


def test_predict_with_a_folder_that_is_no_classifier_is_bad_usage(extract: Path, tmp_path: Path) -> None:
    args = ["predict", "--extract", extract, "--classifier", tmp_path, "-o", tmp_path / "p.parquet"]
    _usage(args, "not a model directory")


def test_report_on_a_folder_that_is_no_extract_output_is_bad_usage(tmp_path: Path) -> None:
    _usage(["report", "--extract", tmp_path], "no videos/ table; give the output of `emotibatch extract`")


def test_render_of_an_unknown_video_is_bad_usage(extract: Path, tmp_path: Path) -> None:
    _usage(["render", "nothing", "--extract", extract, "-o", tmp_path / "x.mp4"], "matches no video")


@pytest.mark.parametrize(
    ("option", "says"), [(["--fps", 0], "--fps must be > 0"), (["--every", 0], "--every must be >= 1")]
)
def test_sampling_errors_name_the_option(option: list, says: str, tmp_path: Path) -> None:
    _usage(["extract", tmp_path, "-o", tmp_path / "out", *option], says)
    _usage(["nightly", tmp_path, "-o", tmp_path / "out", "--fps", 0], "--fps must be > 0")


def test_cuda_without_its_provider_fails_in_prepare_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the models are even read (this model file does not exist) and before Ray starts."""
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)

    def no_cluster(*args, **kwargs):
        raise AssertionError("the job connected to Ray")

    monkeypatch.setattr(pipeline, "connected", no_cluster)  # a session's Ray may be up: ask the job itself
    args = ["extract", tmp_path, "-o", tmp_path / "out", "--device", "cuda", "--model", tmp_path / "no.onnx"]
    _usage(args, "no CUDA provider", "install emotibatch[gpu]")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_and_says_a_rerun_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not click's "Aborted!" with exit 1 (tests/ray/test_progress.py sends a real SIGINT to a real run)."""

    def interrupted(plan, progress, verbose):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prepare", lambda config: config)
    monkeypatch.setattr(pipeline, "run", interrupted)
    result = _invoke(["extract", tmp_path, "-o", tmp_path / "out"])
    assert result.exit_code == EXIT_INTERRUPTED
    assert "run the same command again to resume" in result.output and "Aborted" not in result.output
