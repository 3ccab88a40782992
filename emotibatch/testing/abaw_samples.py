"""A generated Aff-Wild2-like corpus (extract output and expression annotations) for tests and benchmarks.

The subject of each video is track 0: its features are its frame's class mean plus N(0, 1) noise, its
probabilities peak on its class in AffectNet order (so the zero-shot map gets it right); a second,
shorter track of noise covers the first frames, so the longest-track rule has something to reject.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from emotibatch import schema
from emotibatch.clips import abaw
from emotibatch.extract.output import Output
from emotibatch.inference.registry import CLASSES_8


def class_means(dim: int) -> np.ndarray:
    """[8, dim] feature means per ABAW class (fixed: a test's training and validation videos share them)."""
    return np.random.default_rng(99).normal(0, 2, (8, dim))


def _vectors(x: np.ndarray, dtype: str) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(dtype).reshape(-1)), x.shape[1])


def write_abaw_extract(
    root: str | Path,
    videos: Mapping[str, tuple[np.ndarray, ...]],
    frame_count: int,
    *,
    dim: int = 12,
    features_dtype: schema.FeaturesDtype = "float16",
    seed: int = 0,
) -> None:
    """An extract output with one faces file per video, written one video at a time. `videos` maps a
    video id to (its class per frame, the frames where its subject's face is seen) and, for an MTL model,
    a third array: the model's valence and arousal per frame (null otherwise)."""
    rng = np.random.default_rng(seed)
    means = class_means(dim)
    provenance = schema.Provenance(CLASSES_8, "enet_b0_8_best_vgaf", None, "det_10g", None)
    faces_schema = provenance.on(schema.faces_schema(8, dim, features_dtype))
    out = Output(str(root))
    for video, (labels, frames, *va) in videos.items():
        extra = frames[:3]
        frame_index = np.concatenate([frames, extra])
        track = np.concatenate([np.zeros(len(frames), int), np.ones(len(extra), int)])
        y = labels[frames].astype(int)
        n = len(track)
        x = np.concatenate([means[y], np.zeros((len(extra), dim))]) + rng.normal(0, 1, (n, dim))
        probs = np.full((n, 8), 0.02, np.float32)
        probs[np.arange(len(frames)), np.array(abaw.ZERO_SHOT_ORDER)[y]] = 0.86
        columns = {
            "video_id": [video] * n,
            "source_uri": [video] * n,
            "frame_index": frame_index,
            "timestamp_s": frame_index / 30,
            "face_index": track.astype(np.int32),
            "track_id": track,
            "bbox": _vectors(np.zeros((n, 4)), "float32"),
            "det_score": np.ones(n, np.float32),
            "landmarks": _vectors(np.zeros((n, 10)), "float32"),
            "emotion": ["Neutral"] * n,
            "emotion_probs": _vectors(probs, "float32"),
        }
        for j, name in enumerate(abaw.VA_NAMES):
            values = np.concatenate([va[0][frames, j], np.zeros(len(extra))]) if va else None
            columns[name] = pa.nulls(n, pa.float32()) if values is None else pa.array(values, pa.float32())
        if features_dtype != "none":
            columns["features"] = _vectors(x, features_dtype)
        faces = pa.table({name: columns[name] for name in faces_schema.names}).cast(faces_schema)
        row = {
            "video_id": video,
            "source_uri": video,
            "status": "ok",
            "fps": 30.0,
            "frame_count": frame_count,
        }
        row |= {"frames_sampled": frame_count, "faces": n, "tracks": 2 if n else 0, "run_id": "r"}
        out.commit_video(video, faces if n else None, pa.Table.from_pylist([row], schema.VIDEOS_BASE))


def write_expr_annotations(folder: str | Path, labels: Mapping[str, np.ndarray]) -> None:
    """`<video>.txt` per video in EXPR_Set's format (NaN written as -1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for video, values in labels.items():
        lines = ["-1" if np.isnan(v) else str(int(v)) for v in np.asarray(values, float)]
        (folder / f"{video}.txt").write_text("\n".join([",".join(abaw.EXPR_CLASSES), *lines]) + "\n")
