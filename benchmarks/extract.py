"""End-to-end extraction throughput against bare baselines on the same cores.

Two baselines, both measured every time:

- serial: the bare stages one after another in this process, each alone on all `--cpus` cores: decord
  decoding the sampled frames (`num_threads=cpus`), `FaceDetector.detect` on them, `EmotionModel.predict`
  on their crops. The serial bare rate is frames / (sum of the three times).
- decode: the node's bare decode rate, every video decoded (same sampling) in its own process, `--cpus`
  processes at once, one decord thread each, as the pipeline's decode tasks do.

On the CPU (`--device cpu`) the target compares the pipeline with the serial rate (>= 0.8: Ray and the
glue cost at most 20 %); on a GPU node (`--device cuda`), where the models are cheap and decoding bounds
throughput, with the decode rate (>= 0.8). The pipeline (`emotibatch.extract.pipeline`, on a local Ray with
`--cpus` CPUs and, on CUDA, one GPU, started beforehand) runs the same videos end to end, Parquet written.
Ray's start-up is not counted; the first run (cold: workers and actors start, models load) and a rerun
into a fresh output (warm worker processes) are both reported. Peak memory: the largest RSS any Ray
worker process reached during the run, sampled every 0.2 s.

Models: the EfficientNet-B0 stand-in (its real cost) and the SCRFD stand-in padded to det_10g's cost
(benchmarks/models.py). Videos: 1280x720 H.264 at 25 fps with a noisy background and stand-in faces,
made on all cores.

Usage: python benchmarks/extract.py [--device cpu|cuda] [--cpus N] [--videos N] [--seconds S]
       [--every N] [--actor-cpus C] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import decord
import ray
from harness import machine

from emotibatch.cluster import start_local_ray
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling
from emotibatch.inference.detect import FaceDetector
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.preprocess import crop_faces
from emotibatch.testing import samples
from models import make_models

WIDTH, HEIGHT, FPS = 1280, 720, 25.0
TARGET = 0.8
BASELINE = {"cpu": "serial", "cuda": "decode"}
# The default work: enough to keep a GPU node's cores decoding for several seconds.
DEFAULTS = {"cpu": {"videos": 2, "seconds": 8.0}, "cuda": {"videos": 32, "seconds": 20.0}}


def make_video(directory: Path, index: int, seconds: float) -> Path:
    """A 720p video with three moving faces (64 px in the source: 32 px in the detector's input)."""
    last = int(seconds * FPS) - 1
    faces = (
        samples.FaceTrack(64, (256, 224), (448, 224), first=0, last=last),
        samples.FaceTrack(64, (832, 320), (640, 320), first=0, last=last),
        samples.FaceTrack(32, (1024, 560), (1088, 560), first=0, last=last),
    )
    return samples.make_video(
        directory / f"lecture_{index}.mp4",
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        seconds=seconds,
        faces=faces,
        noise=16,
        seed=index,
    )


def make_videos(directory: Path, count: int, seconds: float, cpus: int) -> list[Path]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cpus, mp_context=spawn) as pool:
        return list(pool.map(make_video, [directory] * count, range(count), [seconds] * count))


def decode_sampled(path: Path, every: int) -> int:
    """Decode the sampled frames of `path` on one decord thread, 16 at a time; return how many."""
    reader = decord.VideoReader(str(path), num_threads=1)
    indices = list(range(0, len(reader), every))
    for at in range(0, len(indices), 16):
        reader.get_batch(indices[at : at + 16]).asnumpy()
    return len(indices)


def bare_decode(videos: list[Path], every: int, cpus: int) -> dict[str, Any]:
    """The node's bare decode rate: every video in its own process, `cpus` at once."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cpus, mp_context=spawn) as pool:
        list(pool.map(decode_sampled, videos[:cpus], [every] * min(cpus, len(videos))))  # warm up
        start = time.perf_counter()
        frames = sum(pool.map(decode_sampled, videos, [every] * len(videos)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds}


def bare_stages(
    videos: list[Path], every: int, models: dict[str, Path], cpus: int, device: str
) -> dict[str, Any]:
    """Seconds each stage takes alone on all cores (the models on `device`) for the sampled frames."""
    detector = FaceDetector.load(str(models["scrfd_cost"]), device=device, num_threads=cpus)
    emotion = EmotionModel.load(str(models["emotion"]), device=device, num_threads=cpus)
    seconds = {"decode": 0.0, "detect": 0.0, "embed": 0.0}
    frames = faces = 0
    for path in videos:
        start = time.perf_counter()
        reader = decord.VideoReader(str(path), num_threads=cpus)
        indices = list(range(0, len(reader), every))
        decoded = [
            frame
            for at in range(0, len(indices), 16)
            for frame in reader.get_batch(indices[at : at + 16]).asnumpy()
        ]
        seconds["decode"] += time.perf_counter() - start
        start = time.perf_counter()
        found = detector.detect(decoded)
        seconds["detect"] += time.perf_counter() - start
        crops = [c for frame, d in zip(decoded, found) for c in crop_faces(frame, d.boxes)]
        start = time.perf_counter()
        emotion.predict(crops)
        seconds["embed"] += time.perf_counter() - start
        frames += len(decoded)
        faces += len(crops)
    total = sum(seconds.values())
    return {"seconds": seconds, "frames": frames, "faces": faces, "frames_per_s": frames / total}


class WorkerMemory:
    """Peak RSS of each Ray worker process (`ray::...`), sampled in a thread while a run goes on."""

    def __init__(self) -> None:
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    name = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
                    if not name.startswith("ray::"):
                        continue
                    status = (proc / "status").read_text()
                except OSError:  # the process ended meanwhile
                    continue
                rss = (
                    int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
                    * 1024
                )
                if rss > self.peak.get(int(proc.name), ("", 0))[1]:
                    self.peak[int(proc.name)] = (name.split(" ")[0], rss)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def largest(self) -> dict[str, float]:
        """Peak RSS in MiB per kind of worker (decode tasks, face actors, ...)."""
        kinds: dict[str, float] = {}
        for name, rss in self.peak.values():
            kinds[name] = max(kinds.get(name, 0.0), rss / 2**20)
        return {k: round(v, 1) for k, v in sorted(kinds.items())}


def pipeline_run(
    videos: list[Path], every: int, models: dict[str, Path], output: Path, device: str, actor_cpus: float
) -> dict[str, Any]:
    config = ExtractConfig(
        inputs=tuple(str(v) for v in videos),
        output=str(output),
        model=str(models["emotion"]),
        detector=str(models["scrfd_cost"]),
        sampling=Sampling("every", every),
        segment_seconds=4.0,
        device=device,
        # CPU-only: inference outweighs decoding ~30-fold, so decode tasks get half a CPU and the face
        # actor the rest (docs/benchmarks.md). On a GPU node decoding is the work: a CPU per decode task.
        decode_cpus=0.5 if device == "cpu" else 1.0,
        cpus_per_worker=actor_cpus,
    )
    plan = pipeline.prepare(config)
    with WorkerMemory() as memory:
        start = time.perf_counter()
        result = pipeline.run(plan)
        elapsed = time.perf_counter() - start
    run = result.run
    return {
        "seconds": elapsed,
        "frames": run["frames_sampled"],
        "faces": run["faces"],
        "frames_per_s": run["frames_sampled"] / elapsed,
        "faces_per_s": run["faces"] / elapsed,
        "peak_rss_mib_by_worker": memory.largest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--videos", type=int, help="default 2 on cpu, 32 on cuda")
    parser.add_argument("--seconds", type=float, help="per video; default 8 on cpu, 20 on cuda")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument(
        "--actor-cpus", type=float, help="CPUs of the face actor (default: --cpus - 0.5 on cpu, 4 on cuda)"
    )
    parser.add_argument("--out", default="extract_results.json")
    args = parser.parse_args(argv)
    videos_n = args.videos or DEFAULTS[args.device]["videos"]
    seconds = args.seconds or DEFAULTS[args.device]["seconds"]
    actor_cpus = args.actor_cpus or (args.cpus - 0.5 if args.device == "cpu" else 4.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = make_videos(root / "videos", videos_n, seconds, args.cpus)
        models = make_models(root / "models")
        bare = {
            "serial": bare_stages(videos, args.every, models, args.cpus, args.device),
            "decode": bare_decode(videos, args.every, args.cpus),
        }
        start_local_ray(num_cpus=args.cpus, num_gpus=1 if args.device == "cuda" else 0)
        try:
            runs = {
                name: pipeline_run(videos, args.every, models, root / f"out_{name}", args.device, actor_cpus)
                for name in ("cold", "warm")
            }
        finally:
            ray.shutdown()
    baseline = BASELINE[args.device]
    result = {
        "case": f"extract_end_to_end/{args.device}",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "settings": vars(args)
        | {
            "videos": videos_n,
            "seconds": seconds,
            "actor_cpus": actor_cpus,
            "video": f"{WIDTH}x{HEIGHT} H.264 {FPS:g} fps",
        },
        "bare": bare,
        "baseline": baseline,
        "target": TARGET,
    }
    for name, run in runs.items():
        result[f"pipeline_{name}"] = run
        result[f"ratio_{name}"] = run["frames_per_s"] / bare[baseline]["frames_per_s"]
    Path(args.out).write_text(json.dumps(result, indent=2))
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in bare["serial"]["seconds"].items())
    print(
        f"bare stages on {args.cpus} cores: {stages} -> {bare['serial']['frames_per_s']:.2f} frames/s serial"
    )
    print(f"bare decode, {args.cpus} processes: {bare['decode']['frames_per_s']:.2f} frames/s")
    for name in runs:
        run = result[f"pipeline_{name}"]
        print(
            f"pipeline ({name}): {run['frames_per_s']:.2f} frames/s, {run['faces_per_s']:.2f} faces/s, "
            f"ratio to {baseline} {result[f'ratio_{name}']:.2f} (target {TARGET}); "
            f"peak RSS {run['peak_rss_mib_by_worker']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
