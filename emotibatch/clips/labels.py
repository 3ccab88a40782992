"""Clip labels in the corpora's own formats, and their join with descriptors on video_id.

Corpora name clips their own way (`Val/Happy/001.avi`, `1100011002.avi`, `subject_1_Vid_2`) and the extract
names videos by file stem, or by relative path where stems collide. The join therefore matches ids without
their extension, exactly first, then by the longest path tail that pairs one clip with one video, and
reports what it could not match rather than dropping it silently.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["classification", "regression"]
AFEW_CLASSES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
VGAF_CLASSES = {"1": "Positive", "2": "Neutral", "3": "Negative"}
DAISEE_TARGETS = ("boredom", "engagement", "confusion", "frustration")
DAISEE_LEVELS = ("0", "1", "2", "3")
# A file extension: up to 5 letters or digits, at least one letter (so `clip.2` keeps its `.2`).
_EXTENSION = re.compile(r"\.(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{1,5}$")
EXAMPLES = 5


@dataclass(frozen=True)
class LabelSet:
    """Labels by clip id as the corpus writes it; `classes` in the corpus's order (empty for regression)."""

    labels: dict[str, str | float]
    kind: Kind
    classes: tuple[str, ...]
    source: str
    target: str | None = None  # the column read, where a corpus has several (DAiSEE)


def _add(labels: dict[str, str | float], clip: str, label: str | float, where: str) -> None:
    clip = clip.strip()
    if labels.get(clip, label) != label:
        raise ValueError(f"{where}: {clip!r} has two labels, {labels[clip]!r} and {label!r}")
    labels[clip] = label


def _lines(path: str | Path) -> list[tuple[int, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def _present(labels: dict[str, str | float], order: Iterable[str]) -> tuple[str, ...]:
    present = set(labels.values())
    return tuple(c for c in order if c in present)


def read_afew(root: str | Path) -> LabelSet:
    """AFEW's layout: the label of `.../<Angry|...|Surprise>/<clip>` is its parent folder's name."""
    root = Path(root)
    names = {c.lower(): c for c in AFEW_CLASSES}
    labels: dict[str, str | float] = {}
    for path in sorted(root.rglob("*")):
        if path.parent.name.lower() in names and not path.name.startswith("."):
            _add(labels, path.relative_to(root).as_posix(), names[path.parent.name.lower()], str(root))
    if not labels:
        raise ValueError(
            f"{root}: no clips in class folders (expected Train|Val/<{'|'.join(AFEW_CLASSES)}>/<clip>)"
        )
    return LabelSet(labels, "classification", _present(labels, AFEW_CLASSES), str(root))


def read_vgaf(path: str | Path) -> LabelSet:
    """VGAF's `Train_labels.txt` / `Val_labels.txt`: a header, then `videoname label` (1, 2, 3)."""
    labels: dict[str, str | float] = {}
    for n, line in _lines(path)[1:]:
        fields = re.split(r"[\s,]+", line)
        if len(fields) != 2 or fields[1] not in VGAF_CLASSES:
            raise ValueError(f"{path}:{n}: expected `videoname label` with label 1, 2 or 3, got {line!r}")
        _add(labels, fields[0], VGAF_CLASSES[fields[1]], str(path))
    return LabelSet(labels, "classification", _present(labels, VGAF_CLASSES.values()), str(path))


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_engagewild(path: str | Path) -> LabelSet:
    """EngageWild's engagement levels (0, 0.33, 0.66, 1) per `subject_X_Vid_Y`; tabs, commas or spaces."""
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: empty labels file")
    first = lines[0][1]
    separator = "\t" if "\t" in first else "," if "," in first else None
    rows = [(n, [f.strip() for f in line.split(separator)]) for n, line in lines]
    if len(rows[0][1]) >= 2 and _float(rows[0][1][1]) is None:
        rows = rows[1:]  # a header
    labels: dict[str, str | float] = {}
    for n, fields in rows:
        value = _float(fields[1]) if len(fields) == 2 else None
        if value is None or not 0 <= value <= 1:
            raise ValueError(
                f"{path}:{n}: expected `video<separator>level` with a level in [0, 1], got {fields}"
            )
        _add(labels, fields[0], value, str(path))
    return LabelSet(labels, "regression", (), str(path))


def read_daisee(path: str | Path, target: str = "engagement") -> LabelSet:
    """DAiSEE's `AllLabels.csv`: ClipID (with its extension), then a 0-3 level per affective state."""
    if target not in DAISEE_TARGETS:
        raise ValueError(f"DAiSEE target must be one of {DAISEE_TARGETS}, got {target!r}")
    labels: dict[str, str | float] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "clipid" not in header or target not in header:
            raise ValueError(f"{path}: expected columns ClipID and {target.capitalize()}, got {header}")
        clip, column = header.index("clipid"), header.index(target)
        for n, row in enumerate(reader, 2):
            if not any(field.strip() for field in row):
                continue
            level = row[column].strip() if len(row) > column else ""
            if level not in DAISEE_LEVELS:
                raise ValueError(f"{path}:{n}: {target} must be 0, 1, 2 or 3, got {level!r}")
            _add(labels, row[clip], level, str(path))
    return LabelSet(labels, "classification", _present(labels, DAISEE_LEVELS), str(path), target)


def read_generic(path: str | Path) -> LabelSet:
    """A CSV with a header holding `video_id` and `label`; classes in sorted order."""
    labels: dict[str, str | float] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "video_id" not in fields or "label" not in fields:
            raise ValueError(f"{path}: expected a header with video_id and label, got {reader.fieldnames}")
        for row in reader:
            _add(labels, row[fields["video_id"]], row[fields["label"]].strip(), str(path))
    return LabelSet(labels, "classification", tuple(sorted(set(labels.values()))), str(path))


READERS: dict[str, Callable[[str | Path], LabelSet]] = {
    "afew": read_afew,
    "vgaf": read_vgaf,
    "engagewild": read_engagewild,
    "daisee": read_daisee,
    "generic": read_generic,
}


def read_labels(path: str | Path, task: str, *, target: str | None = None) -> LabelSet:
    """The labels of `task` read from `path` in that corpus's format (`target`: DAiSEE's column)."""
    if task not in READERS:
        raise ValueError(f"task must be one of {sorted(READERS)}, got {task!r}")
    if target is not None and task != "daisee":
        raise ValueError(f"--target applies to DAiSEE labels only, not {task}")
    if not Path(path).exists():
        raise ValueError(f"{path}: no such labels file or folder")
    return read_daisee(path, target) if target is not None else READERS[task](path)


@dataclass(frozen=True)
class JoinReport:
    """How clip ids met labels: counts, and the ids that did not meet (all kept; examples printed)."""

    matched: int
    videos_without_label: tuple[str, ...]
    labels_without_video: tuple[str, ...]
    ambiguous: tuple[str, ...]  # video ids that several labelled clips fit equally well

    def __str__(self) -> str:
        parts = [f"{self.matched} clips labelled"]
        for what, ids in (
            ("videos without a label", self.videos_without_label),
            ("labels without a video", self.labels_without_video),
            ("ambiguous ids (several labelled clips fit them)", self.ambiguous),
        ):
            if ids:
                more = ", ..." if len(ids) > EXAMPLES else ""
                parts.append(f"{len(ids)} {what} (e.g. {', '.join(ids[:EXAMPLES])}{more})")
        return "; ".join(parts)


def _key(clip: str) -> str:
    return _EXTENSION.sub("", clip.strip().replace("\\", "/").strip("/"))


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _shared_tail(a: str, b: str) -> int:
    """How many trailing path components two keys share (`Train/Happy/001`, `Happy/001`: 2)."""
    n = 0
    for x, y in zip(reversed(a.split("/")), reversed(b.split("/"))):
        if x != y:
            break
        n += 1
    return n


def _best(scores: dict[str, int]) -> str | None:
    """The one entry with the highest score; None on a tie."""
    top = max(scores.values())
    winners = [k for k, score in scores.items() if score == top]
    return winners[0] if len(winners) == 1 else None


def join(video_ids: Iterable[str], labels: LabelSet) -> tuple[dict[str, str | float], JoinReport]:
    """Labels by video id. Ids are compared without extension: equal ids match; otherwise a video matches
    the labelled clip of its file name that shares the longest path tail with it, when no other clip ties
    for it and no other video shares as long a tail with that clip. Ties, and an id whose clips carry
    different labels (`a.avi`, `a.mp4`), are reported as ambiguous, never guessed."""
    clips: dict[str, list[str]] = defaultdict(list)  # id without extension -> the clips as written
    for clip in labels.labels:
        clips[_key(clip)].append(clip)
    videos = sorted(set(video_ids))
    keys_by_name: dict[str, list[str]] = defaultdict(list)
    for key in clips:
        keys_by_name[_name(key)].append(key)
    videos_by_name: dict[str, list[str]] = defaultdict(list)
    for v in videos:
        videos_by_name[_name(_key(v))].append(v)

    matched: dict[str, str] = {}  # video -> key
    ambiguous = []
    for v in videos:
        key = _key(v)
        if key not in clips:
            candidates = keys_by_name.get(_name(key))
            if not candidates:
                continue
            choice = _best({c: _shared_tail(key, c) for c in candidates})
            if choice is None:
                ambiguous.append(v)
                continue
            rivals = {u: _shared_tail(_key(u), choice) for u in videos_by_name[_name(key)]}
            if _best(rivals) != v:
                continue
            key = choice
        if len({labels.labels[c] for c in clips[key]}) > 1:
            ambiguous.append(v)
        else:
            matched[v] = key
    taken = set(matched.values())
    report = JoinReport(
        matched=len(matched),
        videos_without_label=tuple(v for v in videos if v not in matched and v not in ambiguous),
        labels_without_video=tuple(sorted(c for key, cs in clips.items() if key not in taken for c in cs)),
        ambiguous=tuple(ambiguous),
    )
    return {v: labels.labels[clips[key][0]] for v, key in matched.items()}, report
