"""Helpers for the jobs/ tests: lecture videos, an engagement head with random weights, free ports, and
stopping a Ray cluster started in other processes.

Clusters started by `ray start` or `ray.cluster_utils.Cluster` are stopped by process id
(`stop_processes`), never by `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import time
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np

from emotibatch.inference.engagement import FEATURE_DIM
from emotibatch.testing import samples

ROOT = Path(__file__).resolve().parents[2]
# Dummy credentials for the moto S3 server (tests/s3/s3server.py); outputs and logs are searched for SECRET.
KEY_ID, SECRET = "emotibatch-jobs-key-id", "emotibatch-jobs-secret-Wq7"
FPS = 10.0
SECONDS = 4.0
# 320x180 is letterboxed at scale 2 into the stand-in detector's input: 16 and 32 px squares are its 32
# and 64 px faces. Two faces, two tracks; at --fps 1 frames 0, 10, 20, 30 are sampled.
TRACKS = (
    samples.FaceTrack(32, (64, 64), (96, 64), first=0, last=39),
    samples.FaceTrack(16, (200, 120), (200, 120), first=0, last=39),
)


def make_lecture(path: Path, *, seconds: float = SECONDS, age_s: float = 3600.0, seed: int = 0) -> Path:
    """A 320x180 lecture with two faces, modified `age_s` seconds ago (settled unless told otherwise)."""
    samples.make_video(path, width=320, height=180, fps=FPS, seconds=seconds, faces=TRACKS, seed=seed)
    set_age(path, age_s)
    return path


def set_age(path: Path, age_s: float) -> None:
    then = time.time() - age_s
    os.utime(path, (then, then))


def write_engagement_head(path: Path, seed: int = 0) -> Path:
    """An h5 file laid out as Keras 2 saves EmotiEffLib's engagement head, with random weights."""
    rng = np.random.default_rng(seed)
    weights = {
        "e": (rng.normal(0, 0.05, (2 * FEATURE_DIM, 1)), rng.normal(0, 0.1, 1)),
        "hidden_FC": (rng.normal(0, 0.03, (2 * FEATURE_DIM, 512)), rng.normal(0, 0.1, 512)),
        "dense": (rng.normal(0, 0.06, (512, 2)), rng.normal(0, 0.1, 2)),
    }
    names = ("image_set", "e", "alpha", "c", "context", "hidden_FC", "dense")
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            layer = f.create_group(name)
            weight_names = [f"{name}/kernel:0", f"{name}/bias:0"] if name in weights else []
            layer.attrs["weight_names"] = [w.encode() for w in weight_names]
            for weight_name, value in zip(weight_names, weights.get(name, ())):
                layer.create_dataset(weight_name, data=value.astype(np.float32))
    return path


def s3server() -> ModuleType:
    """tests/s3/s3server.py (moto in its own venv), imported by path: its directory is not on sys.path."""
    spec = importlib.util.spec_from_file_location("s3server", ROOT / "tests/s3/s3server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_levels_corpus(root: Path, dim: int = 16) -> tuple[Path, Path]:
    """A synthetic extract output of 12 clips whose features encode an engagement level, and EngageWild's
    label file for them: what `emotibatch fit --task engagewild` trains on."""
    direction = np.random.default_rng(1).standard_normal(dim)
    levels = {f"clip{i:02d}": round((i % 4) / 3, 2) for i in range(12)}
    extract = root / "extract"
    samples.write_synthetic_extract(
        extract, {v: 4 * lvl * direction for v, lvl in levels.items()}, frames=8, faces_per_frame=2
    )
    labels = root / "Engagement_Labels_Engagement.csv"
    labels.write_text("".join(f"{v}\t{lvl}\n" for v, lvl in levels.items()))
    return extract, labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(session: int, marker: str) -> list[int]:
    """Live processes of a cluster: in the session its starter made, or with `marker` (its temp dir) in
    their environment or command line (Ray processes that rename themselves lose their environ)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if stat[0] != "Z" and (int(stat[4]) == session or marker.encode() in environ + cmdline):
            found.append(int(entry.name))
    return found


def stop_processes(session: int, marker: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM a cluster's processes, SIGKILL what is left after `grace_s`; return any survivors."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in cluster_processes(session, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while cluster_processes(session, marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return cluster_processes(session, marker)
