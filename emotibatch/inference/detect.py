"""FaceDetector: frames -> face boxes, scores and five keypoints with insightface's SCRFD models, batched.

Results equal insightface 2.1's `SCRFD(model_file).detect(bgr_frame, input_size)` run frame by frame:
the same letterbox (preprocess.letterbox), anchor centres `(x * s, y * s)` with the anchor index innermost,
distances times the stride, scores kept when >= det_thresh, a stable sort by score, then NMS with the
"+1" area convention. Unlike insightface it runs many frames per onnxruntime call: the model packs fix
the batch to 1 and flatten each head with `permute(2, 3, 0, 1).reshape(-1, k)`, so on load the graph is
rewritten to `permute(0, 2, 3, 1).reshape(0, -1, k)` with a symbolic batch, checked once against per-frame
runs, and abandoned for per-frame calls if the two disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from emotibatch.config import Device
from emotibatch.inference import registry
from emotibatch.inference.preprocess import SCRFD_LUT, check_images, letterbox
from emotibatch.inference.runtime import Runner, make_runner
from emotibatch.io.redact import redact_uri

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
# Frames per onnxruntime call. On a GPU batching is the point; on the CPU a call of 4 frames ran as fast
# as one of 16 at det_10g's cost (1.06 vs 1.09 of insightface's per-frame loop) with 1 GB less peak RSS,
# each frame of a call holding 40-60 MiB of activations (docs/benchmarks.md).
DEFAULT_BATCH_SIZES = {"cpu": 4, "cuda": 16}
# Random frames must give the same head outputs batched and per frame, up to float reassociation.
_CHECK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame, score descending; coordinates in that frame's pixels."""

    boxes: np.ndarray  # float32 [K, 4]: x1, y1, x2, y2
    scores: np.ndarray  # float32 [K]
    kps: np.ndarray  # float32 [K, 5, 2]: eyes, nose, mouth corners

    def __len__(self) -> int:
        return len(self.scores)


def _contract_error(source: str, what: str) -> ValueError:
    return ValueError(f"{source}: not an SCRFD-contract detector: {what}")


def _check_contract(model: onnx.ModelProto, source: str) -> None:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise _contract_error(source, f"expected one image input, found {len(inputs)}")
    if len(model.graph.output) != 9:
        raise _contract_error(
            source,
            "expected 9 outputs (scores, boxes, keypoints for strides 8/16/32), "
            f"found {len(model.graph.output)}"
            + (
                "; models without keypoints (6 outputs) are not supported"
                if len(model.graph.output) == 6
                else ""
            ),
        )


def _rank(value: onnx.ValueInfoProto) -> int:
    return len(value.type.tensor_type.shape.dim)


def _set_input_shape(model: onnx.ModelProto, batch: int | str, input_size: tuple[int, int]) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (batch, 3, input_size[1], input_size[0])):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v


def _static_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
        return dims[3].dim_value, dims[2].dim_value
    return None


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Rewrite the packs' batch-1 heads to batched ones; None when the graph has another layout."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    inits = {t.name: t for t in graph.initializer}
    edits = []
    for out in graph.output:
        node = producers.get(out.name)
        if node is not None and node.op_type == "Sigmoid":
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Reshape" or node.input[1] not in inits:
            return None
        shape = numpy_helper.to_array(inits[node.input[1]])
        transpose = producers.get(node.input[0])
        if (
            shape.tolist()[:1] != [-1]
            or len(shape) != 2
            or transpose is None
            or transpose.op_type != "Transpose"
            or consumers.get(node.input[1], 0) != 1
            or consumers.get(transpose.output[0], 0) != 1
        ):
            return None
        perm = [a.ints for a in transpose.attribute if a.name == "perm"]
        if not perm or list(perm[0]) != [2, 3, 0, 1]:
            return None
        edits.append((node, transpose, int(shape[1]), out))
    for reshape, transpose, k, out in edits:
        for a in transpose.attribute:
            if a.name == "perm":
                a.ints[:] = [0, 2, 3, 1]
        inits[reshape.input[1]].CopyFrom(
            numpy_helper.from_array(np.array([0, -1, k], np.int64), reshape.input[1])
        )
        out.type.tensor_type.shape.Clear()
        for v in ("batch", "anchors", k):
            d = out.type.tensor_type.shape.dim.add()
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v
    del graph.value_info[:]
    return model


def _anchor_centres(height: int, width: int, stride: int) -> np.ndarray:
    centres = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    centres = (centres * stride).reshape(-1, 2)
    return np.stack([centres] * NUM_ANCHORS, axis=1).reshape(-1, 2)


def nms(dets: np.ndarray, threshold: float) -> list[int]:
    """insightface's greedy NMS over [K, 5] rows (x1, y1, x2, y2, score), "+1" pixel areas."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= threshold)[0] + 1]
    return keep


class FaceDetector:
    """An SCRFD face detector on onnxruntime. Make one with `FaceDetector.load`."""

    def __init__(
        self,
        runner: Runner,
        *,
        name: str,
        input_size: tuple[int, int],
        det_thresh: float,
        nms_thresh: float,
        batch_size: int,
        sha256: str,
    ) -> None:
        self.runner = runner
        self.name = name
        self.sha256 = sha256  # of the model file: two files may share a name but not their boxes
        self.input_size = input_size
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        self.batch_size = batch_size
        width, height = input_size
        self._centres = [_anchor_centres(height // s, width // s, s) for s in STRIDES]

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: Device = "auto",
        input_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
        batch_size: int | None = None,
        num_threads: int | None = None,
        cache_dir: str | None = None,
        model_dir: str | None = None,
        storage_options: dict | None = None,
    ) -> FaceDetector:
        """Load a registry name, local path or fsspec URI; `input_size` is (width, height).

        `batch_size`: frames per onnxruntime call; by default 16 on CUDA, 4 on the CPU.
        """
        if not 0.0 < det_thresh < 1.0 or not 0.0 < nms_thresh <= 1.0:
            raise ValueError(
                f"det_thresh must be in (0, 1) and nms_thresh in (0, 1], got {det_thresh}, {nms_thresh}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        card, proto, path = registry.load_onnx(
            str(model), "detector", cache_dir=cache_dir, model_dir=model_dir, storage_options=storage_options
        )
        source = redact_uri(str(model))
        _check_contract(proto, source)
        static = _static_size(proto)
        if static and static != tuple(input_size):
            log.warning(
                "%s has a fixed input size %s: using it instead of %s", source, static, tuple(input_size)
            )
        size = static or (int(input_size[0]), int(input_size[1]))
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"input_size {size} must be multiples of 32 (the largest stride)")
        name = card.name if card else Path(str(model)).stem

        def runner_for(g: onnx.ModelProto, batch: int | str) -> Runner:
            _set_input_shape(g, batch, size)
            return make_runner(g, SCRFD_LUT, device=device, num_threads=num_threads, name=name)

        kwargs = dict(
            name=name,
            input_size=size,
            det_thresh=det_thresh,
            nms_thresh=nms_thresh,
            sha256=registry.file_sha256(path),
        )
        per_frame = cls(runner_for(proto, 1), batch_size=1, **kwargs)
        if _rank(proto.graph.output[0]) == 3:
            batched_graph = proto
        else:
            batched_graph = make_batch_dynamic(proto)
            if batched_graph is None:
                log.warning("%s: unknown head layout, running one frame per call", source)
                return per_frame
        runner = runner_for(batched_graph, "batch")
        batched = cls(runner, batch_size=batch_size or DEFAULT_BATCH_SIZES[runner.device], **kwargs)
        if batched._agrees_with(per_frame):
            return batched
        log.warning("%s: the batched graph disagrees with per-frame runs; running one frame per call", source)
        return per_frame

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        """Head outputs as [N, anchors, k] arrays, in the model's output order."""
        return [o if o.ndim == 3 else o[np.newaxis] for o in self.runner.run(batch)]

    def _forward_canvases(self, canvases: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Head outputs for letterboxed uint8 canvases, in one call."""
        width, height = self.input_size

        def copy(canvas: np.ndarray, out: np.ndarray) -> None:
            out[...] = canvas

        _, batch, _ = next(self.runner.batches(canvases, len(canvases), (height, width), copy))
        return self._forward(batch)

    def _agrees_with(self, per_frame: FaceDetector) -> bool:
        """Two different frames in one call against each alone: enough to catch a graph that mixes frames
        (each frame at a 640x640 det_10g costs ~0.13 s on a CPU core, at every load)."""
        rng = np.random.default_rng(0)
        width, height = self.input_size
        canvases = list(rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8))
        batched = self._forward_canvases(canvases)
        for n in range(len(canvases)):
            single = per_frame._forward_canvases(canvases[n : n + 1])
            for b, s in zip(batched, single):
                if b[n].shape != s[0].shape or not np.allclose(
                    b[n], s[0], rtol=_CHECK_TOLERANCE, atol=_CHECK_TOLERANCE
                ):
                    return False
        return True

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """One `Detections` per RGB uint8 HxWx3 frame (sizes may differ)."""
        check_images(frames, "frame")
        width, height = self.input_size

        def fill(frame: np.ndarray, canvas: np.ndarray) -> float:
            return letterbox(frame, self.input_size, canvas)

        results: list[Detections] = []
        for _, batch, scales in self.runner.batches(frames, self.batch_size, (height, width), fill):
            outputs = self._forward(batch)
            results += [self._decode([o[i] for o in outputs], scale) for i, scale in enumerate(scales)]
        return results

    def _decode(self, heads: list[np.ndarray], det_scale: float) -> Detections:
        """insightface's SCRFD.forward + detect post-processing for one frame."""
        scores_list, boxes_list, kps_list = [], [], []
        levels = len(STRIDES)
        for idx, stride in enumerate(STRIDES):
            scores = heads[idx]
            keep = np.where(scores >= self.det_thresh)[0]
            centres = self._centres[idx][keep]
            dist = heads[idx + levels][keep] * stride
            kdist = heads[idx + 2 * levels][keep] * stride
            boxes = np.stack(
                [
                    centres[:, 0] - dist[:, 0],
                    centres[:, 1] - dist[:, 1],
                    centres[:, 0] + dist[:, 2],
                    centres[:, 1] + dist[:, 3],
                ],
                axis=-1,
            )
            kps = (np.tile(centres, 5) + kdist).reshape(-1, 5, 2)
            scores_list.append(scores[keep])
            boxes_list.append(boxes)
            kps_list.append(kps)
        scores = np.vstack(scores_list).ravel()
        if not scores.size:
            return Detections(
                np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, 5, 2), np.float32)
            )
        order = np.argsort(-scores, kind="stable")
        dets = np.hstack((np.vstack(boxes_list) / det_scale, scores[:, None])).astype(np.float32, copy=False)[
            order
        ]
        kps = (np.vstack(kps_list) / det_scale)[order]
        keep = nms(dets, self.nms_thresh)
        dets = dets[keep]
        return Detections(
            boxes=np.ascontiguousarray(dets[:, :4]),
            scores=np.ascontiguousarray(dets[:, 4]),
            kps=kps[keep].astype(np.float32),
        )
