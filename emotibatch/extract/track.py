"""Faces linked across the sampled frames of one video into tracks: the `track_id` column.

The rule, applied to all of a video's faces in frame order (one pass per video, so how the video was cut
into segments cannot change the tracks):

- Each distinct frame is one step. Steps count sampled frames, not raw frame indices: pass the video's
  sampled frames (`decode.sample_indices`) as `sampled_frames` so that sampled frames without faces count
  too; without it only frames that have faces are steps.
- A frame's faces are matched to the active tracks by the IoU of the face's box with the track's last box,
  by optimal assignment (maximum total IoU) over the pairs with IoU >= `iou_threshold`; other pairs never
  match. A matched face continues its track, every other face starts a new track.
- A track missed for more than `max_gap` consecutive steps ends and is never matched again.
- Ties are broken by a canonical order of each frame's faces (score descending, then box), so the tracks
  do not depend on the order of rows within a frame.
- Track ids are 0, 1, 2, ... in the order of each track's first row: the same rows give the same ids.

Per frame the cost is O(faces x active tracks); ended tracks are dropped, so a long video stays linear.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_NONE = np.empty(0, np.int64)
_TINY = np.finfo(np.float64).tiny  # union floor: two empty boxes have IoU 0, not 0 / 0


def _as_int_vector(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got {values.dtype} of shape {values.shape}")
    return values.astype(np.int64, copy=False)


def _steps(frames: np.ndarray, sampled_frames: np.ndarray | None) -> np.ndarray:
    """Step of each distinct frame (sorted): its position among the sampled frames."""
    if sampled_frames is None:
        return np.arange(len(frames))
    sampled = _as_int_vector("sampled_frames", sampled_frames)
    if np.any(np.diff(sampled) <= 0):
        raise ValueError("sampled_frames must be strictly increasing")
    steps = np.searchsorted(sampled, frames)
    missing = frames[~np.isin(frames, sampled)]
    if len(missing):
        raise ValueError(f"frame_index {missing[0]} is not one of sampled_frames")
    return steps


def assign_tracks(
    frame_index: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    iou_threshold: float = 0.3,
    max_gap: int = 2,
    sampled_frames: np.ndarray | None = None,
) -> np.ndarray:
    """int64 [M] track ids of one video's faces, by the rule in the module docstring.

    `frame_index` int [M], sorted non-decreasing; `boxes` [M, 4] x1 y1 x2 y2; `scores` [M] detector
    confidences (only used to break ties); `sampled_frames` the video's sampled frame indices, sorted.
    """
    frame_index = _as_int_vector("frame_index", frame_index)
    m = len(frame_index)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (m, 4):
        raise ValueError(f"boxes must have shape ({m}, 4) to match frame_index, got {boxes.shape}")
    if not np.isfinite(boxes).all() or np.any(boxes[:, 2:] < boxes[:, :2]):
        raise ValueError("boxes must be finite with x1 <= x2 and y1 <= y2")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (m,):
            raise ValueError(f"scores must have shape ({m},) to match frame_index, got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores must be finite")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int | np.integer) or max_gap < 0:
        raise ValueError(f"max_gap must be an integer >= 0, got {max_gap!r}")
    unsorted = np.flatnonzero(np.diff(frame_index) < 0)
    if len(unsorted):
        raise ValueError(f"frame_index must be sorted non-decreasing; row {unsorted[0] + 1} goes back")
    if m == 0:
        return np.empty(0, np.int64)
    # Frames stay contiguous (frame_index is the primary key); within a frame the order is canonical.
    keys = [boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0]]
    if scores is not None:
        keys.append(-scores)
    order = np.lexsort([*keys, frame_index])
    x1, y1, x2, y2 = np.ascontiguousarray(boxes[order].T)
    area = (x2 - x1) * (y2 - y1)
    starts = np.flatnonzero(np.concatenate(([True], frame_index[1:] != frame_index[:-1], [True])))
    steps = _steps(frame_index[starts[:-1]], sampled_frames)
    labels = np.empty(m, np.int64)  # in canonical order until the end
    last_row = np.empty(m, np.int64)  # by track id: canonical row of its last face
    last_step = np.empty(m, np.int64)  # by track id: step of its last face
    active = np.empty(0, np.int64)  # ids of the tracks that can still match, in order of creation
    created = 0
    for lo, hi, step in zip(starts[:-1].tolist(), starts[1:].tolist(), steps.tolist()):
        active = active[last_step[active] >= step - max_gap - 1]
        matched = _NONE
        if len(active):
            # IoU of each face with each track's last box; pairs below the threshold count as no match.
            t = last_row[active]
            iw = np.minimum(x2[lo:hi, None], x2[t]) - np.maximum(x1[lo:hi, None], x1[t])
            ih = np.minimum(y2[lo:hi, None], y2[t]) - np.maximum(y1[lo:hi, None], y1[t])
            inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
            iou = inter / np.maximum(area[lo:hi, None] + area[t] - inter, _TINY)
            iou[iou < iou_threshold] = 0.0
            r, c = linear_sum_assignment(iou, maximize=True)
            ok = iou[r, c] > 0
            matched, ids = r[ok], active[c[ok]]
            labels[lo + matched] = ids
            last_row[ids] = lo + matched
            last_step[ids] = step
        if len(matched) < hi - lo:
            is_new = np.ones(hi - lo, bool)
            is_new[matched] = False
            new_rows = lo + np.flatnonzero(is_new)
            ids = np.arange(created, created + len(new_rows))
            created += len(ids)
            labels[new_rows] = ids
            last_row[ids] = new_rows
            last_step[ids] = step
            active = np.concatenate((active, ids))

    # Back to row order, renumbered by first row (the canonical order within a frame need not follow it).
    track_of_row = np.empty(m, np.int64)
    track_of_row[order] = labels
    _, first_row = np.unique(track_of_row, return_index=True)
    renumber = np.empty(created, np.int64)
    renumber[np.argsort(first_row)] = np.arange(created)
    return renumber[track_of_row]


def count_tracks(track_ids: np.ndarray) -> int:
    """Number of distinct tracks among one video's `track_id`s."""
    return int(np.unique(np.asarray(track_ids)).size)
