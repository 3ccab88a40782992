"""The face actor: detection, the one crop rule and the emotion model over blocks of decoded frames.

Ray Data runs `FaceStage` in an actor pool (on a GPU where there is one): the models load once per
actor, and each call takes a block of raw frames (decode.decode_blocks) and returns one row per frame
with its faces as lists (schema.frames_schema), which staging writes and the per-video pass flattens.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from emotibatch import schema
from emotibatch.config import ExtractConfig
from emotibatch.inference.detect import FaceDetector
from emotibatch.inference.embed import EmotionModel
from emotibatch.inference.preprocess import crop_faces


class FaceStage:
    """Ray Data actor: detector and emotion model loaded once; frames in, per-frame faces out."""

    def __init__(self, config: ExtractConfig, frames_schema: pa.Schema) -> None:
        self.config = config
        self.schema = frames_schema
        common = dict(
            device=config.device, model_dir=config.model_dir, storage_options=config.storage_options
        )
        self.detector = (
            None
            if config.faces_cropped
            else FaceDetector.load(
                config.detector,
                input_size=config.det_size,
                det_thresh=config.det_thresh,
                batch_size=config.detect_batch_size,
                **common,
            )
        )
        self.model = EmotionModel.load(config.model, batch_size=config.batch_size, **common)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        n = len(batch)
        errors = batch["error"].to_pylist()
        heights, widths = batch["height"].to_pylist(), batch["width"].to_pylist()
        pixels = batch["pixels"].to_pylist()
        ok = [i for i in range(n) if errors[i] is None]
        frames = [np.frombuffer(pixels[i], np.uint8).reshape(heights[i], widths[i], 3) for i in ok]
        boxes, scores, landmarks = self._faces(frames)
        crops = [c for frame, b in zip(frames, boxes) for c in crop_faces(frame, b, self.config.margin)]
        out = self.model.predict(crops)
        counts = np.zeros(n, np.int64)
        counts[ok] = [len(b) for b in boxes]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        seconds = (time.perf_counter() - started) / max(n, 1)

        def nested(values: np.ndarray | None, width: int | None, dtype: pa.DataType) -> pa.Array:
            if values is None:  # a model without valence/arousal, or face crops without detections
                flat = pa.nulls(int(offsets[-1]), dtype if width is None else schema.vector(width, dtype))
            elif width is None:
                flat = pa.array(values.astype(dtype.to_pandas_dtype()), dtype)
            else:
                flat = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.astype(dtype.to_pandas_dtype()).reshape(-1), dtype), width
                )
            return pa.ListArray.from_arrays(pa.array(offsets), flat)

        columns = {
            "video_id": batch["video_id"],
            "segment_index": batch["segment_index"],
            "frame_index": batch["frame_index"],
            "error": batch["error"],
            "decode_s": batch["decode_s"],
            "infer_s": pa.array(np.full(n, seconds)),
            "bbox": nested(_stack(boxes, (0, 4)), 4, pa.float32()),
            "det_score": nested(None if self.detector is None else _stack(scores, (0,)), None, pa.float32()),
            "landmarks": nested(
                None if self.detector is None else _stack(landmarks, (0, 10)), 10, pa.float32()
            ),
            "emotion_probs": nested(out.probs, len(out.classes), pa.float32()),
            "valence": nested(out.valence, None, pa.float32()),
            "arousal": nested(out.arousal, None, pa.float32()),
        }
        if "features" in self.schema.names:
            dtype = self.schema.field("features").type.value_type.value_type
            columns["features"] = nested(out.features, out.features.shape[1], dtype)
        return pa.table(columns).cast(self.schema)

    def _faces(self, frames: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Boxes, scores and flat landmarks per frame after --min-face and --max-faces."""
        if self.detector is None:  # each image is one face
            boxes = [np.array([[0, 0, f.shape[1], f.shape[0]]], np.float32) for f in frames]
            return (
                boxes,
                [np.ones(1, np.float32)] * len(frames),
                [np.zeros((1, 10), np.float32)] * len(frames),
            )
        boxes, scores, landmarks = [], [], []
        for found in self.detector.detect(frames):
            keep = np.minimum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
            keep = np.flatnonzero(keep >= self.config.min_face)[: self.config.max_faces]
            boxes.append(found.boxes[keep])
            scores.append(found.scores[keep])
            landmarks.append(found.kps[keep].reshape(-1, 10))
        return boxes, scores, landmarks


def _stack(arrays: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty, np.float32)
