"""Clip-level models over descriptors: the recipes' scikit-learn pipelines, evaluation and persistence.

Tasks (docs/corpora.md) and their default estimators: `afew` LinearSVC (C=1.1) on L2-normalised descriptors;
`vgaf` SVC-RBF, its probabilities calibrated (scikit-learn 1.9 replaces `SVC(probability=True)` with that;
its label is the most probable class); `engagewild` ridge regression; `daisee` and `generic` logistic
regression. `estimator` picks another of the task's kind (`ESTIMATORS`: SVR for EngageWild, say).

A model directory holds the estimator in skops format (never pickle: loading checks that it holds
scikit-learn and numpy types only), a model card naming the emotion model and recipe behind its training
descriptors, metrics and a plot. Predicting on descriptors of another emotion model or recipe is refused:
their numbers mean something else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import skops.io
from fsspec.implementations.local import LocalFileSystem
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
)
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC
from sklearn.utils.validation import check_is_fitted

from emotibatch import __version__, schema
from emotibatch.clips.aggregate import (
    RECIPE_IDENTITY,
    Recipe,
    RecipeName,
    aggregate,
    emotion_model_mismatch,
    is_extract_output,
    load_descriptors,
    read_descriptors,
)
from emotibatch.clips.labels import JoinReport, Kind, LabelSet, join, read_labels
from emotibatch.extract.output import Output
from emotibatch.io import files
from emotibatch.io.redact import redact_uri

Task = Literal["afew", "vgaf", "engagewild", "daisee", "generic"]
MODEL_FILE, CARD_FILE, METRICS_FILE = "model.skops", "model_card.json", "metrics.json"
PLOT_FILES = {"classification": "confusion_matrix.png", "regression": "predicted_vs_true.png"}
TRUSTED_MODULES = ("sklearn", "numpy")
KEYS = ("video_id", "track_id", "window_start_s", "window_end_s")


@dataclass(frozen=True)
class EstimatorSpec:
    kind: Kind
    make: Callable[[int], Pipeline]  # seed -> an unfitted pipeline


ESTIMATORS: dict[str, EstimatorSpec] = {
    "linearsvc": EstimatorSpec(
        "classification", lambda seed: make_pipeline(Normalizer(), LinearSVC(C=1.1, random_state=seed))
    ),
    # Calibrated probabilities, and the label they give, where SVC(probability=True) used to be.
    "svc-rbf": EstimatorSpec(
        "classification",
        lambda seed: make_pipeline(
            StandardScaler(), CalibratedClassifierCV(SVC(kernel="rbf"), ensemble=False)
        ),
    ),
    "logistic": EstimatorSpec(
        "classification",
        lambda seed: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
    ),
    "ridge": EstimatorSpec(
        "regression", lambda seed: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    ),
    "svr": EstimatorSpec("regression", lambda seed: make_pipeline(StandardScaler(), SVR())),
}


@dataclass(frozen=True)
class TaskSpec:
    recipe: RecipeName  # the recipe its descriptors are made with unless told otherwise
    kind: Kind
    estimator: str  # the default, a key of ESTIMATORS


TASKS: dict[str, TaskSpec] = {
    "afew": TaskSpec("afew", "classification", "linearsvc"),
    "vgaf": TaskSpec("vgaf", "classification", "svc-rbf"),
    "engagewild": TaskSpec("engagewild", "regression", "ridge"),
    "daisee": TaskSpec("engagewild", "classification", "logistic"),
    "generic": TaskSpec("afew", "classification", "logistic"),
}


@dataclass(frozen=True)
class _Labelled:
    """The labelled rows that have faces: descriptors, labels and video ids (the CV groups)."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    report: JoinReport
    without_faces: int  # labelled clips the extract found no face in: not used


def _labelled(descriptors: pa.Table, labels: LabelSet) -> _Labelled:
    ids = descriptors["video_id"].to_pylist()
    found, report = join(ids, labels)
    has_faces = descriptors["has_faces"].to_pylist()
    rows = [i for i, v in enumerate(ids) if v in found]
    use = [i for i in rows if has_faces[i]]
    y = np.array([found[ids[i]] for i in use], float if labels.kind == "regression" else str)
    return _Labelled(
        X=schema.as_matrix(descriptors["descriptor"].take(use)),
        y=y,
        groups=np.array([ids[i] for i in use], str),
        report=report,
        without_faces=len(rows) - len(use),
    )


def _recipe_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The recipe settings descriptors must share to be compared (of their metadata or a model card)."""
    return {k: (meta.get("recipe") or {}).get(k) for k in RECIPE_IDENTITY}


def _metrics(kind: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    if kind == "regression":
        return {
            "n": len(y_true),
            "mse": float(mean_squared_error(y_true, y_pred)),
            "mae": float(mean_absolute_error(y_true, y_pred)),
        }
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),  # UAR
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "classes": classes,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),  # rows: true
    }


def _plot(
    kind: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], title: str, path: Path
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    if kind == "regression":
        ax.scatter(y_true, y_pred, alpha=0.6)
        low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set(xlabel="true", ylabel="predicted")
    else:
        matrix = confusion_matrix(y_true, y_pred, labels=classes)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2
            ax.text(j, i, str(count), ha="center", va="center", color="white" if dark else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_model_dir(
    model_dir: str | Path,
    estimator: Any | None,
    card: dict,
    metrics: dict,
    plot_file: str,
    plot: Callable[[Path], None],
) -> None:
    """A classifier folder, each file whole (io/files.py): the estimator in skops format (never pickle;
    None for a folder of other classifier folders, abaw-mtl's), the card and metrics as JSON, and
    `plot(path)` drawn to `plot_file`."""
    directory = Path(model_dir)
    local = LocalFileSystem()
    if estimator is not None:
        with files.writing(local, str(directory / MODEL_FILE)) as scratch:
            skops.io.dump(estimator, scratch)
    for name, data in ((CARD_FILE, card), (METRICS_FILE, metrics)):
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        files.write_bytes(local, str(directory / name), text.encode())
    with files.writing(local, str(directory / plot_file)) as scratch:
        plot(scratch)


class ClipModel(BaseEstimator):
    """A task's pipeline over clip descriptors, with what predict must check the descriptors against.

    `fit` evaluates on the `val` labels when given (and keeps the model fit on the training labels), else
    by k-fold cross-validation grouped by video (stratified for classification), then refits on all.
    Fitted: `estimator_`, `card_` (provenance, counts, metrics summary), `metrics_`, `join_` and
    `val_join_` (JoinReports), `evaluation_` (true and predicted held-out labels).
    """

    def __init__(
        self, task: Task = "generic", *, estimator: str | None = None, n_splits: int = 5, seed: int = 0
    ):
        self.task = task
        self.estimator = estimator
        self.n_splits = n_splits
        self.seed = seed

    def _validate_params(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        elif self.estimator is not None:
            kind = TASKS[self.task].kind
            fitting = sorted(name for name, spec in ESTIMATORS.items() if spec.kind == kind)
            if self.estimator not in fitting:
                problems.append(
                    f"task {self.task} ({kind}) takes estimator {fitting}, got {self.estimator!r}"
                )
        if not isinstance(self.n_splits, int) or self.n_splits < 2:
            problems.append(f"n_splits must be an integer >= 2, got {self.n_splits!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def _estimator(self) -> Pipeline:
        return ESTIMATORS[self.estimator or TASKS[self.task].estimator].make(self.seed)

    def fit(
        self,
        descriptors: pa.Table,
        labels: LabelSet,
        val: LabelSet | None = None,
        val_descriptors: pa.Table | None = None,
    ) -> ClipModel:
        """Fit on `labels`; evaluate on `val` joined with `val_descriptors` (default: `descriptors`)."""
        self._validate_params()
        kind = TASKS[self.task].kind
        meta = schema.read_metadata(descriptors.schema)
        if "recipe" not in meta:
            raise ValueError("descriptors without recipe metadata: make them with `emotibatch aggregate`")
        for given in (labels, val):
            if given is not None and given.kind != kind:
                raise ValueError(f"{given.source}: {given.kind} labels, but task {self.task} is {kind}")
        train = _labelled(descriptors, labels)
        self.join_, self.val_join_ = train.report, None
        videos = len(set(train.groups))
        if val is None and videos < self.n_splits:
            raise ValueError(
                f"{len(train.y)} labelled clips with faces from {videos} videos ({train.report}): too few "
                f"for {self.n_splits}-fold cross-validation grouped by video; lower --folds (at least 2) or "
                "give validation labels (--val)"
            )
        if len(train.y) < self.n_splits or (kind == "classification" and len(set(train.y)) < 2):
            raise ValueError(
                f"{len(train.y)} labelled clips with faces ({train.report}): too few to fit and evaluate"
            )
        if val is not None:
            if val_descriptors is None:
                val_descriptors = descriptors
            val_meta = schema.read_metadata(val_descriptors.schema)
            problem = emotion_model_mismatch(
                meta.get("emotion_model") or {}, val_meta.get("emotion_model") or {}
            )
            if problem is None and _recipe_identity(val_meta) != _recipe_identity(meta):
                problem = f"recipe {_recipe_identity(val_meta)}, not {_recipe_identity(meta)}"
            if problem:
                raise ValueError(
                    f"the validation features do not match the training features: they come from {problem}; "
                    "extract and aggregate both alike"
                )
            held = _labelled(val_descriptors, val)
            self.val_join_ = held.report
            shared = sorted(set(train.groups) & set(held.groups))
            if shared:
                raise ValueError(
                    f"{len(shared)} clips are labelled in both training and validation: {shared[:5]}"
                )
            if not len(held.y):
                raise ValueError(f"{val.source}: no validation clip with faces ({held.report})")
            estimator = self._estimator().fit(train.X, train.y)
            y_true, y_pred = held.y, estimator.predict(held.X)
            validation = f"given split: {val.source}"
        else:
            splitter = (StratifiedGroupKFold if kind == "classification" else GroupKFold)(
                self.n_splits, shuffle=True, random_state=self.seed
            )
            y_true, y_pred = train.y, np.empty_like(train.y)
            for fit_rows, test_rows in splitter.split(train.X, train.y, train.groups):
                y_pred[test_rows] = (
                    self._estimator().fit(train.X[fit_rows], train.y[fit_rows]).predict(train.X[test_rows])
                )
            estimator = self._estimator().fit(train.X, train.y)
            validation = f"{self.n_splits}-fold cross-validation grouped by video, seed {self.seed}"
        classes = [c for c in labels.classes if c in set(train.y)]
        self.estimator_ = estimator
        self.evaluation_ = (y_true, y_pred)
        self.metrics_ = _metrics(kind, y_true, y_pred, classes) | {"validation": validation}
        self.card_ = {
            "emotibatch": __version__,
            "task": self.task,
            "kind": kind,
            "classes": classes if kind == "classification" else None,
            "levels": sorted(set(train.y.tolist())) if kind == "regression" else None,
            "params": self.get_params(),
            "estimator": str(estimator),
            "recipe": meta["recipe"],
            "emotion_model": meta["emotion_model"],
            "detector": meta.get("detector"),
            "detector_sha256": meta.get("detector_sha256"),  # None where the descriptors predate it
            "sampling": meta.get("sampling"),
            "features": meta.get("features"),
            "descriptor_width": train.X.shape[1],
            "labels": labels.source,
            "target": labels.target,
            "val_labels": val.source if val is not None else None,
            "validation": validation,
            "n_train": len(train.y),
            "n_val": len(y_true) if val is not None else None,
            "labelled_clips_without_faces": train.without_faces
            + (held.without_faces if val is not None else 0),
            "metrics": {k: v for k, v in self.metrics_.items() if k not in ("confusion_matrix", "classes")},
        }
        return self

    def _check_descriptors(self, descriptors: pa.Table) -> None:
        """Refuse descriptors made from another emotion model or with another recipe than the training ones."""
        check_is_fitted(self, "estimator_")
        meta = schema.read_metadata(descriptors.schema)
        problem = emotion_model_mismatch(self.card_["emotion_model"], meta.get("emotion_model") or {})
        if problem:
            raise ValueError(
                f"these features come from {problem}, which this {self.task} model was trained on: "
                f"extract with --model {self.card_['emotion_model']['model']} to use it"
            )
        got_recipe, want_recipe = _recipe_identity(meta), _recipe_identity(self.card_)
        if got_recipe != want_recipe:
            raise ValueError(
                f"these descriptors were made with recipe {got_recipe}, but this {self.task} model was trained "
                f"on recipe {want_recipe}: aggregate with that recipe, or predict from the extract output"
            )

    def predict(self, descriptors: pa.Table) -> pa.Table:
        """video_id (track, window), `prediction` (null without faces), then `prob_<class>` (models with
        probabilities), `score_<class>` (LinearSVC's decision values) or `score` (regression)."""
        self._check_descriptors(descriptors)
        has_faces = np.asarray(descriptors["has_faces"].to_pylist(), bool)
        rows = np.flatnonzero(has_faces)
        X = schema.as_matrix(descriptors["descriptor"].take(rows))
        table = descriptors.select([k for k in KEYS if k in descriptors.schema.names])

        def column(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
            full = [None] * len(has_faces)
            for i, v in zip(rows, values.tolist() if len(rows) else []):
                full[i] = v
            return pa.array(full, dtype)

        if self.card_["kind"] == "regression":
            score = self.estimator_.predict(X) if len(rows) else np.zeros(0)
            levels = np.asarray(self.card_["levels"], float)
            nearest = levels[np.abs(score[:, None] - levels[None, :]).argmin(1)] if len(rows) else score
            table = table.append_column("prediction", column(nearest, pa.float64()))
            table = table.append_column("score", column(score, pa.float64()))
        else:
            table = table.append_column(
                "prediction", column(self.estimator_.predict(X) if len(rows) else np.zeros(0), pa.string())
            )
            classes = self.estimator_.classes_
            if hasattr(self.estimator_, "predict_proba"):
                prefix, values = "prob", self.estimator_.predict_proba
            else:  # LinearSVC: its decision values, one per class (two-class models give one, for classes[1])
                prefix, values = "score", self.estimator_.decision_function
            scores = values(X) if len(rows) else np.zeros((0, len(classes)))
            if scores.ndim == 1:
                scores = np.stack([-scores, scores], axis=1)
            for j, name in enumerate(classes):
                table = table.append_column(f"{prefix}_{name}", column(scores[:, j], pa.float32()))
        info = {k: self.card_[k] for k in ("emotibatch", "task", "recipe", "emotion_model", "classes")}
        return table.cast(schema.with_metadata(table.schema, info))

    def save(self, model_dir: str | Path) -> None:
        """MODEL_DIR/model.skops, model_card.json, metrics.json and the plot of the held-out predictions."""
        check_is_fitted(self, "estimator_")
        kind = self.card_["kind"]
        title = f"{self.task}: {self.metrics_['validation']}"
        write_model_dir(
            model_dir,
            self.estimator_,
            self.card_,
            self.metrics_,
            PLOT_FILES[kind],
            lambda path: _plot(kind, *self.evaluation_, self.card_["classes"], title, path),
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> ClipModel:
        """A saved model; refuses a skops file holding any type from outside scikit-learn and numpy."""
        directory = Path(model_dir)
        if not (directory / CARD_FILE).exists() or not (directory / MODEL_FILE).exists():
            raise ValueError(f"{model_dir}: not a model directory (no {CARD_FILE} and {MODEL_FILE})")
        card = json.loads((directory / CARD_FILE).read_text())
        path = directory / MODEL_FILE
        untrusted = skops.io.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_MODULES]
        if foreign:
            raise ValueError(
                f"{path} holds types from outside scikit-learn and numpy, refusing to load it: {foreign}"
            )
        model = cls(**card["params"])
        model.estimator_ = skops.io.load(path, trusted=untrusted)
        model.card_ = card
        model.metrics_ = json.loads((directory / METRICS_FILE).read_text())
        return model


def fit(
    features: str,
    labels: str,
    task: Task,
    out: str | Path,
    *,
    val: str | None = None,
    val_features: str | None = None,
    target: str | None = None,
    recipe: RecipeName | None = None,
    emotion_probs: bool = False,
    estimator: str | None = None,
    n_splits: int = 5,
    seed: int = 0,
    storage_options: dict | None = None,
    address: str | None = None,
) -> ClipModel:
    """Read the labels, get the descriptors (aggregating an extract output), fit, evaluate, save to `out`.

    `val` labels are joined with `val_features` when given (a split extracted apart), else with `features`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    train = read_labels(labels, task, target=target)
    held = read_labels(val, task, target=target) if val is not None else None
    if val_features is not None and val is None:
        raise ValueError("--val-extract needs --val (the labels of those clips)")
    chosen = Recipe(recipe or TASKS[task].recipe, emotion_probs=emotion_probs)
    common = {"storage_options": storage_options, "address": address}
    descriptors = load_descriptors(features, chosen, **common)
    held_descriptors = load_descriptors(val_features, chosen, **common) if val_features else None
    model = ClipModel(task, estimator=estimator, n_splits=n_splits, seed=seed).fit(
        descriptors, train, held, held_descriptors
    )
    model.save(out)
    return model


def predict(
    features: str,
    model_dir: str | Path,
    out: str,
    *,
    windows: float | None = None,
    window_step: float | None = None,
    per_track: bool = False,
    storage_options: dict | None = None,
    address: str | None = None,
) -> pa.Table:
    """Predict every clip (track, window) of an extract or aggregate output; write Parquet to `out`."""
    model = ClipModel.load(model_dir)
    if is_extract_output(features, storage_options):
        recipe = Recipe(
            **{k: model.card_["recipe"][k] for k in RECIPE_IDENTITY},
            windows=windows,
            window_step=window_step,
            per_track=per_track,
        )
        descriptors = aggregate(features, recipe, storage_options=storage_options, address=address).table
    elif windows is not None or window_step is not None or per_track:
        raise ValueError(
            f"{redact_uri(features)} is aggregated already: --windows and --per-track apply to extract outputs"
        )
    else:
        descriptors = read_descriptors(features, storage_options)
    table = model.predict(descriptors)
    target = Output(out, storage_options)
    target.write_table(target.path, table)
    return table
