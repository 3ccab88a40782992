"""The extract output on any fsspec filesystem: its layout, atomic commits, staging and the run's lease.

    OUT/_emotibatch.json          settings that decide what rows say, and the layout version; a rerun must match
    OUT/_lease.json               which run is writing OUT now (Lease)
    OUT/faces/<key>.parquet       one file per finished video (faces_schema)
    OUT/videos/<key>.parquet      one row per input: the video's commit record, written after its faces
    OUT/runs/<run_id>.parquet     one row per run
    OUT/_staging/<key>/...        per-frame results of extraction, until the per-video pass commits them

Only `Output`'s methods build these paths. A video's `<key>` is `video_key(video_id)`: a file name, never
an id source: readers learn ids from the rows. Every file is written whole or not at all: on a local disk
to a hidden temporary name then renamed, on an object store from memory by one PUT, or for large files a
multipart upload completed last (objects appear atomically), retried on transient errors (io/files.py).
Readers (pyarrow datasets, Ray Data) skip names that start with "_" or ".", so neither staging nor
temporaries are ever read as results. A video counts as finished when its `videos/` row says ok: a crash
between its faces file and that row redoes the video.

Outputs written before the layout version was recorded (LAYOUT 1: keys were the %-quoted id, so an id
like ".." or "_intro" escaped or vanished) are refused by a rerun and by every reader, with the fix:
`--overwrite` (or another --output).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotibatch.io import files
from emotibatch.io.redact import redact_uri
from emotibatch.io.sources import is_local, open_fs

log = logging.getLogger(__name__)

SETTINGS_FILE = "_emotibatch.json"
LEASE_FILE = "_lease.json"
STAGING = "_staging"
TABLES = ("faces", "videos", "runs")
# The file layout's version, recorded in the settings file; 2: keys from `video_key` with a hash.
LAYOUT = 2
# The readable part of a key, in characters of the %-quoted id: with the hash and ".parquet" a key stays
# far below the 255-byte name limit of common file systems and object-store tools.
KEY_READABLE_CHARS = 96
# Hex digits of sha256 in a key: 64 bits, so two ids of a million-video output share a key with a
# probability of about 3e-8.
KEY_HASH_CHARS = 16


def video_key(video_id: str) -> str:
    """The file name stem of a video: its %-quoted id cut to KEY_READABLE_CHARS, then "-" and a hash of
    the whole id. Never ".", "..", empty or starting with "_" or "." (names readers skip), never holding
    "/", always short enough, and different ids get different keys (up to the hash's collisions)."""
    readable = urllib.parse.quote(video_id, safe="", errors="surrogatepass")[:KEY_READABLE_CHARS]
    cut = readable.rfind("%", len(readable) - 2)
    if cut >= 0:  # an escape cut short
        readable = readable[:cut]
    if readable.startswith((".", "_")):
        readable = f"%{ord(readable[0]):02X}{readable[1:]}"
    digest = hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_HASH_CHARS]
    return f"{readable}-{digest}"


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Dictionary-encode the repetitive strings only: on float vectors (float16 features above all) the
    dictionary makes every later read several times slower and saves nothing."""
    return [f.name for f in table.schema if pa.types.is_string(f.type)]


class Output:
    """One extract output root (local path or fsspec URI)."""

    def __init__(self, root: str, storage_options: dict | None = None) -> None:
        self.root = root
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = open_fs(root, self.storage_options)
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
        self.check_layout()
        files = self._files(self.join(table))
        if not files:
            return None
        tables = [pq.read_table(f, filesystem=self.fs) for f in files]
        return pa.concat_tables(tables, promote_options="permissive")

    def _files(self, directory: str) -> list[str]:
        """The Parquet files under `directory`, without the hidden and "_" names readers skip."""
        if not self.fs.exists(directory):
            return []
        return sorted(
            f
            for f in self.fs.find(directory)
            if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith((".", "_"))
        )

    # -- the layout's paths ------------------------------------------------------------------------------

    def faces_path(self, video_id: str) -> str:
        return self.join("faces", f"{video_key(video_id)}.parquet")

    def videos_path(self, video_id: str) -> str:
        return self.join("videos", f"{video_key(video_id)}.parquet")

    def run_path(self, run_id: str) -> str:
        return self.join("runs", f"{run_id}.parquet")

    def staging_dir(self, video_id: str) -> str:
        return self.join(STAGING, video_key(video_id))

    def settings_path(self) -> str:
        return self.join(SETTINGS_FILE)

    # -- settings --------------------------------------------------------------------------------------

    def read_settings(self) -> dict | None:
        """The settings file's content, or None when there is none."""
        path = self.settings_path()
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def check_layout(self) -> None:
        """Refuse an output whose files follow another layout (see the module docstring): its files
        would not be found under this layout's names."""
        settings = self.read_settings()
        if settings is not None and settings.get("layout") != LAYOUT:
            raise ValueError(
                f"{redact_uri(self.root)} was written by an older emotibatch with another file layout "
                f"(layout {settings.get('layout', 1)}, this version reads {LAYOUT}); extract it again with "
                "--overwrite, or into another --output"
            )

    def check_settings(self, identity: dict, *, overwrite: bool) -> None:
        """Refuse to mix rows made with other settings into this output, unless told to start over."""
        if overwrite:
            self.clear()
        elif (previous := self.read_settings()) is not None:
            self.check_layout()
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
        settings = json.dumps(identity | {"layout": LAYOUT}, indent=1, sort_keys=True)
        files.write_bytes(self.fs, self.settings_path(), settings.encode())

    def _owned(self, path: str) -> bool:
        """Whether `path` (a file under OUT) is one emotibatch writes: a table's Parquet file or a
        temporary beside it, a staged piece, or the settings file."""
        parts = path[len(self.path) + 1 :].split("/")
        name = parts[-1]
        ours = name.endswith(".parquet") or name.startswith(".tmp-")
        if parts[0] in TABLES:
            return len(parts) == 2 and ours
        if parts[0] == STAGING:
            return len(parts) == 3 and ours
        return parts == [SETTINGS_FILE]

    def clear(self) -> None:
        """Delete this output's tables, staging and settings (for --overwrite); refuse, deleting nothing,
        when those places hold anything emotibatch does not write there."""
        places = [self.join(name) for name in (*TABLES, STAGING, SETTINGS_FILE)]
        found = [f for p in places if self.fs.exists(p) for f in self.fs.find(p)]
        foreign = [f for f in found if not self._owned(f)]
        if foreign:
            shown = ", ".join(redact_uri(self.fs.unstrip_protocol(f)) for f in sorted(foreign)[:3])
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise ValueError(
                f"--overwrite deletes only emotibatch's own files, but {redact_uri(self.root)} holds others "
                f"where its tables go: {shown}{more}; move them away, or choose another --output"
            )
        for place in places:
            if self.fs.exists(place):
                self.fs.rm(place, recursive=True)

    def contains(self, uri: str) -> bool:
        """Whether `uri` (an input) lies inside this output, where --overwrite or a commit could touch it."""
        try:
            fs, path = open_fs(uri, self.storage_options)
        except (ValueError, ImportError):
            return False
        if fs.protocol != self.fs.protocol:
            return False
        mine, path = self.path, path.rstrip("/")
        if is_local(self.fs):
            mine, path = os.path.realpath(mine), os.path.realpath(path)
        return path == mine or path.startswith(mine.rstrip("/") + "/")

    # -- videos ------------------------------------------------------------------------------------------

    def finished(self) -> set[str]:
        """Video ids whose commit record says ok."""
        videos = self.read_tables("videos")
        if videos is None:
            return set()
        ok = videos.filter(pc.equal(videos["status"], "ok"))
        return set(ok["video_id"].to_pylist())

    def committed_row(self, video_id: str) -> dict | None:
        """The video's row in `videos/`, or None when it has none."""
        path = self.videos_path(video_id)
        if not self.fs.exists(path):
            return None
        rows = pq.read_table(path, filesystem=self.fs).to_pylist()
        return next((r for r in rows if r["video_id"] == video_id), None)

    def commit_video(self, video_id: str, faces: pa.Table | None, video_row: pa.Table) -> None:
        """Write a video's faces (if any), then its videos row, then drop its staging."""
        if faces is not None:
            self.write_table(self.faces_path(video_id), faces)
        elif self.fs.exists(self.faces_path(video_id)):
            self.fs.rm(self.faces_path(video_id))
        self.write_table(self.videos_path(video_id), video_row)
        self.drop_staged(video_id)

    # -- staging -----------------------------------------------------------------------------------------

    def staged_path(self, video_id: str, segment_index: int, first: int, last: int) -> str:
        return f"{self.staging_dir(video_id)}/{segment_index:05d}-{first:010d}-{last:010d}.parquet"

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

    def staged_keys(self) -> set[str]:
        """Keys (video_key) of the videos that have a staging folder."""
        directory = self.join(STAGING)
        if not self.fs.exists(directory):
            return set()
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(directory, detail=False)}

    def staged_files(self, video_id: str) -> list[str]:
        return self._files(self.staging_dir(video_id))

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
            directory = self.staging_dir(video_id)
            if self.fs.exists(directory):
                self.fs.rm(directory, recursive=True)
            return
        prefix = f"{segment_index:05d}-"
        for path in self.staged_files(video_id):
            if path.rsplit("/", 1)[-1].startswith(prefix):
                self.fs.rm(path)


# -- the lease ------------------------------------------------------------------------------------------

# A lease whose heartbeat is older than this is its dead holder's, and is taken over. Far above HEARTBEAT_S
# so that a slow store or a paused driver does not lose a live run its lease.
LEASE_TIMEOUT_S = 600.0
HEARTBEAT_S = 30.0
# On an object store: how long a run waits after writing the lease before reading it back (see Lease).
LEASE_SETTLE_S = 1.0


class OutputBusy(ValueError):
    """Another live run holds the output's lease (a usage error: exit 2)."""


class Lease:
    """One run's exclusive hold on an output: `OUT/_lease.json` names the holder (host, pid, run id) and
    its last heartbeat, renewed every HEARTBEAT_S by a thread of the driver and deleted by `release`.

    A run finding another's lease is refused (OutputBusy, naming the holder) unless the holder is dead:
    its heartbeat is older than `timeout_s`, or it ran on this host and its pid is gone (a killed run is
    taken over at once). Guarantees: on a local or network file system that has hard links, creating the
    lease is atomic (a complete file linked under the name, which fails when one exists). Object stores
    have no portable conditional PUT in fsspec, so a run writes its record, waits LEASE_SETTLE_S and reads it
    back: of two runs that start together the later write wins and the other is refused, unless one of
    them stalls longer than the settle time between finding no lease and writing its own. Taking over a
    dead holder's lease uses the same write, settle and read back on every file system. A run whose lease
    was taken over (its heartbeat stopped for `timeout_s`) logs an error; it is not stopped.
    """

    def __init__(self, output: Output, run_id: str, *, timeout_s: float = LEASE_TIMEOUT_S) -> None:
        self.output = output
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.path = output.join(LEASE_FILE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        return {
            "owner": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": self.run_id,
            "heartbeat": datetime.now(timezone.utc).isoformat(),
        }

    def read(self) -> dict | None:
        """The lease's record, or None when there is none."""
        fs = self.output.fs
        fs.invalidate_cache(self.path)
        try:
            return json.loads(fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:  # not a lease record (a damaged file): no heartbeat, so a dead holder's
            return {}

    def _write(self, *, create: bool) -> bool:
        """Write this run's record; with `create`, only where no lease exists. True when written."""
        data = json.dumps(self._record()).encode()
        fs = self.output.fs
        if create and is_local(fs):
            # Atomic create: a complete file linked under the name, which fails when one exists.
            temporary = self.output.join(f".lease-{uuid.uuid4().hex}")
            files.write_bytes(fs, temporary, data)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
            return True
        if create:
            fs.invalidate_cache(self.path)
            if fs.exists(self.path):
                return False
        files.write_bytes(fs, self.path, data)
        return True

    def _dead(self, holder: dict) -> bool:
        try:
            beat = datetime.fromisoformat(holder["heartbeat"])
            age = (datetime.now(timezone.utc) - beat).total_seconds()
        except (KeyError, TypeError, ValueError):
            age = float("inf")
        if age > self.timeout_s:
            return True
        if holder.get("owner") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def _busy(self, holder: dict) -> OutputBusy:
        return OutputBusy(
            f"{redact_uri(self.output.root)} is being written by run {holder.get('run_id')} "
            f"(host {holder.get('owner')}, pid {holder.get('pid')}, last heartbeat {holder.get('heartbeat')}); "
            f"wait for it to end, or use another --output. A lease without a heartbeat for "
            f"{self.timeout_s:.0f} s is taken over."
        )

    def _settled(self) -> bool:
        """After a write that may race another run's: whether our record is the one that stayed."""
        time.sleep(LEASE_SETTLE_S)
        held = self.read()
        return held is not None and held.get("run_id") == self.run_id

    def acquire(self) -> Lease:
        """Take the lease (see the class docstring) and start the heartbeat; raise OutputBusy when held."""
        for _ in range(3):  # a lease released between our attempt and our read is tried again
            if self._write(create=True):
                if not is_local(self.output.fs) and not self._settled():
                    raise self._busy(self.read() or {})
                break
            holder = self.read()
            if holder is None:
                continue
            if not self._dead(holder):
                raise self._busy(holder)
            log.warning(
                "taking over the lease of run %s (host %s, pid %s, last heartbeat %s): its holder is gone",
                holder.get("run_id"),
                holder.get("owner"),
                holder.get("pid"),
                holder.get("heartbeat"),
            )
            self._write(create=False)
            if not self._settled():
                raise self._busy(self.read() or {})
            break
        else:
            raise self._busy(self.read() or {})
        self._thread = threading.Thread(target=self._beat, name="emotibatch-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = self.read()
                if holder is None or holder.get("run_id") != self.run_id:
                    log.error("%s: this run lost its lease to %s", redact_uri(self.output.root), holder)
                    return
                self._write(create=False)
            except Exception as exc:  # a heartbeat missed is retried at the next; the run goes on
                log.warning("could not renew the lease on %s: %s", redact_uri(self.output.root), exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            holder = self.read()
            if holder is not None and holder.get("run_id") == self.run_id:
                self.output.fs.rm(self.path)
        except Exception as exc:  # never hide the error the run ends with
            log.warning("could not release the lease on %s: %s", redact_uri(self.output.root), exc)


def stage_block(block: pa.Table, output: Output, schema: pa.Schema) -> pa.Table:
    """Ray Data UDF: stage a block of per-frame results (cast to `schema`, whatever Ray Data made of
    the block's types); pass on which frames it held, and their faces (for the driver's progress)."""
    output.stage(block.select(schema.names).cast(schema))
    faces = pc.fill_null(pc.list_value_length(block["det_score"]), 0)
    return pa.table({"video_id": block["video_id"], "frame_index": block["frame_index"], "faces": faces})
