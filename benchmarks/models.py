"""Model throughput against bare baselines: EmotionModel.predict and FaceDetector.detect.

Cases (all sides of a case share the model file, the thread count and the onnxruntime SessionOptions):

- `emotion_predict`: faces/s of `EmotionModel.predict` on face-crop-sized uint8 squares (80-200 px, so
  the resize is included) against `session.run` of a plain InferenceSession of the original model on
  already resized and normalised float32 NCHW tensors. On CUDA the baseline's input is already on the GPU
  (IO binding), as in docs/models.md (Throughput on an H100 node). Model: the EfficientNet-B0 stand-in
  at 224 (its real cost).
- `detect_standin`: frames/s of batched `FaceDetector.detect` on 720p frames with stand-in faces against
  insightface's per-frame `SCRFD(model_file, session=...).detect(bgr, input_size=(640, 640))` loop.
  The stand-in SCRFD costs ~1/500 of det_10g (0.026 G multiply-adds), so this measures the code around it.
- `detect_det10g_cost`: the same with the stand-in padded by a conv backbone whose output is multiplied by
  zero into the graph: det_10g's cost (~13 G multiply-adds at 640x640), the same detections.
- `fill_crops`: crops/s of `Runner.batches` filling emotion batches as on CUDA (the resizes on `--threads`
  fill threads, a batch ahead; no model) against the same resizes inline on one thread (the CPU path).

Usage: python benchmarks/models.py [--device cpu|cuda] [--threads N] [--batch B] [--seconds S] [--out F]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from harness import Case, Side, measure, table, write
from onnx import helper, numpy_helper

from emotibatch.inference.detect import DEFAULT_BATCH_SIZES as DETECT_BATCH_SIZES
from emotibatch.inference.embed import DEFAULT_BATCH_SIZES as EMOTION_BATCH_SIZES
from emotibatch.testing import standins

# EmotiEffLib's file name: its name rules give input 224 and ImageNet mean/std, as for the real model.
EMOTION_MODEL = "enet_b0_8_best_vgaf.onnx"
INPUT_SIZE = 224
CROP_SIDES = (80, 200)
FRAME_SHAPE = (720, 1280)
DET_INPUT = (640, 640)
FACES_PER_FRAME = 4
DISTINCT_FRAMES = 8
# SCRFD-10GF: 9.98 G multiply-adds ("FLOPs" in insightface's table) at VGA 640x480; detect() runs 640x640.
DET_10G_GMACS_640 = 9.98 * (640 * 640) / (640 * 480)
# Padding backbone for detect_det10g_cost: (output channels, stride, 3x3 convs) per stage, ReLU after each;
# a plain ResNet-like stack of ~13.3 G multiply-adds at 640x640.
COST_STAGES = ((32, 2, 1), (64, 2, 4), (128, 2, 5), (256, 2, 5), (512, 2, 2))
TARGETS = {
    ("emotion_predict", "cpu"): 0.9,
    ("emotion_predict", "cuda"): 0.8,
    ("detect", "cpu"): 1.0,
    ("detect", "cuda"): 1.5,
}


# ---- inputs ---------------------------------------------------------------------------------------------


def face_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` random-content RGB squares of face-crop sizes (80-200 px): predict must resize each."""
    rng = np.random.default_rng(seed)
    sides = rng.integers(CROP_SIDES[0], CROP_SIDES[1] + 1, n)
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in sides]


def resize_crops(crops: list[np.ndarray], size: int) -> np.ndarray:
    """Crops resized to size x size by the library's one resize rule, stacked into uint8 [N, S, S, 3]."""
    from emotibatch.inference.preprocess import resize_crop

    out = np.empty((len(crops), size, size, 3), np.uint8)
    for crop, slot in zip(crops, out):
        resize_crop(crop, slot)
    return out


def frames_720p(n: int, seed: int = 0) -> tuple[list[np.ndarray], int]:
    """`n` RGB 720p frames (dark noise, `FACES_PER_FRAME` stand-in faces each) and the faces drawn in all."""
    rng = np.random.default_rng(seed)
    height, width = FRAME_SHAPE
    scale = 2  # 1280x720 is letterboxed at 1/2: a face is 2x the detector's 16/32/64 px square
    frames, faces = [], 0
    for _ in range(n):
        frame = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        placed: list[tuple[int, int, int]] = []
        while len(placed) < FACES_PER_FRAME:
            side = int(rng.choice(standins.FACE_SIDES))
            step = side // 2  # centred on an anchor: a multiple of the stride, side / 2
            cx = int(rng.integers(2, width // scale // step - 2)) * step
            cy = int(rng.integers(2, height // scale // step - 2)) * step
            # Apart on one axis by both sides: neither face enters the other's 2x-side contrast window.
            if all(abs(cx - x) > side + s or abs(cy - y) > side + s for x, y, s in placed):
                placed.append((cx, cy, side))
        for cx, cy, side in placed:
            standins.draw_face(frame, (cx * scale, cy * scale), side * scale)
        frames.append(frame)
        faces += len(placed)
    return frames, faces


# ---- models ---------------------------------------------------------------------------------------------


def add_cost(src: Path, dst: Path, stages: tuple[tuple[int, int, int], ...] = COST_STAGES) -> Path:
    """Write `src` (an SCRFD stand-in) with a conv backbone on its input whose mean, times zero, is added
    to the stand-in's first feature map: the graph's cost grows, its outputs and head layout do not change.
    """
    model = onnx.load(str(src))
    graph = model.graph
    first = graph.node[0]  # the stand-in's grey-level Conv
    grey = first.output[0]
    first.output[0] = grey + "_raw"
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, cin, i = graph.input[0].name, 3, 0
    for cout, stride, repeats in stages:
        for r in range(repeats):
            w = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)  # He: no blow-up
            inits.append(numpy_helper.from_array(w, f"cost{i}.w"))
            s = stride if r == 0 else 1
            nodes += [
                helper.make_node(
                    "Conv", [x, f"cost{i}.w"], [f"cost{i}"], kernel_shape=[3, 3], strides=[s, s], pads=[1] * 4
                ),
                helper.make_node("Relu", [f"cost{i}"], [f"cost{i}.relu"]),
            ]
            x, cin, i = f"cost{i}.relu", cout, i + 1
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "cost_zero"))
    nodes += [
        helper.make_node("ReduceMean", [x], ["cost_mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["cost_mean", "cost_zero"], ["cost_nothing"]),
        helper.make_node("Add", [grey + "_raw", "cost_nothing"], [grey]),
    ]
    for n in reversed(nodes):
        graph.node.insert(1, n)
    graph.initializer.extend(inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def gmacs(path: Path, input_hw: tuple[int, int]) -> float:
    """Multiply-adds of Conv and Gemm (plus the adds of AveragePool) per image at `input_hw`, in G."""
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, *input_hw)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)
    }
    shapes |= {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            weight = shapes[n.input[1]]  # [out, in / group, kh, kw]
            total += int(np.prod(shapes[n.output[0]])) * int(np.prod(weight[1:]))
        elif n.op_type == "Gemm":
            total += int(np.prod(shapes[n.input[1]]))
        elif n.op_type == "AveragePool":
            total += int(np.prod(shapes[n.output[0]])) * int(np.prod(attrs["kernel_shape"]))
    return total / 1e9


def make_models(directory: Path) -> dict[str, Path]:
    """The stand-in models the cases run, written under `directory`."""
    paths = {
        "emotion": standins.make_efficientnet_b0(directory / EMOTION_MODEL, input_size=INPUT_SIZE),
        "scrfd": standins.make_scrfd_model(directory / "det_standin.onnx"),
    }
    paths["scrfd_cost"] = add_cost(paths["scrfd"], directory / "det_10g_cost.onnx")
    return paths


# ---- sides (run in their own processes) ----------------------------------------------------------------


def session_options(threads: int) -> Any:
    """The SessionOptions `emotibatch.inference.runtime.make_runner` makes, for the bare baselines."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def describe(session: Any) -> dict[str, Any]:
    """The session settings both sides must share, for the result's `info`."""
    o = session.get_session_options()
    return {
        "providers": session.get_providers(),
        "intra_op_num_threads": o.intra_op_num_threads,
        "inter_op_num_threads": o.inter_op_num_threads,
        "graph_optimization_level": str(o.graph_optimization_level),
    }


def _limit_cv2(threads: int) -> None:
    import cv2

    cv2.setNumThreads(threads)  # resizes get the same CPU share as the sessions


def emotion_ours(path: str, device: str, threads: int, batch: int) -> tuple[Any, dict]:
    from emotibatch import EmotionModel

    _limit_cv2(threads)
    model = EmotionModel.load(path, device=device, batch_size=batch, num_threads=threads)
    crops = face_crops(batch)

    def step() -> int:
        model.predict(crops)
        return len(crops)

    return step, describe(model.runner.session)


def emotion_bare(path: str, device: str, threads: int, batch: int) -> tuple[Any, dict]:
    """Plain session of the original model on already normalised float32 NCHW (on the GPU for CUDA)."""
    import onnxruntime as ort

    from emotibatch.inference.preprocess import normalisation_lut
    from emotibatch.inference.registry import MEAN_IMAGENET, STD_IMAGENET
    from emotibatch.inference.runtime import providers_for

    _limit_cv2(threads)
    session = ort.InferenceSession(path, session_options(threads), providers=providers_for(device))
    pixels = resize_crops(face_crops(batch), INPUT_SIZE)
    lut = normalisation_lut(MEAN_IMAGENET, STD_IMAGENET)
    x = np.ascontiguousarray(lut[np.arange(3), pixels].transpose(0, 3, 1, 2))  # [N, 3, S, S] float32
    name = session.get_inputs()[0].name
    if device == "cpu":

        def step() -> int:
            session.run(None, {name: x})
            return batch

    else:
        on_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(name, on_device)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda")

        def step() -> int:
            session.run_with_iobinding(binding)  # synchronises the device at the end of the run
            return on_device.shape()[0]

    return step, describe(session)


def fill_ours(threads: int, batch: int) -> tuple[Any, dict]:
    """`Runner.batches` as it fills emotion batches on CUDA: resizes on `threads` fill threads, a batch ahead."""
    from emotibatch.inference.preprocess import resize_crop
    from emotibatch.inference.runtime import Runner

    _limit_cv2(1)
    runner = Runner(session=None, device="cuda", fill_threads=threads)  # the fill alone, no model
    crops = face_crops(4 * batch)

    def step() -> int:
        for _ in runner.batches(crops, batch, (INPUT_SIZE, INPUT_SIZE), resize_crop):
            pass
        return len(crops)

    return step, {"fill_threads": threads}


def fill_bare(threads: int, batch: int) -> tuple[Any, dict]:
    """The same resizes one after another on the calling thread, as on the CPU path."""
    _limit_cv2(1)
    crops = face_crops(4 * batch)

    def step() -> int:
        for start in range(0, len(crops), batch):
            resize_crops(crops[start : start + batch], INPUT_SIZE)
        return len(crops)

    return step, {"fill_threads": 0}


def detect_ours(path: str, device: str, threads: int, batch: int) -> tuple[Any, dict]:
    from emotibatch import FaceDetector

    _limit_cv2(threads)
    detector = FaceDetector.load(
        path, device=device, input_size=DET_INPUT, batch_size=batch, num_threads=threads
    )
    frames, faces = frames_to_detect(batch)
    found = sum(len(d) for d in detector.detect(frames))
    if found != faces:
        raise RuntimeError(f"FaceDetector found {found} faces, {faces} were drawn")

    def step() -> int:
        detector.detect(frames)
        return len(frames)

    return step, describe(detector.runner.session) | {"batched": detector.batch_size == batch}


def detect_bare(path: str, device: str, threads: int, batch: int) -> tuple[Any, dict]:
    """insightface's SCRFD, one frame per call, on a session with the same options (BGR input)."""
    import onnxruntime as ort
    from insightface.model_zoo.scrfd import SCRFD

    from emotibatch.inference.runtime import providers_for

    _limit_cv2(threads)
    session = ort.InferenceSession(path, session_options(threads), providers=providers_for(device))
    scrfd = SCRFD(path, session=session)
    frames, faces = frames_to_detect(batch)
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    found = sum(len(scrfd.detect(f, input_size=DET_INPUT)[0]) for f in bgr)
    if found != faces:
        raise RuntimeError(f"insightface found {found} faces, {faces} were drawn")

    def step() -> int:
        for f in bgr:
            scrfd.detect(f, input_size=DET_INPUT)
        return len(bgr)

    # insightface runs a fixed-shape copy of the session for each input size, with its options.
    return step, describe(scrfd.resolution_sessions[DET_INPUT])


def frames_to_detect(n: int) -> tuple[list[np.ndarray], int]:
    """`n` frames cycling over `DISTINCT_FRAMES` distinct ones (memory stays that of a few frames)."""
    frames, faces = frames_720p(min(n, DISTINCT_FRAMES))
    per_frame = faces // len(frames)
    return [frames[i % len(frames)] for i in range(n)], per_frame * n


# ---- cases ----------------------------------------------------------------------------------------------


def cases(models: dict[str, Path], device: str, threads: int, batch: int, frames: int) -> list[Case]:
    common = {"device": device, "threads": threads, "cv2_threads": threads}
    emotion = {"path": str(models["emotion"]), "device": device, "threads": threads, "batch": batch}
    result = [
        Case(
            f"emotion_predict/{device}",
            "faces/s",
            ours=Side(emotion_ours, emotion),
            bare=Side(emotion_bare, emotion),
            target=TARGETS[("emotion_predict", device)],
            settings=common
            | {
                "model": "EfficientNet-B0 stand-in (standins.make_efficientnet_b0), 224x224",
                "gmacs_per_image": round(gmacs(models["emotion"], (INPUT_SIZE, INPUT_SIZE)), 3),
                "batch": batch,
                "crop_sides": list(CROP_SIDES),
                "bare_input": "float32 NCHW, normalised"
                + (", on the GPU (IO binding)" if device == "cuda" else ""),
            },
        )
    ]
    fill = {"threads": threads, "batch": EMOTION_BATCH_SIZES["cuda"]}  # the fill threads serve CUDA only
    result.append(
        Case(
            "fill_crops",
            "crops/s",
            ours=Side(fill_ours, fill),
            bare=Side(fill_bare, fill),
            settings={
                "what": "resizing face crops into emotion batches, no model: fill threads against inline",
                "fill_threads": threads,
                "batch": fill["batch"],
                "crops_per_call": 4 * fill["batch"],
                "crop_sides": list(CROP_SIDES),
            },
        )
    )
    for key, label in (("scrfd", "detect_standin"), ("scrfd_cost", "detect_det10g_cost")):
        kwargs = {"path": str(models[key]), "device": device, "threads": threads, "batch": frames}
        cost = gmacs(models[key], DET_INPUT)
        result.append(
            Case(
                f"{label}/{device}",
                "frames/s",
                ours=Side(detect_ours, kwargs),
                bare=Side(detect_bare, kwargs),
                target=TARGETS[("detect", device)],
                settings=common
                | {
                    "model": f"{models[key].name} (SCRFD stand-in{', padded to det_10g cost' if key == 'scrfd_cost' else ''})",
                    "gmacs_per_frame": round(cost, 4),
                    "cost_vs_det_10g": round(cost / DET_10G_GMACS_640, 4),
                    "frames_per_call": frames,
                    "frame": f"{FRAME_SHAPE[1]}x{FRAME_SHAPE[0]} RGB, {FACES_PER_FRAME} stand-in faces",
                    "input_size": list(DET_INPUT),
                    "bare": "insightface SCRFD(model_file, session=...).detect(bgr, input_size) per frame",
                },
            )
        )
    return result


def check_same_sessions(result: dict[str, Any]) -> None:
    """Fail loudly when the two sides did not run with the same providers and thread settings."""
    keys = ("providers", "intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level")
    ours, bare = (result["info"][side] for side in ("ours", "bare"))
    if any(ours[k] != bare[k] for k in keys):
        raise RuntimeError(f"{result['name']}: sides ran with different sessions: {ours} vs {bare}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--batch",
        type=int,
        help="faces per predict call and per batch (default: EmotionModel's 16 on cpu; 256 on cuda, as the "
        "bare H100 figure of docs/models.md)",
    )
    parser.add_argument(
        "--frames", type=int, help="frames per detect call (default FaceDetector's: 4 on cpu, 16 on cuda)"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="least length of each timed run")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per side, alternating")
    parser.add_argument("--cases", nargs="*", help="run only cases whose name contains one of these")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    batch = args.batch or (256 if args.device == "cuda" else EMOTION_BATCH_SIZES["cpu"])
    frames = args.frames or DETECT_BATCH_SIZES[args.device]
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            parser.error("--device cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp))
        for case in cases(models, args.device, args.threads, batch, frames):
            if args.cases and not any(c in case.name for c in args.cases):
                continue
            print(f"running {case.name} ...", file=sys.stderr, flush=True)
            result = measure(case, seconds=args.seconds, repeats=args.repeats)
            if "providers" in result["info"]["ours"]:  # the cases that run a model
                check_same_sessions(result)
            results.append(result)
    print(table(results))
    if args.out:
        write(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
