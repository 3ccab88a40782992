"""Model cards and resolution of a model name, path or URI to a verified local file.

Every model a job runs is described by one frozen `ModelCard`: what preprocessing and labels it expects comes
from the card, never from substrings of a file name. `resolve` turns a registered name, a local path or any
fsspec URI into a local file that passed its integrity check; copies land in the cache whole (`files.writing`),
under a per-model lock (`files.lock`), so several processes on one node can ask for the same model at once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

import onnx
from fsspec.implementations.local import LocalFileSystem

from emotibatch.io import files
from emotibatch.io.redact import clean_text, redact_uri
from emotibatch.io.sources import open_fs

__all__ = [
    "CACHE_ENV",
    "CARDS",
    "CLASSES_7",
    "CLASSES_8",
    "MEAN_IMAGENET",
    "MODEL_DIR_ENV",
    "STD_IMAGENET",
    "IntegrityError",
    "ModelCard",
    "ModelUnavailableError",
    "cache_root",
    "download",
    "export",
    "get_card",
    "git_blob_sha1",
    "is_cached",
    "list_cards",
    "pin_sha256",
    "resolve",
    "resolve_card",
]

logger = logging.getLogger(__name__)

CACHE_ENV = "EMOTIBATCH_CACHE"
MODEL_DIR_ENV = "EMOTIBATCH_MODEL_DIR"
PINS_FILE = "pins.json"
DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_LOCAL = LocalFileSystem()

EMOTIEFFLIB_COMMIT = "f1df0e8548c666d268826e50b7de107fd5553e9d"
EMOTIEFFLIB_ROOT = f"https://github.com/sb-ai-lab/EmotiEffLib/raw/{EMOTIEFFLIB_COMMIT}"
EMOTIEFFLIB_URL = f"{EMOTIEFFLIB_ROOT}/models/affectnet_emotions/onnx"
EMOTIEFFLIB_LICENSE = "Apache-2.0"
INSIGHTFACE_URL = "https://github.com/deepinsight/insightface/releases/download/model-zoo"
INSIGHTFACE_LICENSE = "non-commercial research only (insightface pretrained models)"

MEAN_IMAGENET = (0.485, 0.456, 0.406)
STD_IMAGENET = (0.229, 0.224, 0.225)
CLASSES_8 = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")
CLASSES_7 = tuple(c for c in CLASSES_8 if c != "Contempt")

# Errors that mean "the server could not be reached", as opposed to a bad or truncated copy.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError)
# Errors that mean "the copy is bad": fetched again once, like a hash mismatch.
_BAD_COPY_ERRORS = (http.client.IncompleteRead, zipfile.BadZipFile)


class ModelUnavailableError(RuntimeError):
    """A model is neither cached nor in the model dir, and its URL cannot be reached (e.g. offline nodes)."""


class IntegrityError(RuntimeError):
    """A fresh copy of a model failed its integrity check twice: a wrong source, not a transient glitch."""


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to fetch, check and feed one ONNX model.

    An emotion model's input is `(pixels / 255 - mean) / std` per RGB channel; detectors and the engagement
    head have no `mean`/`std` (SCRFD's normalisation is fixed by insightface for every SCRFD model:
    preprocess.SCRFD_LUT; the head takes features). The integrity check is `git_sha1` (git blob SHA-1,
    published in the source repository), else `sha256`, else a sha256 pinned in the cache's `pins.json` (by
    the user or on first use). `member` names the file inside a zip pack at `url`. docs/models.md lists them.
    """

    name: str
    kind: Literal["emotion", "detector", "engagement"]
    url: str
    member: str | None
    git_sha1: str | None
    sha256: str | None
    input_size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    classes: tuple[str, ...]
    feature_dim: int | None
    has_va: bool
    license: str

    @property
    def filename(self) -> str:
        """The model's file name in caches and model dirs: `<name>.onnx`, or `.h5` for the Keras head."""
        return self.name + PurePosixPath(self.member or urllib.parse.urlsplit(self.url).path).suffix


def _emotion(
    name: str,
    git_sha1: str,
    input_size: int,
    classes: tuple[str, ...],
    feature_dim: int,
    *,
    has_va: bool = False,
    mean: tuple[float, float, float] = MEAN_IMAGENET,
    std: tuple[float, float, float] = STD_IMAGENET,
) -> ModelCard:
    return ModelCard(
        name=name,
        kind="emotion",
        url=f"{EMOTIEFFLIB_URL}/{name}.onnx",
        member=None,
        git_sha1=git_sha1,
        sha256=None,
        input_size=input_size,
        mean=mean,
        std=std,
        classes=classes,
        feature_dim=feature_dim,
        has_va=has_va,
        license=EMOTIEFFLIB_LICENSE,
    )


def _scrfd(name: str, pack: str) -> ModelCard:
    """insightface publishes no hash for its packs: integrity comes from a user pin or the first download."""
    return ModelCard(
        name=name,
        kind="detector",
        url=f"{INSIGHTFACE_URL}/{pack}.zip",
        member=f"{name}.onnx",
        git_sha1=None,
        sha256=None,
        input_size=None,
        mean=None,
        std=None,
        classes=(),
        feature_dim=None,
        has_va=False,
        license=INSIGHTFACE_LICENSE,
    )


_HALF = (0.5, 0.5, 0.5)

CARDS: Mapping[str, ModelCard] = MappingProxyType(
    {
        card.name: card
        for card in (
            _emotion("enet_b0_8_best_vgaf", "49772db4e87ee6df57087fba131832a959e5c64d", 224, CLASSES_8, 1280),
            _emotion("enet_b0_8_best_afew", "d87faf71e8756d68c701ffd88b4cde4be460f57d", 224, CLASSES_8, 1280),
            _emotion(
                "enet_b0_8_va_mtl",
                "7ce9d6dd5b82b260bc19bfe7822a6ffa1abb6011",
                224,
                CLASSES_8,
                1280,
                has_va=True,
            ),
            _emotion("enet_b2_8", "a7cb612cbab1ce3d50dd52e57285fb2c7ea6d0d9", 260, CLASSES_8, 1408),
            _emotion("enet_b2_7", "cdd6a6070b72ed2e59e15e810ae0ecdbcb0f7626", 260, CLASSES_7, 1408),
            _emotion(
                "mbf_va_mtl",
                "194db927ec135679e5cd0a267c5605e2e9d68e7e",
                112,
                CLASSES_8,
                512,
                has_va=True,
                mean=_HALF,
                std=_HALF,
            ),
            # feature_dim 768 is not verified against the graph yet (docs/models.md, Emotion models).
            _emotion(
                "mobilevit_va_mtl",
                "bed5781a1af9924536638ac3786603e124ee900e",
                224,
                CLASSES_8,
                768,
                has_va=True,
            ),
            _scrfd("det_10g", "buffalo_l"),
            _scrfd("det_500m", "buffalo_sc"),
            # EmotiEffLib's engagement head: 128-frame windows of [std || frame features] of enet_b0
            # (1280-d) features; input_size holds the window length (see engagement.py).
            ModelCard(
                name="engagement_single_attention",
                kind="engagement",
                url=f"{EMOTIEFFLIB_ROOT}/models/engagement_classification/engagement_single_attention.h5",
                member=None,
                git_sha1="25921a298a0ea8cd6761960ef7233aae071d7ec8",
                sha256=None,
                input_size=128,
                mean=None,
                std=None,
                classes=("Distracted", "Engaged"),
                feature_dim=1280,
                has_va=False,
                license=EMOTIEFFLIB_LICENSE,
            ),
        )
    }
)


def get_card(name: str) -> ModelCard | None:
    return CARDS.get(name)


def list_cards() -> tuple[ModelCard, ...]:
    return tuple(CARDS.values())


def _require_card(name: str) -> ModelCard:
    card = CARDS.get(name)
    if card is None:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(CARDS)}")
    return card


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache dir: the argument, else `$EMOTIBATCH_CACHE`, else `~/.cache/emotibatch`."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emotibatch"
    return Path(root).expanduser()


def is_cached(name: str, *, cache_dir: str | None = None) -> bool:
    """Whether the cache holds a copy of the model (checked against its hash only when resolved)."""
    return (cache_root(cache_dir) / _require_card(name).filename).is_file()


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """`git hash-object` of a file: the hash GitHub repositories publish for every file they hold."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    return _hash_file(path, digest)


def file_sha256(path: str | os.PathLike[str]) -> str:
    return _hash_file(path, hashlib.sha256())


def _hash_file(path: str | os.PathLike[str], digest: hashlib._Hash) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_DIGESTS: dict[str, Callable[[Path], str]] = {"git blob SHA-1": git_blob_sha1, "sha256": file_sha256}


def _mismatch(path: Path, expected: tuple[str, str] | None) -> str | None:
    """What is wrong with the file at `path`, or None when it matches (or nothing is expected yet)."""
    if expected is None:
        return None
    algo, want = expected
    got = _DIGESTS[algo](path)
    return None if got == want else f"expected {algo} {want}, got {got}"


def _lock_file(path: Path) -> Path:
    """The lock that serialises the processes of one node that work on `path`."""
    return path.with_name(f".{path.name}.lock")


def _write_json(path: Path, data: object) -> None:
    files.write_bytes(_LOCAL, str(path), json.dumps(data, indent=2, sort_keys=True).encode())


def _read_pins(cache: Path) -> dict[str, str]:
    path = cache / PINS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it") from None


def _update_pin(cache: Path, name: str, sha256: str) -> None:
    path = cache / PINS_FILE
    with files.lock(_lock_file(path)):
        _write_json(path, {**_read_pins(cache), name: sha256})


def pin_sha256(name: str, sha256: str, *, cache_dir: str | None = None) -> None:
    """Pin the sha256 of a model without a published hash (the `.onnx` file, not its zip pack)."""
    card = _require_card(name)
    if card.git_sha1 or card.sha256:
        raise ValueError(f"model {name} has a published hash; a sha256 pin applies to models without one")
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    _update_pin(cache_root(cache_dir), name, sha256)


def _expected_digest(card: ModelCard, cache: Path) -> tuple[str, str] | None:
    if card.git_sha1:
        return "git blob SHA-1", card.git_sha1
    pin = card.sha256 or _read_pins(cache).get(card.name)
    return ("sha256", pin) if pin else None


_license_shown: set[str] = set()


def _show_license(card: ModelCard) -> None:
    if card.license == INSIGHTFACE_LICENSE and card.license not in _license_shown:
        _license_shown.add(card.license)
        logger.warning("model %s is licensed for %s", card.name, card.license)


def download(url: str, dest: Path) -> None:
    """Stream `url` to `dest` with urllib: redirects and proxy variables work as users expect."""
    request = urllib.request.Request(url, headers={"User-Agent": "emotibatch"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _download_member(url: str, member: str, dest: Path) -> None:
    """Download a zip pack beside `dest` and extract the one file wanted (matched by base name)."""
    pack = dest.with_name(dest.name + ".zip")
    try:
        download(url, pack)
        with zipfile.ZipFile(pack) as archive:
            info = next((i for i in archive.infolist() if PurePosixPath(i.filename).name == member), None)
            if info is None:
                raise zipfile.BadZipFile(f"{member} is not in the pack")
            with archive.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
    finally:
        pack.unlink(missing_ok=True)


class _BadCopy(Exception):
    """A fetched copy that failed its check: raised inside `files.writing`, so it never lands."""


def _install(
    target: Path, fetch: Callable[[Path], None], check: Callable[[Path], str | None], what: str
) -> None:
    """Fetch into a scratch file beside `target`, check it, then rename it into place.

    A truncated or corrupted copy never lands at `target`. A bad copy is fetched once more; a second bad copy
    means a wrong source, not a glitch.
    """
    for attempt in (1, 2):
        try:
            with files.writing(_LOCAL, str(target)) as scratch:
                try:
                    fetch(scratch)
                    problem = check(scratch)
                except _BAD_COPY_ERRORS as exc:
                    problem = f"truncated or unreadable copy ({type(exc).__name__}: {clean_text(str(exc))})"
                if problem is not None:
                    raise _BadCopy(problem)
            return
        except _BadCopy as exc:
            problem = str(exc)
            logger.warning("%s: bad copy (%s)%s", what, problem, ", fetching again" if attempt == 1 else "")
    raise IntegrityError(f"{what}: {problem}")


def _unavailable(card: ModelCard, reason: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model {card.name} is not cached and cannot be downloaded from {redact_uri(card.url)} ({reason}). "
        f"Either run `emotibatch models pull {card.name} --output DIR_OR_URI` on a machine with internet access, "
        f"then pass `--model-dir DIR_OR_URI` or set {MODEL_DIR_ENV}=DIR_OR_URI; "
        "or give the model as a local path or URI of its .onnx file."
    )


def _fetch(
    card: ModelCard, target: Path, expected: tuple[str, str] | None, model_dir: str | None, options: dict
) -> None:
    """Copy the model to `target` from the model dir if it holds it, else from its pinned URL."""
    check = partial(_mismatch, expected=expected)
    reason = "no model dir given"
    if model_dir:
        fs, root = open_fs(model_dir, options)
        path = f"{root.rstrip('/')}/{card.filename}"
        shown = f"{redact_uri(model_dir).rstrip('/')}/{card.filename}"
        try:
            found = fs.isfile(path)
        except OSError as exc:
            found, reason = False, f"model dir unreadable: {clean_text(str(exc))}"
        else:
            reason = f"not in model dir {redact_uri(model_dir)}"
        if found:
            _install(
                target, lambda tmp: fs.get_file(path, str(tmp)), check, f"model {card.name} from {shown}"
            )
            return
        logger.info("model %s: %s; downloading %s", card.name, reason, redact_uri(card.url))
    fetch = partial(_download_member, card.url, card.member) if card.member else partial(download, card.url)
    try:
        _install(target, fetch, check, f"model {card.name} from {redact_uri(card.url)}")
    except _NETWORK_ERRORS as exc:
        raise _unavailable(card, f"{reason}; download failed: {clean_text(str(exc))}") from exc


def resolve_card(
    card: ModelCard,
    *,
    cache_dir: str | None = None,
    model_dir: str | None = None,
    storage_options: dict | None = None,
) -> Path:
    """A verified local copy of `card`'s model: from the cache, else `model_dir`, else the card's URL.

    `model_dir` (default `$EMOTIBATCH_MODEL_DIR`) is a local dir or fsspec URI holding `<name>.onnx`, as
    written by `emotibatch models pull --output`. Without a published or pinned hash, the first copy is trusted
    and its sha256 pinned in the cache's `pins.json`; every later copy must match it.
    """
    _show_license(card)
    cache = cache_root(cache_dir)
    target = cache / card.filename
    with files.lock(_lock_file(target)):
        expected = _expected_digest(card, cache)
        if target.exists() and (problem := _mismatch(target, expected)):
            logger.warning("cached %s is corrupt (%s): deleting it and fetching again", target, problem)
            target.unlink()
        if not target.exists():
            source_dir = model_dir or os.environ.get(MODEL_DIR_ENV)
            _fetch(card, target, expected, source_dir, storage_options or {})
        if expected is None:
            sha256 = file_sha256(target)
            _update_pin(cache, card.name, sha256)
            logger.warning(
                "model %s has no published hash: trusted this first copy and pinned sha256 %s in %s; "
                "later copies must match (re-pin with `emotibatch models pull %s --sha256 HEX`)",
                card.name,
                sha256,
                cache / PINS_FILE,
                card.name,
            )
    return target


def _resolve_uri(uri: str, cache: Path, options: dict) -> Path:
    """A local file for an fsspec URI; remote files are cached and fetched again when their stamp changes."""
    fs, path = open_fs(uri, options)
    shown = redact_uri(uri)
    if isinstance(fs, LocalFileSystem):
        if not fs.isfile(path):
            raise FileNotFoundError(f"model file not found: {shown}")
        return Path(path)
    key = hashlib.sha256(shown.encode()).hexdigest()[:16]
    target = cache / "uri" / f"{key}-{PurePosixPath(shown).name}"
    stamp_file = target.with_name(target.name + ".json")
    with files.lock(_lock_file(target)):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file not found: {shown}") from None
        except OSError as exc:
            if not target.exists():
                raise ModelUnavailableError(
                    f"model {shown} is not cached and cannot be read ({clean_text(str(exc))})"
                ) from exc
            logger.warning(
                "cannot check %s for changes (%s): using the cached copy %s",
                shown,
                clean_text(str(exc)),
                target,
            )
            return target
        stamp = {"size": info.get("size"), "stamp": files.stamp(info)}
        if target.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
            return target
        size = info.get("size")

        def check(tmp: Path) -> str | None:
            got = tmp.stat().st_size
            return None if size is None or got == size else f"expected {size} bytes, got {got}"

        _install(target, lambda tmp: fs.get_file(path, str(tmp)), check, f"model {shown}")
        _write_json(stamp_file, stamp)
    return target


def load_onnx(
    model: str,
    kind: Literal["emotion", "detector"],
    *,
    cache_dir: str | None = None,
    model_dir: str | None = None,
    storage_options: dict | None = None,
) -> tuple[ModelCard | None, onnx.ModelProto, Path]:
    """Resolve `model` (name, path or URI) and parse it: its card (None for a bare file), its graph and
    its verified local file.

    A registered model of another kind, or a file that is not ONNX, is a ValueError naming it.
    """
    card = get_card(model)
    if card is not None and card.kind != kind:
        raise ValueError(f"{model} is registered as a {card.kind} model, not a {kind} model")
    path = resolve(model, cache_dir=cache_dir, model_dir=model_dir, storage_options=storage_options)
    try:
        return card, onnx.load(str(path)), path
    except Exception as exc:
        raise ValueError(f"{redact_uri(model)}: not an ONNX model ({clean_text(str(exc))})") from exc


def resolve(
    model: str,
    *,
    cache_dir: str | None = None,
    model_dir: str | None = None,
    storage_options: dict | None = None,
) -> Path:
    """A verified local file for a registered name, a local path or an fsspec URI (`s3://`, `memory://`).

    The cache dir is `cache_dir`, else `$EMOTIBATCH_CACHE`, else `~/.cache/emotibatch`. `storage_options`
    go to fsspec for the model URI and for `model_dir`.
    """
    card = CARDS.get(model)
    if card is not None:
        return resolve_card(card, cache_dir=cache_dir, model_dir=model_dir, storage_options=storage_options)
    if "://" in model:
        return _resolve_uri(model, cache_root(cache_dir), storage_options or {})
    path = Path(model).expanduser()
    if path.is_file():
        return path.resolve()
    raise ValueError(
        f"unknown model {redact_uri(model)!r}: not a registered name, an existing file or a URI; "
        f"registered models: {', '.join(CARDS)}"
    )


def export(name: str, to: str, *, cache_dir: str | None = None, storage_options: dict | None = None) -> str:
    """Resolve a registered model, then copy it to `to/<name>.onnx`: the layout `model_dir` expects.

    Returns the destination, redacted, for display.
    """
    card = _require_card(name)
    local = resolve_card(card, cache_dir=cache_dir, storage_options=storage_options)
    fs, root = open_fs(to, storage_options)
    files.put_file(local, fs, f"{root.rstrip('/')}/{card.filename}")
    return f"{redact_uri(to).rstrip('/')}/{card.filename}"
