"""What the inputs are and what each video is called.

`list_sources` turns the job's INPUT arguments into a sorted list of `VideoSource`s. An input is any of:

- a video file (by path or URI). A missing file is still returned: it must end up as a failed row of the
  videos table, not abort the listing of a large corpus;
- a directory or object-store prefix (`s3://bucket/clips/`, `file://`, `memory://`), searched
  recursively for `VIDEO_EXTENSIONS`;
- a glob (`data/*/Happy/*.avi`, `s3://bucket/**/*.mp4`);
- a manifest: a `.csv` or `.parquet` file with a `uri` column, an optional `video_id` column and any
  other columns, which are carried into the videos table as `VideoSource.extra`. Relative uris resolve
  against the manifest's directory;
- with `frame_folders=True`, also every directory that holds images (`IMAGE_EXTENSIONS`) directly: one
  video per folder, its frame numbers read from the file names (ABAW's `cropped_aligned/<video>/00001.jpg`).

Hidden files and folders (a name starting with ".", e.g. macOS `._clip.mp4`) are skipped when searching.

video_id rule: a manifest's `video_id` wins; otherwise the file stem (the folder name for frame folders).
Stems shared by several sources become each one's path relative to the common root of the inputs they
were found under, without the extension (AFEW's `Train/Happy/001.avi` and `Val/Happy/001.avi` become
`Train/Happy/001` and `Val/Happy/001`). The same uri found twice is one source; two different uris that
still get the same id are an error, since every output row is keyed by video_id.

`VideoSource.uri` is what is read and may hold credentials (a presigned query string, `user:password@`);
only `source_uri` (redacted) may be written to tables, logs or error messages.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from emotibatch.io.redact import redact_uri

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
# Read by plain HTTP(S), never listed: a presigned URL's "?" is not a glob.
URL_PROTOCOLS = ("http://", "https://")

Kind = Literal["video", "frames"]
_GLOB = re.compile(r"[*?\[]")


def _freeze(value: object) -> object:
    """Lists and structs from a Parquet manifest, made hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    return value


@dataclass(frozen=True)
class VideoSource:
    """One video to process: a video file, or a folder of frame images (`kind="frames"`).

    `extra` holds a manifest's other columns as (name, value) pairs, in column order; a mapping is
    accepted and stored as pairs so that the source stays hashable.
    """

    uri: str
    video_id: str
    kind: Kind = "video"
    extra: tuple[tuple[str, object], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in ("video", "frames"):
            raise ValueError(f"kind must be 'video' or 'frames', got {self.kind!r}")
        if not self.video_id:
            raise ValueError(f"empty video_id for {self.source_uri}")
        pairs = self.extra.items() if isinstance(self.extra, Mapping) else self.extra
        object.__setattr__(self, "extra", tuple((str(k), _freeze(v)) for k, v in pairs))

    @property
    def source_uri(self) -> str:
        """The uri without credentials."""
        return redact_uri(self.uri)


def open_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path for `uri` (a plain path is local)."""
    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


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
    extra: tuple[tuple[str, object], ...] = ()


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith(".") for part in posixpath.relpath(path, root).split("/"))


def _search(
    fs: fsspec.AbstractFileSystem, files: list[str], root: str, frame_folders: bool, what: str
) -> list[_Found]:
    """Videos (and with `frame_folders`, image folders) among `files`, all found under `root`.

    `what` names the input in errors, e.g. "data/ holds" or "the glob data/*.mp4 matches".
    """
    files = [f for f in files if not _hidden(f, root)]
    found = [_Found(uri_of(fs, f), uri_of(fs, root)) for f in files if _ext(f) in VIDEO_EXTENSIONS]
    folders = sorted({posixpath.dirname(f) for f in files if _ext(f) in IMAGE_EXTENSIONS})
    if frame_folders:
        # A folder that is the input itself is named relative to the input's parent.
        found += [
            _Found(uri_of(fs, d), uri_of(fs, posixpath.dirname(d) if d == root else root), "frames")
            for d in folders
        ]
    if found:
        return found
    looked = ", ".join(VIDEO_EXTENSIONS)
    if frame_folders:
        images = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"{what} no videos ({looked}) and no folders of images ({images})")
    hint = f"; it holds images in {len(folders)} folder(s): pass --frame-folders" if folders else ""
    raise ValueError(f"{what} no videos (looked for {looked}){hint}")


def _glob_root(path: str) -> str:
    parts = path.split("/")
    fixed = next(i for i, part in enumerate(parts) if _GLOB.search(part))
    return "/".join(parts[:fixed]) or "/"


def _normalize(uri: str, storage_options: dict | None) -> str:
    if uri.startswith(URL_PROTOCOLS):
        return uri
    return uri_of(*open_fs(uri, storage_options))


def _read_manifest(
    fs: fsspec.AbstractFileSystem, path: str, frame_folders: bool, storage_options: dict | None
) -> list[_Found]:
    shown = redact_uri(uri_of(fs, path))
    with fs.open(path, "rb") as f:
        if _ext(path) == ".csv":
            # Ids like "001" must stay strings.
            text = pa.string()
            options = pa_csv.ConvertOptions(column_types={"uri": text, "video_id": text})
            table = pa_csv.read_csv(f, convert_options=options)
        else:
            table = pq.read_table(f)
    if "uri" not in table.column_names:
        raise ValueError(
            f"manifest {shown} has no 'uri' column; its columns: {', '.join(table.column_names)}"
        )
    if table.num_rows == 0:
        raise ValueError(f"manifest {shown} has no rows")
    base = posixpath.dirname(path)
    root = uri_of(fs, base)
    found = []
    for line, row in enumerate(table.to_pylist(), start=1):
        uri, video_id = row.pop("uri"), row.pop("video_id", None)
        if not uri:
            raise ValueError(f"manifest {shown}, row {line}: empty uri")
        if "://" not in uri and not posixpath.isabs(uri):
            uri = fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, uri)))
        kind: Kind = "frames" if frame_folders and _ext(redact_uri(uri)) not in VIDEO_EXTENSIONS else "video"
        extra = tuple(row.items())
        found.append(_Found(_normalize(uri, storage_options), root, kind, str(video_id or "") or None, extra))
    return found


def _expand(inp: str, frame_folders: bool, storage_options: dict | None) -> list[_Found]:
    shown = redact_uri(inp)
    if inp.startswith(URL_PROTOCOLS):
        return [_Found(inp, posixpath.dirname(shown))]
    fs, path = open_fs(inp, storage_options)
    if fs.isfile(path):
        if _ext(path) in MANIFEST_EXTENSIONS:
            return _read_manifest(fs, path, frame_folders, storage_options)
        return [_Found(uri_of(fs, path), uri_of(fs, posixpath.dirname(path)))]
    if fs.isdir(path):
        return _search(fs, fs.find(path), path, frame_folders, f"{shown} holds")
    if _GLOB.search(path):
        root = _glob_root(path)
        files = []
        for match, info in sorted(fs.glob(path, detail=True).items()):
            files += fs.find(match) if info["type"] == "directory" else [match]
        return _search(fs, files, root, frame_folders, f"the glob {shown} matches")
    if _ext(path) in VIDEO_EXTENSIONS and not inp.endswith("/"):
        return [_Found(uri_of(fs, path), uri_of(fs, posixpath.dirname(path)))]
    raise ValueError(
        f"not found: {shown}; give a video file, a directory, a glob, a .csv/.parquet manifest or a URI"
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
