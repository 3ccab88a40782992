"""End-to-end extraction on a local Ray: exact rows for known faces under each sampling rule, segments,
features dtypes, the CPU path, provenance metadata and the videos/ and runs/ tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
from e2e import (
    FPS,
    N_FRAMES,
    SECONDS,
    SIZES,
    TRACKS,
    assert_faces_match,
    by_video,
    invoke,
    read_table,
    sort_faces,
)

from emotibatch import schema
from emotibatch.extract import pipeline
from emotibatch.extract.decode import (
    Sampling,
    Segment,
    VideoInfo,
    decode_segment,
    plan_segments,
    probe,
    sample_indices,
)
from emotibatch.inference import registry, runtime
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.preprocess import crop_faces, normalisation_lut
from emotibatch.io.sources import VideoSource
from emotibatch.testing import samples
from emotibatch.testing.samples import FaceTrack

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

EVERY_5 = list(range(0, N_FRAMES, 5))
FPS_4 = [0, 6, 13, 19, 25, 31, 38, 44]  # nearest frame to k / 4 s at 25 fps, ties (12.5, 37.5) up


def _info(name: str) -> VideoInfo:
    width, height = SIZES[name]
    return VideoInfo(FPS, N_FRAMES, N_FRAMES / FPS, width, height)


def check_run(
    config, result: pipeline.RunResult, frames: list[int], *, features: str, va: bool, names=tuple(TRACKS)
) -> pa.Table:
    """Everything a run over the videos `names` under `config` must have written; returns its faces."""
    out = Path(config.output)
    for name in names:
        assert sample_indices(_info(name), config.sampling).tolist() == frames

    faces = read_table(out, "faces")
    assert faces is not None
    assert set(faces["video_id"].to_pylist()) == set(names)
    tracks = {name: assert_faces_match(faces, name, TRACKS[name], frames) for name in names}
    # Every sampled frame shows a face here, so the frame_index set is the sampled set.
    for name in names:
        rows = faces.filter(pc.equal(faces["video_id"], name))
        assert sorted(set(rows["frame_index"].to_pylist())) == frames
        assert set(rows["source_uri"].to_pylist()) == {str(Path(config.inputs[0]).parent / f"{name}.mp4")}
    keys = list(zip(*(faces[c].to_pylist() for c in ("video_id", "frame_index", "face_index"))))
    assert len(keys) == len(set(keys))

    # Emotions: probabilities sum to 1, the label is the argmax, valence/arousal only from an MTL model.
    meta = schema.read_metadata(pq.read_schema(next((out / "faces").glob("*.parquet"))))
    assert meta["classes"] == list(registry.CLASSES_8)
    probs = np.array(faces["emotion_probs"].to_pylist())
    # float32 softmax: each p_i within (C + 2) eps32 relative, so the sum within (2C + 2) eps32 of 1
    classes = len(meta["classes"])
    np.testing.assert_allclose(
        probs.sum(axis=1), 1.0, rtol=0, atol=(2 * classes + 2) * float(np.finfo(np.float32).eps)
    )
    assert faces["emotion"].to_pylist() == [meta["classes"][i] for i in probs.argmax(axis=1)]
    for column in ("valence", "arousal"):
        assert faces[column].null_count == (0 if va else len(faces))

    # Provenance under the one metadata key: models, classes, settings (credentials removed), run.
    assert meta["model"] == config.model and meta["detector"] == config.detector
    made_by = schema.Provenance.from_schema(pq.read_schema(next((out / "faces").glob("*.parquet"))))
    want = (registry.file_sha256(config.model), registry.file_sha256(config.detector))
    assert (made_by.model_sha256, made_by.detector_sha256) == want  # the files, whatever their spelling
    assert meta["settings"] == config.public() and meta["run_id"] == result.run_id
    assert meta["settings"]["sampling"] == {
        "mode": config.sampling.mode,
        "value": config.sampling.value,
        "frames": config.sampling.frames,
    }

    # Features column: as asked.
    if features == "none":
        assert "features" not in faces.column_names
    else:
        assert faces.schema.field("features").type == schema.vector(1280, getattr(pa, features)())

    # videos/: one ok row per input with the probe's numbers and the run's counts.
    videos = by_video(read_table(out, "videos"))
    assert set(videos) == set(names)
    assert by_video(pa.Table.from_pylist(result.videos)) == videos
    for name in names:
        width, height = SIZES[name]
        row = videos[name]
        n_faces = pc.sum(pc.equal(faces["video_id"], name)).as_py()
        assert row["status"] == "ok" and row["error"] is None and row["run_id"] == result.run_id
        assert (row["fps"], row["frame_count"], row["width"], row["height"]) == (FPS, N_FRAMES, width, height)
        assert row["duration_s"] == pytest.approx(N_FRAMES / FPS)
        assert (row["frames_sampled"], row["faces"], row["tracks"]) == (
            len(frames),
            n_faces,
            len(tracks[name]),
        )
        assert row["tracks"] == len(TRACKS[name])
        assert row["decode_s"] > 0 and row["infer_s"] > 0

    # runs/: exactly this run's row.
    runs = read_table(out, "runs")
    assert runs.num_rows == 1
    run = runs.to_pylist()[0]
    assert run["run_id"] == result.run_id and run["started_at"] <= run["ended_at"]
    assert json.loads(run["settings"]) == config.public()
    n = len(names)
    assert (run["videos"], run["videos_ok"], run["videos_failed"], run["videos_skipped"]) == (n, n, 0, 0)
    assert run["frames_sampled"] == n * len(frames)
    assert run["frames_decoded"] >= run["frames_sampled"]
    assert run["faces"] == len(faces) and run["tracks"] == sum(len(TRACKS[name]) for name in names)
    # float64 division of the same numbers: approx's default 1e-6 is far above eps64
    assert run["wall_s"] > 0 and run["frames_per_s"] == pytest.approx(n * len(frames) / run["wall_s"])
    return faces


def check_against_model(faces: pa.Table, video: Path, model: str, frames: list[int]) -> None:
    """Features and probabilities equal the emotion model run on crops of the decoded frames."""
    name = video.stem
    wanted = sort_faces(
        faces.filter(
            pc.and_(pc.equal(faces["video_id"], name), pc.is_in(faces["frame_index"], pa.array(frames)))
        )
    )
    assert wanted.num_rows > len(frames)
    segment = Segment(name, 0, 0, N_FRAMES, tuple(frames))
    decoded = {i: f for i, _, f in decode_segment(VideoSource(str(video), name), _info(name), segment)}
    crops = [crop_faces(decoded[r["frame_index"]], np.array([r["bbox"]]))[0] for r in wanted.to_pylist()]
    out = EmotionModel.load(model, device="cpu").predict(crops)
    # the same model on the same crops, only batched otherwise: a few float32 ulps at most
    np.testing.assert_allclose(np.array(wanted["emotion_probs"].to_pylist()), out.probs, rtol=1e-5, atol=1e-6)
    if "features" in wanted.column_names:
        dtype = wanted.schema.field("features").type.value_type.to_pandas_dtype()
        got = np.array(wanted["features"].to_pylist(), np.float32)
        # both sides rounded to the stored dtype; a float32 ulp apart, float16 rounding may still fall on
        # either side: one float16 step, 2^-10 relative, within 1e-3 (atol for features near 0)
        np.testing.assert_allclose(got, out.features.astype(dtype).astype(np.float32), rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def every_run(make_config, videos, tmp_path_factory):
    """--every 5 over `known` and `small`, one segment per video (the unsplit reference)."""
    config = make_config(
        [videos["known"], videos["small"]],
        tmp_path_factory.mktemp("every") / "out",
        sampling=Sampling("every", 5),
        segment_seconds=None,
    )
    return config, pipeline.extract(config)


def test_every_n_gives_the_expected_rows_and_the_models_outputs(every_run, videos):
    config, result = every_run
    faces = check_run(config, result, EVERY_5, features="float32", va=False)
    check_against_model(faces, videos["known"], config.model, [0, 10, 25])
    check_against_model(faces, videos["small"], config.model, [5, 45])


def test_fps_gives_the_expected_rows_with_float16_features(make_config, videos, tmp_path):
    config = make_config(
        [videos["known"], videos["small"]],
        tmp_path / "out",
        sampling=Sampling("fps", 4.0),
        features_dtype="float16",
    )
    result = pipeline.extract(config)
    faces = check_run(config, result, FPS_4, features="float16", va=False)
    check_against_model(faces, videos["known"], config.model, [13, 38])


def test_all_frames_on_device_auto_without_features_gives_the_expected_rows(
    make_config, videos, mtl_path, tmp_path
):
    """--all-frames with --features-dtype none and an MTL model, on device "auto": the CPU here."""
    if not runtime.cuda_available():  # "auto" is the CPU here, on the driver and on the workers
        assert runtime.providers_for("auto") == [runtime.CPU]
        assert ray.get(ray.remote(num_cpus=0)(runtime.providers_for).remote("auto")) == [runtime.CPU]
    config = make_config(
        [videos["small"]],
        tmp_path / "out",
        model=str(mtl_path),
        sampling=Sampling("all"),
        features_dtype="none",
        device="auto",
    )
    result = pipeline.extract(config)
    faces = check_run(config, result, list(range(N_FRAMES)), features="none", va=True, names=("small",))
    check_against_model(faces, videos["small"], config.model, [0, 5, 49])
    assert json.loads(read_table(tmp_path / "out", "runs")["settings"][0].as_py())["device"] == "auto"


def test_segments_give_the_same_rows_and_tracks(every_run, make_config, tmp_path):
    """Cut into 0.3 s segments (1-2 sampled frames each): the same rows and track ids as unsplit."""
    reference_config, _ = every_run
    config = make_config(
        reference_config.inputs, tmp_path / "out", sampling=Sampling("every", 5), segment_seconds=0.3
    )
    assert len(plan_segments(_info("known"), EVERY_5, 0.3, video_id="known")) == 7
    result = pipeline.extract(config)
    assert [v["status"] for v in result.videos] == ["ok", "ok"]
    split = sort_faces(read_table(config.output, "faces"))
    unsplit = sort_faces(read_table(reference_config.output, "faces"))
    assert split.schema.equals(unsplit.schema)  # metadata aside
    assert split.num_rows == unsplit.num_rows > 0
    for column in split.column_names:
        a, b = split[column].to_pylist(), unsplit[column].to_pylist()
        if pa.types.is_floating(split.schema.field(column).type) or pa.types.is_fixed_size_list(
            split.schema.field(column).type
        ):
            # frames fall in other batches when split: onnxruntime's kernels may differ by batch size
            # (test_standins_enet), a few float32 ulps of each value
            np.testing.assert_allclose(
                np.array(a, np.float64), np.array(b, np.float64), rtol=1e-5, err_msg=column
            )
        else:
            assert a == b, column
    split_videos = by_video(read_table(config.output, "videos"))
    unsplit_videos = by_video(read_table(reference_config.output, "videos"))
    for vid, row in split_videos.items():
        for key in ("status", "frames_sampled", "faces", "tracks", "frame_count"):
            assert row[key] == unsplit_videos[vid][key], (vid, key)


def test_sessions_in_ray_workers_take_their_cpu_share_and_do_not_spin(emotion_path):
    """A face actor given 1.5 CPUs runs 2 threads that sleep between parallel regions (its cores are
    shared with decode tasks); alone in a process onnxruntime's default (spinning) stays."""

    def session_options(path: str) -> tuple[int, str]:
        import onnx

        lut = normalisation_lut(registry.MEAN_IMAGENET, registry.STD_IMAGENET)
        options = runtime.make_runner(onnx.load(path), lut, device="cpu").session.get_session_options()
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
        return options.intra_op_num_threads, spinning

    in_ray = ray.get(ray.remote(num_cpus=1.5)(session_options).remote(str(emotion_path)))
    assert in_ray == (2, "0")
    with pytest.raises(RuntimeError, match="allow_spinning"):  # never set: onnxruntime's default
        session_options(str(emotion_path))


def test_only_real_frames_and_presentation_times_split_or_not(make_config, tmp_path):
    """A trimmed (edit list), a cut and a variable-rate video under --fps 4: rows only for frames that
    decode, timestamps that are presentation times, the same rows and tracks split or not."""
    d = tmp_path / "in"
    common = dict(width=320, height=180, fps=FPS, faces=TRACKS["small"])
    times = np.cumsum([0.0] + [1 / 30 if (i // 10) % 2 == 0 else 1 / 10 for i in range(N_FRAMES - 1)])
    cut, kept = samples.make_cut_video(d / "cut.mp4", 25, seconds=SECONDS, **common)
    inputs = [
        samples.make_trimmed_video(d / "trimmed.mp4", 3, seconds=SECONDS, **common),
        cut,
        samples.make_video(d / "vfr.mp4", times=times, **common),
    ]
    runs = {}
    for seconds in (None, 0.3):
        config = make_config(
            inputs, tmp_path / f"out{seconds}", sampling=Sampling("fps", 4.0), segment_seconds=seconds
        )
        result = pipeline.extract(config)
        runs[seconds] = (
            sort_faces(read_table(config.output, "faces")),
            by_video(read_table(config.output, "videos")),
        )
        # The decoder never goes past the frames that are there: N_FRAMES - 3 trimmed, `kept` of the cut.
        (decoded,) = read_table(config.output, "runs")["frames_decoded"].to_pylist()
        assert sum(v["frames_sampled"] for v in result.videos) <= decoded
        assert seconds is not None or decoded <= N_FRAMES - 3 + kept + N_FRAMES
        assert [v["status"] for v in result.videos] == ["ok"] * 3
    (faces, videos), (split_faces, split_videos) = runs[None], runs[0.3]
    assert faces.num_rows == split_faces.num_rows > 0
    for column in ("video_id", "frame_index", "face_index", "track_id", "timestamp_s"):
        assert split_faces[column].equals(faces[column]), column
    np.testing.assert_allclose(
        schema.as_matrix(split_faces["bbox"]), schema.as_matrix(faces["bbox"]), atol=1e-3
    )
    assert split_videos.keys() == videos.keys()
    for vid, row in videos.items():
        for key in (
            "frame_count",
            "frame_count_claimed",
            "warning",
            "frames_sampled",
            "frames_lost",
            "faces",
            "tracks",
        ):
            assert split_videos[vid][key] == row[key], (vid, key)
    counts = {
        vid: (r["frame_count"], r["frame_count_claimed"], r["frames_lost"]) for vid, r in videos.items()
    }
    assert counts == {
        "trimmed": (N_FRAMES - 3, N_FRAMES, 0),
        "cut": (kept, N_FRAMES, 0),
        "vfr": (N_FRAMES, N_FRAMES, 0),
    }
    assert "claims 50 frames but 47 can be decoded" in videos["trimmed"]["warning"]
    assert f"claims 50 frames but {kept} can be decoded" in videos["cut"]["warning"]
    assert videos["vfr"]["warning"] is None
    for vid, (count, _, _) in counts.items():
        rows = faces.filter(pc.equal(faces["video_id"], vid))
        assert pc.max(rows["frame_index"]).as_py() < count
    # vfr: each sampled frame is the one nearest k / 4 s (written times are exact in 1/15360 s ticks).
    rows = faces.filter(pc.equal(faces["video_id"], "vfr"))
    np.testing.assert_allclose(
        rows["timestamp_s"].to_numpy(), times[rows["frame_index"].to_numpy()], atol=1e-9
    )
    targets = np.arange(0, times[-1] + (times[-1] - times[-2]) / 2, 0.25)  # up to half a frame past the end
    nearest = {int(np.flatnonzero(d <= d.min() + 1e-9)[-1]) for d in np.abs(times - targets[:, None])}
    assert set(rows["frame_index"].to_pylist()) == nearest
    assert videos["vfr"]["frames_sampled"] == len(nearest)


STILL_TRACKS = (  # a lecture's faces barely move: linked across keyframes a second or more apart
    FaceTrack(64, (96, 96), (96, 96), first=0, last=149),
    FaceTrack(32, (400, 64), (400, 64), first=0, last=149),
)


def test_keyframes_give_rows_at_keyframes_only_split_or_not_and_resume(model_args, tmp_path):
    """`extract --keyframes` (alone and with --fps 0.5) through the CLI: rows exactly at the probe's
    keyframes, the same split or not, the mode and achieved rate in videos/ and the run settings; a
    rerun adds no row and another sampling rule is refused."""
    video = samples.make_video(
        tmp_path / "in" / "lecture.mp4", width=640, height=360, fps=FPS, seconds=6.0, faces=STILL_TRACKS
    )
    info = probe(VideoSource(str(video), "lecture"))
    bounded = sample_indices(info, Sampling("fps", 0.5, frames="keyframes")).tolist()
    assert len(info.keyframes) >= 6 and len(bounded) == 3 and set(bounded) < set(info.keyframes)
    for args, frames, label in (
        (["--keyframes"], list(info.keyframes), "keyframes"),
        (["--keyframes", "--fps", "0.5"], bounded, "keyframes fps 0.5"),
    ):
        runs = []
        for seconds in ("1", "100"):
            out = tmp_path / f"out{len(args)}_{seconds}"
            command = ["extract", video, "-o", out, *model_args, *args, "--segment-seconds", seconds]
            assert invoke(command).exit_code == 0
            faces = read_table(out, "faces")
            assert_faces_match(faces, "lecture", STILL_TRACKS, frames)
            row = by_video(read_table(out, "videos"))["lecture"]
            assert (row["status"], row["sampling"], row["frames_sampled"]) == ("ok", label, len(frames))
            assert row["sampled_fps"] == len(frames) / 6.0
            assert read_table(out, "runs")["frames_decoded"].to_pylist() == [len(frames)]  # each alone
            settings = json.loads(read_table(out, "runs")["settings"][0].as_py())
            bound = {"mode": "fps", "value": 0.5} if "--fps" in args else {"mode": "all", "value": None}
            assert settings["sampling"] == {**bound, "frames": "keyframes"}
            runs.append(sort_faces(faces).select(["frame_index", "face_index", "track_id", "timestamp_s"]))
        assert runs[0].equals(runs[1])
    assert invoke(command).exit_code == 0  # the same arguments again: the finished video is kept
    assert read_table(out, "faces").num_rows == faces.num_rows and len(read_table(out, "videos")) == 1
    refused = invoke(["extract", video, "-o", out, *model_args, "--fps", "0.5"])
    assert refused.exit_code == 2 and "sampling" in refused.output
    both = invoke(["extract", video, "-o", tmp_path / "x", *model_args, "--keyframes", "--every", "5"])
    assert both.exit_code == 2 and "--keyframes takes --fps F" in both.output
