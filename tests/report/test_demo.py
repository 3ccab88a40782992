"""`emotibatch demo` end to end on stand-in models: it writes only into the folder it names (a new
temporary one by default), says each step, and ends with commands that work on its own output."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from emotibatch import demo
from emotibatch.cli import cli
from emotibatch.reports.render import render_clip
from emotibatch.reports.report import write_report

pytestmark = pytest.mark.slow  # a real extract of the three sample videos on a local Ray


def test_the_demo_names_its_folder_says_its_steps_and_what_to_try_next(
    mtl_path: Path, scrfd_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "choose_models", lambda _: (str(mtl_path), str(scrfd_path), "stand-ins"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where mkdtemp makes the folder
    (tmp_path / "tmp").mkdir()
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["demo", "--device", "cpu"], env={"RAY_USAGE_STATS_ENABLED": "0"})
    assert result.exit_code == 0, result.output
    assert os.listdir(cwd) == []  # nothing written where it was run
    lines = result.output.splitlines()
    folder = Path(lines[0].removeprefix("Demo folder: "))
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("emotibatch-demo-")
    steps = [line[:3] for line in lines if line[:3] in ("1/3", "2/3", "3/3")]
    assert steps == ["1/3", "2/3", "3/3"] and "stand-ins" in lines

    report_line, render_line = lines[-2:]
    assert lines[-3] == "Next, try:"
    report = shlex.split(report_line)
    render = shlex.split(render_line)
    assert report[:3] == ["emotibatch", "report", "--extract"] and report[4] == "-o"
    assert render[:2] == ["emotibatch", "render"] and render[3] == "--extract" and render[5] == "-o"
    output = folder / "output"
    assert (
        report[3] == render[4] == str(output) and Path(report[5]).parent == Path(render[6]).parent == folder
    )
    # The commands' work, done through the library (the CLI's option names are another test's).
    assert Path(write_report(report[3], report[5])).stat().st_size > 0
    assert render_clip(render[2], render[6], render[4], end_s=1.0).frames == 25
