"""Aggregation throughput (face rows/s) and peak memory: `emotibatch.clips.aggregate` on Ray Data against a plain
pyarrow group-by on one core.

Generates a synthetic extract output on disk first (default 2,000,000 face rows of 1280-d float16
features, ~5 GB: 2,000 videos x 1,000 frames, one face per frame), then times, over the same files:

- `ours`: `aggregate(..., "afew", output)` on a local Ray with --cpus CPUs (Ray's start-up excluded),
  one task per video file, written as Parquet. Peak memory: the largest Ray worker's RSS, and the sum
  over the driver and all Ray processes, sampled every 0.1 s (shared object-store pages count in each
  process that maps them, so the sum overstates).
- `bare`: in a fresh process on one core (pyarrow CPU and IO pools of 1 thread, use_threads=False): read
  whole files in chunks of at most --baseline-chunk rows, keep face_index 0, spread the features into
  one float32 column per dimension and `group_by("video_id").aggregate(mean, stddev, min, max)` per
  column. A single group-by over every row would need rows x dim x 4 bytes (10 GB) at once, hence the
  chunks of whole videos. Peak memory: that process's max RSS.

Both read the same files from the page cache (they were just written). The descriptors of the two sides
are compared on a few videos. Usage:

    python benchmarks/aggregate.py [--rows N] [--dim D] [--frames F] [--cpus C [C ...]] [--dir /tmp] [--out F]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from harness import machine

from emotibatch.clips.aggregate import aggregate, read_descriptors
from emotibatch.cluster import start_local_ray
from emotibatch.testing.samples import write_synthetic_extract

STATS = ("mean", "stddev", "min", "max")


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS bytes) of every readable process, from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/statm") as f:
                    out[int(entry)] = (ppid, int(f.read().split()[1]) * page)
            except (OSError, IndexError, ValueError):
                continue
    return out


class PeakRSS:
    """Samples the RSS of this process and its descendants (Ray's processes) until stopped."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.total = self.largest_child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            processes = _processes()
            family, changed = {me}, True
            while changed:
                grown = family | {pid for pid, (ppid, _) in processes.items() if ppid in family}
                changed, family = grown != family, grown
            children = [processes[pid][1] for pid in family - {me} if pid in processes]
            self.total = max(self.total, processes.get(me, (0, 0))[1] + sum(children))
            self.largest_child = max(self.largest_child, max(children, default=0))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def generate(root: Path, rows: int, dim: int, frames: int) -> dict[str, Any]:
    videos = rows // frames
    rng = np.random.default_rng(0)
    means = {f"video{i:05d}": rng.standard_normal(dim).astype(np.float32) for i in range(videos)}
    started = time.perf_counter()
    write_synthetic_extract(root, means, frames=frames, fps=25.0, features_dtype="float16")
    size = sum(f.stat().st_size for f in (root / "faces").iterdir())
    return {
        "videos": videos,
        "face_rows": videos * frames,
        "bytes": size,
        "seconds": time.perf_counter() - started,
    }


def run_ours(extract: Path, out: Path, cpus: int) -> dict[str, Any]:
    import ray

    start_local_ray(num_cpus=cpus, log_to_driver=False)
    try:
        with PeakRSS() as peak:
            started = time.perf_counter()
            result = aggregate(str(extract), "afew", str(out))
            seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    return {
        "seconds": round(seconds, 2),
        "rows_out": result.rows,
        "peak_rss_largest_ray_process_mib": round(peak.largest_child / 2**20),
        "peak_rss_all_processes_mib": round(peak.total / 2**20),
    }


def _bare(extract: str, chunk_rows: int, conn) -> None:
    """Child process: the one-core pyarrow group-by; sends (seconds, face rows, max RSS MiB, sample)."""
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    files = sorted(Path(extract, "faces").glob("*.parquet"))
    started = time.perf_counter()
    rows, results, pending, pending_rows = 0, [], [], 0

    def flush() -> None:
        table = pa.concat_tables(
            [
                pq.read_table(f, columns=["video_id", "face_index", "features"], use_threads=False)
                for f in pending
            ]
        )
        table = table.filter(pc.equal(table["face_index"], 0))
        features = table["features"].combine_chunks()
        x = (
            pc.list_flatten(features)
            .to_numpy()
            .reshape(len(table), features.type.list_size)
            .astype(np.float32)
        )
        columns = {f"f{j}": x[:, j] for j in range(x.shape[1])}
        wide = pa.table({"video_id": table["video_id"], **columns})
        variance = pc.VarianceOptions(ddof=0)
        aggs = [(c, s, variance) if s == "stddev" else (c, s) for s in STATS for c in columns]
        results.append(wide.group_by("video_id", use_threads=False).aggregate(aggs))

    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        if pending and pending_rows + n > chunk_rows:
            flush()
            pending, pending_rows = [], 0
        pending.append(f)
        pending_rows += n
        rows += n
    if pending:
        flush()
    seconds = time.perf_counter() - started
    first = results[0].slice(0, 3)
    dim = (first.num_columns - 1) // len(STATS)
    sample = {r["video_id"]: [r[f"f{j}_{s}"] for s in STATS for j in range(dim)] for r in first.to_pylist()}
    conn.send((seconds, rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, sample))


def run_bare(extract: Path, chunk_rows: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_bare, args=(str(extract), chunk_rows, child))
    process.start()
    seconds, rows, peak, sample = parent.recv()
    process.join()
    return {"seconds": round(seconds, 2), "face_rows": rows, "peak_rss_mib": round(peak)}, sample


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="face rows in all")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=1000, help="face rows (frames) per video")
    parser.add_argument(
        "--cpus", type=int, nargs="+", default=[2], help="CPUs of the local Ray (one run each)"
    )
    parser.add_argument("--baseline-chunk", type=int, default=250_000, help="rows per pyarrow group-by")
    parser.add_argument(
        "--dir", default="/tmp", help="where the synthetic extract output goes (deleted after)"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    need = args.rows * (args.dim * 2 + 200) * 1.2
    free = shutil.disk_usage(args.dir).free
    if free < need:
        sys.exit(f"{args.dir}: {free / 2**30:.1f} GiB free, about {need / 2**30:.1f} GiB needed")
    work = Path(tempfile.mkdtemp(prefix="emotibatch-aggregate-bench-", dir=args.dir))
    try:
        load_before = os.getloadavg()[0]
        generated = generate(work / "extract", args.rows, args.dim, args.frames)
        print(f"generated {generated}", flush=True)
        bare, sample = run_bare(work / "extract", args.baseline_chunk)
        print(f"bare {bare}", flush=True)
        ours = {}
        for cpus in args.cpus:
            ours[cpus] = run_ours(work / "extract", work / f"descriptors-{cpus}", cpus)
            print(f"ours, {cpus} CPUs: {ours[cpus]}", flush=True)
        descriptors = read_descriptors(str(work / f"descriptors-{args.cpus[0]}")).to_pylist()
        by_video = {r["video_id"]: r["descriptor"] for r in descriptors}
        for video_id, raw in sample.items():
            raw = np.asarray(raw)
            np.testing.assert_allclose(by_video[video_id], raw / np.linalg.norm(raw), rtol=1e-3, atol=1e-5)
        rows = generated["face_rows"]
        results = [
            {
                "name": f"aggregate_afew_ray_{cpus}cpu",
                "unit": "face rows/s",
                "ours": round(rows / detail["seconds"]),
                "bare": round(rows / bare["seconds"]),
                "ratio": round(bare["seconds"] / detail["seconds"], 3),
                "settings": vars(args) | {"cpus": cpus, "videos": generated["videos"], "features": "float16"},
                "generated": generated,
                "ours_detail": detail,
                "bare_detail": bare,
                "machine": machine(),
                "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            }
            for cpus, detail in ours.items()
        ]
        print(json.dumps(results, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
