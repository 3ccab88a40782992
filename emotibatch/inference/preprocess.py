"""The one crop, resize and normalisation rule of the project, identical to the reference libraries.

- Crops (`crop_faces`): EmotiEffLib's tutorials cut `frame[y1:y2, x1:x2]` from detector boxes, the box
  coordinates truncated to int and clipped to the frame, no margin, no alignment. This is the only crop
  rule here; `margin` optionally grows the box by a fraction of its width and height on each side first.
- Emotion input: `cv2.resize(crop, (S, S))` (INTER_LINEAR, aspect not kept) of the uint8 RGB crop, then
  `(x / 255 - mean) / std` per channel. The reference computes that in float64 and casts to float32; since
  the input is uint8, the result is a per-channel function of the byte, so it is tabulated once
  (`normalisation_lut`) in float64 and looked up: bit-identical to the reference. Where the lookup runs
  (on the host on the CPU, in the graph on CUDA, so that only uint8 pixels travel) is `runtime`'s choice.
- Detector input (insightface SCRFD): keep the aspect ratio, resize to fit the input size, paste at the
  top-left of a zero canvas (`letterbox`), then `(x - 127.5) / 128` (exact in float32, same table mechanism).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def check_images(images: Sequence[np.ndarray], what: str) -> None:
    """Raise ValueError naming the first image that is not an RGB uint8 HxWx3 array of non-zero size."""
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray):
            raise ValueError(
                f"{what} {i}: expected a numpy array (RGB uint8 HxWx3), got {type(img).__name__}"
            )
        problem = None
        if img.dtype != np.uint8:
            problem = f"dtype {img.dtype}; convert with .astype(np.uint8) after scaling to 0..255"
        elif img.ndim != 3 or img.shape[2] != 3:
            problem = f"shape {img.shape}; grayscale or 4-channel images need cv2.cvtColor to RGB first"
        elif img.shape[0] == 0 or img.shape[1] == 0:
            problem = f"zero-size shape {img.shape}"
        if problem:
            raise ValueError(f"{what} {i}: expected an RGB uint8 HxWx3 array, got {problem}")


def crop_faces(frame: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> list[np.ndarray]:
    """Cut face crops from `frame` (HxWx3) for `boxes` [K, 4] (x1, y1, x2, y2 in frame pixels).

    The one crop rule of the project (see module docstring). A box that falls outside the frame, or
    truncates to nothing, gives a 1x1 crop of its nearest pixel rather than an empty array, so that one
    degenerate box never breaks a batch.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if margin:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        boxes = boxes + np.stack([-w, -h, w, h], axis=1) * margin
    height, width = frame.shape[:2]
    ints = boxes.astype(np.int64)  # truncation toward zero, like int() in the reference
    x1 = np.clip(ints[:, 0], 0, width - 1)
    y1 = np.clip(ints[:, 1], 0, height - 1)
    x2 = np.maximum(np.clip(ints[:, 2], 0, width), x1 + 1)
    y2 = np.maximum(np.clip(ints[:, 3], 0, height), y1 + 1)
    return [frame[a:b, c:d] for a, b, c, d in zip(y1, y2, x1, x2)]


def normalisation_lut(mean: Sequence[float], std: Sequence[float], scale: float = 255.0) -> np.ndarray:
    """Table [3, 256] float32 of `(v / scale - mean[c]) / std[c]`, computed in float64 like the reference."""
    v = np.arange(256, dtype=np.float64) / scale
    return np.stack([(v - m) / s for m, s in zip(mean, std)]).astype(np.float32)


# SCRFD's blob, the same for every SCRFD model (insightface fixes it, not the model file): (v - 127.5) / 128
# per channel. The one place this rule lives: detector cards carry no mean or std (docs/models.md, SCRFD).
SCRFD_LUT = normalisation_lut((127.5,) * 3, (128.0,) * 3, scale=1.0)


def resize_crop(crop: np.ndarray, out: np.ndarray) -> None:
    """Write `crop` resized to `out`'s S x S (cv2 INTER_LINEAR, aspect not kept) into `out` [S, S, 3]."""
    out[...] = cv2.resize(crop, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)


def letterbox(frame: np.ndarray, input_size: tuple[int, int], out: np.ndarray) -> float:
    """Resize `frame` into the zero canvas `out` [H, W, 3] keeping its aspect; return the scale used.

    Integer arithmetic and the scale are insightface SCRFD's exactly (`det_scale = new_h / h`).
    """
    in_w, in_h = input_size
    h, w = frame.shape[:2]
    im_ratio = float(h) / w
    if im_ratio > float(in_h) / in_w:
        new_h = in_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = in_w
        new_h = int(new_w * im_ratio)
    out[...] = 0
    out[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h))
    return float(new_h) / h
