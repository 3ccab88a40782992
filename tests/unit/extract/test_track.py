"""assign_tracks: the linking rule, its determinism and its checks on the rows it is given."""

from __future__ import annotations

import numpy as np
import pytest

from emotibatch.extract.track import assign_tracks, count_tracks


def box(x: float, y: float = 0.0, side: float = 100.0) -> list[float]:
    return [x, y, x + side, y + side]


def rows(frames: dict[int, list[list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """(frame_index, boxes) of faces given per frame, in detector order."""
    frame_index = np.array([f for f, faces in frames.items() for _ in faces], np.int64)
    boxes = np.array([b for faces in frames.values() for b in faces], np.float64).reshape(-1, 4)
    return frame_index, boxes


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(pairs) == count_tracks(a) == count_tracks(b)


def numbered_by_first_row(ids: np.ndarray) -> bool:
    _, first = np.unique(ids, return_index=True)
    return np.array_equal(ids[np.sort(first)], np.arange(len(first)))


def random_scene(seed: int, frames: int = 300, faces: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces that appear, random-walk (often past each other) and vanish; rows sorted by frame, then score."""
    rng = np.random.default_rng(seed)
    per_frame: list[tuple[int, float, list[float]]] = []
    for _ in range(faces):
        start = int(rng.integers(0, frames - 10))
        stop = int(rng.integers(start + 1, frames))
        xy = rng.uniform(0, 400, 2) + np.cumsum(rng.normal(0, 6, (stop - start, 2)), axis=0)
        side = rng.uniform(60, 120)
        for f, (x, y) in enumerate(xy, start):
            if rng.random() > 0.1:  # missed detections leave gaps
                per_frame.append((f, -rng.random(), box(x, y, side)))
    per_frame.sort(key=lambda r: (r[0], r[1]))
    frame_index = np.array([r[0] for r in per_frame], np.int64)
    scores = -np.array([r[1] for r in per_frame])
    return frame_index, np.array([r[2] for r in per_frame]), scores


def test_two_faces_moving_smoothly_keep_their_ids() -> None:
    # Detector order swaps each frame (scores vary); the ids follow the faces, not the order.
    frames = {f: [box(5 * f), box(500 - 5 * f)][:: 1 if f % 2 else -1] for f in range(20)}
    frame_index, boxes = rows(frames)
    ids = assign_tracks(frame_index, boxes)
    left = boxes[:, 0] < 250
    assert set(ids[left]) == {1} and set(ids[~left]) == {0}  # frame 0 lists the right face first
    assert count_tracks(ids) == 2


def test_crossing_faces_keep_their_identities() -> None:
    # A moves right, B moves left 30 px lower; at the crossing each still overlaps its own last box most.
    frames = {t: [box(10 * t), box(200 - 10 * t, 30)] for t in range(21)}
    frame_index, boxes = rows(frames)
    ids = assign_tracks(frame_index, boxes)
    np.testing.assert_array_equal(ids, np.tile([0, 1], 21))


def test_assignment_is_optimal_not_greedy() -> None:
    # Face 0 overlaps track 1 best (0.60 vs 0.48), but face 1 can only continue track 1 (0.50; 0.04 with
    # track 0): the best total keeps both tracks, greedy would end track 0 and start a new one.
    frame_index, boxes = rows({0: [box(0), box(60)], 1: [box(35), box(93)]})
    np.testing.assert_array_equal(assign_tracks(frame_index, boxes), [0, 1, 0, 1])


def test_a_match_needs_iou_threshold() -> None:
    frame_index, boxes = rows({0: [box(0)], 1: [box(60)]})  # IoU 40 / 160 = 0.25
    np.testing.assert_array_equal(assign_tracks(frame_index, boxes), [0, 1])
    np.testing.assert_array_equal(assign_tracks(frame_index, boxes, iou_threshold=0.2), [0, 0])


def test_pairs_below_the_threshold_do_not_outbid_a_valid_match() -> None:
    # Face 0 continues track 0 (IoU 0.32); the crossed pairs (0.29 each) sum to more but are not matches.
    frame_index, boxes = rows({0: [box(0), box(107)], 1: [box(52), box(-55)]})
    np.testing.assert_array_equal(assign_tracks(frame_index, boxes), [0, 1, 0, 2])


def test_a_face_leaving_and_another_appearing_elsewhere_gets_a_new_id() -> None:
    frames = {f: [box(2 * f)] for f in range(5)} | {f: [box(800, 600)] for f in range(5, 10)}
    ids = assign_tracks(*rows(frames))
    np.testing.assert_array_equal(ids, [0] * 5 + [1] * 5)


@pytest.mark.parametrize(("missed", "same_track"), [(0, True), (1, True), (2, True), (3, False)])
def test_a_gap_up_to_max_gap_keeps_the_id(missed: int, same_track: bool) -> None:
    # Sampled every 10th frame; the face is missed on `missed` sampled frames, which have no rows at all.
    sampled = np.arange(0, 200, 10)
    seen = [0, 10, 20, 30 + 10 * missed]
    frame_index, boxes = rows({f: [box(0)] for f in seen})
    ids = assign_tracks(frame_index, boxes, max_gap=2, sampled_frames=sampled)
    assert count_tracks(ids) == (1 if same_track else 2)


def test_steps_are_sampled_frames_not_raw_indices() -> None:
    frame_index, boxes = rows({0: [box(0)], 15: [box(0)]})
    sampled = np.array([0, 5, 10, 15])
    assert count_tracks(assign_tracks(frame_index, boxes, max_gap=1, sampled_frames=sampled)) == 2
    assert count_tracks(assign_tracks(frame_index, boxes, max_gap=2, sampled_frames=sampled)) == 1
    # Without sampled_frames only frames with faces are steps: 0 and 15 are consecutive.
    assert count_tracks(assign_tracks(frame_index, boxes, max_gap=0)) == 1


def test_an_ended_track_is_not_matched_again() -> None:
    frame_index, boxes = rows({0: [box(0)], 4: [box(0)], 5: [box(0)]})
    ids = assign_tracks(frame_index, boxes, max_gap=2, sampled_frames=np.arange(6))
    np.testing.assert_array_equal(ids, [0, 1, 1])


def test_ids_are_numbered_by_first_row() -> None:
    # Scores disagree with the row order in frame 0, so the canonical order differs from the rows.
    frame_index, boxes = rows({0: [box(0), box(300)], 1: [box(300), box(0)], 2: [box(600), box(0)]})
    scores = np.array([0.5, 0.9, 0.9, 0.9, 0.9, 0.5])
    ids = assign_tracks(frame_index, boxes, scores)
    np.testing.assert_array_equal(ids, [0, 1, 1, 0, 2, 0])
    frame_index, boxes, scores = random_scene(seed=1)
    assert numbered_by_first_row(assign_tracks(frame_index, boxes, scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_rows_same_ids_and_order_within_a_frame_does_not_matter(seed: int) -> None:
    frame_index, boxes, scores = random_scene(seed)
    ids = assign_tracks(frame_index, boxes, scores)
    assert 12 <= count_tracks(ids) < len(ids)
    np.testing.assert_array_equal(assign_tracks(frame_index, boxes, scores), ids)
    shuffled = np.lexsort((np.random.default_rng(seed).random(len(ids)), frame_index))
    permuted = assign_tracks(frame_index[shuffled], boxes[shuffled], scores[shuffled])
    assert same_partition(permuted, ids[shuffled])
    assert numbered_by_first_row(permuted)


@pytest.mark.parametrize("with_scores", [True, False])
def test_a_tie_goes_to_the_same_face_whatever_the_row_order(with_scores: bool) -> None:
    # Both faces overlap the track equally (IoU 0.82) and score the same: one continues it, one is new.
    frame_index, boxes = rows({0: [box(100)], 1: [box(90), box(110)]})
    scores = np.full(3, 0.8) if with_scores else None
    ids = assign_tracks(frame_index, boxes, scores)
    swapped = assign_tracks(frame_index, boxes[[0, 2, 1]], scores)
    assert ids[0] == swapped[0] == 0 and sorted(ids[1:]) == [0, 1]
    assert ids[1] == swapped[2]


def test_no_faces_give_an_empty_int64_id_array_and_no_tracks() -> None:
    ids = assign_tracks(np.empty(0, np.int64), np.empty((0, 4)), np.empty(0))
    assert ids.dtype == np.int64 and ids.shape == (0,)
    assert count_tracks(ids) == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"frame_index": np.zeros((3, 1), np.int64)}, "1-D integer"),
        ({"frame_index": np.zeros(3)}, "1-D integer"),
        ({"frame_index": np.array([0, 2, 1])}, "sorted non-decreasing; row 2"),
        ({"boxes": np.zeros((3, 3))}, r"boxes must have shape \(3, 4\)"),
        ({"boxes": np.array([box(0), box(0), [0, 0, np.nan, 1]])}, "finite"),
        ({"boxes": np.array([box(0), box(0), [10, 0, 5, 10]])}, "x1 <= x2"),
        ({"scores": np.ones(2)}, r"scores must have shape \(3,\)"),
        ({"scores": np.array([1, np.inf, 1])}, "scores must be finite"),
        ({"iou_threshold": 0.0}, "iou_threshold"),
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"max_gap": -1}, "max_gap"),
        ({"max_gap": 1.5}, "max_gap"),
        ({"sampled_frames": np.array([0, 2, 1])}, "strictly increasing"),
        ({"sampled_frames": np.array([0, 2])}, "frame_index 1 is not one of sampled_frames"),
    ],
)
def test_bad_inputs_are_refused(change: dict, match: str) -> None:
    args = {"frame_index": np.array([0, 1, 2]), "boxes": np.array([box(0)] * 3)} | change
    with pytest.raises(ValueError, match=match):
        assign_tracks(**args)


def test_ten_faces_circling_over_ten_thousand_frames_keep_their_ids() -> None:
    # 100k faces over 10k frames, 10 per frame circling apart; a second or so, but only the result is checked.
    grid = np.stack([np.arange(10) % 5 * 300.0, np.arange(10) // 5 * 300.0], axis=1)
    phase = np.arange(10_000)[:, None] / 50 + np.arange(10)
    xy = (grid + 50 * np.stack([np.cos(phase), np.sin(phase)], axis=2)).reshape(-1, 2)
    scores = np.random.default_rng(0).random(100_000)
    ids = assign_tracks(np.repeat(np.arange(10_000), 10), np.hstack([xy, xy + 80]), scores)
    np.testing.assert_array_equal(ids, np.tile(np.arange(10), 10_000))
