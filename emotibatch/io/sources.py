"""What the inputs are and what each video is called.

`list_sources` turns the job's INPUT arguments into a sorted list of `VideoSource`s. An input is any of:

- a video or image file (by path or URI). A missing file is still returned: it must end up as a failed row
  of the videos table, not abort the listing of a large corpus;
- a directory or object-store prefix (`s3://bucket/clips/`, `file://`, `memory://`), searched
  recursively for `VIDEO_EXTENSIONS` and `IMAGE_EXTENSIONS`;
- a glob (`data/*/Happy/*.avi`, `s3://bucket/**/*.mp4`, `photos/*.jpg`);
- a manifest: a `.csv` or `.parquet` file with a `uri` column, an optional `video_id` column and any
  other columns, which are carried into the videos table as `VideoSource.extra`. Relative uris resolve
  against the manifest's directory. See `_read_manifest` for the column rules;
- with `frame_folders=True`, also every directory that holds images (`IMAGE_EXTENSIONS`) directly: one
  video per folder, its frame numbers read from the file names (ABAW's `cropped_aligned/<video>/00001.jpg`).

Images. A still image (`IMAGE_EXTENSIONS`) is an input of its own, one frame (`kind="image"`), wherever it
is found: named directly, in a manifest row, in a searched directory or matched by a glob; photos are as
common a start as videos. `frame_folders=True` changes what searching finds, and only that: every folder
holding images directly is then one video (`kind="frames"`) and no image found by searching is an input
of its own. An image file named directly (a path, a URI, a manifest row) is always an image input, since
one file is never a folder. So the flag alone decides, and each image is read one way, never both.

Hidden files and folders (a name starting with ".", e.g. macOS `._clip.mp4`) are skipped when searching.

Listing runs before any work, so an input that cannot be listed (a directory, prefix, glob or manifest the
storage refuses or cannot reach) is bad usage: `list_sources` raises, naming the input and what to do, and
the job stops before it starts (CLI exit 2). Its videos are unknown, so no row could stand for them, and a
job that silently skipped a whole prefix would look complete. Transient object-store errors are retried
first (`storage.retrying`). An input that names one video or image file is different: whatever its lookup
says (missing, denied, a name too long for the file system), it is kept and fails alone, as its own row.

Storage options are for the filesystems the inputs and the output live on (`s3://`, `gs://`, ...); an
`http(s)://` URL is read as given, without them (`options_for`): a presigned or public URL needs none, and
fsspec's HTTP filesystem would take an object store's options as arguments it does not know.

video_id rule: a manifest's `video_id` wins; otherwise the file stem, for videos and images alike (the
folder name for frame folders). Stems shared by several sources become each one's path relative to the
common root of the inputs they were found under, without the extension (AFEW's `Train/Happy/001.avi` and `Val/Happy/001.avi` become
`Train/Happy/001` and `Val/Happy/001`). The same uri found twice is one source; two different uris that
still get the same id are an error, since every output row is keyed by video_id.

`VideoSource.uri` is what is read and may hold credentials (a presigned query string, `user:password@`);
only `source_uri` (redacted) may be written to tables, logs or error messages.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from emotibatch import schema
from emotibatch.io import storage
from emotibatch.io.redact import redact_uri

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
# Read by plain HTTP(S), never listed: a presigned URL's "?" is not a glob.
URL_PROTOCOLS = ("http://", "https://")

Kind = Literal["video", "frames", "image"]
KINDS: tuple[Kind, ...] = ("video", "frames", "image")
T = TypeVar("T")
_GLOB = re.compile(r"[*?\[]")


# What `VideoSource.extra` may hold: the scalars a manifest's columns give (see `_read_manifest`).
Scalar = None | bool | int | float | str | datetime.date | datetime.datetime
_SCALARS = (type(None), bool, int, float, str, datetime.date)


@dataclass(frozen=True)
class VideoSource:
    """One input to process: a video file, a folder of frame images (`kind="frames"`) or a still image
    (`kind="image"`, one frame). Every kind is a "video" to the rest of the job: one row in `videos/`.

    `extra` holds a manifest's other columns as (name, value) pairs, in column order; a mapping is
    accepted and stored as pairs so that the source stays hashable. Values are scalars (`Scalar`): the
    videos table holds them as they are.
    """

    uri: str
    video_id: str
    kind: Kind = "video"
    extra: tuple[tuple[str, Scalar], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.video_id:
            raise ValueError(f"empty video_id for {self.source_uri}")
        pairs = self.extra.items() if isinstance(self.extra, Mapping) else self.extra
        extra = tuple((str(k), v) for k, v in pairs)
        nested = [k for k, v in extra if not isinstance(v, _SCALARS)]
        if nested:
            raise ValueError(
                f"extra values must be scalars ({', '.join(nested)} are not) for {self.source_uri}"
            )
        object.__setattr__(self, "extra", extra)

    @property
    def source_uri(self) -> str:
        """The uri without credentials."""
        return redact_uri(self.uri)


def options_for(uri: str, storage_options: dict | None) -> dict:
    """The storage options that apply to `uri`: none for an http(s) URL (see the module docstring)."""
    return {} if uri.startswith(URL_PROTOCOLS) else dict(storage_options or {})


def open_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path for `uri` (a plain path is local), with the options that apply to it."""
    return fsspec.core.url_to_fs(uri, **options_for(uri, storage_options))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The canonical uri of `path` on `fs`: a plain absolute path when local."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@dataclass(frozen=True)
class _Found:
    """A source before its id is known. `root` is the input it was found under (for the id rule)."""

    uri: str
    root: str
    kind: Kind = "video"
    video_id: str | None = None
    extra: tuple[tuple[str, Scalar], ...] = ()


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _file_kind(uri: str) -> Kind:
    """What a file named by `uri` is read as: an image by its extension, else a video."""
    return "image" if _ext(redact_uri(uri)) in IMAGE_EXTENSIONS else "video"


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith(".") for part in posixpath.relpath(path, root).split("/"))


def _search(
    fs: fsspec.AbstractFileSystem, files: list[str], root: str, frame_folders: bool, what: str
) -> list[_Found]:
    """Videos and images among `files`, all found under `root`; with `frame_folders`, the folders of
    images instead of the images (see the module docstring).

    `what` names the input in errors, e.g. "data/ holds" or "the glob data/*.mp4 matches".
    """
    files = [f for f in files if not _hidden(f, root)]
    found = [_Found(uri_of(fs, f), uri_of(fs, root)) for f in files if _ext(f) in VIDEO_EXTENSIONS]
    images = [f for f in files if _ext(f) in IMAGE_EXTENSIONS]
    if frame_folders:
        # A folder that is the input itself is named relative to the input's parent.
        found += [
            _Found(uri_of(fs, d), uri_of(fs, posixpath.dirname(d) if d == root else root), "frames")
            for d in sorted({posixpath.dirname(f) for f in images})
        ]
    else:
        found += [_Found(uri_of(fs, f), uri_of(fs, root), "image") for f in images]
    if found:
        return found
    looked, pictures = ", ".join(VIDEO_EXTENSIONS), ", ".join(IMAGE_EXTENSIONS)
    if frame_folders:
        raise ValueError(f"{what} no videos ({looked}) and no folders of images ({pictures})")
    raise ValueError(f"{what} no videos (looked for {looked}) and no images ({pictures})")


def _glob_root(path: str) -> str:
    parts = path.split("/")
    fixed = next(i for i, part in enumerate(parts) if _GLOB.search(part))
    return "/".join(parts[:fixed]) or "/"


def _normalize(uri: str, storage_options: dict | None) -> str:
    if uri.startswith(URL_PROTOCOLS):
        return uri
    return uri_of(*open_fs(uri, storage_options))


# Manifest columns the job reads itself; every other column is carried into the videos table.
_URI, _ID = "uri", "video_id"
# The videos table's own columns: a manifest column of the same name would replace the computed value.
_RESERVED = frozenset(schema.videos_schema().names) - {_ID}


def _carried_type(dtype: pa.DataType) -> pa.DataType | None:
    """The videos-table type an extra manifest column of `dtype` is cast to, or None when it has none."""
    if pa.types.is_dictionary(dtype):  # pandas categoricals: carried as their values
        return _carried_type(dtype.value_type)
    if pa.types.is_null(dtype) or pa.types.is_boolean(dtype):
        return dtype
    if pa.types.is_integer(dtype):
        return pa.int64()
    if pa.types.is_floating(dtype):
        return pa.float64()
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_date(dtype):
        return pa.date32()
    if pa.types.is_timestamp(dtype):
        return pa.timestamp("us", dtype.tz)
    return None


def _cast(table: pa.Table, name: str, target: pa.DataType, shown: str) -> pa.ChunkedArray:
    """`table[name]` as `target`; a value that does not fit is named by its row and column."""
    column = table[name]
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        row = next(
            (i for i, v in enumerate(column.to_pylist(), start=1) if not _fits(v, column.type, target)), None
        )
        where = f"row {row}, column {name!r}" if row else f"column {name!r}"
        raise ValueError(
            f"manifest {shown}, {where}: the value cannot be stored as {target} ({exc}); fix the value "
            "or store the column as text"
        ) from None


def _fits(value: object, dtype: pa.DataType, target: pa.DataType) -> bool:
    try:
        pa.array([value], dtype).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _manifest_table(fs: fsspec.AbstractFileSystem, path: str, shown: str) -> pa.Table:
    """The manifest's table with `uri` and `video_id` as strings and the other columns in the types of the
    videos table (`_carried_type`). Raises ValueError naming the manifest, the column and the fix."""

    def read() -> pa.Table:
        with fs.open(path, "rb") as f:
            if _ext(path) == ".csv":
                # Ids like "001" must stay strings.
                text = pa.string()
                options = pa_csv.ConvertOptions(column_types={_URI: text, _ID: text})
                return pa_csv.read_csv(f, convert_options=options)
            return pq.read_table(f)

    try:
        table = _look(fs, read, shown, "read")
    except pa.ArrowInvalid as exc:  # the CSV's message names the column and the row
        raise ValueError(f"manifest {shown} cannot be read: {exc}; fix the file") from None
    names = table.column_names
    if _URI not in names:
        raise ValueError(f"manifest {shown} has no 'uri' column; its columns: {', '.join(names)}")
    if table.num_rows == 0:
        raise ValueError(f"manifest {shown} has no rows")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"manifest {shown} has more than one column named {', '.join(map(repr, twice))}")
    reserved = [n for n in names if n in _RESERVED]
    if reserved:
        raise ValueError(
            f"manifest {shown}: columns {', '.join(map(repr, reserved))} are the videos table's own, which the "
            "job fills in; rename them (e.g. 'manifest_' + name)"
        )
    columns = {}
    for field_ in table.schema:
        dtype = field_.type
        if pa.types.is_dictionary(dtype):
            dtype = dtype.value_type
        is_text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
        if field_.name == _URI:
            ok, target, want = is_text, pa.string(), "strings (paths or URIs)"
        elif field_.name == _ID:
            # Integer ids are exact as text; a float id (7.0) would not say which text was meant.
            ok, target, want = is_text or pa.types.is_integer(dtype), pa.string(), "strings or integers"
        else:
            target = _carried_type(dtype)
            ok, want = target is not None, "booleans, integers, floats, strings, dates or timestamps"
        if not ok:
            raise ValueError(
                f"manifest {shown}: column {field_.name!r} holds {field_.type}, but it must hold {want}; "
                "store it as text (JSON-encode nested values) or leave it out"
            )
        columns[field_.name] = _cast(table, field_.name, target, shown)
    return pa.table(columns)


def _read_manifest(
    fs: fsspec.AbstractFileSystem, path: str, frame_folders: bool, storage_options: dict | None
) -> list[_Found]:
    """The manifest's sources. Its columns are checked up front, so that a manifest a job cannot use stops
    it before it starts (CLI exit 2), never a video halfway through:

    - `uri` holds strings, `video_id` strings or integers;
    - no column may be named like a column of the videos table (`status`, `fps`, `run_id`, ...): its
      values would replace what the job computed;
    - every other column holds one scalar per row, in a type the videos table keeps as it is: booleans,
      integers (as int64), floats (as float64), strings, dates or timestamps. Nested columns (struct, list,
      map) and other types are rejected, not JSON-encoded: an encoding the job chose would be one more
      format for readers to know, and the manifest's author can encode them as they like.
    """
    shown = redact_uri(uri_of(fs, path))
    table = _manifest_table(fs, path, shown)
    base = posixpath.dirname(path)
    root = uri_of(fs, base)
    found = []
    for line, row in enumerate(table.to_pylist(), start=1):
        uri, video_id = row.pop(_URI), row.pop(_ID, None)
        if not uri:
            raise ValueError(f"manifest {shown}, row {line}: empty uri")
        if "://" not in uri and not posixpath.isabs(uri):
            uri = fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, uri)))
        kind: Kind = _file_kind(uri)
        if kind == "video" and frame_folders and _ext(redact_uri(uri)) not in VIDEO_EXTENSIONS:
            kind = "frames"
        extra = tuple(row.items())
        found.append(_Found(_normalize(uri, storage_options), root, kind, video_id or None, extra))
    return found


def _look(fs: fsspec.AbstractFileSystem, action: Callable[[], T], shown: str, verb: str = "list") -> T:
    """`action()`, a lookup, listing or read of the input `shown`. On an object store transient errors are
    retried, and any failure is a StorageError naming the input and what to do (storage.retrying)."""
    return action() if is_local(fs) else storage.retrying(action, shown, verb)


def _info(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    """`fs.info(path)`, None when nothing is there."""
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _expand(inp: str, frame_folders: bool, storage_options: dict | None) -> list[_Found]:
    shown = redact_uri(inp)
    if inp.startswith(URL_PROTOCOLS):
        return [_Found(inp, posixpath.dirname(shown), _file_kind(inp))]
    fs, path = open_fs(inp, storage_options)
    file = _Found(uri_of(fs, path), uri_of(fs, posixpath.dirname(path)), _file_kind(path))
    names_a_file = (
        _ext(path) in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS and not inp.endswith("/") and not _GLOB.search(path)
    )
    try:
        info = _look(fs, lambda: _info(fs, path), shown)
    except OSError as exc:
        if names_a_file:
            return [file]  # it fails alone, as its own row, with this reason
        if isinstance(exc, storage.StorageError):
            raise
        raise ValueError(f"cannot read {shown}: {exc.strerror or exc}; check the path and access") from None
    if info is not None and info["type"] != "directory":
        if _ext(path) in MANIFEST_EXTENSIONS:
            return _read_manifest(fs, path, frame_folders, storage_options)
        return [file]
    if info is not None:
        return _search(fs, _look(fs, lambda: fs.find(path), shown), path, frame_folders, f"{shown} holds")
    if _GLOB.search(path):
        root = _glob_root(path)
        files = []
        for match, found in sorted(_look(fs, lambda: fs.glob(path, detail=True), shown).items()):
            files += _look(fs, partial(fs.find, match), shown) if found["type"] == "directory" else [match]
        return _search(fs, files, root, frame_folders, f"the glob {shown} matches")
    if names_a_file:
        return [file]
    raise ValueError(
        f"not found: {shown}; give a video or image file, a directory, a glob, a .csv/.parquet manifest or a URI"
    )


def _stem(found: _Found) -> str:
    name = posixpath.basename(redact_uri(found.uri).rstrip("/"))
    return name if found.kind == "frames" else posixpath.splitext(name)[0]


def _relative_ids(group: list[_Found]) -> list[str]:
    """Each source's path under the common root of the inputs it was found under, without extension."""
    roots = [redact_uri(f.root).rstrip("/").split("/") for f in group]
    common = 0
    while all(len(r) > common and r[common] == roots[0][common] for r in roots):
        common += 1
    ids = []
    for f in group:
        rel = "/".join(redact_uri(f.uri).rstrip("/").split("/")[common:])
        ids.append(rel if f.kind == "frames" else posixpath.splitext(rel)[0])
    return ids


def list_sources(
    inputs: Sequence[str], *, frame_folders: bool = False, storage_options: dict | None = None
) -> list[VideoSource]:
    """Every video named by `inputs`, sorted by (video_id, uri). See the module docstring for the rules.

    Raises ValueError for an input that matches nothing (other than a video file path), a manifest
    without a `uri` column, and two different uris that get the same video_id.
    """
    if isinstance(inputs, str) or not inputs:
        raise ValueError(f"inputs must be a non-empty list of paths or URIs, got {inputs!r}")
    found = [f for inp in inputs for f in _expand(inp, frame_folders, storage_options)]

    named = [(f.video_id, f) for f in found if f.video_id is not None]
    by_stem: dict[str, dict[str, _Found]] = defaultdict(dict)
    for f in found:
        if f.video_id is None:
            by_stem[_stem(f)].setdefault(f.uri, f)  # the same uri found twice is one source
    for stem, by_uri in by_stem.items():
        group = list(by_uri.values())
        named += zip(_relative_ids(group) if len(group) > 1 else [stem], group, strict=True)

    sources: dict[tuple[str, str], VideoSource] = {}
    uri_of: dict[str, str] = {}
    for video_id, f in named:
        if uri_of.setdefault(video_id, f.uri) != f.uri:
            raise ValueError(
                f"video_id {video_id!r} names two inputs: {redact_uri(uri_of[video_id])} and "
                f"{redact_uri(f.uri)}; give them distinct ids in a manifest's video_id column"
            )
        sources.setdefault((video_id, f.uri), VideoSource(f.uri, video_id, f.kind, f.extra))
    return [sources[key] for key in sorted(sources)]
