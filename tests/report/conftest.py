"""Fixtures for the report and render tests: extract outputs, the reports made from them, a browser.

`synthetic` is written directly (no Ray, no video): a lecture with three faces per frame, a video
without faces and a failed input, plus a runs row. `lecture` is a real extract on the session's local
Ray (stand-in MTL model, --fps 5): a generated video with three known tracks, one without faces and a
file that is no video. Reports are made once per session, shared by the HTML and the browser tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from devtools import Browser, chromium
from lectures import FPS, LECTURE_TRACKS, SECRET, Lecture

from emotibatch import schema
from emotibatch.cluster import start_local_ray
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.extract.output import Output
from emotibatch.inference.registry import CLASSES_8
from emotibatch.reports import report
from emotibatch.testing import samples


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lecture (300 frames at 10 fps, 3 tracks), empty_room (no faces), broken (failed); one run."""
    root = tmp_path_factory.mktemp("synthetic") / "out"
    samples.write_synthetic_extract(
        root, {"lecture": np.zeros(4), "empty_room": None}, frames=300, faces_per_frame=3, failed=["broken"]
    )
    settings = {
        "model": "enet_b0_8_best_vgaf",
        "sampling": {"mode": "all", "value": None},
        "storage_options": {"key": "<redacted>"},
    }
    started = datetime(2026, 11, 1, 22, 0, tzinfo=timezone.utc)
    run = {
        "run_id": "run-1",
        "started_at": started,
        "ended_at": started,
        "settings": json.dumps(settings),
        "videos": 3,
        "videos_ok": 2,
        "videos_failed": 1,
        "videos_skipped": 0,
        "frames_decoded": 600,
        "frames_sampled": 600,
        "faces": 900,
        "tracks": 3,
        "wall_s": 120.0,
        "frames_per_s": 5.0,
        "faces_per_s": 7.5,
    }
    output = Output(str(root))
    output.write_table(output.run_path("run-1"), pa.Table.from_pylist([run], schema.RUNS))
    return root


@pytest.fixture(scope="session")
def lecture(tmp_path_factory: pytest.TempPathFactory, mtl_path: Path, scrfd_path: Path) -> Lecture:
    """A real extract on the session's Ray (started here, and stopped, if no test started it before)."""
    import ray

    d = tmp_path_factory.mktemp("lecture")
    video = samples.make_video(
        d / "in" / "lecture.mp4", width=640, height=360, fps=FPS, seconds=2.0, faces=LECTURE_TRACKS
    )
    samples.make_video(d / "in" / "empty_room.mp4", width=320, height=180, fps=FPS, seconds=1.0)
    (d / "in" / "broken.mp4").write_text("not a video\n")
    config = ExtractConfig(
        inputs=(str(d / "in"),),
        output=str(d / "out"),
        model=str(mtl_path),
        detector=str(scrfd_path),
        device="cpu",
        sampling=Sampling("fps", 5.0),
        storage_options={"secret": SECRET},
    )
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        start_local_ray(address="local", num_cpus=2, log_to_driver=False)
    try:
        pipeline.extract(config)
    finally:
        if started:
            ray.shutdown()
    return Lecture(d / "out", video)


# A course view: two courses over a semester, with a failed and a waiting lecture.
COURSE_LECTURES = [
    report.CourseLecture(
        f"course{c}",
        f"course{c}/week{w:02d}.mp4",
        "ok",
        f"2026-03-{w:02d}",
        duration_s=5400.0,
        faces=20_000,
        engagement=0.4 + 0.03 * w if c == 1 else None,
        shares=dict(zip(CLASSES_8, np.random.default_rng(w).dirichlet(np.ones(8)))),
        href="no_faces/report.html",
    )
    for c in (1, 2)
    for w in range(1, 13)
] + [
    report.CourseLecture("course2", "course2/week13.mp4", "failed", "2026-03-13", "cannot decode"),
    report.CourseLecture("course2", "course2/week14.mp4", "waiting", None, "no completion marker .done yet"),
]


@pytest.fixture(scope="session")
def reports(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> dict[str, Path]:
    """Pages of the synthetic output: the whole run, one video without faces, one failed input, and an
    index of the three."""
    night = tmp_path_factory.mktemp("night")
    made = {
        "synthetic": report.write_report(str(synthetic), str(night / "synthetic.html")),
        "no_faces": report.write_report(
            str(synthetic), str(night / "no_faces" / "report.html"), videos=["empty_room"]
        ),
        "failed_input": report.write_report(
            str(synthetic), str(night / "failed_input.html"), videos=["broken"]
        ),
    }
    made["index"] = report.write_index(str(night), str(night / "index.html"))
    made["courses"] = str(night / "courses.html")
    Path(made["courses"]).write_text(report.course_page(COURSE_LECTURES, CLASSES_8, "Lectures by course"))
    return {name: Path(path) for name, path in made.items()}


@pytest.fixture(scope="session")
def lecture_report(tmp_path_factory: pytest.TempPathFactory, lecture: Lecture) -> Path:
    """The real extract's report, with thumbnails."""
    path = tmp_path_factory.mktemp("lecture_report") / "report.html"
    return Path(report.write_report(str(lecture.out), str(path), thumbnails=True))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium. Without it the browser tests fail in CI (CI=true) and are skipped elsewhere."""
    executable = chromium()
    if executable is None:
        reason = "headless Chromium not found: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Browser(executable) as b:
        yield b
