"""files.py: the one atomic write (fault injection, retries), the one file lock (across processes), the stamp."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from emotibatch.io import files, storage

LOCAL = LocalFileSystem()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the atomic write: local -------------------------------------------------------------------------------


def test_write_bytes_makes_the_folders_and_replaces_a_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    files.write_bytes(LOCAL, str(target), b"first")
    files.write_bytes(LOCAL, str(target), b"second")
    assert target.read_bytes() == b"second"
    assert listing(target.parent) == ["x.json"]


def test_a_failed_local_write_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults before the rename (the disk refusing the fsync): the old content stays, whole."""
    target = tmp_path / "x.parquet"
    target.write_bytes(b"old")

    def refuse(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="I/O error"):
        files.write_bytes(LOCAL, str(target), b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["x.parquet"]


def test_an_error_inside_writing_commits_nothing(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="encoder died"), files.writing(LOCAL, str(target)) as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(".") and scratch.suffix == ".mp4"
        scratch.write_bytes(b"half a clip")
        raise RuntimeError("encoder died")
    assert listing(tmp_path) == []


def test_a_writer_killed_mid_write_leaves_no_partial_file_under_the_final_name(tmp_path: Path) -> None:
    """A process killed (SIGKILL: no cleanup runs) while filling its scratch file: the final name never
    appears; what is left is hidden (a "." name readers skip)."""
    target = tmp_path / "faces" / "v.parquet"
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from fsspec.implementations.local import LocalFileSystem
        from emotibatch.io import files
        with files.writing(LocalFileSystem(), {str(target)!r}) as scratch:
            with open(scratch, "wb") as f:
                f.write(b"PAR1" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert not target.exists()
    assert [name[0] for name in listing(target.parent)] == ["."]


def test_put_file_copies_whole(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(bytes(range(256)) * 100)
    files.put_file(source, LOCAL, str(tmp_path / "out" / "model.onnx"))
    assert (tmp_path / "out" / "model.onnx").read_bytes() == source.read_bytes()
    assert listing(tmp_path / "out") == ["model.onnx"]


# -- the atomic write: object stores -----------------------------------------------------------------------


class FlakyStore(MemoryFileSystem):
    """An in-memory object store whose uploads fail `failures` times with a connection reset first."""

    protocol = "flaky"
    failures = 0
    calls = 0

    def pipe_file(self, path, value, **kwargs):
        FlakyStore.calls += 1
        if FlakyStore.calls <= FlakyStore.failures:
            raise ConnectionResetError("connection reset by peer")
        return super().pipe_file(path, value, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        FlakyStore.calls += 1
        if FlakyStore.calls <= FlakyStore.failures:
            raise ConnectionResetError("connection reset by peer")
        return super().put_file(lpath, rpath, **kwargs)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyStore:
    monkeypatch.setattr(FlakyStore, "calls", 0)
    fs = FlakyStore(skip_instance_cache=True)
    monkeypatch.setattr(fs, "store", {})
    monkeypatch.setattr(fs, "pseudo_dirs", [""])
    return fs


@pytest.mark.parametrize("how", ["write_bytes", "put_file", "writing"])
def test_transient_upload_errors_are_retried(
    how: str, flaky: FlakyStore, tmp_path: Path, fast_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FlakyStore, "failures", storage.ATTEMPTS - 1)
    data = b"one object"
    if how == "write_bytes":
        files.write_bytes(flaky, "/bucket/out/x.json", data)
    elif how == "put_file":
        (tmp_path / "x").write_bytes(data)
        files.put_file(tmp_path / "x", flaky, "/bucket/out/x.json")
    else:
        with files.writing(flaky, "/bucket/out/x.json") as scratch:
            scratch.write_bytes(data)
        assert not scratch.exists()  # the scratch copy of an upload lives outside the store, and goes
    assert FlakyStore.calls == storage.ATTEMPTS
    assert flaky.cat_file("/bucket/out/x.json") == data


def test_uploads_failing_past_the_last_attempt_name_the_object_not_the_credentials(
    flaky: FlakyStore, fast_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FlakyStore, "failures", storage.ATTEMPTS)
    with pytest.raises(storage.StorageError) as caught:
        files.write_bytes(flaky, "/bucket/out/x.json", b"data")
    assert str(caught.value).startswith(
        f"could not write flaky:///bucket/out/x.json after {storage.ATTEMPTS}"
    )
    assert not flaky.exists("/bucket/out/x.json")


def test_a_permanent_upload_error_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    calls = []

    def denied(path: str, value: bytes, **kwargs: object) -> None:
        calls.append(path)
        raise PermissionError("Access Denied")

    monkeypatch.setattr(fs, "pipe_file", denied)
    with pytest.raises(storage.StorageError, match=r"^access denied: memory:///b/x.json"):
        files.write_bytes(fs, "/b/x.json", b"data")
    assert len(calls) == 1


# -- the lock ----------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from emotibatch.io import files
with files.lock(sys.argv[1], shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold(path: Path, mode: str) -> subprocess.Popen:
    """Another process holding the lock at `path` until it is killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_an_exclusive_lock_excludes_other_processes_until_they_die(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    holder = hold(path, "exclusive")
    try:
        for shared in (False, True):
            with pytest.raises(BlockingIOError), files.lock(path, shared=shared, blocking=False):
                pass
    finally:
        holder.kill()
        holder.wait()
    with files.lock(path, blocking=False):  # the kernel dropped the dead holder's lock
        pass


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = hold(path, "shared")
    try:
        with files.lock(path, shared=True, blocking=False):
            pass
        with pytest.raises(BlockingIOError), files.lock(path, blocking=False):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_waiter_on_a_lock_file_its_holder_deletes_locks_the_new_file(tmp_path: Path) -> None:
    """The video cache's eviction deletes a lock file it holds: a waiter must not keep a lock on the
    deleted file (it would guard nothing), but take one on the file now at the path."""
    path = tmp_path / "x.lock"
    seen: dict[str, int] = {}

    def wait() -> None:
        with files.lock(path) as fd:
            seen["locked"], seen["at path"] = os.fstat(fd).st_ino, os.stat(path).st_ino

    with files.lock(path):
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)  # the waiter blocks in flock on this file (were it later, it would open a new one)
        path.unlink()
    waiter.join(10)
    assert seen["locked"] == seen["at path"]


# -- the stamp ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"size": 3, "ETag": '"abc"', "LastModified": "2026-01-01"}, '"abc"'),  # S3: content over time
        ({"size": 3, "etag": "e", "md5Hash": "m", "updated": "u"}, "e"),  # GCS
        ({"size": 3, "mtime": 1700000000.5, "created": 1.0}, "1700000000.5"),  # local disks
        ({"size": 3, "Last-Modified": "Mon, 01 Jan 2026"}, "Mon, 01 Jan 2026"),  # HTTP without an ETag
        ({"size": 3, "ETag": None, "mtime": 2}, "2"),
        ({"size": 3}, ""),
    ],
)
def test_stamp_prefers_content_identity_then_modification_time(info: dict, expected: str) -> None:
    assert files.stamp(info) == expected


def test_stamps_of_local_files_change_when_they_are_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(b"one")
    before = files.stamp(LOCAL.info(str(path)))
    os.utime(path, (1, 1))
    assert files.stamp(LOCAL.info(str(path))) != before
