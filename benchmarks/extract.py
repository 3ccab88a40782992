"""End-to-end extraction throughput against the serial sum of the bare stage costs on the same cores.

The bare stages run one after another in this process, each alone on all `--cpus` cores: decord decoding
the same sampled frames (`num_threads=cpus`), `FaceDetector.detect` on them, `EmotionModel.predict` on
their crops (onnxruntime with `cpus` threads). The serial bare rate is frames / (sum of the three times).
The pipeline (`emotibatch.pipeline`, on a local Ray with `--cpus` CPUs started beforehand) runs the same
videos end to end, Parquet written; its rate over the serial rate is the share left after Ray and the glue
(target >= 0.8). Ray's start-up is not counted; the first run (cold: workers and actors start, models
load) and a rerun into a fresh output (warm worker processes) are both reported. Peak memory: the largest
RSS any Ray worker process reached during the run, sampled every 0.2 s.

Models: the EfficientNet-B0 stand-in (its real cost) and the SCRFD stand-in padded to det_10g's cost
(benchmarks/models.py). Videos: 1280x720 H.264 at 25 fps with a noisy background and stand-in faces.

Usage: python benchmarks/extract.py [--cpus 2] [--videos 2] [--seconds 8] [--every 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import decord
import ray
from harness import machine
from models import make_models

from emotibatch import pipeline, samples
from emotibatch.config import ExtractConfig
from emotibatch.decode import Sampling
from emotibatch.detect import FaceDetector
from emotibatch.embed import EmotionModel
from emotibatch.preprocess import crop_faces

WIDTH, HEIGHT, FPS = 1280, 720, 25.0
TARGET = 0.8


def make_videos(directory: Path, count: int, seconds: float) -> list[Path]:
    """720p videos with three moving faces each (64 px in the source: 32 px in the detector's input)."""
    faces = (
        samples.FaceTrack(64, (256, 224), (448, 224), first=0, last=int(seconds * FPS) - 1),
        samples.FaceTrack(64, (832, 320), (640, 320), first=0, last=int(seconds * FPS) - 1),
        samples.FaceTrack(32, (1024, 560), (1088, 560), first=0, last=int(seconds * FPS) - 1),
    )
    return [
        samples.make_video(
            directory / f"lecture_{i}.mp4",
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            seconds=seconds,
            faces=faces,
            noise=16,
            seed=i,
        )
        for i in range(count)
    ]


def bare_stages(videos: list[Path], every: int, models: dict[str, Path], cpus: int) -> dict[str, Any]:
    """Seconds each stage takes alone on all cores for the sampled frames of `videos`."""
    detector = FaceDetector.load(str(models["scrfd_cost"]), device="cpu", num_threads=cpus)
    emotion = EmotionModel.load(str(models["emotion"]), device="cpu", num_threads=cpus)
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
    videos: list[Path], every: int, models: dict[str, Path], output: Path, cpus: int
) -> dict[str, Any]:
    config = ExtractConfig(
        inputs=tuple(str(v) for v in videos),
        output=str(output),
        model=str(models["emotion"]),
        detector=str(models["scrfd_cost"]),
        sampling=Sampling("every", every),
        segment_seconds=4.0,
        device="cpu",
        # CPU-only: inference outweighs decoding ~30-fold, so decode tasks get half a CPU and the face
        # actor the rest (its onnxruntime runs ceil(1.5) = 2 threads), as docs/benchmarks.md recommends.
        decode_cpus=0.5,
        cpus_per_worker=cpus - 0.5,
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
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--out", default="extract_results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = make_videos(root / "videos", args.videos, args.seconds)
        models = make_models(root / "models")
        bare = bare_stages(videos, args.every, models, args.cpus)
        ray.init(num_cpus=args.cpus, include_dashboard=False)
        try:
            cold = pipeline_run(videos, args.every, models, root / "out_cold", args.cpus)
            warm = pipeline_run(videos, args.every, models, root / "out_warm", args.cpus)
        finally:
            ray.shutdown()
    result = {
        "case": "extract_end_to_end",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "settings": vars(args) | {"video": f"{WIDTH}x{HEIGHT} H.264 {FPS:g} fps"},
        "bare": bare,
        "pipeline_cold": cold,
        "pipeline_warm": warm,
        "ratio_cold": cold["frames_per_s"] / bare["frames_per_s"],
        "ratio_warm": warm["frames_per_s"] / bare["frames_per_s"],
        "target": TARGET,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in bare["seconds"].items())
    print(f"bare stages on {args.cpus} cores: {stages} -> {bare['frames_per_s']:.2f} frames/s serial")
    for name in ("cold", "warm"):
        run = result[f"pipeline_{name}"]
        print(
            f"pipeline ({name}): {run['frames_per_s']:.2f} frames/s, {run['faces_per_s']:.2f} faces/s, "
            f"ratio {result[f'ratio_{name}']:.2f} (target {TARGET}); peak RSS {run['peak_rss_mib_by_worker']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
