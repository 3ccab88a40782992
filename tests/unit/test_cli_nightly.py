"""`emotibatch nightly`: its options, and usage errors before any work (no Ray). The runs themselves are in
tests/jobs/test_nightly.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from emotibatch import nightly
from emotibatch.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_help_has_every_option_with_its_help_and_default() -> None:
    result = CliRunner().invoke(cli, ["nightly", "--help"], terminal_width=200, max_content_width=200)
    assert result.exit_code == 0, result.output
    for line in (
        "--settle-minutes FLOAT",
        "[default: 30.0]",
        "--fps FLOAT",
        f"(nightly.LECTURE_SAMPLING)  [default: {nightly.LECTURE_SAMPLING.value}]",  # the help says it
        "--completion-marker SUFFIX",
        "--engagement-window SECONDS",
        "[default: 60.0]",
        "--model TEXT",  # emotibatch extract's options, with their defaults
        "[default: enet_b0_8_best_vgaf]",
        "--storage-options JSON",
        "Exit codes: 0 the run completed",
    ):
        assert line in result.output
    assert "--frame-folders" not in result.output and "--overwrite" not in result.output


def test_bad_usage_exits_2_before_any_work(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    settle = runner.invoke(cli, ["nightly", str(tmp_path), "--output", str(out), "--settle-minutes", "-1"])
    assert settle.exit_code == 2 and "--settle-minutes must be >= 0" in settle.output
    missing = runner.invoke(cli, ["nightly", str(tmp_path / "nowhere"), "--output", str(out)])
    assert missing.exit_code == 2 and "no such directory or prefix" in missing.output
    assert not out.exists()


def test_the_job_script_is_the_cli_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "jobs/nightly_lectures.py", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: jobs/nightly_lectures.py nightly [OPTIONS] PREFIX")
    assert "--settle-minutes" in done.stdout
