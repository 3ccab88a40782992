"""The extract output on any fsspec filesystem: its layout, atomic commits and staging.

    OUT/_emotibatch.json          settings that decide what rows say; a rerun must match them
    OUT/faces/<video>.parquet     one file per finished video (faces_schema)
    OUT/videos/<video>.parquet    one row per input: the video's commit record, written after its faces
    OUT/runs/<run_id>.parquet     one row per run
    OUT/_staging/<video>/...      per-frame results of extraction, until the per-video pass commits them

Every file is written whole or not at all: on a local disk to a hidden temporary name then renamed, on an
object store from memory by one PUT, or for large files a multipart upload completed last (objects appear
atomically), retried on transient errors (storage.py). Readers (pyarrow datasets, Ray Data) skip names that
start with "_" or ".", so neither staging nor temporaries are ever read as results. A video counts as
finished when its `videos/` row says ok: a crash between its faces file and that row redoes the video.
"""

from __future__ import annotations

import json
import urllib.parse

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotibatch.io import files
from emotibatch.io.redact import redact_uri

SETTINGS_FILE = "_emotibatch.json"
STAGING = "_staging"
TABLES = ("faces", "videos", "runs")


def video_key(video_id: str) -> str:
    """A file name for a video id (ids may hold "/" and other characters file systems dislike)."""
    return urllib.parse.quote(video_id, safe="") or "%00"


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Dictionary-encode the repetitive strings only: on float vectors (float16 features above all) the
    dictionary makes every later read several times slower and saves nothing."""
    return [f.name for f in table.schema if pa.types.is_string(f.type)]


class Output:
    """One extract output root (local path or fsspec URI)."""

    def __init__(self, root: str, storage_options: dict | None = None) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = fsspec.core.url_to_fs(root, **self.storage_options)
        self.path = self.path.rstrip("/")

    def __reduce__(self):
        return (Output, (self.root, self.storage_options))

    def join(self, *parts: str) -> str:
        return "/".join((self.path, *parts))

    # -- whole files ---------------------------------------------------------------------------------

    def write_table(self, path: str, table: pa.Table) -> None:
        """Write `table` to `path` atomically (see module docstring): serialised first, then one write."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, use_dictionary=_dictionary_columns(table))
        files.write_bytes(self.fs, path, buffer.getvalue().to_pybytes())

    def read_tables(self, table: str) -> pa.Table | None:
        """All files of one table concatenated (schemas unified), or None when there are none."""
        files = self._files(self.join(table))
        if not files:
            return None
        tables = [pq.read_table(f, filesystem=self.fs) for f in files]
        return pa.concat_tables(tables, promote_options="permissive")

    def _files(self, directory: str) -> list[str]:
        if not self.fs.exists(directory):
            return []
        return sorted(f for f in self.fs.find(directory) if not f.rsplit("/", 1)[-1].startswith((".", "_")))

    # -- settings --------------------------------------------------------------------------------------

    def check_settings(self, identity: dict, *, overwrite: bool) -> None:
        """Refuse to mix rows made with other settings into this output, unless told to start over."""
        path = self.join(SETTINGS_FILE)
        if overwrite:
            self.clear()
        elif self.fs.exists(path):
            with self.fs.open(path, "r") as f:
                previous = json.load(f)
            changed = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
            if changed:
                details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
                raise ValueError(
                    f"{redact_uri(self.root)} holds results made with other settings ({details}); use another --output, "
                    "or --overwrite to replace them"
                )
            return
        elif any(self._files(self.join(t)) for t in TABLES):
            raise ValueError(
                f"{redact_uri(self.root)} holds tables but no {SETTINGS_FILE}; use --overwrite to replace them"
            )
        self.fs.makedirs(self.path, exist_ok=True)
        with self.fs.open(path, "w") as f:
            json.dump(identity, f, indent=1, sort_keys=True)

    def clear(self) -> None:
        for name in (*TABLES, STAGING, SETTINGS_FILE):
            if self.fs.exists(self.join(name)):
                self.fs.rm(self.join(name), recursive=True)

    # -- videos ------------------------------------------------------------------------------------------

    def finished(self) -> set[str]:
        """Video ids whose commit record says ok."""
        videos = self.read_tables("videos")
        if videos is None:
            return set()
        ok = videos.filter(pc.equal(videos["status"], "ok"))
        return set(ok["video_id"].to_pylist())

    def commit_video(self, video_id: str, faces: pa.Table | None, video_row: pa.Table) -> None:
        """Write a video's faces (if any), then its videos row, then drop its staging."""
        key = video_key(video_id)
        if faces is not None:
            self.write_table(self.join("faces", f"{key}.parquet"), faces)
        elif self.fs.exists(self.join("faces", f"{key}.parquet")):
            self.fs.rm(self.join("faces", f"{key}.parquet"))
        self.write_table(self.join("videos", f"{key}.parquet"), video_row)
        self.drop_staged(video_id)

    # -- staging -----------------------------------------------------------------------------------------

    def staged_path(self, video_id: str, segment_index: int, first: int, last: int) -> str:
        return self.join(
            STAGING, video_key(video_id), f"{segment_index:05d}-{first:010d}-{last:010d}.parquet"
        )

    def stage(self, table: pa.Table) -> None:
        """Write per-frame results (frames_schema), one file per segment piece, named by its frames so
        that a retried task overwrites its own files."""
        keys = pc.binary_join_element_wise(
            table["video_id"], pc.cast(table["segment_index"], pa.string()), "\x00"
        )
        for key in pc.unique(keys).to_pylist():
            part = table.filter(pc.equal(keys, key))
            frames = part["frame_index"]
            video_id, segment = key.split("\x00")
            path = self.staged_path(video_id, int(segment), pc.min(frames).as_py(), pc.max(frames).as_py())
            self.write_table(path, part)

    def staged_videos(self) -> set[str]:
        """Ids of the videos that have a staging folder."""
        directory = self.join(STAGING)
        if not self.fs.exists(directory):
            return set()
        return {
            urllib.parse.unquote(p.rstrip("/").rsplit("/", 1)[-1])
            for p in self.fs.ls(directory, detail=False)
        }

    def staged_files(self, video_id: str) -> list[str]:
        return self._files(self.join(STAGING, video_key(video_id)))

    def staged_coverage(self, video_id: str) -> dict[int, tuple[set[int], bool]]:
        """segment_index -> (frame indices staged, whether a decode error was staged)."""
        coverage: dict[int, tuple[set[int], bool]] = {}
        for path in self.staged_files(video_id):
            segment = int(path.rsplit("/", 1)[-1].split("-", 1)[0])
            table = pq.read_table(path, columns=["frame_index", "error"], filesystem=self.fs)
            frames, failed = coverage.get(segment, (set(), False))
            frames.update(table["frame_index"].to_pylist())
            coverage[segment] = (frames, failed or table["error"].null_count < len(table))
        return coverage

    def read_staged(self, video_id: str) -> pa.Table | None:
        files = self.staged_files(video_id)
        if not files:
            return None
        return pa.concat_tables([pq.read_table(f, filesystem=self.fs) for f in files])

    def drop_staged(self, video_id: str, segment_index: int | None = None) -> None:
        if segment_index is None:
            directory = self.join(STAGING, video_key(video_id))
            if self.fs.exists(directory):
                self.fs.rm(directory, recursive=True)
            return
        prefix = f"{segment_index:05d}-"
        for path in self.staged_files(video_id):
            if path.rsplit("/", 1)[-1].startswith(prefix):
                self.fs.rm(path)


def stage_block(block: pa.Table, output: Output, schema: pa.Schema) -> pa.Table:
    """Ray Data UDF: stage a block of per-frame results (cast to `schema`, whatever Ray Data made of
    the block's types); pass on which frames it held."""
    output.stage(block.select(schema.names).cast(schema))
    return block.select(["video_id", "frame_index"])
