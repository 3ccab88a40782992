"""Segments of one job decoded on two nodes of a `ray.cluster_utils.Cluster` (head + 2 workers on this
machine, in a subprocess: tests/jobs/multinode.py) give the same faces rows as a run on one node."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs_helpers import ROOT, make_lecture, stop_processes

from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling

RUN_TIMEOUT_S = 300


def _faces(output: Path) -> pa.Table:
    """Every faces file, in a fixed row order, without the schema metadata (it names the run)."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((output / "faces").glob("*.parquet"))])
    keys = [("video_id", "ascending"), ("frame_index", "ascending"), ("face_index", "ascending")]
    return table.sort_by(keys).replace_schema_metadata(None)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_segments_on_two_nodes_same_rows_as_one(tmp_path: Path, emotion_path: Path, scrfd_path: Path) -> None:
    videos = [str(make_lecture(tmp_path / f"lecture{i}.mp4", seed=i)) for i in range(2)]
    # Every 2nd of 40 frames, 1 s segments: 4 segments of 5 frames (2 faces each) per video.
    settings = {
        "inputs": videos,
        "model": str(emotion_path),
        "detector": str(scrfd_path),
        "device": "cpu",
        "sampling": {"mode": "every", "value": 2},
        "segment_seconds": 1.0,
    }
    (tmp_path / "settings.json").write_text(json.dumps({**settings, "output": str(tmp_path / "multi")}))
    ray_tmp = tempfile.mkdtemp(prefix="ebm", dir="/tmp")  # short: Ray's socket paths are length-limited
    token = Path(ray_tmp, "auth_token")
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmp,  # its sessions and its address file, away from /tmp/ray
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    report_path = tmp_path / "report.json"
    cluster = subprocess.Popen(
        [sys.executable, "tests/jobs/multinode.py", str(tmp_path / "settings.json"), str(report_path)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Meanwhile, the same job on this session's single-node Ray.
        config = {**settings, "inputs": tuple(videos), "sampling": Sampling("every", 2)}
        single = pipeline.extract(ExtractConfig(**config, output=str(tmp_path / "single")))
        output, _ = cluster.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        cluster.kill()
        left = stop_processes(cluster.pid, ray_tmp)
        if not left:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    assert cluster.returncode == 0, output
    assert not left, f"cluster processes still running: {left}"

    report = json.loads(report_path.read_text())
    assert set(report["decode_nodes"]) == set(report["workers"])  # 8 segments, both nodes decoding
    assert report["face_actor_nodes"] and set(report["face_actor_nodes"]) <= set(report["workers"])
    assert [v["status"] for v in report["videos"]] == ["ok", "ok"]
    assert [v["status"] for v in single.videos] == ["ok", "ok"]
    multi, one = _faces(tmp_path / "multi"), _faces(tmp_path / "single")
    assert multi.num_rows == 80 and multi.equals(one)  # 20 frames x 2 faces x 2 videos
