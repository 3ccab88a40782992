"""Where `aggregate` gains from an embedded local Ray: wall seconds in this process against on a fresh local
Ray (its start-up and shutdown counted), over synthetic extract outputs of growing size.

Input per size: `write_synthetic_extract`, 1,000 face rows per video (one face per frame), 1280-d float16
features, like benchmarks/aggregate.py. Each side runs in a fresh `python -c` process after its imports
(both import Ray's modules), writes the AFEW descriptors as Parquet, once per size. The crossover sets
`emotibatch.clips.aggregate.RAY_MIN_FACES`. Usage:

    python benchmarks/small_work.py [--rows N [N ...]] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from emotibatch.testing.samples import write_synthetic_extract

FRAMES, DIM = 1000, 1280

SIDE = """
import sys, time
from emotibatch.clips import aggregate as a
from emotibatch.cluster import start_local_ray
import ray
start = time.perf_counter()
if sys.argv[1] == "ray":
    start_local_ray()
else:
    a.RAY_MIN_FACES = float("inf")
result = a.aggregate(sys.argv[2], "afew", sys.argv[3])
ray.shutdown()
print(time.perf_counter() - start, result.rows)
"""


def side(kind: str, extract: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    ran = subprocess.run(
        [sys.executable, "-c", SIDE, kind, str(extract), str(out)], check=True, capture_output=True, text=True
    )
    return float(ran.stdout.split()[-2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000, 600_000])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="small-work-"))
    try:
        for rows in args.rows:
            extract = work / f"x{rows}"
            means = {f"v{i:05d}": np.full(DIM, i % 7, np.float32) for i in range(rows // FRAMES)}
            write_synthetic_extract(extract, means, frames=FRAMES, features_dtype="float16")
            seconds = {kind: side(kind, extract, work / "agg") for kind in ("local", "ray")}
            print(json.dumps({"rows": rows, "in_process_s": seconds["local"], "ray_s": seconds["ray"]}))
            shutil.rmtree(extract)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
