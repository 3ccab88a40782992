"""Aff-Wild2 (ABAW) per-frame annotations, dense per-frame predictions, the challenge's scores and files.

Formats and the authors' recipe are in docs/corpora.md (ABAW / Aff-Wild2). A video's annotation is one
array with a row per annotation line (row r: image `{r+1:05d}.jpg`, frame_index r), NaN where the corpus
marks the value invalid (-1 for expression and action units, -5 for valence / arousal): those values take
no part in training or scoring. Names join exactly (`video10_left` meets the frame folder `video10_left`
only), never by prefix, and a line is never moved to another frame to make counts agree.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from sklearn.metrics import f1_score

from emotibatch.inference.registry import CLASSES_8

AbawTask = Literal["abaw-expr", "abaw-va", "abaw-au"]
# The multi-task challenge: the three tasks fitted on the multi-task CSV, scored by the sum of their scores.
MTL = "abaw-mtl"
MTL_TASKS: tuple[AbawTask, ...] = ("abaw-expr", "abaw-va", "abaw-au")
MTL_HEADER = ("image", "valence", "arousal", "expression")
EXPR_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
VA_NAMES = ("valence", "arousal")
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
HEADERS: dict[str, tuple[str, ...]] = {"abaw-expr": EXPR_CLASSES, "abaw-va": VA_NAMES, "abaw-au": AU_NAMES}
INVALID = {"abaw-expr": -1.0, "abaw-va": -5.0, "abaw-au": -1.0}
# Authors' submissions: a centred mean over +-k frames (docs/corpora.md).
SMOOTH = {"abaw-expr": 50, "abaw-va": 50, "abaw-au": 5}
# ABAW class j is AffectNet class ZERO_SHOT_ORDER[j] of the 8-class models (Contempt becomes Other).
ZERO_SHOT_ORDER = (5, 0, 2, 3, 4, 6, 7, 1)
_IMAGE = re.compile(r"^(?P<video>.+)/(?P<number>\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
EXAMPLES = 5


def check_task(task: str) -> None:
    if task not in HEADERS:
        raise ValueError(f"ABAW task must be one of {sorted(HEADERS)}, got {task!r}")


def width(task: str) -> int:
    """Score columns of a task: 8 class probabilities, valence and arousal, or 12 AU probabilities."""
    return len(HEADERS[task])


@dataclass(frozen=True)
class Annotations:
    """One task's labels by video name: float [lines, values] (expression: one class index), NaN invalid.

    `sparse`: read from image rows (the MTL CSV, a single-file submission), where unlisted lines are NaN
    and the file says nothing about how many lines the video has."""

    task: str
    videos: Mapping[str, np.ndarray]
    source: str
    sparse: bool = False


def _values(task: str, fields: list[str], where: str) -> np.ndarray:
    """One line's values, checked: invalid markers become NaN, anything else out of range is an error."""
    n = 1 if task == "abaw-expr" else width(task)
    try:
        values = np.array([float(f) for f in fields], np.float64)
    except ValueError:
        values = np.array([])
    if len(values) != n:
        raise ValueError(f"{where}: expected {n} comma-separated numbers for {task}, got {fields}")
    invalid = values == INVALID[task]
    if task == "abaw-va":
        ok = invalid | ((values >= -1) & (values <= 1))
    elif task == "abaw-expr":
        ok = invalid | np.isin(values, np.arange(len(EXPR_CLASSES)))
    else:
        ok = invalid | np.isin(values, (0, 1))
    if not ok.all():
        raise ValueError(f"{where}: {task} values out of range ({INVALID[task]:g} marks invalid): {fields}")
    return np.where(invalid, np.nan, values)


def _header(fields: list[str]) -> tuple[str, ...]:
    return tuple(f.strip().lower() for f in fields)


def read_video_file(path: str | Path, task: str) -> np.ndarray:
    """A `<video>.txt` of EXPR_Set, VA_Set or AU_Set (or a per-video submission file): its header checked."""
    check_task(task)
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.strip() for line in f]
    while lines and not lines[-1]:
        lines.pop()
    want = HEADERS[task]
    if not lines or _header(lines[0].split(",")) != _header(list(want)):
        got = lines[0] if lines else "an empty file"
        raise ValueError(f"{path}: expected the {task} header {','.join(want)}, got {got!r}")
    rows = [_values(task, line.split(","), f"{path}:{n}") for n, line in enumerate(lines[1:], 2)]
    return np.array(rows, np.float64).reshape(len(rows), -1)


def _image_key(image: str, where: str) -> tuple[str, int]:
    match = _IMAGE.match(image.strip().replace("\\", "/"))
    if not match or int(match["number"]) < 1:
        raise ValueError(f"{where}: expected an image `<video>/<n>.jpg` numbered from 1, got {image!r}")
    return match["video"], int(match["number"]) - 1


def _read_image_rows(path: Path, task: str) -> Annotations:
    """The MTL CSV (`image,valence,arousal,expression,aus`) or a single-file submission (`image_location,
    <task header>`): rows by image, each video's array as long as its highest-numbered image."""
    by_video: dict[str, dict[int, np.ndarray]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = _header(next(reader, []))
        mtl = header[:4] == MTL_HEADER
        if not mtl and header != ("image_location", *_header(list(HEADERS[task]))):
            raise ValueError(
                f"{path}: expected the MTL header image,valence,arousal,expression,aus or the {task} "
                f"submission header image_location,{','.join(HEADERS[task])}; got {','.join(header)}"
            )
        for n, row in enumerate(reader, 2):
            if not any(field.strip() for field in row):
                continue
            where = f"{path}:{n}"
            video, index = _image_key(row[0], where)
            fields = row[1:]
            if mtl:  # the twelve AUs as twelve columns or as one field of twelve values
                aus = [a for f in row[4:] for a in re.split(r"[\s;,]+", f.strip()) if a]
                fields = {"abaw-va": row[1:3], "abaw-expr": row[3:4], "abaw-au": aus}[task]
            frames = by_video.setdefault(video, {})
            if index in frames:
                raise ValueError(f"{where}: image {row[0]!r} is listed twice")
            frames[index] = _values(task, fields, where)
    videos = {}
    for video, frames in by_video.items():
        array = np.full((max(frames) + 1, width(task) if task != "abaw-expr" else 1), np.nan)
        for index, values in frames.items():
            array[index] = values
        videos[video] = array
    if not videos:
        raise ValueError(f"{path}: no image rows")
    return Annotations(task, videos, str(path), sparse=True)


def read_annotations(path: str | Path, task: str) -> Annotations:
    """An annotation folder as it ships (`EXPR_Set/Train_Set`: one `<video>.txt` each) or an image-row CSV
    (the MTL file, or a single-file submission)."""
    check_task(task)
    path = Path(path)
    if path.is_file():
        return _read_image_rows(path, task)
    if not path.is_dir():
        raise ValueError(f"{path}: no such annotation folder or file")
    texts = sorted(p for p in path.glob("*.txt") if not p.name.startswith("."))
    if not texts:
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        hint = f" (it holds {', '.join(splits)}: give one of them)" if splits else ""
        raise ValueError(f"{path}: no <video>.txt annotation files{hint}")
    return Annotations(task, {p.stem: read_video_file(p, task) for p in texts}, str(path))


def check_mtl_csv(path: str | Path) -> None:
    """The multi-task task reads the multi-task CSV only: the per-task folders share no frames' labels."""
    path = Path(path)
    if path.is_dir():
        found = "a folder"
    elif not path.is_file():
        found = "no such file"
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = _header(next(csv.reader(f), []))
        if header[:4] == MTL_HEADER:
            return
        found = f"the header {','.join(header)}"
    raise ValueError(
        f"{path}: {MTL} reads the multi-task CSV (image,valence,arousal,expression,aus), got {found}; for "
        "per-task annotation folders fit abaw-expr, abaw-va and abaw-au one by one"
    )


@dataclass(frozen=True)
class LineReport:
    """How annotation files met the extract's videos, by exact name, with the line counts compared."""

    matched: tuple[str, ...]
    annotations_without_video: tuple[str, ...]
    lines_without_frame: Mapping[str, int]  # video -> lines past its last decoded frame (kept, predicted)
    frames_without_line: Mapping[str, int]  # video -> decoded frames past its last line (not used)

    def __str__(self) -> str:
        parts = [f"{len(self.matched)} annotated videos found"]
        if self.annotations_without_video:
            names = self.annotations_without_video
            more = ", ..." if len(names) > EXAMPLES else ""
            parts.append(f"{len(names)} without a video (e.g. {', '.join(names[:EXAMPLES])}{more})")
        for what, counts in (
            ("lines without a frame", self.lines_without_frame),
            ("frames without a line", self.frames_without_line),
        ):
            if counts:
                shown = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items())[:EXAMPLES])
                parts.append(f"{what} in {len(counts)} videos ({shown})")
        return "; ".join(parts)


def match_videos(annotations: Annotations, frame_counts: Mapping[str, int | None]) -> LineReport:
    """Pair annotation files with extract videos (by the video id's last path component, exactly)."""
    by_name: dict[str, str] = {}
    for video in frame_counts:
        name = PurePosixPath(video).name
        if name in annotations.videos and by_name.setdefault(name, video) != video:
            raise ValueError(
                f"the extract holds two videos named {name} ({by_name[name]}, {video}) for one annotation "
                f"file of {annotations.source}: extract each split to its own output"
            )
    matched, missing, extra_lines, extra_frames = [], [], {}, {}
    for name, values in sorted(annotations.videos.items()):
        video = by_name.get(name)
        if video is None:
            missing.append(name)
            continue
        matched.append(video)
        count = frame_counts[video]
        if count is None or annotations.sparse:
            continue
        if len(values) > count:
            extra_lines[name] = len(values) - count
        elif len(values) < count:
            extra_frames[name] = count - len(values)
    return LineReport(tuple(matched), tuple(missing), extra_lines, extra_frames)


def fill(n_lines: int, frames: np.ndarray, scores: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """[n_lines, k] scores from those of the frames with a face: linear between the nearest such frames
    (the nearer weighs more), the first / last held at the ends, the prior where the video has none."""
    keep = (frames >= 0) & (frames < n_lines)
    frames, scores = np.asarray(frames)[keep], np.asarray(scores, np.float64)[keep]
    if not len(frames):
        return np.tile(np.asarray(prior, np.float64), (n_lines, 1))
    order = np.argsort(frames, kind="stable")
    frames, scores = frames[order], scores[order]
    lines = np.arange(n_lines)
    return np.stack([np.interp(lines, frames, scores[:, j]) for j in range(scores.shape[1])], axis=1)


def smooth(scores: np.ndarray, k: int) -> np.ndarray:
    """Centred moving mean over lines [i - k, i + k], the window cut at the ends (k = 0: unchanged)."""
    if k < 0:
        raise ValueError(f"the smoothing half-width must be >= 0 frames, got {k}")
    n = len(scores)
    if k == 0 or n == 0:
        return np.asarray(scores, np.float64)
    sums = np.concatenate([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0, dtype=np.float64)])
    lines = np.arange(n)
    low, high = np.maximum(lines - k, 0), np.minimum(lines + k + 1, n)
    return (sums[high] - sums[low]) / (high - low)[:, None]


def decide(task: str, scores: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """What the challenge scores: the class index, valence / arousal, or each AU over its threshold."""
    if task == "abaw-expr":
        return scores.argmax(1)[:, None].astype(np.float64)
    if task == "abaw-au":
        return (scores >= (0.5 if thresholds is None else thresholds)).astype(np.float64)
    return np.clip(scores, -1, 1)


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation with population (ddof 0) variances, as the challenge computes it."""
    mx, my = x.mean(), y.mean()
    covariance = ((x - mx) * (y - my)).mean()
    return float(2 * covariance / (x.var() + y.var() + (mx - my) ** 2))


def score(task: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The task's challenge measure over the rows whose labels are valid, and its parts."""
    if task == "abaw-expr":
        rows = ~np.isnan(truth[:, 0])
        f1 = f1_score(
            truth[rows, 0].astype(int),
            predicted[rows, 0].astype(int),
            labels=range(len(EXPR_CLASSES)),
            average="macro",
            zero_division=0,
        )
        return {"score": float(f1), "n": int(rows.sum())}
    if task == "abaw-va":
        parts = {}
        for j, name in enumerate(VA_NAMES):
            rows = ~np.isnan(truth[:, j])
            parts[f"ccc_{name}"] = ccc(predicted[rows, j], truth[rows, j])
        return {"score": (parts["ccc_valence"] + parts["ccc_arousal"]) / 2, **parts, "n": len(truth)}
    f1s = {}
    for j, name in enumerate(AU_NAMES):
        rows = ~np.isnan(truth[:, j])
        f1s[f"f1_{name}"] = float(f1_score(truth[rows, j], predicted[rows, j], zero_division=0))
    return {"score": float(np.mean(list(f1s.values()))), **f1s, "n": len(truth)}


def mtl_score(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """ABAW's multi-task measure from the three tasks' `score`s: expression F1 + mean VA CCC + mean AU F1,
    each over its own valid labels."""
    parts = {task: float(scores[task]["score"]) for task in MTL_TASKS}
    return {"score": sum(parts.values()), **parts}


def zero_shot(classes: tuple[str, ...] | list[str], probs: np.ndarray) -> np.ndarray:
    """An 8-class AffectNet model's probabilities in ABAW's class order (Contempt becomes Other)."""
    if tuple(classes) != CLASSES_8:
        raise ValueError(
            f"the zero-shot baseline needs an 8-class AffectNet model ({', '.join(CLASSES_8)}); this "
            f"extract's model has {list(classes)}"
        )
    return np.asarray(probs)[:, ZERO_SHOT_ORDER]


def format_line(task: str, values: np.ndarray) -> str:
    """One line of an annotation / submission file for decided values (`decide`)."""
    if task == "abaw-va":
        return ",".join(f"{v:.6f}" for v in values)
    return ",".join(str(int(v)) for v in values)


def video_file(task: str, decided: np.ndarray) -> str:
    """A per-video submission file: the annotation header, then one line per annotation line."""
    return "\n".join([",".join(HEADERS[task]), *(format_line(task, row) for row in decided)]) + "\n"


def sample_rows(path: str | Path) -> list[tuple[str, str, int]]:
    """A sample submission's rows in order: (image as written, video, line index)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if not header or header[0].strip().lower() != "image_location":
            raise ValueError(
                f"{path}: a sample submission starts with the column image_location, got {header}"
            )
        rows = []
        for n, row in enumerate(reader, 2):
            if row and row[0].strip():
                rows.append((row[0].strip(), *_image_key(row[0], f"{path}:{n}")))
    return rows


def single_file(task: str, rows: list[tuple[str, str, int]], decided: Mapping[str, np.ndarray]) -> str:
    """The single-file submission in the sample's row order; refused when any row has no prediction."""
    missing = [image for image, video, index in rows if video not in decided or index >= len(decided[video])]
    if missing:
        more = ", ..." if len(missing) > EXAMPLES else ""
        raise ValueError(
            f"{len(missing)} rows of the sample have no prediction (e.g. {', '.join(missing[:EXAMPLES])}{more}): "
            "extract those videos (or frames) and predict again"
        )
    lines = [",".join(("image_location", *HEADERS[task]))]
    lines += [f"{image},{format_line(task, decided[video][index])}" for image, video, index in rows]
    return "\n".join(lines) + "\n"
