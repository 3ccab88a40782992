"""What decoding costs per sampled frame on lecture-like recordings, by sampling rule and decoding path.

Recordings: `samples.make_lecture` (static slides, a moving noisy speaker region; x264 veryfast, CRF 23,
a keyframe exactly every GOP) at 720p and 1080p, 25 fps, GOP 2 s and 10 s, with and without B-frames.

Decode stage (one process, one recording at a time, `decode.decode_segment` over the 60-s segments the
pipeline plans): for exact 1 fps, 5 fps and every frame, each path the decoder has: decord's get_batch
(1 thread), PyAV from the first frame (1 thread, and 2 threads), PyAV seeking to the keyframe before each
run of targets (1 thread); and keyframe mode (`--keyframes`). Per case: source frames the decoder put out
per sampled frame (PyAV: counted; decord does not say), CPU seconds (process time: every thread), sampled
frames per CPU-second ("per core") and video-hours per core-hour; the ratio is the CPU time of exact 1 fps
on the default path (`decode.default_backend()`) over the case's, on the same recording.

End to end (`--extract`): `emotibatch extract` on a local Ray with `--cpus` CPUs, stand-in models at
det_10g's and EfficientNet-B0's cost (benchmarks/models.py), exact 1 fps against `--keyframes`, wall
seconds after an untimed warm-up run (Ray's workers start once); the ratio is exact 1 fps's wall over
keyframe mode's, per `--gops`. `--cpus-per-worker` and `--decode-cpus` go to extract (how its CPUs are
shared between the face actors and decoding); `--recordings DIR` keeps the long recordings and reuses them.

Usage: python benchmarks/decode.py [--seconds S] [--sizes 720p,1080p] [--gops 2,10] [--extract]
       [--extract-seconds S] [--cpus N] [--cpus-per-worker C] [--decode-cpus C] [--recordings DIR]
       [--out results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import machine

from emotibatch.config import ExtractConfig, Sampling
from emotibatch.extract import decode
from emotibatch.io.sources import VideoSource
from emotibatch.testing import samples

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 25.0
SEGMENT_SECONDS = 60.0  # the pipeline's default
RULES = {
    "exact 1 fps": Sampling("fps", 1.0),
    "exact 5 fps": Sampling("fps", 5.0),
    "every frame": Sampling("all"),
    "keyframes": Sampling(frames="keyframes"),
}
# (path name, backend, decoder threads, seekable as probed): the decoder's paths for frames that are not
# all keyframes; keyframe mode has one path.
PATHS = (
    ("decord get_batch", "decord", 1, True),
    ("pyav from start", "pyav", 1, False),
    ("pyav from start, 2 threads", "pyav", 2, False),
    ("pyav seek to keyframe", "pyav", 1, True),
)


class FrameCounter:
    """Counts the frames PyAV's decoder puts out, wrapping `decode._frames`."""

    def __init__(self) -> None:
        self.count = 0
        self._frames = decode._frames

    def __enter__(self) -> FrameCounter:
        def counted(container, stream):
            for frame in self._frames(container, stream):
                self.count += 1
                yield frame

        decode._frames = counted
        return self

    def __exit__(self, *exc: object) -> None:
        decode._frames = self._frames


def decode_case(path: Path, sampling: Sampling, backend: str, threads: int, seekable: bool) -> dict[str, Any]:
    source = VideoSource(str(path), path.stem)
    info = decode.probe(source)
    info = dataclasses.replace(info, seekable=info.seekable and seekable)
    indices = decode.sample_indices(info, sampling)
    segments = decode.plan_segments(info, indices, SEGMENT_SECONDS, video_id=source.video_id)
    cpu, wall = time.process_time(), time.perf_counter()
    with FrameCounter() as counter:
        sampled = sum(
            1
            for segment in segments
            for _ in decode.decode_segment(source, info, segment, num_threads=threads, backend=backend)
        )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert sampled == len(indices), (path, sampling, sampled, len(indices))
    decoded = counter.count if backend == "pyav" or sampling.frames == "keyframes" else None
    return {
        "sampled": sampled,
        "duration_s": info.duration_s,
        "cpu_s": cpu,
        "wall_s": wall,
        "decoded_per_sampled": decoded / sampled if decoded is not None else None,
        "sampled_per_cpu_s": sampled / cpu,
        "video_hours_per_core_hour": info.duration_s / cpu,
    }


def decode_stage(recordings: dict[str, Path]) -> list[dict[str, Any]]:
    results = []
    default = decode.default_backend()
    for name, path in recordings.items():
        rows = []
        for (rule, sampling), (path_name, backend, threads, seekable) in itertools.product(
            RULES.items(), PATHS
        ):
            if sampling.frames == "keyframes" and path_name != "pyav seek to keyframe":
                continue  # one path: only keyframes decode
            row = {"recording": name, "rule": rule, "path": path_name if rule != "keyframes" else "keyframes"}
            row |= decode_case(path, sampling, backend, threads, seekable)
            rows.append(row)
            print(json.dumps(row), flush=True)
        reference = next(r for r in rows if r["rule"] == "exact 1 fps" and r["path"].startswith(default[:4]))
        for row in rows:
            row["cpu_ratio_vs_exact_1fps"] = reference["cpu_s"] / row["cpu_s"]
        results += rows
    return results


def lecture(folder: Path, seconds: float, gop: float) -> Path:
    """A 720p lecture recording, made once per folder (a 20-min one takes ~10 min to encode here)."""
    path = folder / f"lecture_720p_gop{gop:g}_{seconds:g}s.mp4"
    if not path.exists():
        samples.make_lecture(path.with_suffix(".part.mp4"), seconds=seconds, gop_seconds=gop).rename(path)
    return path


def end_to_end(
    seconds: float,
    gops: list[float],
    cpus: int,
    resources: dict[str, float],
    root: Path,
    recordings: Path,
) -> list[dict[str, Any]]:
    from emotibatch.cluster import start_local_ray
    from emotibatch.extract import pipeline
    from models import make_models

    models = make_models(root / "models")
    results = []
    start_local_ray(num_cpus=cpus, num_gpus=0)

    def extract(video: Path, rule: str, out: str) -> tuple[float, dict[str, Any]]:
        config = ExtractConfig(
            inputs=(str(video),),
            output=str(root / out),
            model=str(models["emotion"]),
            detector=str(models["scrfd_cost"]),
            sampling=RULES[rule],
            device="cpu",
            **resources,
        )
        plan = pipeline.prepare(config)
        start = time.perf_counter()
        result = pipeline.run(plan)
        return time.perf_counter() - start, result.run

    # Untimed: Ray's worker processes start and import the libraries once, in whichever run comes first.
    extract(lecture(root, 10.0, 2.0), "exact 1 fps", "warm-up")
    for gop in gops:
        video = lecture(recordings, seconds, gop)
        walls = {}
        for rule in ("exact 1 fps", "keyframes"):
            walls[rule], run = extract(video, rule, f"out_{gop:g}_{rule.replace(' ', '_')}")
            row = {
                "recording": f"720p gop {gop:g}s, {seconds:g} s",
                "rule": rule,
                "wall_s": walls[rule],
                "frames_sampled": run["frames_sampled"],
                "frames_decoded": run["frames_decoded"],
                "cpus": cpus,
                **resources,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        results[-1]["wall_ratio_vs_exact_1fps"] = walls["exact 1 fps"] / walls["keyframes"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of each decode-stage recording.")
    parser.add_argument("--sizes", default="720p,1080p")
    parser.add_argument("--gops", default="2,10", help="Keyframe intervals in seconds.")
    parser.add_argument("--extract", action="store_true", help="Also run extract end to end.")
    parser.add_argument("--extract-seconds", type=float, default=1200.0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="Passed to extract.")
    parser.add_argument("--decode-cpus", type=float, default=1.0, help="Passed to extract.")
    parser.add_argument(
        "--recordings",
        type=Path,
        help="Keep the end-to-end recordings here and reuse them (default: a temporary folder).",
    )
    parser.add_argument("--out", default="decode-results.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recordings = {}
        for size, gop, bframes in itertools.product(
            args.sizes.split(","), [float(g) for g in args.gops.split(",")], (True, False)
        ):
            name = f"{size} gop {gop:g}s {'B-frames' if bframes else 'no B-frames'}"
            width, height = SIZES[size]
            recordings[name] = samples.make_lecture(
                root / f"{size}_{gop:g}_{bframes}.mp4",
                width=width,
                height=height,
                fps=FPS,
                seconds=args.seconds,
                gop_seconds=gop,
                bframes=bframes,
            )
        results = {"decode": decode_stage(recordings)}
        if args.extract:
            kept = args.recordings or root
            kept.mkdir(parents=True, exist_ok=True)
            resources = {"cpus_per_worker": args.cpus_per_worker, "decode_cpus": args.decode_cpus}
            gops = [float(g) for g in args.gops.split(",")]
            results["extract"] = end_to_end(args.extract_seconds, gops, args.cpus, resources, root, kept)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "settings": vars(args),
        **results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
