"""The command line as a whole: one vocabulary with help and defaults on every option, label formats in
`fit --help`, a `--help` that imports no library, and small work that runs without Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from emotibatch import progress
from emotibatch.cli import ABAW_LABELS, ABAW_MTL, ABAW_TASKS, MAX_LABELS, PROGRESS_INTERVAL_S, cli
from emotibatch.clips import abaw, aggregate
from emotibatch.clips.labels import READERS
from emotibatch.reports import render

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("ray", "pyarrow", "numpy", "sklearn", "av", "onnxruntime", "fsspec", "rich")


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        found[prefix + name] = command
        if isinstance(command, click.Group):
            found |= _commands(command, f"{prefix}{name} ")
    return found


COMMANDS = _commands(cli)


def test_help_imports_no_library() -> None:
    """`emotibatch --help` in a fresh interpreter: the library loads inside commands, not at import."""
    code = (
        "import sys\nfrom emotibatch.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert "Commands:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_its_default_shown(name: str) -> None:
    command = COMMANDS[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
    result = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for param in command.params:
        # Options without a default hold None or click's UNSET sentinel (its type name across versions).
        given = param.default is not None and type(param.default).__name__ != "Sentinel"
        if isinstance(param, click.Option) and given and not (param.is_flag or param.multiple):
            # click adds a range after the default: "[default: 5; x>=2]"
            shown = rf"\[default: {re.escape(str(param.default))}[];]"
            assert re.search(shown, " ".join(result.output.split())), (name, param.opts)


def test_one_vocabulary_across_commands() -> None:
    """-o/--output where a command writes, --extract for the extract output it reads, --model only for an
    ONNX emotion model and --classifier for a fitted one; the old names are gone."""
    options = {name: {o for p in c.params for o in p.opts} for name, c in COMMANDS.items()}
    for name in ("extract", "aggregate", "fit", "predict", "report", "render", "nightly", "demo"):
        assert {"-o", "--output"} <= options[name], name
    for name in ("aggregate", "fit", "predict", "report", "render"):
        assert "--extract" in options[name], name
    assert "--val-extract" in options["fit"] and "--classifier" in options["predict"]
    assert {name for name, opts in options.items() if "--model" in opts} == {"extract", "nightly"}
    old = {"--features", "--out", "--html", "--val-features", "--local", "--to", "--dir"}
    assert not {name: opts & old for name, opts in options.items() if opts & old}


def test_fit_help_lists_every_label_format() -> None:
    result = CliRunner().invoke(cli, ["fit", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for task, reader in READERS.items():
        assert f"  {task}: {' '.join(reader.__doc__.split())}" in result.output
    for task in abaw.HEADERS:
        assert f"  {task}: {ABAW_LABELS}" in result.output


def test_the_defaults_help_shows_without_importing_the_library_are_the_librarys() -> None:
    """--help names these defaults without importing their modules; they must not drift apart."""
    assert (PROGRESS_INTERVAL_S, MAX_LABELS) == (progress.PLAIN_INTERVAL_S, render.MAX_LABELS)
    assert set(ABAW_TASKS) == set(abaw.HEADERS) and ABAW_MTL == abaw.MTL


def test_small_work_runs_in_process_and_a_named_cluster_or_large_work_on_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(aggregate.ray, "is_initialized", lambda: False)  # whatever this session started
    assert not aggregate.on_ray(None, aggregate.RAY_MIN_FACES - 1)
    assert aggregate.on_ray(None, aggregate.RAY_MIN_FACES)
    assert aggregate.on_ray("ray://head:10001", 0)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # as inside `ray job submit`
    assert aggregate.on_ray(None, 0)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(aggregate.ray, "is_initialized", lambda: True)  # a driver already connected
    assert aggregate.on_ray(None, 0)
