"""What a person sees while an extract runs: plain progress lines in a log that reach the totals, Ray's own
noise off unless --verbose, and Ctrl-C that stops cleanly (exit 130, the lease released) so that a rerun
completes with the rows of an uninterrupted run."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import N_FRAMES, invoke, read_table
from test_resume import _assert_same_faces

from emotibatch.extract.output import LEASE_FILE
from emotibatch.testing import samples

pytestmark = pytest.mark.slow

LINE = re.compile(r"progress: videos (\d+)/(\d+) committed, frames (\d+)/(\d+) sampled, (\d+) faces")
# Ray's own output with --verbose: Ray Data's execution plan and its progress in blocks. (Ray's token-auth
# warning is off by default too, but it depends on RAY_AUTH_MODE, which the tests' own Ray sets.)
NOISE = ("Execution plan of Dataset", "Total Progress")
# A shell's background job ignores SIGINT and its children inherit that (CI may start the suite so): the
# CLI gets Python's Ctrl-C handler back, as it has in a terminal.
CLI = [
    sys.executable,
    "-c",
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from emotibatch.cli import cli; cli()",
    "extract",
]


def _counts(text: str) -> list[tuple[int, ...]]:
    return [tuple(map(int, m.groups())) for m in LINE.finditer(text)]


def test_plain_lines_reach_the_totals(ray_cluster, videos, model_args, tmp_path):
    """Not a terminal (CliRunner, like a log): lines every interval whose counts only grow and end at this
    run's totals, and the faces the output holds."""
    out = tmp_path / "out"
    result = invoke(["extract", *videos.values(), "-o", out, *model_args, "--progress-interval", 0.2])
    assert result.exit_code == 0, result.output
    counts = _counts(result.stderr)
    assert len(counts) >= 2, result.stderr
    for before, after in itertools.pairwise(counts):
        assert all(a >= b for a, b in zip(after, before)), (before, after)
    frames = 2 * N_FRAMES + N_FRAMES // 2  # "known", "small", and "noface" (1 s)
    faces = read_table(out, "faces").num_rows
    assert counts[-1] == (3, 3, frames, frames, faces)
    assert "\x1b[" not in result.stderr  # no ANSI colours outside a terminal


def _cli(args: list, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [*CLI, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """Long enough (1,000 frames, ~60 blocks: a second or more of staging with the stand-in models) that
    progress lines every 0.1 s show it midway."""
    d = tmp_path_factory.mktemp("long")
    return samples.make_video(d / "long.mp4", width=320, height=180, fps=25.0, seconds=40.0)


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(ray_cluster, long_video, videos, model_args, tmp_path):
    """SIGINT to the CLI mid-run, in its own Ray (a subprocess): exit 130 saying that a rerun resumes, the
    lease gone, Ray's noise absent; the rerun completes with the rows of a run never interrupted."""
    inputs = [long_video, videos["known"]]
    out = tmp_path / "out"
    cli = _cli([*inputs, "-o", out, *model_args, "--progress-interval", 0.1])
    try:
        for line in cli.stderr:
            counts = _counts(line)
            if counts and counts[0][3] > 0 and counts[0][2] < counts[0][3]:  # planned, not all staged
                break
        else:
            pytest.fail("no progress line showed the run midway")
        cli.send_signal(signal.SIGINT)
        _, rest = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, rest
    assert "run the same command again to resume" in rest
    assert not (out / LEASE_FILE).exists()
    for noise in (*NOISE, "Token authentication", "tqdm is not installed", "Aborted!"):
        assert noise not in rest
    interrupted = read_table(out, "runs")
    assert interrupted is not None and interrupted["error"].to_pylist()[0].startswith("the run ended early")

    rerun = invoke(["extract", *inputs, "-o", out, *model_args])
    assert rerun.exit_code == 0, rerun.output
    reference = tmp_path / "reference"
    assert invoke(["extract", *inputs, "-o", reference, *model_args]).exit_code == 0
    _assert_same_faces(read_table(out, "faces"), read_table(reference, "faces"))
    assert read_table(out, "videos")["status"].to_pylist() == ["ok", "ok"]


def test_verbose_brings_ray_output_back(videos, model_args, tmp_path):
    """Its own Ray (a subprocess): with --verbose, Ray's warnings and Ray Data's progress are printed."""
    cli = _cli([videos["noface"], "-o", tmp_path / "out", *model_args, "--verbose"])
    _, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err
    for noise in NOISE:
        assert noise in err
