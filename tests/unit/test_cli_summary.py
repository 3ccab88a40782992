"""The extract summary prints every user-given text literally: ids, paths and errors may hold `[...]`,
which rich would read as markup (dropping `[red]`, or crashing on a stray `[/]` and turning exit 3 into 1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from emotibatch.cli import EXIT_SOME_FAILED, cli
from emotibatch.extract import pipeline

FAILED = {
    "lecture[red]": "could not decode lecture[red].mp4: bad [/] data; see [link=x]here[/link]",
    "talk[/]": "not found: s3://bucket/talk[/].mp4; check the path",
}
OUTPUT = "out[bold]"
RUN = {
    "videos_ok": 1,
    "videos_failed": len(FAILED),
    "videos_skipped": 0,
    "frames_decoded": 10,
    "frames_sampled": 5,
    "faces": 3,
    "tracks": 1,
    "frames_per_s": 2.0,
    "faces_per_s": 1.0,
}


def test_summary_prints_ids_paths_and_errors_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    videos = [{"video_id": "ok[i]", "status": "ok", "error": None}]
    videos += [{"video_id": v, "status": "failed", "error": e} for v, e in FAILED.items()]
    result = pipeline.RunResult("run[x]", OUTPUT, videos, RUN)
    # Only the job itself is replaced: the summary is what is under test.
    monkeypatch.setattr(pipeline, "prepare", lambda config: config)
    monkeypatch.setattr(pipeline, "run", lambda plan, progress, verbose: result)
    got = CliRunner().invoke(cli, ["extract", "x.mp4", "-o", OUTPUT], env={"COLUMNS": "1000"})
    assert got.exit_code == EXIT_SOME_FAILED, got.output
    for video_id, error in FAILED.items():
        assert f"failed {video_id}: {error}" in got.output
    assert "run run[x]" in got.output and OUTPUT in got.output
