"""Whole files: the one atomic write, the one file lock and the one stamp of an object version.

Every file emotibatch writes whole (Parquet tables, JSON, HTML, model copies, model folders) goes through
`write_bytes`, `put_file` or `writing`, so a reader, or a rerun after a crash, sees the old file or the new
one, never a part:

- on a local disk the bytes go to a hidden temporary file in the target's directory (a name starting with
  "." that readers and the caches skip), fsync'd, then renamed over the target (a rename within one file
  system is atomic);
- on an object store an object appears only when its upload completes: one PUT from memory, or for a
  local file fsspec's `put_file` (a multipart upload is completed last), retried on transient errors
  with `storage.retrying`, whose errors name the redacted URI only.

`lock` is the one `flock` helper (exclusive or shared, blocking or not; the kernel drops it when a process
dies), and `stamp` the one way to tell two versions of an object of the same size apart.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from emotibatch.io import storage
from emotibatch.io.redact import redact_uri
from emotibatch.io.sources import is_local

# fsspec `info` keys, first found wins: content identity where the store has one (S3, GCS, Azure, HTTP),
# else the modification time. The order is the nightly job's, whose processed manifests hold stamps.
STAMP_KEYS = (
    "ETag",
    "etag",
    "md5Hash",
    "generation",
    "md5",
    "Content-MD5",
    "Digest",
    "VersionId",
    "mtime",
    "LastModified",
    "last_modified",
    "updated",
    "Last-Modified",
    "created",
)


def stamp(info: Mapping[str, Any]) -> str:
    """What changes when the object behind fsspec `info` is rewritten ("" where the store says nothing):
    with its size, what identifies a version of it."""
    return next((str(info[key]) for key in STAMP_KEYS if info.get(key) is not None), "")


# -- the lock ----------------------------------------------------------------------------------------------


@contextmanager
def lock(path: str | os.PathLike[str], *, shared: bool = False, blocking: bool = True) -> Iterator[int]:
    """Hold an flock on the lock file `path` (created, with its directory) for the `with` block; yields
    its descriptor. Without `blocking`, a lock held elsewhere raises BlockingIOError at once.

    A lock file may be deleted by whoever holds it exclusively (the video cache's eviction): a lock taken
    meanwhile on the deleted file would guard nothing, so it is dropped and taken again on the file now at
    `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, operation)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


# -- the atomic write ------------------------------------------------------------------------------------


def _shown(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return redact_uri(fs.unstrip_protocol(path))


def _scratch(directory: str | None, name: str) -> Path:
    """A new empty hidden file; its name ends with `name`, so tools that go by the extension still work."""
    fd, scratch = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=f"-{name}")
    os.close(fd)
    return Path(scratch)


def _commit_local(scratch: Path, path: str) -> None:
    with open(scratch, "rb") as f:
        os.fsync(f.fileno())  # the data reaches the disk before the name points at it
    os.replace(scratch, path)


def _upload(fs: fsspec.AbstractFileSystem, path: str, send: Any) -> None:
    """`send()` (one PUT or one upload), after making the parent where the store has folders; retried."""

    def attempt() -> None:
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        send()

    storage.retrying(attempt, _shown(fs, path), "write")


@contextmanager
def writing(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[Path]:
    """A local scratch file to fill in the `with` block (by path, for writers that open files by name);
    when the block ends without an error its content becomes `path` whole, and otherwise nothing does.

    The streaming variant of `write_bytes`, for files too large for memory or written by other libraries.
    """
    local = is_local(fs)
    if local:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    scratch = _scratch(posixpath.dirname(path) if local else None, posixpath.basename(path))
    try:
        yield scratch
        if local:
            _commit_local(scratch, path)
        else:
            _upload(fs, path, lambda: fs.put_file(str(scratch), path))
    finally:
        scratch.unlink(missing_ok=True)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` on `fs` whole or not at all (see the module docstring)."""
    if not is_local(fs):
        _upload(fs, path, lambda: fs.pipe_file(path, data))
        return
    with writing(fs, path) as scratch:
        scratch.write_bytes(data)


def put_file(source: str | os.PathLike[str], fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Copy the local file `source` to `path` on `fs` whole or not at all."""
    if not is_local(fs):
        _upload(fs, path, lambda: fs.put_file(str(source), path))
        return
    with writing(fs, path) as scratch:
        shutil.copyfile(source, scratch)
