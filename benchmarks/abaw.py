"""ABAW expression head at Aff-Wild2's scale: fit and predict over generated frame rows, time and peak memory.

Generates (in a child process, so its memory is not counted) an extract output of --videos videos of
--frames frames, the subject's face on three frames in four, float16 features of --dim dimensions, and
EXPR_Set-style annotations (--val-share of the videos for validation). The default is Aff-Wild2's size:
560 x 5,000 = 2.8 M annotation lines of 1280-d features (enet_b0), about 5 GB of Parquet. Then, in
this process, `abaw_heads.fit` (read, train, score every view) and `abaw_heads.predict` (a file per
video), each timed. Peak memory is this process's max RSS; the bound it should stay near is the
training features held once as float16 (rows x dim x 2 bytes) plus the interpreter and libraries
(`baseline_rss_mb`, measured before fitting): reading streams one video at a time, and training takes
its batches by index. Usage:

    python benchmarks/abaw.py [--videos N] [--frames F] [--dim D] [--epochs E] [--dir /tmp] [--out F]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(root: str, videos: int, frames: int, dim: int, val_share: float) -> None:
    from emotibatch.testing.abaw_samples import write_abaw_extract, write_expr_annotations

    n_val = max(1, round(val_share * videos))
    lines = frames + 1  # one line more than the frames, as some Aff-Wild2 files have
    for start in range(0, videos, 20):  # a few videos at a time: the generator's memory stays small
        chunk = range(start, min(start + 20, videos))
        labels = {
            f"video{i}": np.repeat((5 * i + np.arange(lines // 200 + 1)) % 8, 200)[:lines] for i in chunk
        }
        faces = np.flatnonzero(np.arange(frames) % 4 != 3)
        write_abaw_extract(
            f"{root}/extract", {v: (y, faces) for v, y in labels.items()}, frames, dim=dim, seed=start
        )
        for i, (video, y) in zip(chunk, labels.items()):
            split = "Validation_Set" if i < n_val else "Train_Set"
            write_expr_annotations(f"{root}/EXPR_Set/{split}", {video: y.astype(float)})


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=560)
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--val-share", type=float, default=0.2)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--out", help="Write the result as JSON here.")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="abaw-bench-", dir=args.dir))
    try:
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=generate, args=(str(root), args.videos, args.frames, args.dim, args.val_share)
        )
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"generating the corpus failed (exit {child.exitcode})")
        generate_s = time.perf_counter() - started

        from emotibatch.clips import abaw_heads

        baseline = max_rss_mb()
        started = time.perf_counter()
        model = abaw_heads.fit(
            str(root / "extract"),
            str(root / "EXPR_Set" / "Train_Set"),
            "abaw-expr",
            root / "model",
            val=str(root / "EXPR_Set" / "Validation_Set"),
            network=abaw_heads.Network(epochs=args.epochs),
        )
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        prediction = abaw_heads.predict(str(root / "extract"), root / "model", root / "challenge")
        predict_s = time.perf_counter() - started
        train_rows = model.card["n_train_frames"]
        result = {
            "videos": args.videos,
            "frames_per_video": args.frames,
            "annotation_lines": args.videos * (args.frames + 1),
            "dim": args.dim,
            "epochs": args.epochs,
            "train_face_rows": train_rows,
            "generate_s": round(generate_s, 1),
            "fit_s": round(fit_s, 1),
            "predict_s": round(predict_s, 1),
            "predicted_lines": prediction.lines,
            "baseline_rss_mb": round(baseline, 1),
            "features_mb": round(train_rows * args.dim * 2 / 2**20, 1),
            "peak_rss_mb": round(max_rss_mb(), 1),
            "val_score_smoothed_all_frames": model.card["score"]["all_frames"],
        }
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps([result], indent=1) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the folder this run made, nothing else


if __name__ == "__main__":
    main()
