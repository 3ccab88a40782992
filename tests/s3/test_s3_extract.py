"""The whole job with inputs, models and output on S3, through the fault-injecting proxy, twice.

Run 1 meets a multi-segment video (fetched once for all its segments), a video behind transient faults
(retried: ok), one behind a permanent 403 and one that does not exist (each fails alone, with its message).
Run 2 skips the finished videos, tries the failed ones again (they fail again: the 403 stays) and
duplicates nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import KEY_ID, SECRET, options
from s3proxy import Fault, FaultProxy

from emotibatch import schema
from emotibatch.config import ExtractConfig
from emotibatch.extract import pipeline
from emotibatch.extract.decode import Sampling, VideoInfo, plan_segments, probe
from emotibatch.io.sources import VideoSource
from emotibatch.testing import samples, standins

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

FPS = 25.0
# 320x180 is letterboxed at scale 2 into the stand-in detector's input: a 32 px square is its 64 px face.
TRACK = samples.FaceTrack(32, (64, 64), (128, 64), first=0, last=99)
SECONDS = {"long": 4.0, "flaky": 2.0, "denied": 1.0}
EVERY = 5


def _tables(s3: s3fs.S3FileSystem, root: str, table: str) -> pa.Table:
    s3.invalidate_cache()
    files = sorted(f for f in s3.find(f"{root}/{table}") if not f.rsplit("/", 1)[-1].startswith((".", "_")))
    return pa.concat_tables([pq.read_table(s3.open(f, "rb")) for f in files], promote_options="permissive")


@pytest.fixture(scope="module")
def runs(s3: s3fs.S3FileSystem, bucket: str, session_proxy: FaultProxy, tmp_path_factory):
    """Both runs' results, the proxy's GET byte counts of each, the config and the uploaded video sizes."""
    local = tmp_path_factory.mktemp("s3-job")
    root = f"{bucket}/job"
    sizes = {}
    for name, seconds in SECONDS.items():
        path = samples.make_video(
            local / f"{name}.mp4", width=320, height=180, fps=FPS, seconds=seconds, faces=[TRACK]
        )
        s3.put_file(str(path), f"{root}/in/{name}.mp4")
        sizes[name] = path.stat().st_size
    s3.put_file(str(standins.make_emotion_model(local / "emotion.onnx")), f"{root}/models/emotion.onnx")
    s3.put_file(str(standins.make_scrfd_model(local / "scrfd.onnx")), f"{root}/models/scrfd.onnx")

    proxy = session_proxy
    proxy.reset()
    config = ExtractConfig(
        inputs=(f"s3://{root}/in/", f"s3://{root}/in/gone.mp4"),
        output=f"s3://{root}/out",
        model=f"s3://{root}/models/emotion.onnx",
        detector=f"s3://{root}/models/scrfd.onnx",
        sampling=Sampling("every", EVERY),
        segment_seconds=1.0,
        device="cpu",
        # Explicit credentials: a Ray started elsewhere never saw this session's AWS variables.
        storage_options={**options(proxy.endpoint), "key": KEY_ID, "secret": SECRET},
    )
    flaky, denied = f"/{root}/in/flaky.mp4", f"/{root}/in/denied.mp4"
    proxy.inject(Fault("GET", flaky, 503, "SlowDown", times=2))
    proxy.inject(Fault("GET", flaky, None, "reset", times=6))  # more than s3fs retries within one read
    proxy.inject(Fault("HEAD", denied, 403, "AccessDenied", times=None))
    proxy.inject(Fault("GET", denied, 403, "AccessDenied", times=None))
    first = pipeline.extract(config)
    fetched_first, fired = dict(proxy.get_bytes), dict(proxy.fired)
    proxy.get_bytes.clear()
    second = pipeline.extract(config)
    fetched_second = dict(proxy.get_bytes)
    proxy.reset()
    return {
        "s3": s3,
        "config": config,
        "root": root,
        "sizes": sizes,
        "first": first,
        "second": second,
        "fetched": (fetched_first, fetched_second),
        "fired": fired,
    }


def test_each_video_fails_or_succeeds_alone(runs) -> None:
    root = runs["root"]
    first = {v["video_id"]: v for v in runs["first"].videos}
    assert {k: v["status"] for k, v in first.items()} == {
        "long": "ok",
        "flaky": "ok",
        "denied": "failed",
        "gone": "failed",
    }
    assert runs["fired"] == {"SlowDown": 2, "reset": 6, "AccessDenied": 1}
    assert first["denied"]["error"] == (
        f"access denied: s3://{root}/in/denied.mp4 (HTTP 403); check the credentials "
        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --storage-options) and that the bucket "
        "policy lets them read it"
    )
    assert first["gone"]["error"] == f"not found: s3://{root}/in/gone.mp4 (HTTP 404); check the path"


def test_a_multi_segment_video_is_fetched_once(runs) -> None:
    fetched_first, fetched_second = runs["fetched"]
    long = f"/{runs['root']}/in/long.mp4"
    info = VideoInfo(FPS, 100, 4.0, 320, 180)
    assert len(plan_segments(info, np.arange(0, 100, EVERY), 1.0, video_id="long")) == 4
    assert fetched_first[long] == runs["sizes"]["long"]  # the probe and 4 segments: one copy
    assert long not in fetched_second  # finished: not even probed again


def test_rows_match_the_drawn_faces(runs) -> None:
    """The detector finds the one drawn square in every sampled frame, in every segment."""
    faces = _tables(runs["s3"], f"{runs['root']}/out", "faces")
    for name in ("long", "flaky"):
        seconds = SECONDS[name]
        rows = faces.filter(pc.equal(faces["video_id"], name)).sort_by("frame_index")
        frames = list(range(0, round(seconds * FPS), EVERY))
        assert rows["frame_index"].to_pylist() == frames
        centres = [TRACK.center(f) for f in frames]
        boxes = np.array(rows["bbox"].to_pylist())
        expected = np.array([(x - 16, y - 16, x + 16, y + 16) for x, y in centres])
        # a coarse check that the S3 path feeds the detector the right frames (e2e checks geometry to 1e-3):
        # one source pixel is two in the detector's input at this letterbox scale (2)
        np.testing.assert_allclose(boxes, expected, atol=1)
        assert len(set(rows["track_id"].to_pylist())) == 1


def test_a_rerun_skips_finished_videos_and_duplicates_nothing(runs) -> None:
    s3, root = runs["s3"], f"{runs['root']}/out"
    second = {v["video_id"]: v["status"] for v in runs["second"].videos}
    assert second == {"denied": "failed", "gone": "failed"}  # finished ones are not redone
    assert runs["second"].run["videos_skipped"] == 2
    faces = _tables(s3, root, "faces")
    keys = list(zip(*(faces[c].to_pylist() for c in ("video_id", "frame_index", "face_index"))))
    assert len(keys) == len(set(keys))
    assert set(faces["video_id"].to_pylist()) == {"long", "flaky"}
    videos = _tables(s3, root, "videos")
    assert sorted(videos["video_id"].to_pylist()) == ["denied", "flaky", "gone", "long"]
    assert _tables(s3, root, "runs").num_rows == 2
    s3.invalidate_cache()
    assert not s3.exists(f"{root}/_staging") or not s3.find(f"{root}/_staging")


def test_models_come_from_s3_and_no_credentials_reach_the_output(runs) -> None:
    s3, root, config = runs["s3"], f"{runs['root']}/out", runs["config"]
    s3.invalidate_cache()
    objects = s3.find(root)
    assert objects
    for path in objects:
        data = s3.cat_file(path)
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, path
    fetched_first, _ = runs["fetched"]
    assert fetched_first[f"/{runs['root']}/models/emotion.onnx"] > 0
    assert fetched_first[f"/{runs['root']}/models/scrfd.onnx"] > 0
    faces = next(p for p in objects if "/faces/" in p)
    meta = schema.read_metadata(pq.read_schema(s3.open(faces, "rb")))
    assert (meta["model"], meta["detector"]) == (config.model, config.detector)
    settings = json.loads(_tables(s3, root, "runs")["settings"][0].as_py())
    assert settings["storage_options"]["secret"] == settings["storage_options"]["key"] == "<redacted>"


def test_keyframe_mode_on_s3_decodes_each_segments_keyframes_and_resumes(
    s3: s3fs.S3FileSystem, bucket: str, session_proxy: FaultProxy, tmp_path
) -> None:
    """Keyframe mode with the video, models and output on S3, in 1-s segments: rows exactly at the probe's
    keyframes, the video fetched once for all segments, the mode in videos/; a rerun adds nothing."""
    root = f"{bucket}/keyframes"
    video = samples.make_video(
        tmp_path / "lecture.mp4", width=320, height=180, fps=FPS, seconds=4.0, faces=[TRACK]
    )
    s3.put_file(str(video), f"{root}/in/lecture.mp4")
    s3.put_file(str(standins.make_emotion_model(tmp_path / "emotion.onnx")), f"{root}/models/emotion.onnx")
    s3.put_file(str(standins.make_scrfd_model(tmp_path / "scrfd.onnx")), f"{root}/models/scrfd.onnx")
    keyframes = list(probe(VideoSource(str(video), "lecture")).keyframes)
    assert len(keyframes) == 4  # one a second: each 1-s segment decodes its own
    session_proxy.reset()
    config = ExtractConfig(
        inputs=(f"s3://{root}/in/lecture.mp4",),
        output=f"s3://{root}/out",
        model=f"s3://{root}/models/emotion.onnx",
        detector=f"s3://{root}/models/scrfd.onnx",
        sampling=Sampling(frames="keyframes"),
        segment_seconds=1.0,
        device="cpu",
        storage_options={**options(session_proxy.endpoint), "key": KEY_ID, "secret": SECRET},
    )
    first = pipeline.extract(config)
    assert session_proxy.get_bytes[f"/{root}/in/lecture.mp4"] == video.stat().st_size
    second = pipeline.extract(config)
    session_proxy.reset()
    assert [v["status"] for v in first.videos] == ["ok"] and second.run["videos_skipped"] == 1
    faces = _tables(s3, f"{root}/out", "faces")
    assert sorted(faces["frame_index"].to_pylist()) == keyframes  # one face a keyframe, nothing twice
    (row,) = _tables(s3, f"{root}/out", "videos").to_pylist()
    assert (row["sampling"], row["frames_sampled"], row["sampled_fps"]) == ("keyframes", 4, 1.0)
