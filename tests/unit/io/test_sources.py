"""Input listing, manifests, frame folders and the video_id rule (emotibatch.io.sources)."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotibatch.io.sources import VideoSource, list_sources, redact_uri


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def ids(sources: list[VideoSource]) -> list[str]:
    return [s.video_id for s in sources]


@pytest.fixture
def afew(tmp_path: Path) -> Path:
    """AFEW's layout: the same clip name under Train and Val."""
    touch(tmp_path, "Train/Happy/001.avi", "Val/Happy/001.avi", "Train/Sad/002.avi", "Train/._001.avi")
    return tmp_path


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_directory_is_searched_recursively_and_shared_stems_get_relative_ids(afew: Path) -> None:
    sources = list_sources([str(afew)])
    assert ids(sources) == ["002", "Train/Happy/001", "Val/Happy/001"]  # ._001.avi is hidden
    assert sources[1].uri == str(afew / "Train/Happy/001.avi")
    assert {s.kind for s in sources} == {"video"}


def test_shared_stems_are_relative_to_the_common_root_of_several_inputs(afew: Path) -> None:
    sources = list_sources([str(afew / "Val"), str(afew / "Train")])
    assert ids(sources) == ["002", "Train/Happy/001", "Val/Happy/001"]


def test_explicit_files_and_globs_are_listed_and_a_missing_file_kept(afew: Path) -> None:
    sources = list_sources(
        [str(afew / "*/Happy/*.avi"), str(afew / "Train/Sad/002.avi"), str(afew / "gone.mp4")]
    )
    assert ids(sources) == ["002", "Train/Happy/001", "Val/Happy/001", "gone"]
    # A missing video file is kept: it must become a failed row, not stop the listing.
    assert sources[-1].uri == str(afew / "gone.mp4")


def test_the_same_file_given_twice_is_one_source(afew: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(afew)
    sources = list_sources(
        ["Train/Sad/002.avi", str(afew / "Train/Sad/002.avi"), "Train", f"file://{afew}/Train"]
    )
    assert ids(sources) == ["001", "002"]


def test_two_files_that_keep_the_same_id_are_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "clips/a.mp4", "clips/a.avi")
    with pytest.raises(ValueError, match=r"'a' names two inputs: .*clips/a.avi and .*clips/a.mp4"):
        list_sources([str(tmp_path / "clips")])


def test_csv_manifest_ids_win_extra_columns_are_carried_and_relative_uris_resolve(tmp_path: Path) -> None:
    touch(tmp_path, "data/clips/x.mp4", "data/clips/y.mp4")
    manifest = tmp_path / "data/manifest.csv"
    manifest.write_text("uri,video_id,label,speaker\nclips/x.mp4,001,3,ann\nclips/y.mp4,,1,bob\n")
    x, y = list_sources([str(manifest)])
    assert (x.video_id, x.uri, x.extra) == (
        "001",
        str(tmp_path / "data/clips/x.mp4"),
        (("label", 3), ("speaker", "ann")),
    )
    assert (y.video_id, dict(y.extra)) == ("y", {"label": 1, "speaker": "bob"})  # empty id: the stem rule


def test_parquet_manifest_values_stay_hashable(tmp_path: Path) -> None:
    touch(tmp_path, "v.mp4")
    table = pa.table({"uri": [str(tmp_path / "v.mp4")], "tags": [["a", "b"]], "video_id": [7]})
    pq.write_table(table, tmp_path / "m.parquet")
    (source,) = list_sources([str(tmp_path / "m.parquet")])
    assert (source.video_id, source.extra) == ("7", (("tags", ("a", "b")),))
    assert hash(source) == hash(pickle.loads(pickle.dumps(source)))


def test_manifest_without_uri_column_names_the_file_and_its_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label\na.mp4,1\n")
    with pytest.raises(ValueError, match=r"m\.csv has no 'uri' column; its columns: path, label"):
        list_sources([str(tmp_path / "m.csv")])


def test_frame_folders_are_one_video_each(tmp_path: Path) -> None:
    touch(tmp_path, "cropped_aligned/1-30-1280x720/00001.jpg", "cropped_aligned/video2/00003.png", "clip.mp4")
    sources = list_sources([str(tmp_path)], frame_folders=True)
    assert [(s.video_id, s.kind) for s in sources] == [
        ("1-30-1280x720", "frames"),
        ("clip", "video"),
        ("video2", "frames"),
    ]
    assert sources[0].uri == str(tmp_path / "cropped_aligned/1-30-1280x720")
    (single,) = list_sources([str(tmp_path / "cropped_aligned/video2")], frame_folders=True)
    assert (single.video_id, single.kind) == ("video2", "frames")


def test_memory_uri_directories_and_manifests_list_like_local_ones(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    for name in ("a/one.mp4", "b/one.mp4", "b/two.webm", "notes.txt"):
        fs.pipe(f"{memory_root}/{name}", b"x")
    fs.pipe(f"{memory_root}/m.csv", b"uri,video_id\na/one.mp4,first\n")
    sources = list_sources([f"{memory_root}/"])
    assert ids(sources) == ["a/one", "b/one", "two"]
    assert all(s.uri.startswith("memory://") for s in sources)
    (from_manifest,) = list_sources([f"{memory_root}/m.csv"])
    assert from_manifest.video_id == "first"
    assert from_manifest.uri == sources[0].uri


def test_presigned_urls_are_read_as_given_and_shown_redacted() -> None:
    url = "https://user:pw@host.example/bucket/v.mp4?X-Amz-Credential=AK&X-Amz-Signature=abc"
    (source,) = list_sources([url])
    assert (source.uri, source.video_id) == (url, "v")
    assert source.source_uri == "https://host.example/bucket/v.mp4"


@pytest.mark.parametrize(
    ("uri", "redacted"),
    [
        ("https://user:pw@host:9000/v.mp4?X-Amz-Signature=abc#t=3", "https://host:9000/v.mp4"),
        ("s3://key:secret@bucket/a/b.mp4", "s3://bucket/a/b.mp4"),
        ("memory:///x/y.mp4", "memory:///x/y.mp4"),
        ("/data/what?.mp4", "/data/what?.mp4"),
    ],
)
def test_redact_uri_drops_user_info_queries_and_fragments_of_urls_only(uri: str, redacted: str) -> None:
    assert redact_uri(uri) == redacted


def test_extra_mapping_is_stored_as_pairs_and_an_unknown_kind_refused() -> None:
    source = VideoSource("/v.mp4", "v", extra={"label": 2})
    assert source.extra == (("label", 2),)
    with pytest.raises(ValueError, match="kind"):
        VideoSource("/v.mp4", "v", kind="audio")  # type: ignore[arg-type]


def test_inputs_that_match_nothing_say_what_was_looked_for(tmp_path: Path) -> None:
    touch(tmp_path, "frames/v1/00001.jpg", "empty/readme.txt")
    with pytest.raises(ValueError, match=r"holds no videos \(looked for \.mp4, .*\.flv\); .*--frame-folders"):
        list_sources([str(tmp_path / "frames")])
    with pytest.raises(ValueError, match=r"empty holds no videos \(looked for .*\)$"):
        list_sources([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=r"the glob .*\*\.mov matches no videos"):
        list_sources([str(tmp_path / "*.mov")])
    with pytest.raises(ValueError, match=r"not found: .*nowhere; give a video file, a directory"):
        list_sources([str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="non-empty list"):
        list_sources(str(tmp_path))  # type: ignore[arg-type]
