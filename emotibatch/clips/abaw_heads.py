"""The authors' frame-level ABAW heads (docs/corpora.md), in numpy and scipy, and the fit / predict drivers.

- Expression: Dense 128 ReLU then an 8-way softmax on the features, cross-entropy weighted per class
  (max_count / count: a sample weight, since scikit-learn's MLPClassifier takes none).
- Valence / arousal: a linear layer with tanh on the model's logits, fitted with L-BFGS on 1 - CCC per
  dimension. The extract keeps probabilities, so the logits are their logarithms centred per face (the
  logits less their own mean); an MTL model's valence and arousal are appended.
- Action units: Dense 128 ReLU then 12 sigmoids, binary cross-entropy weighted per unit (w0 = N / 2neg,
  w1 = N / 2pos), a threshold per unit on a 0.1-0.9 grid chosen on the training videos held out for tuning
  (never on the set being reported).
The networks train with Adam (1e-3, batches of 256, at most 10 epochs) and keep the epoch with the lowest
loss on the tuning videos, as the authors kept their best epoch. One face per frame: the subject is the
video's longest track (most frames); frames where it is not seen count as frames without a face.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import skops.io
from fsspec.implementations.local import LocalFileSystem
from scipy.optimize import minimize

from emotibatch import __version__, schema
from emotibatch.clips import abaw
from emotibatch.clips.aggregate import emotion_model, emotion_model_mismatch
from emotibatch.clips.classify import CARD_FILE, METRICS_FILE, MODEL_FILE, TRUSTED_MODULES, write_model_dir
from emotibatch.extract.output import Output
from emotibatch.inference.registry import CLASSES_8
from emotibatch.io import files
from emotibatch.io.redact import redact_uri

PLOT_FILE = "scores.png"
TUNE_SHARE = 0.2  # training videos held out to pick the epoch and the AU thresholds
CHUNK = 16384  # rows per pass outside training: bounds the float32 / float64 copies (~170 MB at 1280-d)
THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.1), 1)
INPUTS = {"abaw-expr": "features", "abaw-va": "logits", "abaw-au": "features"}


@dataclass(frozen=True)
class Network:
    """Training settings of the one-hidden-layer heads (the authors' Keras settings)."""

    hidden: int = 128
    epochs: int = 10
    batch: int = 256
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


# -- one face series per video ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """The subject's faces of one video, one row per frame, sorted by frame."""

    frames: np.ndarray  # int64 frame_index
    features: np.ndarray | None  # [k, d] as stored (float16 or float32); None without feature vectors
    logits: np.ndarray  # [k, classes (+2)]: centred log-probabilities (and valence, arousal)
    probs: np.ndarray  # [k, classes]


def subject(track_ids: np.ndarray) -> np.ndarray:
    """Rows of the longest track (most rows; the lowest id among equals)."""
    if not len(track_ids):
        return np.zeros(0, int)
    ids, counts = np.unique(track_ids, return_counts=True)
    return np.flatnonzero(track_ids == ids[counts.argmax()])


def read_series(source: Output, video_id: str, with_va: bool) -> Series:
    """The subject's rows of a video's faces file (none where the video has no face)."""
    path = source.faces_path(video_id)
    if not source.fs.exists(path):
        return Series(np.zeros(0, np.int64), None, np.zeros((0, 0)), np.zeros((0, 0)))
    names = pq.read_schema(path, filesystem=source.fs).names
    columns = ["frame_index", "track_id", "emotion_probs", "valence", "arousal"]
    columns += ["features"] if "features" in names else []
    table = pq.read_table(path, columns=columns, filesystem=source.fs, use_threads=False)
    if not len(table):
        return Series(np.zeros(0, np.int64), None, np.zeros((0, 0)), np.zeros((0, 0)))
    rows = subject(table["track_id"].to_numpy())
    frames, first = np.unique(table["frame_index"].to_numpy()[rows], return_index=True)  # one face a frame
    rows = rows[first]
    probs = schema.as_matrix(table["emotion_probs"]).astype(np.float64)[rows]
    logits = np.log(np.clip(probs, 1e-12, None))
    logits -= logits.mean(1, keepdims=True)
    if with_va:
        va = np.stack([table[c].to_numpy(zero_copy_only=False) for c in abaw.VA_NAMES], 1)[rows]
        logits = np.concatenate([logits, np.nan_to_num(va.astype(np.float64))], 1)
    features = None
    if "features" in names:  # kept as stored (float16 stays float16: half the memory)
        column = table["features"].combine_chunks()
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        features = flat.reshape(-1, column.type.list_size)[rows]
    return Series(frames, features, logits, probs)


# -- the networks ----------------------------------------------------------------------------------------


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def _chunks(X: np.ndarray, rows: np.ndarray | None) -> Iterator[np.ndarray]:
    """X (or its `rows`) in slices of CHUNK rows: never a copy of the whole selection."""
    n = len(X) if rows is None else len(rows)
    for start in range(0, n, CHUNK):
        yield X[start : start + CHUNK] if rows is None else X[rows[start : start + CHUNK]]


def forward(params: dict[str, Any], X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The network's probabilities (softmax or sigmoid) for inputs X (or its `rows`), in chunks."""
    out = [_forward(params, _normalised(params, chunk))[1] for chunk in _chunks(X, rows)]
    return np.concatenate(out) if out else np.zeros((0, params["W2"].shape[1]), np.float32)


def _normalised(params: dict[str, Any], X: np.ndarray) -> np.ndarray:
    return (X.astype(np.float32) - params["mean"]) / params["scale"]


def _forward(params: dict[str, Any], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations and output probabilities for normalised inputs x."""
    h = np.maximum(x @ params["W1"] + params["b1"], 0)
    z = h @ params["W2"] + params["b2"]
    if params["output"] == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        return h, e / e.sum(1, keepdims=True)
    return h, 1 / (1 + np.exp(-z))


def _loss(params: dict[str, Any], X: np.ndarray, Y: np.ndarray, W: np.ndarray, rows: np.ndarray) -> float:
    p = np.clip(forward(params, X, rows), 1e-7, 1 - 1e-7)
    Y, W = Y[rows], W[rows]
    if params["output"] == "softmax":
        return float(-(W * np.log(p) * Y).sum() / len(rows))
    return float(-(W * (Y * np.log(p) + (1 - Y) * np.log(1 - p))).sum() / len(rows))


def _moments(X: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per column of X (or its `rows`), accumulated in float64 chunks."""
    total, squares, n = np.zeros(X.shape[1]), np.zeros(X.shape[1]), 0
    for chunk in _chunks(X, rows):
        chunk = chunk.astype(np.float64)
        total += chunk.sum(0)
        squares += (chunk**2).sum(0)
        n += len(chunk)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1).astype(np.float32)


def train_network(
    X: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    output: str,
    fit_rows: np.ndarray,
    tune_rows: np.ndarray,
    network: Network = Network(),
    seed: int = 0,
) -> dict[str, Any]:
    """A one-hidden-layer network on the weighted cross-entropy (`W`: one weight per row for softmax,
    per value for sigmoid; 0 drops a value), Adam over `fit_rows`; the epoch with the lowest loss on
    `tune_rows` is kept. Rows are taken by index, a batch at a time, so X is never copied whole."""
    rng = np.random.default_rng(seed)
    mean, scale = _moments(X, fit_rows)
    params: dict[str, Any] = {
        "output": output,
        "mean": mean,
        "scale": scale,
        "W1": _glorot(rng, X.shape[1], network.hidden),
        "b1": np.zeros(network.hidden, np.float32),
        "W2": _glorot(rng, network.hidden, Y.shape[1]),
        "b2": np.zeros(Y.shape[1], np.float32),
    }
    names = ("W1", "b1", "W2", "b2")
    m = {k: np.zeros_like(params[k]) for k in names}
    v = {k: np.zeros_like(params[k]) for k in names}
    step, best, best_loss = 0, dict(params), np.inf
    for _ in range(network.epochs):
        order = rng.permutation(fit_rows)
        for start in range(0, len(order), network.batch):
            rows = np.sort(order[start : start + network.batch])
            x = _normalised(params, X[rows])
            h, p = _forward(params, x)
            dz = (W[rows] * (p - Y[rows]) / len(rows)).astype(np.float32)
            dh = (dz @ params["W2"].T) * (h > 0)
            grads = {"W1": x.T @ dh, "b1": dh.sum(0), "W2": h.T @ dz, "b2": dz.sum(0)}
            step += 1
            for k in names:  # Adam, Keras's defaults
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                m_hat, v_hat = m[k] / (1 - 0.9**step), v[k] / (1 - 0.999**step)
                params[k] = params[k] - network.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-7)
        loss = _loss(params, X, Y, W, tune_rows)
        if loss < best_loss:
            best, best_loss = dict(params), loss
    return best


def _ccc_loss(theta: np.ndarray, Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """1 - CCC(tanh(Z w + b), y) and its gradient in (w, b)."""
    x = np.tanh(Z @ theta[:-1] + theta[-1])
    n, mx, my = len(y), x.mean(), y.mean()
    numerator = 2 * ((x - mx) * (y - my)).mean()
    denominator = x.var() + y.var() + (mx - my) ** 2
    dx = (2 * (y - my) * denominator - numerator * 2 * ((x - mx) + (mx - my))) / (n * denominator**2)
    dz = -dx * (1 - x**2)
    return 1 - numerator / denominator, np.append(Z.T @ dz, dz.sum())


def train_va(Z: np.ndarray, Y: np.ndarray) -> dict[str, Any]:
    """Per dimension, a linear layer with tanh fitted on 1 - CCC (L-BFGS) over its valid rows."""
    mean, scale = _moments(Z)
    Zs = (Z - mean) / scale
    weights = []
    for j in range(Y.shape[1]):
        rows = ~np.isnan(Y[:, j])
        found = minimize(
            _ccc_loss, np.zeros(Z.shape[1] + 1), args=(Zs[rows], Y[rows, j]), jac=True, method="L-BFGS-B"
        )
        weights.append(found.x)
    return {"output": "tanh", "mean": mean, "scale": scale, "theta": np.stack(weights, 1)}


def head_scores(params: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """The head's scores per face: class / AU probabilities, or valence and arousal."""
    if params["output"] == "tanh":
        Zs = (X.astype(np.float64) - params["mean"]) / params["scale"]
        return np.tanh(Zs @ params["theta"][:-1] + params["theta"][-1])
    return forward(params, X).astype(np.float64)


def expr_weights(y: np.ndarray) -> np.ndarray:
    """max_count / count per class (classes absent from training weigh 0: they have no rows anyway)."""
    counts = np.bincount(y, minlength=len(abaw.EXPR_CLASSES)).astype(np.float64)
    return np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0)


def au_weights(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(w0, w1) per AU: N / 2neg and N / 2pos over its valid values, so both sides weigh half."""
    valid = ~np.isnan(Y)
    positive = np.nansum(Y, 0)
    negative = valid.sum(0) - positive
    n = valid.sum(0)
    return n / np.maximum(2 * negative, 1), n / np.maximum(2 * positive, 1)


def au_thresholds(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per AU, the grid threshold with the best F1 on these (held-out) rows (invalid values left out);
    0.5 for an AU these rows never show, where every threshold scores 0 and none is better."""
    valid = ~np.isnan(truth)
    positive = (np.nan_to_num(truth) == 1) & valid
    f1 = []
    for t in THRESHOLDS:
        said = (probs >= t) & valid
        tp = (said & positive).sum(0)
        f1.append(2 * tp / np.maximum(said.sum(0) + positive.sum(0), 1))  # 2TP / (2TP + FP + FN)
    chosen = THRESHOLDS[np.argmax(np.array(f1), 0)]
    return np.where(positive.any(0), chosen, 0.5)


@dataclass(frozen=True)
class Rows:
    """Training rows: a face frame with a label (NaN where that value is invalid), and its video."""

    X: np.ndarray  # [n, d] as stored (float16 features stay float16)
    Y: np.ndarray  # [n, 1] class index, [n, 2] valence and arousal, or [n, 12] AUs
    videos: np.ndarray  # [n] which video (any label): the tuning split is by video


def fit_head(task: str, rows: Rows, *, network: Network = Network(), seed: int = 0) -> dict[str, Any]:
    """The task's head on `rows`; the networks hold TUNE_SHARE of the videos out to pick the epoch and
    the AU thresholds (the VA layer has neither, and fits on every row)."""
    abaw.check_task(task)
    names = np.unique(rows.videos)
    if len(names) < 2:
        raise ValueError(f"{task}: {len(names)} annotated training video with faces; need at least 2")
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(names)[: max(1, round(TUNE_SHARE * len(names)))].tolist())
    is_tune = np.isin(rows.videos, list(held))
    fit_rows, tune_rows = np.flatnonzero(~is_tune), np.flatnonzero(is_tune)
    if task == "abaw-va":
        params = train_va(rows.X.astype(np.float64), rows.Y.astype(np.float64))  # nothing to tune: all rows
        params["prior"] = np.nanmean(rows.Y, 0)
        return params
    if task == "abaw-expr":
        y = rows.Y[:, 0].astype(int)
        Y = np.eye(len(abaw.EXPR_CLASSES), dtype=np.float32)[y]
        W = expr_weights(y[fit_rows]).astype(np.float32)[y][:, None]
        prior = Y.mean(0)
    else:
        w0, w1 = au_weights(rows.Y[fit_rows])
        Y = np.nan_to_num(rows.Y).astype(np.float32)
        W = np.where(np.isnan(rows.Y), 0, np.where(rows.Y == 1, w1, w0)).astype(np.float32)
        prior = np.nanmean(rows.Y, 0)
    output = "softmax" if task == "abaw-expr" else "sigmoid"
    params = train_network(rows.X, Y, W, output, fit_rows, tune_rows, network, seed)
    params["prior"] = prior
    if task == "abaw-au":
        params["thresholds"] = au_thresholds(forward(params, rows.X, tune_rows), rows.Y[tune_rows])
    return params


# -- extract outputs, fitting and predicting -------------------------------------------------------------


@dataclass(frozen=True)
class Extract:
    source: Output
    frame_counts: dict[str, int | None]  # ok videos
    failed: tuple[str, ...]
    emotion_model: dict[str, Any]
    provenance: schema.Provenance
    with_va: bool  # the model predicts valence and arousal (an MTL model)


def open_extract(path: str, storage_options: dict | None = None) -> Extract:
    source = Output(path, storage_options)
    videos = source.read_tables("videos")
    if videos is None:
        raise ValueError(f"{redact_uri(path)}: no videos/ table; give the output of `emotibatch extract`")
    counts, failed = {}, []
    for row in videos.select(["video_id", "status", "frame_count"]).to_pylist():
        if row["status"] == "ok":
            counts[row["video_id"]] = row["frame_count"]
        else:
            failed.append(row["video_id"])
    paths = [source.faces_path(v) for v in counts]
    first = next((p for p in paths if source.fs.exists(p)), None)
    if first is None:
        raise ValueError(f"{redact_uri(path)}: no faces/ file of a finished video")
    faces = pq.read_schema(first, filesystem=source.fs)
    provenance = schema.Provenance.from_schema(faces)
    dim = faces.field("features").type.list_size if "features" in faces.names else None
    table = pq.read_table(first, columns=["valence"], filesystem=source.fs)
    with_va = len(table) > 0 and table["valence"].null_count < len(table)
    return Extract(source, counts, tuple(failed), emotion_model(provenance, dim), provenance, with_va)


def _inputs(task: str, series: Series, where: str) -> np.ndarray:
    if INPUTS[task] == "logits":
        return series.logits
    if series.features is None:
        raise ValueError(
            f"{where} holds no feature vectors (extracted with --features-dtype none): the {task} head needs "
            "them; extract again with --features-dtype float16 or float32"
        )
    return series.features


def _labelled_frames(source: Output, video_id: str, labels: np.ndarray) -> int:
    """How many of the subject's frames have a label: read from two narrow columns only."""
    path = source.faces_path(video_id)
    if not source.fs.exists(path):
        return 0
    table = pq.read_table(path, columns=["frame_index", "track_id"], filesystem=source.fs, use_threads=False)
    frames = np.unique(table["frame_index"].to_numpy()[subject(table["track_id"].to_numpy())])
    frames = frames[frames < len(labels)]
    return int((~np.isnan(labels[frames]).all(1)).sum())


def training_rows(
    task: str, extract: Extract, annotations: abaw.Annotations, report: abaw.LineReport
) -> Rows:
    """Face frames with a label, one video read at a time into arrays sized by a first, narrow pass (peak
    memory: the rows themselves, features as stored, never a second copy while concatenating)."""
    by_name = {PurePosixPath(v).name: v for v in report.matched}
    names = [name for name in sorted(annotations.videos) if name in by_name]
    counts = [_labelled_frames(extract.source, by_name[n], annotations.videos[n]) for n in names]
    if not sum(counts):
        raise ValueError(f"{annotations.source}: no annotated frame with a face ({report})")
    X = Y = None
    videos = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    at = 0
    for name, count in zip(names, counts):
        if not count:
            continue
        labels = annotations.videos[name]
        series = read_series(extract.source, by_name[name], extract.with_va)
        inside = series.frames < len(labels)
        y = labels[series.frames[inside]]
        keep = ~np.isnan(y).all(1)
        x = _inputs(task, series, redact_uri(extract.source.root))[inside][keep]
        if X is None:
            X = np.empty((len(videos), x.shape[1]), x.dtype)
            Y = np.empty((len(videos), y.shape[1]), np.float32)
        X[at : at + count], Y[at : at + count] = x, y[keep]
        at += count
    return Rows(X, Y, videos)


def dense(task: str, params: dict[str, Any], series: Series, n_lines: int, where: str) -> np.ndarray:
    """Scores for every annotation line of a video: the head's on the subject's faces, filled between."""
    scores = head_scores(params, _inputs(task, series, where)) if len(series.frames) else np.zeros((0, 1))
    return abaw.fill(n_lines, series.frames, scores, params["prior"])


def evaluate(
    task: str,
    params: dict[str, Any],
    extract: Extract,
    annotations: abaw.Annotations,
    report: abaw.LineReport,
    k: int,
) -> dict[str, Any]:
    """The challenge score on all annotated lines and on lines with a face, before and after smoothing
    (and, for expression, the emotion model's own zero-shot probabilities scored the same way)."""
    views: dict[str, list[np.ndarray]] = {}
    by_name = {PurePosixPath(v).name: v for v in report.matched}
    thresholds = params.get("thresholds")
    for name, truth in sorted(annotations.videos.items()):
        if name not in by_name:
            continue
        series = read_series(extract.source, by_name[name], extract.with_va)
        scores = dense(task, params, series, len(truth), redact_uri(extract.source.root))
        candidates = {"raw": scores, "smoothed": abaw.smooth(scores, k)}
        if task == "abaw-expr" and tuple(extract.emotion_model["classes"]) == CLASSES_8:
            probs = abaw.zero_shot(extract.emotion_model["classes"], series.probs.reshape(-1, 8))
            zero = abaw.fill(len(truth), series.frames, probs, params["prior"])
            candidates |= {"zero_shot_raw": zero, "zero_shot_smoothed": abaw.smooth(zero, k)}
        face = np.zeros(len(truth), bool)
        face[series.frames[series.frames < len(truth)]] = True
        views.setdefault("truth", []).append(truth)
        views.setdefault("face", []).append(face)
        for key, values in candidates.items():
            views.setdefault(key, []).append(abaw.decide(task, values, thresholds))
    if not views:
        raise ValueError(f"{annotations.source}: no annotated video in the extract ({report})")
    truth, face = np.concatenate(views.pop("truth")), np.concatenate(views.pop("face"))
    metrics: dict[str, Any] = {}
    for key, parts in views.items():
        predicted = np.concatenate(parts)
        metrics[key] = {
            "all_frames": abaw.score(task, truth, predicted),
            "face_frames": abaw.score(task, truth[face], predicted[face]),
        }
    return metrics


def _plot(metrics: dict[str, Any], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    keys = [k for k in ("raw", "smoothed", "zero_shot_raw", "zero_shot_smoothed") if k in metrics]
    for i, view in enumerate(("all_frames", "face_frames")):
        values = [metrics[k][view]["score"] for k in keys]
        bars = ax.bar(np.arange(len(keys)) + 0.4 * i, values, 0.4, label=view.replace("_", " "))
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(np.arange(len(keys)) + 0.2, [k.replace("_", " ") for k in keys])
    ax.set(ylabel="challenge score")
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


@dataclass(frozen=True)
class AbawModel:
    """A fitted head with its card (provenance, smoothing, counts) and validation metrics."""

    params: dict[str, Any]
    card: dict[str, Any]
    metrics: dict[str, Any]

    def save(self, model_dir: str | Path) -> None:
        title = f"{self.card['task']}: {self.metrics['validation']}"
        write_model_dir(
            model_dir,
            self.params,
            self.card,
            self.metrics,
            PLOT_FILE,
            lambda path: _plot(self.metrics["scores"], title, path),
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> AbawModel:
        directory = Path(model_dir)
        path = directory / MODEL_FILE
        if abaw_task(directory) == abaw.MTL:
            raise ValueError(
                f"{model_dir} holds the three {abaw.MTL} heads: give {model_dir}/<task>, one of them"
            )
        if not (directory / CARD_FILE).exists() or not path.exists():
            raise ValueError(f"{model_dir}: not a model directory (no {CARD_FILE} and {MODEL_FILE})")
        untrusted = skops.io.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_MODULES]
        if foreign:
            raise ValueError(f"{path} holds types from outside numpy, refusing to load it: {foreign}")
        card = json.loads((directory / CARD_FILE).read_text())
        metrics = json.loads((directory / METRICS_FILE).read_text())
        return cls(skops.io.load(path, trusted=untrusted), card, metrics)


def abaw_task(model_dir: str | Path) -> str | None:
    """The ABAW task of a classifier folder (abaw-mtl: a folder of the three heads), None for others."""
    card = Path(model_dir) / CARD_FILE
    task = str(json.loads(card.read_text()).get("task", "")) if card.exists() else ""
    return task if task.startswith("abaw-") else None


def fit(
    extract: str,
    labels: str,
    task: str,
    out: str | Path,
    *,
    val: str,
    val_extract: str | None = None,
    smooth: int | None = None,
    network: Network = Network(),
    seed: int = 0,
    storage_options: dict | None = None,
) -> AbawModel:
    """Fit the task's head on `labels` (an annotation folder or the MTL CSV) over `extract`, score it on
    `val` over `val_extract` (default `extract`), save it to `out`."""
    abaw.check_task(task)
    k = abaw.SMOOTH[task] if smooth is None else smooth
    if k < 0:
        raise ValueError(f"--smooth must be >= 0 frames, got {k}")
    train_labels, val_labels = abaw.read_annotations(labels, task), abaw.read_annotations(val, task)
    shared = sorted(set(train_labels.videos) & set(val_labels.videos))
    if shared:
        raise ValueError(f"{len(shared)} videos are annotated in both training and validation: {shared[:5]}")
    train_extract = open_extract(extract, storage_options)
    held_extract = open_extract(val_extract, storage_options) if val_extract else train_extract
    problem = emotion_model_mismatch(train_extract.emotion_model, held_extract.emotion_model)
    if problem:
        raise ValueError(f"the validation extract comes from {problem}; extract both splits alike")
    train_report = abaw.match_videos(train_labels, train_extract.frame_counts)
    val_report = abaw.match_videos(val_labels, held_extract.frame_counts)
    rows = training_rows(task, train_extract, train_labels, train_report)
    params = fit_head(task, rows, network=network, seed=seed)
    scores = evaluate(task, params, held_extract, val_labels, val_report, k)
    metrics = {"task": task, "validation": f"given split: {val}", "smooth": k, "scores": scores}
    card = {
        "emotibatch": __version__,
        "task": task,
        "inputs": INPUTS[task],
        "input_width": int(rows.X.shape[1]),
        "with_va": train_extract.with_va,
        "smooth": k,
        "network": asdict(network) if task != "abaw-va" else None,
        "seed": seed,
        "emotion_model": train_extract.emotion_model,
        "detector": train_extract.provenance.detector,
        "detector_sha256": train_extract.provenance.detector_sha256,
        "features": redact_uri(extract),
        "labels": str(labels),
        "val_labels": str(val),
        "n_train_frames": len(rows.Y),
        "n_train_videos": len(np.unique(rows.videos)),
        "train_join": str(train_report),
        "val_join": str(val_report),
        "thresholds": params["thresholds"].tolist() if "thresholds" in params else None,
        "score": {view: scores["smoothed"][view]["score"] for view in ("all_frames", "face_frames")},
    }
    model = AbawModel(params, card, metrics)
    model.save(out)
    return model


@dataclass(frozen=True)
class MtlModel:
    """The three heads fitted on the multi-task CSV, and ABAW's multi-task score (their sum) per view."""

    heads: dict[str, AbawModel]
    card: dict[str, Any]
    metrics: dict[str, Any]


def fit_mtl(
    extract: str,
    labels: str,
    out: str | Path,
    *,
    val: str,
    val_extract: str | None = None,
    smooth: int | None = None,
    network: Network = Network(),
    seed: int = 0,
    storage_options: dict | None = None,
) -> MtlModel:
    """The multi-task challenge: each task's head fitted on the multi-task CSV `labels` and scored on `val`,
    saved to OUT/<task>; the sum of the three scores per view in OUT/metrics.json (card and plot beside).
    `smooth` applies to all three (default: each task's)."""
    for path in (labels, val):
        abaw.check_mtl_csv(path)
    heads = {
        task: fit(
            extract,
            labels,
            task,
            Path(out) / task,
            val=val,
            val_extract=val_extract,
            smooth=smooth,
            network=network,
            seed=seed,
            storage_options=storage_options,
        )
        for task in abaw.MTL_TASKS
    }
    scores = {
        candidate: {
            view: abaw.mtl_score(
                {task: head.metrics["scores"][candidate][view] for task, head in heads.items()}
            )
            for view in ("all_frames", "face_frames")
        }
        for candidate in ("raw", "smoothed")
    }
    metrics = {
        "task": abaw.MTL,
        "validation": f"given split: {val}",
        "smooth": {task: head.card["smooth"] for task, head in heads.items()},
        "scores": scores,
    }
    card = {
        "emotibatch": __version__,
        "task": abaw.MTL,
        "heads": list(abaw.MTL_TASKS),
        "emotion_model": heads["abaw-expr"].card["emotion_model"],
        "labels": str(labels),
        "val_labels": str(val),
        "score": {view: scores["smoothed"][view]["score"] for view in ("all_frames", "face_frames")},
    }
    title = f"{abaw.MTL} (sum of the three): {metrics['validation']}"
    write_model_dir(out, None, card, metrics, PLOT_FILE, lambda path: _plot(scores, title, path))
    return MtlModel(heads, card, metrics)


@dataclass(frozen=True)
class Prediction:
    videos: int
    lines: int
    videos_without_faces: tuple[str, ...]  # given the training prior
    failed: tuple[str, ...]  # videos the extract failed: no file (and, in a sample, missing rows)
    files: tuple[str, ...]  # what was written


def predict(
    extract: str,
    classifier: str | Path,
    out: str | Path,
    *,
    sample: str | None = None,
    smooth: int | None = None,
    storage_options: dict | None = None,
) -> Prediction:
    """Challenge files under the folder `out`: `<video>.txt` per video (a line per frame, or per sample
    row), and with `sample` the single file in its row order, named like it."""
    if "://" in str(out):
        raise ValueError(
            f"{redact_uri(str(out))}: challenge files are written to a local folder; give a path"
        )
    model = AbawModel.load(classifier)
    task, k = model.card["task"], model.card["smooth"] if smooth is None else smooth
    if k < 0:
        raise ValueError(f"--smooth must be >= 0 frames, got {k}")
    source = open_extract(extract, storage_options)
    problem = emotion_model_mismatch(model.card["emotion_model"], source.emotion_model)
    if problem:
        raise ValueError(
            f"these features come from {problem}, which this {task} model was trained on: extract with "
            f"--model {model.card['emotion_model']['model']} to use it"
        )
    by_name = {PurePosixPath(v).name: v for v in source.frame_counts}
    rows = abaw.sample_rows(sample) if sample else None
    if rows is not None:
        lines: dict[str, int] = {}
        for _, video, index in rows:
            lines[video] = max(lines.get(video, 0), index + 1)
        lines = {v: n for v, n in lines.items() if v in by_name}
    else:
        lines = {name: source.frame_counts[v] or 0 for name, v in by_name.items()}
    decided, written, empty = {}, [], []
    local = LocalFileSystem()
    for name, n in sorted(lines.items()):
        series = read_series(source.source, by_name[name], source.with_va)
        if not len(series.frames):
            empty.append(name)
        scores = abaw.smooth(dense(task, model.params, series, n, redact_uri(extract)), k)
        decided[name] = abaw.decide(task, scores, model.params.get("thresholds"))
    text = abaw.single_file(task, rows, decided) if rows is not None else None
    for name, values in decided.items():
        path = str(Path(out) / f"{name}.txt")
        files.write_bytes(local, path, abaw.video_file(task, values).encode())
        written.append(path)
    if text is not None:
        path = str(Path(out) / Path(sample).name)
        files.write_bytes(local, path, text.encode())
        written.append(path)
    return Prediction(len(decided), sum(lines.values()), tuple(empty), source.failed, tuple(written))


def predict_mtl(
    extract: str,
    classifier: str | Path,
    out: str | Path,
    *,
    smooth: int | None = None,
    storage_options: dict | None = None,
) -> dict[str, Prediction]:
    """Each head of an abaw-mtl folder predicts into OUT/<task> (`predict`, without a sample file)."""
    return {
        task: predict(
            extract, Path(classifier) / task, Path(out) / task, smooth=smooth, storage_options=storage_options
        )
        for task in abaw.MTL_TASKS
    }
