"""ABAW heads: planted signal per task (and chance when labels are shuffled), then fit and predict end to end
on a generated extract output with gaps, a second face, a video without faces and an extra annotation line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from emotibatch import schema
from emotibatch.cli import cli
from emotibatch.clips import abaw, abaw_heads
from emotibatch.clips.abaw_heads import Rows
from emotibatch.clips.classify import CARD_FILE
from emotibatch.extract.output import Output
from emotibatch.testing.abaw_samples import write_abaw_extract, write_expr_annotations

VIDEOS, FRAMES = 30, 60


def planted(task: str, seed: int) -> Rows:
    """Rows whose inputs carry the labels: class means (expression), tanh of a linear map (valence /
    arousal), one input per AU pushed up where the AU is active (action units, rates 0.1 to 0.5)."""
    rng = np.random.default_rng(seed)
    n = VIDEOS * FRAMES
    videos = np.repeat([f"v{i}" for i in range(VIDEOS)], FRAMES)
    if task == "abaw-expr":
        y = rng.integers(0, 8, n)
        means = np.random.default_rng(99).normal(0, 1.5, (8, 16))
        return Rows(
            (means[y] + rng.normal(0, 1, (n, 16))).astype(np.float16), y[:, None].astype(float), videos
        )
    if task == "abaw-va":
        Z = rng.normal(0, 1, (n, 10))
        w = np.random.default_rng(99).normal(0, 0.5, (10, 2))
        return Rows(Z, np.tanh(Z @ w) + rng.normal(0, 0.05, (n, 2)), videos)
    rates = np.linspace(0.1, 0.5, 12)
    Y = (rng.uniform(size=(n, 12)) < rates).astype(float)
    X = np.concatenate([5 * Y, np.zeros((n, 4))], 1) + rng.normal(0, 1, (n, 16))
    Y[rng.uniform(size=n) < 0.05] = np.nan  # -1 rows: ignored
    return Rows(X.astype(np.float16), Y, videos)


def held_out_score(task: str, params: dict, rows: Rows) -> float:
    scores = abaw_heads.head_scores(params, rows.X)
    return abaw.score(task, rows.Y, abaw.decide(task, scores, params.get("thresholds")))["score"]


@pytest.mark.parametrize("task", ["abaw-expr", "abaw-va", "abaw-au"])
def test_planted_signal_is_learned_and_shuffled_labels_give_chance(task: str) -> None:
    train, test = planted(task, 0), planted(task, 1)
    assert held_out_score(task, abaw_heads.fit_head(task, train), test) > 0.85
    # Labels shuffled in both sets carry nothing of the inputs (shuffling the training labels alone would
    # still let the network cluster the inputs, and a cluster can land on its own class by chance).
    rng = np.random.default_rng(2)
    shuffled = Rows(train.X, rng.permutation(train.Y), train.videos)
    unrelated = Rows(test.X, rng.permutation(test.Y), test.videos)
    chance = held_out_score(task, abaw_heads.fit_head(task, shuffled), unrelated)
    if task == "abaw-expr":  # labels independent of the inputs: macro F1 about 1/8; 0.1 covers sampling noise
        assert chance < 1 / 8 + 0.1
    elif task == "abaw-va":  # a CCC about 0
        assert abs(chance) < 0.1
    else:  # uninformative predictions of rate q score 2pq / (p + q) <= 2p / (1 + p) for an AU of rate p
        p = np.nanmean(test.Y, 0)
        assert chance < np.mean(2 * p / (1 + p)) + 0.05


def test_au_thresholds_are_chosen_on_held_out_training_videos_only() -> None:
    rows = planted("abaw-au", 0)
    params = abaw_heads.fit_head("abaw-au", rows)
    assert set(params["thresholds"].tolist()) <= set(abaw_heads.THRESHOLDS.tolist())
    # The same rows with the tuning videos' labels flipped move the thresholds: they are what picks them.
    rng = np.random.default_rng(0)
    tune = set(rng.permutation(np.unique(rows.videos))[: round(abaw_heads.TUNE_SHARE * VIDEOS)].tolist())
    flipped = rows.Y.copy()
    flipped[np.isin(rows.videos, list(tune))] = 1 - flipped[np.isin(rows.videos, list(tune))]
    other = abaw_heads.fit_head("abaw-au", Rows(rows.X, flipped, rows.videos))
    assert not np.array_equal(other["thresholds"], params["thresholds"])


def test_an_au_the_tuning_rows_never_show_keeps_threshold_half() -> None:
    truth = np.zeros((4, 12))
    truth[:2, 0] = 1
    probs = np.tile([[0.95], [0.25], [0.15], [0.05]], (1, 12))
    got = abaw_heads.au_thresholds(probs, truth)
    assert 0.1 < got[0] <= 0.2 and (got[1:] == 0.5).all()  # AU1: only 0.2 keeps both positives, no negative


def test_subject_is_the_longest_track() -> None:
    np.testing.assert_array_equal(abaw_heads.subject(np.array([3, 1, 1, 3, 1, 2])), [1, 2, 4])
    np.testing.assert_array_equal(abaw_heads.subject(np.array([2, 1, 2, 1])), [1, 3])  # equal: the lower id


# -- end to end on an extract output ---------------------------------------------------------------------

DIM = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Twelve training and four validation videos of 80 frames labelled in runs of 20 frames
    (every class in the first two validation videos), faces on
    three frames in four; `val3_left` has no face; each annotation file has one line more than its frames;
    `bad` is annotated but failed in the extract."""
    root = tmp_path_factory.mktemp("abaw")
    videos = {}
    splits = {
        "Train_Set": [f"tr{i}" for i in range(12)],
        "Validation_Set": ["val0", "val1", "val2_right", "val3_left"],
    }
    for split, names in splits.items():
        labels = {
            name: np.repeat((5 * i + np.arange(5)) % 8, 20)[:81].astype(float) for i, name in enumerate(names)
        }
        for values in labels.values():
            values[7] = np.nan  # a -1 line
        write_expr_annotations(root / "EXPR_Set" / split, labels)
        for name, values in labels.items():
            frames = np.flatnonzero(np.arange(80) % 4 != 3) if name != "val3_left" else np.zeros(0, int)
            videos[name] = (np.nan_to_num(values), frames)  # 81 lines, 80 frames
    write_abaw_extract(root / "extract", videos, 80, dim=DIM)
    failed = {
        "video_id": "bad",
        "source_uri": "bad",
        "status": "failed",
        "error": "cannot decode",
        "run_id": "r",
    }
    Output(str(root / "extract")).commit_video(
        "bad", None, pa.Table.from_pylist([failed], schema.VIDEOS_BASE)
    )
    write_expr_annotations(root / "EXPR_Set" / "Validation_Set", {"bad": np.zeros(81)})
    return root


def test_fit_scores_every_view_and_predict_writes_files_that_read_back(corpus: Path, tmp_path: Path) -> None:
    model = abaw_heads.fit(
        str(corpus / "extract"),
        str(corpus / "EXPR_Set" / "Train_Set"),
        "abaw-expr",
        tmp_path / "model",
        val=str(corpus / "EXPR_Set" / "Validation_Set"),
        smooth=2,
    )
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"raw", "smoothed", "zero_shot_raw", "zero_shot_smoothed"}
    scores = metrics["scores"]
    # val3_left has no face: its 81 lines take the prior, so the all-frames view is below the face view.
    assert (
        scores["raw"]["face_frames"]["score"] > 0.9 and scores["zero_shot_raw"]["face_frames"]["score"] > 0.9
    )
    assert scores["raw"]["all_frames"]["n"] == 4 * 80  # 81 lines less the -1 line, per video
    assert scores["raw"]["all_frames"]["score"] < scores["raw"]["face_frames"]["score"]
    assert "lines without a frame in 4 videos (val0: 1" in model.card["val_join"]
    assert "1 without a video (e.g. bad)" in model.card["val_join"]
    assert model.card["emotion_model"]["name"] == "enet_b0_8_best_vgaf"
    assert (tmp_path / "model" / abaw_heads.PLOT_FILE).stat().st_size > 0

    out = tmp_path / "challenge"
    result = abaw_heads.predict(str(corpus / "extract"), tmp_path / "model", out)
    assert result.videos == 16 and result.videos_without_faces == ("val3_left",) and result.failed == ("bad",)
    back = abaw.read_annotations(out, "abaw-expr")
    assert back.videos["val0"].shape == (80, 1)  # one line per decoded frame
    prior_class = np.argmax(model.params["prior"])
    assert set(back.videos["val3_left"][:, 0].tolist()) == {prior_class}

    sample = tmp_path / "sample.txt"
    sample.write_text("image_location,Neutral\nval1/00081.jpg\nval0/00001.jpg\n")  # the extra line too
    abaw_heads.predict(str(corpus / "extract"), tmp_path / "model", out, sample=str(sample))
    lines = (out / "sample.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["val1/00081.jpg", "val0/00001.jpg"]
    sample.write_text("image_location\nval0/00001.jpg\nbad/00001.jpg\n")
    with pytest.raises(ValueError, match=r"1 rows of the sample have no prediction \(e.g. bad/00001.jpg\)"):
        abaw_heads.predict(str(corpus / "extract"), tmp_path / "model", out, sample=str(sample))


def test_loaded_model_predicts_like_the_fitted_one(corpus: Path, tmp_path: Path) -> None:
    common = {"val": str(corpus / "EXPR_Set" / "Validation_Set"), "smooth": 0}
    model = abaw_heads.fit(
        str(corpus / "extract"), str(corpus / "EXPR_Set" / "Train_Set"), "abaw-expr", tmp_path / "m", **common
    )
    loaded = abaw_heads.AbawModel.load(tmp_path / "m")
    X = np.random.default_rng(0).normal(0, 1, (5, DIM)).astype(np.float16)
    np.testing.assert_array_equal(
        abaw_heads.head_scores(loaded.params, X), abaw_heads.head_scores(model.params, X)
    )
    assert loaded.card == json.loads(json.dumps(model.card))


def test_va_head_fits_the_models_logits(corpus: Path, tmp_path: Path) -> None:
    """Valence / arousal a function of each frame's class, which the planted probabilities carry."""
    valence, arousal = np.linspace(-0.8, 0.8, 8), np.linspace(0.6, -0.6, 8) ** 3
    for split in ("Train_Set", "Validation_Set"):
        folder = tmp_path / "VA_Set" / split
        folder.mkdir(parents=True)
        for path in sorted((corpus / "EXPR_Set" / split).glob("*.txt")):
            classes = abaw.read_video_file(path, "abaw-expr")[:, 0]
            lines = ["-5,-5" if np.isnan(c) else f"{valence[int(c)]},{arousal[int(c)]}" for c in classes]
            (folder / path.name).write_text("\n".join(["valence,arousal", *lines]) + "\n")
    model = abaw_heads.fit(
        str(corpus / "extract"),
        str(tmp_path / "VA_Set" / "Train_Set"),
        "abaw-va",
        tmp_path / "va",
        val=str(tmp_path / "VA_Set" / "Validation_Set"),
        smooth=0,
    )
    assert model.card["inputs"] == "logits" and model.card["input_width"] == 8
    face = model.metrics["scores"]["raw"]["face_frames"]
    assert face["ccc_valence"] > 0.9 and face["ccc_arousal"] > 0.9


def test_fit_lists_the_abaw_tasks() -> None:
    result = CliRunner().invoke(cli, ["fit", "--help"])
    assert result.exit_code == 0 and all(task in result.output for task in abaw.HEADERS)


def test_an_extract_without_features_is_refused_with_the_fix(tmp_path: Path) -> None:
    labels = {f"v{i}": np.repeat(np.arange(4) + i, 5).astype(float) for i in range(3)}
    write_expr_annotations(tmp_path / "train", labels)
    write_expr_annotations(tmp_path / "val", {"w0": labels["v0"]})
    frames = np.arange(20)
    write_abaw_extract(tmp_path / "x", {v: (y, frames) for v, y in labels.items()}, 20, features_dtype="none")
    with pytest.raises(ValueError, match=r"x holds no feature vectors .* --features-dtype float16"):
        abaw_heads.fit(
            str(tmp_path / "x"),
            str(tmp_path / "train"),
            "abaw-expr",
            tmp_path / "m",
            val=str(tmp_path / "val"),
        )


def test_au_head_end_to_end_with_thresholds_from_the_training_videos(corpus: Path, tmp_path: Path) -> None:
    """AU j is active on the frames of class j % 8, which the planted features carry."""
    for split in ("Train_Set", "Validation_Set"):
        folder = tmp_path / "AU_Set" / split
        folder.mkdir(parents=True)
        for path in sorted((corpus / "EXPR_Set" / split).glob("*.txt")):
            classes = abaw.read_video_file(path, "abaw-expr")[:, 0]
            rows = [np.where(np.arange(12) % 8 == c, 1, 0) if c == c else np.full(12, -1) for c in classes]
            lines = [",".join(str(int(v)) for v in row) for row in rows]
            (folder / path.name).write_text("\n".join([",".join(abaw.AU_NAMES), *lines]) + "\n")
    model = abaw_heads.fit(
        str(corpus / "extract"),
        str(tmp_path / "AU_Set" / "Train_Set"),
        "abaw-au",
        tmp_path / "au",
        val=str(tmp_path / "AU_Set" / "Validation_Set"),
        network=abaw_heads.Network(epochs=40),  # 960 training rows: 10 epochs are only 40 steps
    )
    assert len(model.card["thresholds"]) == 12 and model.card["smooth"] == abaw.SMOOTH["abaw-au"]
    assert model.metrics["scores"]["raw"]["face_frames"]["score"] > 0.8
    result = abaw_heads.predict(str(corpus / "extract"), tmp_path / "au", tmp_path / "files")
    back = abaw.read_annotations(tmp_path / "files", "abaw-au")
    assert result.videos == len(back.videos) and back.videos["val0"].shape == (80, 12)


def test_va_head_uses_an_mtl_models_valence_and_arousal(tmp_path: Path) -> None:
    """Labels that follow the model's own valence / arousal (random per frame, unrelated to the class):
    only an input holding those columns can reach a high CCC."""
    rng = np.random.default_rng(3)
    videos, labels = {}, {}
    for i in range(8):
        va = rng.uniform(-0.9, 0.9, (60, 2))
        videos[f"v{i}"] = (np.zeros(60), np.arange(60), va)
        labels[f"v{i}"] = np.clip(va + rng.normal(0, 0.05, va.shape), -1, 1)
    write_abaw_extract(tmp_path / "x", videos, 60, dim=DIM)
    for split, names in (("train", [f"v{i}" for i in range(6)]), ("val", ["v6", "v7"])):
        (tmp_path / split).mkdir()
        for name in names:
            lines = [f"{v:.4f},{a:.4f}" for v, a in labels[name]]
            (tmp_path / split / f"{name}.txt").write_text("\n".join(["valence,arousal", *lines]) + "\n")
    model = abaw_heads.fit(
        str(tmp_path / "x"),
        str(tmp_path / "train"),
        "abaw-va",
        tmp_path / "m",
        val=str(tmp_path / "val"),
        smooth=0,
    )
    assert model.card["with_va"] and model.card["input_width"] == 8 + 2
    assert model.metrics["scores"]["raw"]["face_frames"]["score"] > 0.9


def write_mtl_csv(corpus: Path, split: str, path: Path) -> None:
    """The multi-task CSV for a split's videos, every other line: valence / arousal and AU j follow each
    line's class as in the single-task tests above; the -1 expression line keeps its other labels."""
    valence, arousal = np.linspace(-0.8, 0.8, 8), np.linspace(0.6, -0.6, 8) ** 3
    rows = ["image,valence,arousal,expression,aus"]
    for file in sorted((corpus / "EXPR_Set" / split).glob("*.txt")):
        if file.stem == "bad":
            continue
        classes = abaw.read_video_file(file, "abaw-expr")[:, 0]
        for line in range(0, 80, 2):
            c = int(np.nan_to_num(classes[line], nan=classes[line + 1]))
            expression = -1 if np.isnan(classes[line]) else c
            aus = ",".join(str(int(j % 8 == c)) for j in range(12))
            rows.append(
                f"{file.stem}/{line + 1:05d}.jpg,{valence[c]:.4f},{arousal[c]:.4f},{expression},{aus}"
            )
    path.write_text("\n".join(rows) + "\n")


def test_mtl_fits_the_three_heads_and_scores_their_sum(corpus: Path, tmp_path: Path) -> None:
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    write_mtl_csv(corpus, "Train_Set", train)
    write_mtl_csv(corpus, "Validation_Set", val)
    extract, mtl, out = str(corpus / "extract"), tmp_path / "mtl", tmp_path / "files"
    fit = ["fit", "--task", "abaw-mtl", "--extract", extract, "--labels", str(train), "--val", str(val)]
    result = CliRunner().invoke(cli, [*fit, "-o", str(mtl), "--smooth", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((mtl / "metrics.json").read_text())
    for candidate in ("raw", "smoothed"):
        for view in ("all_frames", "face_frames"):
            parts = {
                task: json.loads((mtl / task / "metrics.json").read_text())["scores"][candidate][view][
                    "score"
                ]
                for task in abaw.MTL_TASKS
            }
            summed = metrics["scores"][candidate][view]
            assert summed["score"] == pytest.approx(sum(parts.values()), abs=1e-12)
            assert {task: summed[task] for task in abaw.MTL_TASKS} == parts
    assert "abaw-mtl (sum) raw: all frames" in result.output
    assert json.loads((mtl / CARD_FILE).read_text())["task"] == "abaw-mtl"
    assert (mtl / abaw_heads.PLOT_FILE).stat().st_size > 0
    assert (
        metrics["scores"]["raw"]["face_frames"]["score"] > 1.5
    )  # of 3: the expression and VA signal is plain

    predict = ["predict", "--extract", extract, "--classifier", str(mtl), "-o", str(out)]
    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0, result.output
    for task, columns in zip(abaw.MTL_TASKS, (1, 2, 12)):  # expression: the class index
        assert abaw.read_annotations(out / task, task).videos["val0"].shape == (80, columns)
    result = CliRunner().invoke(cli, [*predict, "--sample", str(val)])
    assert result.exit_code == 2 and "/<task> (one of the heads)" in result.output
    with pytest.raises(ValueError, match=r"holds the three abaw-mtl heads: give .*/<task>"):
        abaw_heads.AbawModel.load(mtl)


def test_mtl_refuses_per_task_folders_with_the_fix(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"Train_Set: abaw-mtl reads the multi-task CSV .* got a folder; .* one by one"
    ):
        abaw_heads.fit_mtl(
            str(corpus / "extract"),
            str(corpus / "EXPR_Set" / "Train_Set"),
            tmp_path / "m",
            val=str(corpus / "EXPR_Set" / "Validation_Set"),
        )
    assert not (tmp_path / "m").exists()


def test_mtl_score_is_the_sum_of_the_three() -> None:
    scores = {"abaw-expr": {"score": 0.4}, "abaw-va": {"score": 0.5}, "abaw-au": {"score": 0.25}}
    assert abaw.mtl_score(scores) == {"score": 1.15, "abaw-expr": 0.4, "abaw-va": 0.5, "abaw-au": 0.25}
