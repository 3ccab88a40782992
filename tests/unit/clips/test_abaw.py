"""ABAW annotations, dense filling, smoothing, the challenge's scores and files, on hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotibatch.clips import abaw
from emotibatch.inference.registry import CLASSES_8


def write(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


EXPR_HEADER = ",".join(abaw.EXPR_CLASSES)
AU_HEADER = ",".join(abaw.AU_NAMES)


def test_annotation_folders_read_as_they_ship_with_invalid_values_nan(tmp_path: Path) -> None:
    expr = tmp_path / "EXPR_Set" / "Train_Set"
    write(expr / "video1.txt", EXPR_HEADER, ["0", "7", "-1", "3"])
    write(expr / "video10_left.txt", EXPR_HEADER, ["4"])
    got = abaw.read_annotations(expr, "abaw-expr")
    assert sorted(got.videos) == ["video1", "video10_left"]
    np.testing.assert_array_equal(got.videos["video1"][:, 0], [0, 7, np.nan, 3])
    va = write(tmp_path / "VA_Set" / "Train_Set" / "v.txt", "valence,arousal", ["0.5,-0.25", "-5,-5"])
    np.testing.assert_array_equal(
        abaw.read_annotations(va.parent, "abaw-va").videos["v"], [[0.5, -0.25], [np.nan] * 2]
    )
    au = write(
        tmp_path / "AU_Set" / "Train_Set" / "v.txt", AU_HEADER, [",".join(["1"] * 12), ",".join(["-1"] * 12)]
    )
    values = abaw.read_annotations(au.parent, "abaw-au").videos["v"]
    assert values.shape == (2, 12) and values[0].sum() == 12 and np.isnan(values[1]).all()


def test_bad_annotations_name_the_file_line_and_fix(tmp_path: Path) -> None:
    root = tmp_path / "EXPR_Set"
    write(root / "Train_Set" / "a.txt", EXPR_HEADER, ["0"])
    with pytest.raises(ValueError, match=r"EXPR_Set: no <video>.txt .*Train_Set: give one of them"):
        abaw.read_annotations(root, "abaw-expr")
    with pytest.raises(ValueError, match=r"a.txt: expected the abaw-va header valence,arousal"):
        abaw.read_annotations(root / "Train_Set", "abaw-va")
    write(root / "Train_Set" / "b.txt", EXPR_HEADER, ["0", "8"])
    with pytest.raises(ValueError, match=r"b.txt:3: abaw-expr values out of range"):
        abaw.read_annotations(root / "Train_Set", "abaw-expr")
    va = write(tmp_path / "va" / "v.txt", "valence,arousal", ["1.5,0"])
    with pytest.raises(ValueError, match=r"v.txt:2: abaw-va values out of range \(-5 marks invalid\)"):
        abaw.read_annotations(va.parent, "abaw-va")


def test_mtl_csv_with_sparse_images_and_both_au_layouts(tmp_path: Path) -> None:
    path = tmp_path / "training_set_annotations.txt"
    path.write_text(
        "image,valence,arousal,expression,aus\n"
        "v1/00001.jpg,0.1,0.2,3,1,0,0,0,0,0,0,0,0,0,0,1\n"
        "v1/00004.jpg,-5,-5,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1\n"
        'v2/00002.jpg,0.3,0.4,5,"0,1,0,0,0,0,0,0,0,0,0,0"\n'
    )
    expr = abaw.read_annotations(path, "abaw-expr")
    assert expr.sparse and expr.videos["v1"].shape == (4, 1)
    np.testing.assert_array_equal(expr.videos["v1"][:, 0], [3, np.nan, np.nan, np.nan])
    au = abaw.read_annotations(path, "abaw-au")
    assert au.videos["v2"][1, 1] == 1 and np.isnan(au.videos["v2"][0]).all()
    np.testing.assert_array_equal(abaw.read_annotations(path, "abaw-va").videos["v2"][1], [0.3, 0.4])


def test_left_right_names_join_their_own_folder_and_line_counts_are_reported_not_shifted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "EXPR"
    write(root / "video10_left.txt", EXPR_HEADER, ["1"] * 6)  # one line more than the 5 frames
    write(root / "video10_right.txt", EXPR_HEADER, ["2"] * 4)  # one line fewer than the 5 frames
    write(root / "video11.txt", EXPR_HEADER, ["2"] * 3)
    annotations = abaw.read_annotations(root, "abaw-expr")
    report = abaw.match_videos(annotations, {"video10_left": 5, "sub/video10_right": 5, "video10": 9})
    assert report.matched == ("video10_left", "sub/video10_right")
    assert report.annotations_without_video == ("video11",)
    assert report.lines_without_frame == {"video10_left": 1}
    assert report.frames_without_line == {"video10_right": 1}
    assert "lines without a frame in 1 videos (video10_left: 1)" in str(report)


def test_fill_interpolates_with_the_nearer_frame_weighing_more_and_holds_the_ends() -> None:
    frames = np.array([2, 6])
    scores = np.array([[0.0, 1.0], [4.0, -1.0]])
    got = abaw.fill(9, frames, scores, prior=np.array([9.0, 9.0]))
    # frame 3 is 1 from frame 2 and 3 from frame 6: 3/4 of frame 2's value + 1/4 of frame 6's.
    np.testing.assert_allclose(got[:, 0], [0, 0, 0, 1, 2, 3, 4, 4, 4])
    np.testing.assert_allclose(got[3, 1], 0.75 * 1 + 0.25 * -1)
    # Unsorted input and a face past the last line change nothing.
    again = abaw.fill(9, np.array([6, 2, 20]), np.array([[4.0, -1.0], [0.0, 1.0], [7.0, 7.0]]), np.zeros(2))
    np.testing.assert_allclose(again, got)


def test_a_video_without_faces_gets_the_prior() -> None:
    got = abaw.fill(3, np.zeros(0, int), np.zeros((0, 2)), prior=np.array([0.25, 0.75]))
    np.testing.assert_array_equal(got, [[0.25, 0.75]] * 3)


def test_smooth_is_a_centred_mean_cut_at_the_ends() -> None:
    x = np.array([[0.0], [3.0], [6.0], [0.0], [9.0]])
    np.testing.assert_allclose(abaw.smooth(x, 1)[:, 0], [1.5, 3, 3, 5, 4.5])
    np.testing.assert_allclose(abaw.smooth(x, 10)[:, 0], [3.6] * 5)
    np.testing.assert_array_equal(abaw.smooth(x, 0), x)


def test_scores_against_hand_computed_values() -> None:
    truth = np.array([[0], [0], [1], [np.nan], [7]], float)
    predicted = np.array([[0], [1], [1], [2], [7]], float)
    # class 0: P 1, R 1/2 -> 2/3; class 1: P 1/2, R 1 -> 2/3; class 7: 1; five other classes 0.
    assert abaw.score("abaw-expr", truth, predicted)["score"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 8)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])
    # means 2 and 8/3; population variances 2/3 and 26/9; covariance 4/3.
    assert abaw.ccc(x, y) == pytest.approx(2 * (4 / 3) / (2 / 3 + 26 / 9 + (2 / 3) ** 2))
    va = abaw.score("abaw-va", np.stack([y, y], 1), np.stack([x, y], 1))
    assert va["ccc_arousal"] == pytest.approx(1) and va["score"] == pytest.approx((abaw.ccc(x, y) + 1) / 2)
    au_truth, au_pred = np.zeros((4, 12)), np.zeros((4, 12))
    au_truth[:2, 0], au_pred[1:3, 0] = 1, 1  # AU1: P 1/2, R 1/2 -> F1 1/2; the other AUs have no positive: 0
    assert abaw.score("abaw-au", au_truth, au_pred)["score"] == pytest.approx(0.5 / 12)


def test_decide_uses_argmax_and_per_au_thresholds() -> None:
    np.testing.assert_array_equal(abaw.decide("abaw-expr", np.array([[0.1, 0.9] + [0] * 6])), [[1]])
    thresholds = np.array([0.3] + [0.9] * 11)
    got = abaw.decide("abaw-au", np.full((1, 12), 0.5), thresholds)
    np.testing.assert_array_equal(got[0], [1] + [0] * 11)


def test_zero_shot_maps_affectnet_order_to_abaw_classes() -> None:
    probs = np.eye(8)  # one face per AffectNet class
    mapped = abaw.zero_shot(CLASSES_8, probs)
    names = [abaw.EXPR_CLASSES[j] for j in mapped.argmax(1)]
    assert names == ["Anger", "Other", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"]
    with pytest.raises(ValueError, match="8-class AffectNet model"):
        abaw.zero_shot(CLASSES_8[:7], probs[:, :7])


@pytest.mark.parametrize("task", ["abaw-expr", "abaw-va", "abaw-au"])
def test_per_video_files_round_trip_through_the_reader(tmp_path: Path, task: str) -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1 if task == "abaw-va" else 0, 1, (7, abaw.width(task)))
    decided = abaw.decide(task, scores)
    path = tmp_path / f"{task}" / "video3_right.txt"
    path.parent.mkdir()
    path.write_text(abaw.video_file(task, decided))
    back = abaw.read_annotations(path.parent, task).videos["video3_right"]
    np.testing.assert_allclose(back, decided, atol=1e-6)  # VA is written with six decimals


def test_single_file_follows_the_sample_order_and_names_missing_rows(tmp_path: Path) -> None:
    sample = tmp_path / "sample.txt"
    sample.write_text("image_location,valence,arousal\nb/00002.jpg,0,0\na/00001.jpg,0,0\nb/00001.jpg,0,0\n")
    rows = abaw.sample_rows(sample)
    decided = {"a": np.array([[0.5, 0.5]]), "b": np.array([[0.1, 0.2], [0.3, 0.4]])}
    text = abaw.single_file("abaw-va", rows, decided)
    assert text.splitlines()[1:] == [
        "b/00002.jpg,0.300000,0.400000",
        "a/00001.jpg,0.500000,0.500000",
        "b/00001.jpg,0.100000,0.200000",
    ]
    out = tmp_path / "out.txt"
    out.write_text(text)
    back = abaw.read_annotations(out, "abaw-va")
    np.testing.assert_allclose(back.videos["b"], decided["b"])
    with pytest.raises(
        ValueError, match=r"2 rows of the sample have no prediction \(e.g. b/00002.jpg, b/00001.jpg\)"
    ):
        abaw.single_file("abaw-va", rows, {"a": decided["a"]})


def test_two_videos_of_one_annotation_name_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "v1.txt", EXPR_HEADER, ["0"])
    annotations = abaw.read_annotations(tmp_path, "abaw-expr")
    with pytest.raises(ValueError, match=r"two videos named v1 \(train/v1, val/v1\)"):
        abaw.match_videos(annotations, {"train/v1": 1, "val/v1": 1, "other/v2": 1})
