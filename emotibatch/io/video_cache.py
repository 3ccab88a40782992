"""A bounded node-local cache of whole remote videos, shared by every segment task of a video.

decord reads a file object whole into memory, and every segment task of a video would fetch it again, so
a remote video is copied once per node into a cache directory and decoded from there (`local_copy`):

- a copy is named by the redacted URI, the size and the stamp (`files.stamp`: the ETag or modification
  time): a rewritten object gets a new copy, a stale one is never used;
- the first task that needs a copy fetches it under an exclusive lock (`files.lock`) on the copy's lock
  file, into a `.part` file reserved at full size and renamed into place when complete, in CHUNK reads
  that resume where a transient error stopped them (`storage.retrying`); the others wait on that lock,
  then share the copy;
- readers hold a shared lock, and eviction (least recently used first, until the cache fits its limit)
  only deletes copies whose lock it can take exclusively at once: never one in use or being written.

The cache is `$EMOTIBATCH_VIDEO_CACHE` (default `emotibatch-videos` in the system temp dir), bounded by
`$EMOTIBATCH_VIDEO_CACHE_BYTES` (default the smaller of 20 GiB and half of what it could take: free space
plus its own bytes). Copies in use may hold it over the limit for as long as they are used.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from emotibatch.io import files
from emotibatch.io.redact import redact_uri
from emotibatch.io.sources import open_fs
from emotibatch.io.storage import StorageError, retrying

log = logging.getLogger(__name__)

CACHE_ENV = "EMOTIBATCH_VIDEO_CACHE"
CACHE_BYTES_ENV = "EMOTIBATCH_VIDEO_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 20 * 2**30
# One ranged read per chunk: what a download holds in memory, however large the file.
CHUNK = 16 * 2**20
_LOCK = ".lock"
_PART = ".part"
_EXTENSION = re.compile(r"\.[a-z0-9]{1,10}")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "emotibatch-videos")


def cache_limit(root: Path, cached: int) -> int:
    """The cache's bound in bytes, given the `cached` bytes it holds (see the module docstring)."""
    value = os.environ.get(CACHE_BYTES_ENV)
    if value is None:
        return min(DEFAULT_CACHE_BYTES, (shutil.disk_usage(root).free + cached) // 2)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{CACHE_BYTES_ENV} must be a whole number of bytes, got {value!r}") from None


def _copy_name(shown: str, info: Mapping[str, Any]) -> str:
    version = "\n".join((shown, str(info.get("size")), files.stamp(info)))
    extension = posixpath.splitext(shown)[1].lower()
    digest = hashlib.sha256(version.encode()).hexdigest()[:32]
    return digest + (extension if _EXTENSION.fullmatch(extension) else "")


def _evict(path: Path) -> bool:
    """Delete a copy (or a dead download's `.part`) unless someone holds its lock."""
    name = path.name.removesuffix(_PART)
    lock = path.with_name(name + _LOCK)
    try:
        with files.lock(lock, blocking=False):
            path.with_name(name).unlink(missing_ok=True)
            path.with_name(name + _PART).unlink(missing_ok=True)
            lock.unlink()
    except BlockingIOError:
        return False
    return True


def _make_room(root: Path, need: int) -> None:
    """Evict the least recently used copies no one holds until the cache and `need` more bytes fit."""
    entries = []
    for path in root.iterdir():
        if path.name.startswith(".") or path.name.endswith(_LOCK):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted by another node-mate just now
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    limit = cache_limit(root, total)
    for _, size, path in sorted(entries):
        if total + need <= limit:
            return
        if _evict(path):
            total -= size
    if total + need > limit:
        log.warning("video cache %s: %d bytes in use, over its limit of %d bytes", root, total + need, limit)


def _reserve(part: Path, size: int, shown: str) -> None:
    """Create `part` at its full size: the accounting sees a download before it lands, and a full disk
    fails now rather than after most of the fetch."""
    with open(part, "wb") as f:
        f.truncate(size)
        if not hasattr(os, "posix_fallocate"):  # macOS: the sparse file still counts its size
            return
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                return  # a file system without preallocation
            raise StorageError(
                f"no space left to copy {shown} ({size} bytes) into the video cache {part.parent}; free "
                f"disk space, or set {CACHE_ENV} to a larger disk ({CACHE_BYTES_ENV} bounds the cache)"
            ) from None


def _download(fs: fsspec.AbstractFileSystem, path: str, target: Path, size: int, shown: str) -> None:
    """Fetch the file into `target` (caller holds its lock exclusively), in CHUNK reads, resuming after a
    transient error where it stopped."""
    part = target.with_name(target.name + _PART)
    with files.lock(target.parent / _LOCK):
        _make_room(target.parent, size)
        _reserve(part, size, shown)
    done = 0
    resumed = False

    def fetch() -> None:
        nonlocal done, resumed
        resumed = resumed or done > 0
        with fs.open(path, "rb", block_size=CHUNK, cache_type="none") as src, open(part, "r+b") as dst:
            src.seek(done)
            dst.seek(done)
            while chunk := src.read(min(CHUNK, size - done)):
                dst.write(chunk)
                done += len(chunk)
        if done != size:
            raise EOFError(f"got {done} of {size} bytes")

    try:
        retrying(fetch, shown)
        if resumed:  # the pieces must all come from the object the copy is named after
            fs.invalidate_cache(path)
            info = retrying(lambda: fs.info(path), shown)
            if _copy_name(shown, info) != target.name:
                raise StorageError(f"{shown} changed while it was being fetched; run the job again")
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


@contextmanager
def _held(fs: fsspec.AbstractFileSystem, path: str, target: Path, size: int, shown: str) -> Iterator[None]:
    """Hold a shared lock on `target`'s lock file for the `with` block, `target` complete (fetched under
    the exclusive lock if missing, then looked for again: an eviction may slip in between the two)."""
    lock = target.with_name(target.name + _LOCK)
    while True:
        with files.lock(lock, shared=True):
            if target.exists():
                yield
                return
        with files.lock(lock):
            if target.exists():
                continue
            try:
                _download(fs, path, target, size, shown)
            except BaseException:
                lock.unlink(missing_ok=True)  # guards nothing; waiters take a new one (see files.lock)
                raise


@contextmanager
def local_copy(
    uri: str, storage_options: dict | None = None, *, info: Mapping[str, Any] | None = None
) -> Iterator[Path]:
    """A local path holding the whole file at `uri`, from this node's cache (fetched on a miss).

    The path is valid inside the `with` block: the copy is not evicted while any task holds it. `info` is
    the file's fsspec info when the caller has it already. Raises StorageError.
    """
    fs, path = open_fs(uri, storage_options)
    shown = redact_uri(uri)
    if info is None:
        info = retrying(lambda: fs.info(path), shown)
    size = info.get("size")
    if not isinstance(size, int):
        raise StorageError(f"{shown}: the storage reports no size for it; copy it somewhere that does")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / _copy_name(shown, info)
    with _held(fs, path, target, size, shown):
        os.utime(target)  # most recently used
        yield target
