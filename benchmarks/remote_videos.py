"""A large remote video decoded in segments: bytes fetched from S3 and each segment process's peak RSS.

Every step runs in a fresh spawned process (two at a time, like decode tasks on a 2-CPU node), reading
through moto's S3 server behind the counting proxy of the S3 tests (tests/s3):

- `fetch`: `video_cache.local_copy` alone, into an empty node-local cache: what a download costs in memory;
- `probe`, then `cache`: one process per segment, through `decode_segment`, as the job's tasks do
  (the copy is in the cache now);
- `local`: the same segments decoded from that copy as a plain local file: the decoder's own footprint;
- `file_object` (before this cache): decord opened on an fsspec file object, as `_video_file` used to
  do, for the first `--old-segments` segments only (each fetches the whole file).

The video is a 1 s 1080p noise clip encoded losslessly (H.264, crf 0: about 70 MB) repeated by stream
copy up to the size asked. Writes JSON (--out) and prints it.

    python benchmarks/remote_videos.py --size-mb 1024 --segments 8 --out /tmp/remote_videos.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "s3"))

import s3server  # noqa: E402
from s3proxy import FaultProxy  # noqa: E402

from emotibatch.extract.decode import Sampling, decode_segment, plan_segments, probe, sample_indices  # noqa: E402
from emotibatch.io import video_cache  # noqa: E402
from emotibatch.io.sources import VideoSource  # noqa: E402
from emotibatch.testing import samples  # noqa: E402

FPS = 25
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def make_large_video(directory: Path, size_mb: int) -> Path:
    """A decodable mp4 of about `size_mb` MB: a lossless noise clip, its packets repeated with shifted times."""
    clip = samples.make_video(
        directory / "clip.mp4", width=1920, height=1080, fps=FPS, seconds=1, noise=255, crf=0
    )
    repeats = max(1, round(size_mb * 2**20 / clip.stat().st_size))
    out = directory / "large.mp4"
    with av.open(str(clip)) as first, av.open(str(out), "w") as dst:
        template = first.streams.video[0]
        span = round(1 / template.time_base)  # one second, the clip's length, in stream time units
        stream = dst.add_stream_from_template(template)
        for k in range(repeats):
            with av.open(str(clip)) as src:  # demuxed afresh: muxing takes a packet's data
                for packet in src.demux(src.streams.video[0]):
                    if packet.dts is None:
                        continue
                    packet.pts += k * span
                    packet.dts += k * span
                    packet.stream = stream
                    dst.mux(packet)
    return out


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry the parent's from before the exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _timed(step, *args) -> dict:
    started = time.perf_counter()
    out = step(*args)
    return {"out": out, "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()}


def _baseline(_: object) -> dict:
    """A process that reads nothing: the imports' own footprint."""
    import decord  # noqa: F401

    return _timed(lambda: None)


def _fetch(job: tuple) -> dict:
    uri, options = job

    def fetch() -> str:
        with video_cache.local_copy(uri, options) as path:
            return str(path)

    return _timed(fetch)


def _probe(job: tuple) -> dict:
    source, options = job
    return _timed(lambda: probe(source, storage_options=options))


def _segment(job: tuple) -> dict:
    source, info, segment, options = job
    return _timed(lambda: sum(1 for _ in decode_segment(source, info, segment, storage_options=options)))


def _segment_file_object(job: tuple) -> dict:
    """What `_video_file` did before: decord on a file object, which it reads whole into memory."""
    import decord
    import fsspec

    source, _, segment, options = job

    def decode() -> int:
        fs, path = fsspec.core.url_to_fs(source.uri, **options)
        with fs.open(path, "rb") as f:
            return len(decord.VideoReader(f, num_threads=1).get_batch(list(segment.frame_indices)).asnumpy())

    return _timed(decode)


def _summary(results: list[dict], fetched: int | None = None, size: int = 0) -> dict:
    rss = [r["peak_rss_mb"] for r in results]
    out = {
        "processes": len(results),
        "peak_rss_mb_max": round(max(rss), 1),
        "peak_rss_mb_median": round(statistics.median(rss), 1),
        "seconds_median": round(statistics.median(r["seconds"] for r in results), 2),
    }
    if fetched is not None:
        out |= {"fetched_mb": round(fetched / 2**20, 1), "fetched_x_file": round(fetched / size, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument(
        "--old-segments", type=int, default=2, help="segments read the old way (each fetches all)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    work = Path(tempfile.mkdtemp(prefix="remote-videos-"))
    os.environ[video_cache.CACHE_ENV] = str(work / "cache")
    started = time.perf_counter()
    video = make_large_video(work, args.size_mb)
    made_s = time.perf_counter() - started
    size = video.stat().st_size

    import s3fs

    server, endpoint = s3server.start()
    proxy = FaultProxy(endpoint.removeprefix("http://"))
    key = "/bench/large.mp4"
    try:
        s3 = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        s3.mkdir("bench")
        s3.put_file(str(video), key.lstrip("/"))
        video.unlink()
        options = {"client_kwargs": {"endpoint_url": proxy.endpoint}}
        source = VideoSource(f"s3:/{key}", "large")
        with multiprocessing.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
            baseline = pool.map(_baseline, range(2))
            fetched = pool.map(_fetch, [(source.uri, options)])
            copy = VideoSource(fetched[0]["out"], "large")
            probed = pool.map(_probe, [(source, options)])
            info = probed[0]["out"]
            indices = sample_indices(info, Sampling("fps", 1.0))
            segments = plan_segments(info, indices, info.duration_s / args.segments, video_id="large")
            cache = pool.map(_segment, [(source, info, s, options) for s in segments])
            cache_bytes = proxy.get_bytes[key]
            local = pool.map(_segment, [(copy, info, s, None) for s in segments])
            proxy.reset()
            old_jobs = [(source, info, s, options) for s in segments[: args.old_segments]]
            file_object = pool.map(_segment_file_object, old_jobs)
            file_object_bytes = proxy.get_bytes[key]
    finally:
        proxy.close()
        server.terminate()
        shutil.rmtree(work)
    result = {
        "file_mb": round(size / 2**20, 1),
        "frames": info.frame_count,
        "resolution": f"{info.width}x{info.height}",
        "segments": len(segments),
        "sampled_frames": len(indices),
        "make_video_s": round(made_s, 1),
        "baseline": _summary(baseline),
        "fetch": _summary(fetched),
        "probe": _summary(probed),
        "cache": _summary(cache, cache_bytes, size),
        "local": _summary(local),
        "file_object": _summary(file_object, file_object_bytes, size),
        "load_average_1m": os.getloadavg()[0],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
