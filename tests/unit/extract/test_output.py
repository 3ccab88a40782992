"""extract/output.py on a local disk: video keys that never escape or vanish, the layout version, --overwrite
that deletes only emotibatch's files, the lease, and a per-video pass that may run twice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotibatch import schema
from emotibatch.extract import output as output_module
from emotibatch.extract import pipeline
from emotibatch.extract.decode import VideoInfo, VideoJob
from emotibatch.extract.finalize import finalize_video
from emotibatch.extract.output import LAYOUT, LEASE_FILE, Lease, Output, OutputBusy, video_key
from emotibatch.inference.registry import CLASSES_8
from emotibatch.io.sources import VideoSource

# Ids that broke the old rule (%-quoting): escaping the output, read back never, or too long a name.
HOSTILE_IDS = [
    "..",
    ".",
    "_intro",
    ".hidden",
    "x" * 300,
    "表情認識の動画" * 6,  # 42 CJK characters: 378 bytes once %-quoted
    "a/b",
    "a%2Fb",  # what "a/b" used to be quoted to
    "/abs",
    "line\nbreak",
    "",
    "small",
]
NAME_MAX = 255  # bytes of a file name on ext4, xfs, btrfs, APFS


def _row(video_id: str, status: str = "ok", run_id: str = "r") -> pa.Table:
    row = {"video_id": video_id, "source_uri": f"mem://{video_id}", "status": status, "run_id": run_id}
    return pa.Table.from_pylist([row], schema.VIDEOS_BASE)


def test_keys_are_plain_distinct_short_file_names() -> None:
    keys = [video_key(v) for v in HOSTILE_IDS]
    assert len(set(keys)) == len(keys)
    for video_id, key in zip(HOSTILE_IDS, keys):
        assert key not in ("", ".", "..") and not key.startswith((".", "_")), video_id
        assert "/" not in key and "\n" not in key and "\x00" not in key, video_id
        assert len(f"{key}.parquet".encode()) <= NAME_MAX, video_id
        assert video_key(video_id) == key  # the same id, the same file on every run
    assert keys[-1].startswith("small-")  # readable


def test_hostile_ids_are_committed_inside_the_output_and_read_back(tmp_path: Path) -> None:
    out = Output(str(tmp_path / "out"))
    out.check_settings({"sampling": "x"}, overwrite=False)
    for video_id in HOSTILE_IDS:
        out.stage(_staged(video_id, [0]))
        out.commit_video(video_id, None, _row(video_id))
    # Nothing escaped: the settings file is there, and every file lies in the table's own folder.
    assert (tmp_path / "out" / "_emotibatch.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_emotibatch.json", "_staging", "videos"]
    assert not list((tmp_path / "out" / "_staging").iterdir())  # each commit dropped its own staging only
    assert len(list((tmp_path / "out" / "videos").iterdir())) == len(HOSTILE_IDS)
    # Nothing vanished: every id is read back from the rows, so a rerun skips them all.
    assert sorted(out.read_tables("videos")["video_id"].to_pylist()) == sorted(HOSTILE_IDS)
    assert out.finished() == set(HOSTILE_IDS)
    assert all(out.committed_row(v)["video_id"] == v for v in HOSTILE_IDS)
    assert pq.read_table(tmp_path / "out" / "videos").num_rows == len(HOSTILE_IDS)  # what pyarrow sees


def test_an_output_of_the_old_layout_is_refused_with_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "old"
    (root / "videos").mkdir(parents=True)
    pq.write_table(_row("_intro"), root / "videos" / "_intro.parquet")
    (root / "_emotibatch.json").write_text(json.dumps({"sampling": "x"}))  # no "layout": version 1
    out = Output(str(root))
    for action in (
        lambda: out.check_settings({"sampling": "x"}, overwrite=False),
        lambda: out.read_tables("videos"),
    ):
        with pytest.raises(ValueError, match=r"another file layout \(layout 1, .*--overwrite"):
            action()
    out.check_settings({"sampling": "x"}, overwrite=True)
    assert json.loads((root / "_emotibatch.json").read_text()) == {"sampling": "x", "layout": LAYOUT}
    assert out.read_tables("videos") is None


def test_overwrite_deletes_only_emotibatchs_files(tmp_path: Path) -> None:
    root = tmp_path / "project"
    out = Output(str(root))
    out.check_settings({"sampling": "x"}, overwrite=False)
    out.stage(_staged("v", [0]))
    out.commit_video("v", None, _row("v"))
    out.write_table(out.run_path("run-1"), pa.table({"a": [1]}))
    (root / "videos" / "lecture.mp4").write_bytes(b"the user's video")
    (root / "runs" / "notes.txt").write_text("the user's notes")
    (root / "README").write_text("not in a place of the layout")

    with pytest.raises(
        ValueError, match=r"only emotibatch's own files.*notes\.txt.*lecture\.mp4.*another --output"
    ):
        out.check_settings({"sampling": "y"}, overwrite=True)
    assert (root / "_emotibatch.json").is_file() and out.finished() == {"v"}  # nothing deleted

    (root / "videos" / "lecture.mp4").unlink()
    (root / "runs" / "notes.txt").unlink()
    (root / "faces" / "nested").mkdir(parents=True)
    (root / "faces" / "nested" / "a.parquet").write_bytes(b"not where emotibatch writes")
    with pytest.raises(ValueError, match=r"nested/a\.parquet"):
        out.check_settings({"sampling": "y"}, overwrite=True)

    (root / "faces" / "nested" / "a.parquet").unlink()
    lease = Lease(out, "this-run").acquire()
    out.check_settings({"sampling": "y"}, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["README", "_emotibatch.json", LEASE_FILE]
    lease.release()


def test_the_other_tables_files_are_not_read_as_rows(tmp_path: Path) -> None:
    out = Output(str(tmp_path))
    out.commit_video("v", None, _row("v"))
    (tmp_path / "videos" / "notes.txt").write_text("not Parquet")
    assert out.finished() == {"v"}


def test_contains_tells_inputs_inside_the_output(tmp_path: Path) -> None:
    out = Output(str(tmp_path / "out"))
    (tmp_path / "out" / "videos").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "out")
    assert out.contains(str(tmp_path / "out" / "videos" / "a.mp4"))
    assert out.contains(str(tmp_path / "link" / "videos"))
    assert out.contains(f"file://{tmp_path}/out/")
    assert not out.contains(str(tmp_path / "out2" / "a.mp4"))
    assert not out.contains(str(tmp_path / "a.mp4"))
    assert not out.contains("memory://out/a.mp4")


# -- the lease ---------------------------------------------------------------------------------------------


def _lease_record(**changes: object) -> dict:
    record = {
        "owner": socket.gethostname(),
        "pid": os.getpid(),
        "run_id": "other-run",
        "heartbeat": datetime.now(timezone.utc).isoformat(),
    }
    return record | changes


def test_a_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = Output(str(tmp_path))
    first = Lease(out, "run-1").acquire()
    with pytest.raises(OutputBusy, match=rf"run run-1 \(host {socket.gethostname()}, pid {os.getpid()}, "):
        Lease(out, "run-2").acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-1"
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    Lease(out, "run-2").acquire().release()


def test_of_runs_starting_together_exactly_one_gets_the_lease(tmp_path: Path) -> None:
    out = Output(str(tmp_path))
    start = threading.Barrier(8)
    won, refused = [], []

    def attempt(i: int) -> None:
        start.wait()
        try:
            won.append(Lease(out, f"run-{i}").acquire())
        except OutputBusy:
            refused.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    won[0].release()


@pytest.mark.parametrize(
    "holder",
    [
        # No heartbeat for longer than the timeout: its holder is taken for dead, wherever it ran.
        _lease_record(
            owner="elsewhere", heartbeat=(datetime.now(timezone.utc) - timedelta(minutes=11)).isoformat()
        ),
        "dead pid",  # on this host, and its process is gone: taken over at once
        "damaged",  # not a record (no heartbeat): it must not block the output for ever
    ],
)
def test_a_dead_holders_lease_is_taken_over(tmp_path: Path, holder) -> None:
    if holder == "dead pid":
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        holder = _lease_record(pid=int(child.stdout))
    (tmp_path / LEASE_FILE).write_text("{" if holder == "damaged" else json.dumps(holder))
    lease = Lease(Output(str(tmp_path)), "run-2").acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-2"
    lease.release()


def test_a_live_holder_elsewhere_is_not_taken_over(tmp_path: Path) -> None:
    # Nine minutes without a heartbeat is within the timeout; the pid means nothing on another host.
    beat = (datetime.now(timezone.utc) - timedelta(minutes=9)).isoformat()
    (tmp_path / LEASE_FILE).write_text(json.dumps(_lease_record(owner="elsewhere", pid=1, heartbeat=beat)))
    with pytest.raises(OutputBusy, match="host elsewhere"):
        Lease(Output(str(tmp_path)), "run-2").acquire()


def test_the_heartbeat_renews_and_release_leaves_anothers_lease(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(output_module, "HEARTBEAT_S", 0.05)
    lease = Lease(Output(str(tmp_path)), "run-1").acquire()
    first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"]
    deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
    while json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] == first:
        assert datetime.now(timezone.utc) < deadline, "no heartbeat"
    (tmp_path / LEASE_FILE).write_text(json.dumps(_lease_record(run_id="taker")))  # taken over meanwhile
    lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "taker"


@pytest.mark.parametrize("error", [RuntimeError("the job failed"), KeyboardInterrupt()])
def test_execute_releases_the_lease_on_an_error(tmp_path: Path, monkeypatch, error: BaseException) -> None:
    def fail(plan, progress, finished):
        raise error

    monkeypatch.setattr(pipeline, "_execute", fail)
    out = Output(str(tmp_path))
    lease = Lease(out, "run-1").acquire()
    plan = pipeline.Plan(None, out, (), None, None, "run-1", datetime.now(timezone.utc), lease)
    with pytest.raises(type(error)):
        pipeline.execute(plan)
    assert not (tmp_path / LEASE_FILE).exists()


# -- the per-video pass ----------------------------------------------------------------------------------

DIM = 4


def _staged(video_id: str, frames: list[int]) -> pa.Table:
    """One face per frame, as the face stage stages it."""
    n = len(frames)
    probs = [[[1.0 if c == f % 8 else 0.0 for c in range(8)]] for f in frames]
    table = {
        "video_id": [video_id] * n,
        "segment_index": [0] * n,
        "frame_index": frames,
        "error": [None] * n,
        "decode_s": [0.1] * n,
        "infer_s": [0.2] * n,
        "bbox": [[[1.0, 2.0, 5.0, 6.0]]] * n,
        "det_score": [[0.9]] * n,
        "landmarks": [[[0.0] * 10]] * n,
        "emotion_probs": probs,
        "valence": [[None]] * n,
        "arousal": [[None]] * n,
        "features": [[[float(f)] * DIM] for f in frames],
    }
    return pa.table(table).cast(schema.frames_schema(8, DIM, "float32"))


def test_the_per_video_pass_run_again_after_its_commit_changes_nothing(tmp_path: Path) -> None:
    """Ray retries a pass whose worker died after the commit; the retry must not turn the video into a
    failed row (its staging is gone) nor delete its faces."""
    out = Output(str(tmp_path))
    faces_schema = schema.with_metadata(schema.faces_schema(8, DIM, "float32"), {"classes": list(CLASSES_8)})
    info = VideoInfo(fps=10.0, frame_count=3, duration_s=0.3, width=8, height=8)
    job = VideoJob(VideoSource("/videos/a.mp4", "a"), info, None, indices=(0, 1, 2))
    out.stage(_staged("a", [0, 1, 2]))

    first = finalize_video(job, out, faces_schema, "run-1")
    assert (first["status"], first["faces"]) == ("ok", 3)
    faces = pq.read_table(out.faces_path("a"))
    again = finalize_video(job, out, faces_schema, "run-1")
    assert again == first
    assert pq.read_table(out.faces_path("a")).equals(faces)
    assert out.read_tables("videos").to_pylist() == [first]
