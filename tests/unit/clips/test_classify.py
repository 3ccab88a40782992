"""Fit and predict on synthetic extract outputs with a planted class signal (aggregated in-process)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io
from click.testing import CliRunner
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from emotibatch import __version__, schema
from emotibatch.cli import cli
from emotibatch.clips import classify
from emotibatch.clips.aggregate import aggregate
from emotibatch.clips.classify import ClipModel
from emotibatch.testing.samples import write_synthetic_extract

CLASSES = ("Happy", "Sad", "Neutral")
VGAF_CODES = {"Happy": 1, "Neutral": 2, "Sad": 3}  # Positive, Neutral, Negative
DIM = 16
N_CLIPS = 60  # 20 per class


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Extract outputs whose face-0 features are a class mean plus noise, and label files for them.

    Clip i has class i % 3 (AFEW names; VGAF's for the VGAF labels) and engagement level (i % 4) / 3.
    `other_model` holds the same clips under another emotion model; `train_only` and `val_only` the
    AFEW Train and Val clips as two extract outputs.
    """
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    centers = [0.45 * rng.standard_normal(DIM) for _ in CLASSES]
    direction = rng.standard_normal(DIM) / math.sqrt(DIM)
    ids = [f"clip{i:02d}" for i in range(N_CLIPS)]
    means = {v: centers[i % 3] for i, v in enumerate(ids)} | {"noface": None}
    paths = {"extract": root / "extract", "other_model": root / "other", "levels": root / "levels"}
    write_synthetic_extract(paths["extract"], means, frames=8, faces_per_frame=2, failed=["broken"])
    for split, chosen in (("train_only", ids[:45]), ("val_only", ids[45:])):  # AFEW's Train and Val apart
        paths[split] = root / split
        write_synthetic_extract(paths[split], {v: means[v] for v in chosen}, frames=8, faces_per_frame=2)
    write_synthetic_extract(paths["other_model"], means, frames=8, faces_per_frame=2, model="enet_b2_8")
    levels = {v: round((i % 4) / 3, 2) for i, v in enumerate(ids)}
    write_synthetic_extract(paths["levels"], {v: 4 * lvl * direction for v, lvl in levels.items()}, frames=8)

    # AFEW's layout: the first 45 clips in Train/, the rest in Val/; plus a labelled clip never extracted.
    for i, v in enumerate([*ids, "ghost"]):
        clip = root / "AFEW" / ("Train" if i < 45 else "Val") / CLASSES[i % 3] / f"{v}.avi"
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.touch()
    (root / "AFEW/Train/Happy/noface.avi").touch()
    paths |= {"afew_train": root / "AFEW/Train", "afew_val": root / "AFEW/Val"}

    vgaf = ["Vid_name Label"] + [f"{v}.mp4 {VGAF_CODES[CLASSES[i % 3]]}" for i, v in enumerate(ids)]
    paths["vgaf"] = root / "Train_labels.txt"
    paths["vgaf"].write_text("\n".join(vgaf) + "\n")
    shuffled = np.random.default_rng(1).permutation([CLASSES[i % 3] for i in range(N_CLIPS)])
    paths["shuffled"] = root / "shuffled" / "Train_labels.txt"  # VGAF's format: the planted test's twin
    paths["shuffled"].parent.mkdir()
    paths["shuffled"].write_text(
        "\n".join(["Vid_name Label"] + [f"{v}.mp4 {VGAF_CODES[c]}" for v, c in zip(ids, shuffled)]) + "\n"
    )
    paths["engagement"] = root / "Engagement_Labels_Engagement.csv"
    paths["engagement"].write_text("".join(f"{v}\t{lvl}\n" for v, lvl in levels.items()))
    return paths


@pytest.fixture(scope="module")
def afew_model(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("afew_model")
    classify.fit(str(corpus["extract"]), str(corpus["afew_train"]), "afew", out)
    return out


def test_cross_validation_is_clearly_above_chance_and_at_chance_on_shuffled_labels(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    planted = classify.fit(str(corpus["extract"]), str(corpus["vgaf"]), "vgaf", tmp_path / "vgaf")
    assert planted.metrics_["balanced_accuracy"] > 0.75, planted.metrics_
    assert planted.metrics_["n"] == N_CLIPS
    shuffled = classify.fit(str(corpus["extract"]), str(corpus["shuffled"]), "vgaf", tmp_path / "shuffled")
    assert shuffled.metrics_["balanced_accuracy"] < 0.55, shuffled.metrics_
    assert shuffled.card_["validation"] == "5-fold cross-validation grouped by video, seed 0"


def test_a_given_validation_split_scores_held_out_clips(
    afew_model: Path, corpus: dict[str, Path], tmp_path: Path
) -> None:
    model = classify.fit(
        str(corpus["extract"]),
        str(corpus["afew_train"]),
        "afew",
        tmp_path,
        val=str(corpus["afew_val"]),
    )
    assert (model.card_["n_train"], model.card_["n_val"]) == (45, 15)
    assert model.metrics_["accuracy"] > 0.8, model.metrics_
    assert model.card_["labelled_clips_without_faces"] == 1  # noface: labelled, kept out of the fit
    assert model.val_join_.labels_without_video == ("Happy/ghost.avi",)
    assert np.array(model.metrics_["confusion_matrix"]).sum() == 15


def test_a_validation_split_extracted_apart_is_scored_and_must_match(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    model = classify.fit(
        str(corpus["train_only"]),
        str(corpus["afew_train"]),
        "afew",
        tmp_path / "m",
        val=str(corpus["afew_val"]),
        val_features=str(corpus["val_only"]),
    )
    assert (model.card_["n_train"], model.card_["n_val"]) == (45, 15)
    assert model.metrics_["accuracy"] > 0.8, model.metrics_
    assert model.val_join_.videos_without_label == ()  # val_only holds the Val clips alone
    with pytest.raises(ValueError, match=r"validation features do not match .* 'enet_b2_8'"):
        classify.fit(
            str(corpus["train_only"]),
            str(corpus["afew_train"]),
            "afew",
            tmp_path / "n",
            val=str(corpus["afew_val"]),
            val_features=str(corpus["other_model"]),
        )
    with pytest.raises(ValueError, match="--val-extract needs --val"):
        classify.fit(
            str(corpus["train_only"]),
            str(corpus["afew_train"]),
            "afew",
            tmp_path / "o",
            val_features=str(corpus["val_only"]),
        )


def test_the_model_directory_holds_model_card_metrics_and_confusion_plot(afew_model: Path) -> None:
    assert sorted(p.name for p in afew_model.iterdir()) == [
        "confusion_matrix.png",
        "metrics.json",
        "model.skops",
        "model_card.json",
    ]
    assert (afew_model / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((afew_model / "metrics.json").read_text())
    assert {"accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix"} <= set(metrics)
    card = json.loads((afew_model / "model_card.json").read_text())
    assert card["task"] == "afew" and card["classes"] == ["Happy", "Neutral", "Sad"]  # AFEW's order
    assert card["recipe"]["name"] == "afew" and card["emotion_model"]["name"] == "enet_b0_8_best_vgaf"
    assert (card["n_train"], card["n_val"], card["emotibatch"]) == (45, None, __version__)
    assert card["metrics"]["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert "LinearSVC(C=1.1" in card["estimator"]


def test_predict_keeps_clips_without_faces_with_a_null_prediction(
    afew_model: Path, corpus: dict[str, Path], tmp_path: Path
) -> None:
    table = classify.predict(str(corpus["extract"]), afew_model, str(tmp_path / "p.parquet"))
    assert table.schema.names == ["video_id", "prediction", "score_Happy", "score_Neutral", "score_Sad"]
    scored = table.filter(table["prediction"].is_valid())
    best = np.array([scored[f"score_{c}"].to_numpy() for c in ("Happy", "Neutral", "Sad")]).argmax(0)
    assert [("Happy", "Neutral", "Sad")[i] for i in best] == scored["prediction"].to_pylist()
    rows = {r["video_id"]: r["prediction"] for r in pq.read_table(tmp_path / "p.parquet").to_pylist()}
    assert len(rows) == N_CLIPS + 1 and "broken" not in rows
    assert rows["noface"] is None
    truth = [CLASSES[i % 3] for i in range(45, N_CLIPS)]
    assert np.mean([rows[f"clip{i:02d}"] == t for i, t in zip(range(45, N_CLIPS), truth)]) > 0.8


def test_window_probabilities_sum_to_one_and_an_aggregate_output_is_predicted(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    classify.fit(str(corpus["extract"]), str(corpus["vgaf"]), "vgaf", tmp_path / "m")
    table = classify.predict(str(corpus["extract"]), tmp_path / "m", str(tmp_path / "p.parquet"), windows=0.4)
    assert table.schema.names == [
        "video_id",
        "window_start_s",
        "window_end_s",
        "prediction",
        "prob_Negative",
        "prob_Neutral",
        "prob_Positive",
    ]
    assert len(table) == 2 * (N_CLIPS + 1)  # 8 frames at 10 fps: windows at 0 and 0.4 s
    probs = np.array([table[c].to_pylist() for c in table.schema.names[4:]], dtype=float)
    # scikit-learn normalises in float64; each of the 3 stored values may be rounded to float32 (eps32 / 2)
    np.testing.assert_allclose(
        np.nansum(probs, axis=0)[:-2], 1.0, rtol=0, atol=3 * float(np.finfo(np.float32).eps)
    )

    aggregate(str(corpus["extract"]), "vgaf", str(tmp_path / "agg"))
    from_aggregate = classify.predict(str(tmp_path / "agg"), tmp_path / "m", str(tmp_path / "q.parquet"))
    assert len(from_aggregate) == N_CLIPS + 1
    with pytest.raises(ValueError, match="aggregated already"):
        classify.predict(str(tmp_path / "agg"), tmp_path / "m", str(tmp_path / "q.parquet"), per_track=True)


def test_regression_beats_the_level_variance_and_predicts_the_nearest_level(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    model = classify.fit(
        str(corpus["levels"]),
        str(corpus["engagement"]),
        "engagewild",
        tmp_path / "m",
        recipe="afew",
    )
    levels = np.array([round((i % 4) / 3, 2) for i in range(N_CLIPS)])
    assert model.metrics_["mse"] < 0.3 * levels.var(), model.metrics_
    assert {"mse", "mae"} <= set(model.metrics_) and (tmp_path / "m/predicted_vs_true.png").exists()
    table = classify.predict(str(corpus["levels"]), tmp_path / "m", str(tmp_path / "p.parquet"))
    assert table.schema.names == ["video_id", "prediction", "score"]
    assert set(table["prediction"].to_pylist()) <= {0.0, 0.33, 0.67, 1.0}


def test_same_seed_same_result(corpus: dict[str, Path], tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        model = classify.fit(str(corpus["extract"]), str(corpus["afew_train"]), "afew", tmp_path / name)
        runs.append(
            (
                model.metrics_,
                classify.predict(str(corpus["extract"]), tmp_path / name, str(tmp_path / f"{name}.parquet")),
            )
        )
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].equals(runs[1][1])


def test_features_of_another_emotion_model_or_recipe_are_refused(
    afew_model: Path, corpus: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(
        ValueError,
        match=r"emotion model 'enet_b2_8' .*, not 'enet_b0_8_best_vgaf' .* this afew model was trained on",
    ):
        classify.predict(str(corpus["other_model"]), afew_model, str(tmp_path / "p.parquet"))
    aggregate(str(corpus["extract"]), "vgaf", str(tmp_path / "vgaf"))
    with pytest.raises(ValueError, match=r"recipe \{'name': 'vgaf'.* trained on recipe \{'name': 'afew'"):
        classify.predict(str(tmp_path / "vgaf"), afew_model, str(tmp_path / "p.parquet"))
    assert not (tmp_path / "p.parquet").exists()


def test_a_model_file_of_the_same_name_but_other_bytes_is_refused(
    afew_model: Path, corpus: dict[str, Path]
) -> None:
    model = ClipModel.load(afew_model)
    descriptors = aggregate(str(corpus["extract"]), "afew").table
    meta = schema.read_metadata(descriptors.schema)

    def with_sha(sha: str | None) -> pa.Table:
        info = meta | {"emotion_model": meta["emotion_model"] | {"sha256": sha}}
        return descriptors.cast(schema.with_metadata(descriptors.schema, info))

    model.card_["emotion_model"]["sha256"] = "a" * 64
    assert len(model.predict(with_sha("a" * 64))) == N_CLIPS + 1
    assert len(model.predict(with_sha(None))) == N_CLIPS + 1  # not recorded: the name and width decide
    with pytest.raises(ValueError, match=r"'enet_b0_8_best_vgaf' from another file \(sha256 bbbbbbbbbbbb"):
        model.predict(with_sha("b" * 64))


def test_the_card_records_both_model_files(corpus: dict[str, Path], tmp_path: Path) -> None:
    """Both sha256s travel from the faces metadata through the descriptors into the card."""
    model_sha, detector_sha = "c" * 64, "d" * 64
    means = {f"clip{i:02d}": np.full(DIM, i % 3, np.float32) for i in range(N_CLIPS)}
    features = tmp_path / "extract"
    write_synthetic_extract(features, means, frames=4, model_sha256=model_sha, detector_sha256=detector_sha)
    fitted = classify.fit(str(features), str(corpus["afew_train"]), "afew", tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card == fitted.card_
    assert (card["emotion_model"]["sha256"], card["detector_sha256"]) == (model_sha, detector_sha)
    assert card["detector"] == "det_10g"


def test_a_skops_file_with_foreign_types_is_not_loaded(afew_model: Path, tmp_path: Path) -> None:
    for name in ("model_card.json", "metrics.json"):
        (tmp_path / name).write_bytes((afew_model / name).read_bytes())
    skops.io.dump(make_pipeline(FunctionTransformer(math.sqrt)), tmp_path / "model.skops")
    with pytest.raises(ValueError, match=r"outside scikit-learn and numpy.*math\.sqrt"):
        ClipModel.load(tmp_path)
    assert isinstance(ClipModel.load(afew_model), ClipModel)


def test_bad_parameters_and_labels_of_the_wrong_kind(corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_splits must be an integer >= 2"):
        classify.fit(str(corpus["extract"]), str(corpus["vgaf"]), "vgaf", tmp_path, n_splits=1)
    with pytest.raises(ValueError, match="task must be one of"):
        classify.fit(str(corpus["extract"]), str(corpus["vgaf"]), "abaw", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=r"task vgaf \(classification\) takes estimator \['linearsvc', 'logistic', 'svc-rbf'\], got 'svr'",
    ):
        classify.fit(str(corpus["extract"]), str(corpus["vgaf"]), "vgaf", tmp_path, estimator="svr")


def test_svr_and_logistic_estimators_are_fitted_recorded_and_reloaded(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    model = classify.fit(
        str(corpus["levels"]),
        str(corpus["engagement"]),
        "engagewild",
        tmp_path / "svr",
        recipe="afew",
        estimator="svr",
    )
    assert "SVR()" in model.card_["estimator"] and model.card_["params"]["estimator"] == "svr"
    assert ClipModel.load(tmp_path / "svr").estimator == "svr"
    logistic = classify.fit(
        str(corpus["extract"]),
        str(corpus["afew_train"]),
        "afew",
        tmp_path / "lr",
        estimator="logistic",
    )
    assert "LogisticRegression" in logistic.card_["estimator"]
    assert logistic.metrics_["balanced_accuracy"] > 0.75, logistic.metrics_


def test_cli_fit_and_predict_report_label_joins_and_refuse_unusable_features(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    fit = runner.invoke(
        cli,
        [
            "fit",
            "--extract",
            str(corpus["extract"]),
            "--labels",
            str(corpus["afew_train"]),
            "--task",
            "afew",
            "--val",
            str(corpus["afew_val"]),
            "--output",
            str(tmp_path / "m"),
        ],
    )
    assert fit.exit_code == 0, fit.output
    assert "train labels: 46 clips labelled; 15 videos without a label (e.g. clip45, clip46" in fit.output
    assert (
        "val labels: 15 clips labelled" in fit.output
        and "labels without a video (e.g. Happy/ghost.avi)" in fit.output
    )
    assert "given split" in fit.output and "balanced_accuracy" in fit.output
    assert (tmp_path / "m/model.skops").exists()

    predict = runner.invoke(
        cli,
        [
            "predict",
            "--extract",
            str(corpus["extract"]),
            "--classifier",
            str(tmp_path / "m"),
            "--output",
            str(tmp_path / "p.parquet"),
        ],
    )
    assert predict.exit_code == 0, predict.output
    assert f"{N_CLIPS + 1} predictions (1 without faces: null)" in predict.output
    assert pq.read_table(tmp_path / "p.parquet").num_rows == N_CLIPS + 1

    refused = runner.invoke(
        cli,
        [
            "predict",
            "--extract",
            str(corpus["other_model"]),
            "--classifier",
            str(tmp_path / "m"),
            "--output",
            str(tmp_path / "q.parquet"),
        ],
    )
    assert refused.exit_code == 2 and "emotion model 'enet_b2_8'" in refused.output

    none = tmp_path / "none"
    write_synthetic_extract(none, {"a": np.zeros(4)}, features_dtype="none")
    refused = runner.invoke(
        cli,
        [
            "fit",
            "--extract",
            str(none),
            "--labels",
            str(corpus["vgaf"]),
            "--task",
            "vgaf",
            "--output",
            str(tmp_path / "n"),
        ],
    )
    assert refused.exit_code == 2 and "--features-dtype none" in refused.output
