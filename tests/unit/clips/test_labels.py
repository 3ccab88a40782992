"""Each corpus's label format from small fixture files, and the join with video ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotibatch.clips.labels import JoinReport, LabelSet, join, read_labels


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def afew(tmp_path: Path) -> Path:
    for clip in ("Train/Happy/001.avi", "Train/Sad/002.avi", "Val/Happy/003.avi", "Val/Fear/004.avi"):
        (tmp_path / clip).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / clip).write_bytes(b"")
    (tmp_path / "Val/README.txt").write_text("not a clip")
    return tmp_path


def test_afew_labels_come_from_the_class_folders(afew: Path) -> None:
    labels = read_labels(afew, "afew")
    assert labels.labels == {
        "Train/Happy/001.avi": "Happy",
        "Train/Sad/002.avi": "Sad",
        "Val/Fear/004.avi": "Fear",
        "Val/Happy/003.avi": "Happy",
    }
    assert labels.classes == ("Fear", "Happy", "Sad")  # AFEW's order, present classes only
    assert read_labels(afew / "Val", "afew").labels == {"Fear/004.avi": "Fear", "Happy/003.avi": "Happy"}


def test_afew_ids_match_by_path_or_by_file_name(afew: Path) -> None:
    # The extract names a clip by its stem, or by its path below the common input root where stems collide.
    found, report = join(["001", "Val/Happy/003", "Sad/002", "999"], read_labels(afew, "afew"))
    assert found == {"001": "Happy", "Val/Happy/003": "Happy", "Sad/002": "Sad"}
    assert report == JoinReport(
        matched=3, videos_without_label=("999",), labels_without_video=("Val/Fear/004.avi",), ambiguous=()
    )


def test_a_file_name_in_several_folders_is_reported_as_ambiguous_not_guessed(tmp_path: Path) -> None:
    labels = LabelSet({"Train/Happy/001.avi": "Happy", "Val/Sad/001.avi": "Sad"}, "classification", (), "x")
    found, report = join(["001", "Val/Sad/001"], labels)
    assert found == {"Val/Sad/001": "Sad"}
    assert report.ambiguous == ("001",)
    assert report.labels_without_video == ("Train/Happy/001.avi",)


def test_the_longest_shared_path_tail_wins() -> None:
    # Labels read from Train/ (AFEW's layout) against an extract that named videos by path below the corpus.
    labels = LabelSet({"Happy/001.avi": "Happy", "Sad/002.avi": "Sad"}, "classification", (), "Train")
    found, report = join(["Train/Happy/001", "Val/Sad/001", "Test/002"], labels)
    assert found == {"Train/Happy/001": "Happy", "Test/002": "Sad"}  # 002: its file name is unique
    assert report.videos_without_label == ("Val/Sad/001",)  # Happy/001 is Train/Happy/001's, by 2 parts
    assert report.ambiguous == () and report.labels_without_video == ()


def test_one_id_with_two_extensions_and_two_labels_is_ambiguous() -> None:
    labels = LabelSet(
        {"a.avi": "Happy", "a.mp4": "Sad", "b.avi": "Sad", "b.mp4": "Sad"}, "classification", (), "x"
    )
    found, report = join(["a", "b"], labels)
    assert found == {"b": "Sad"}  # the same label twice is no conflict
    assert report.ambiguous == ("a",)
    assert report.labels_without_video == ("a.avi", "a.mp4")


def test_vgaf_label_numbers_map_to_classes_and_bad_lines_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "Val_labels.txt", "Vid_name Label\n10_1 1\n10_2.mp4 2\n\n11_7 3\n")
    labels = read_labels(path, "vgaf")
    assert labels.labels == {"10_1": "Positive", "10_2.mp4": "Neutral", "11_7": "Negative"}
    assert labels.classes == ("Positive", "Neutral", "Negative")
    found, report = join(["10_1", "10_2", "11_7"], labels)
    assert found == {"10_1": "Positive", "10_2": "Neutral", "11_7": "Negative"} and report.matched == 3
    with pytest.raises(ValueError, match=r"Train_labels.txt:3: expected `videoname label`"):
        read_labels(write(tmp_path / "Train_labels.txt", "Vid_name Label\n1_1 1\n1_2 4\n"), "vgaf")


@pytest.mark.parametrize(
    "text",
    [
        "ID\tEngagement\nsubject_1_Vid_2\t0.33\nsubject_3_Vid_1\t1\n",
        "subject_1_Vid_2,0.33\nsubject_3_Vid_1,1.0\n",
        "subject_1_Vid_2 0.33\nsubject_3_Vid_1 1\n",
    ],
    ids=["tabs-with-header", "commas", "spaces"],
)
def test_engagewild_labels_detect_the_separator(tmp_path: Path, text: str) -> None:
    labels = read_labels(write(tmp_path / "Engagement_Labels_Engagement.csv", text), "engagewild")
    assert labels.labels == {"subject_1_Vid_2": 0.33, "subject_3_Vid_1": 1.0}
    assert labels.kind == "regression"


def test_engagewild_levels_outside_0_1_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"labels.csv:1: .*level in \[0, 1\]"):
        read_labels(write(tmp_path / "labels.csv", "subject_1_Vid_2,3\n"), "engagewild")


def test_daisee_all_labels_with_spaces_in_the_header(tmp_path: Path) -> None:
    path = write(
        tmp_path / "AllLabels.csv",
        "ClipID,Boredom,Engagement,Confusion,Frustration \n1100011002.avi,0,2,0,1\n1100011003.avi,1,3,0,0\n",
    )
    engagement = read_labels(path, "daisee")
    assert engagement.labels == {"1100011002.avi": "2", "1100011003.avi": "3"}
    assert engagement.classes == ("2", "3")
    assert read_labels(path, "daisee", target="frustration").labels == {
        "1100011002.avi": "1",
        "1100011003.avi": "0",
    }
    found, report = join(["1100011002", "1100011003"], engagement)
    assert found == {"1100011002": "2", "1100011003": "3"} and report.matched == 2


def test_generic_csv_labels_refuse_conflicts_and_missing_columns(tmp_path: Path) -> None:
    labels = read_labels(write(tmp_path / "l.csv", "video_id,label\nb,cat\na,dog\n"), "generic")
    assert labels.labels == {"b": "cat", "a": "dog"} and labels.classes == ("cat", "dog")
    with pytest.raises(ValueError, match="'a' has two labels"):
        read_labels(write(tmp_path / "c.csv", "video_id,label\na,dog\na,cat\n"), "generic")
    with pytest.raises(ValueError, match="video_id and label"):
        read_labels(write(tmp_path / "d.csv", "clip,label\na,dog\n"), "generic")


def test_read_labels_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task must be one of"):
        read_labels(tmp_path, "abaw")
    with pytest.raises(ValueError, match="--target applies to DAiSEE"):
        read_labels(tmp_path, "vgaf", target="boredom")
    with pytest.raises(ValueError, match="no such labels file"):
        read_labels(tmp_path / "missing.txt", "vgaf")
    with pytest.raises(ValueError, match="no clips in class folders"):
        read_labels(tmp_path, "afew")


def test_the_join_report_says_counts_and_examples() -> None:
    labels = LabelSet({f"c{i}": "x" for i in range(8)}, "classification", ("x",), "labels.csv")
    _, report = join(["c0", "v1", "v2"], labels)
    text = str(report)
    assert text.startswith("1 clips labelled; 2 videos without a label (e.g. v1, v2)")
    assert "7 labels without a video (e.g. c1, c2, c3, c4, c5, ...)" in text
