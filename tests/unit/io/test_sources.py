"""Input listing, manifests, frame folders and the video_id rule (emotibatch.io.sources)."""

from __future__ import annotations

import datetime
import pickle
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotibatch import schema
from emotibatch.io import storage
from emotibatch.io.sources import VideoSource, list_sources, options_for, redact_uri


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


def test_parquet_manifest_columns_take_the_videos_tables_types(tmp_path: Path) -> None:
    touch(tmp_path, "v.mp4")
    table = pa.table(
        {
            "uri": [str(tmp_path / "v.mp4")],
            "video_id": pa.array([7], pa.int16()),
            "score": pa.array([0.5], pa.float32()),
            "count": pa.array([3], pa.uint8()),
            "group": pa.array(["a"]).dictionary_encode(),
            "day": pa.array([datetime.date(2026, 1, 2)], pa.date32()),
            "none": pa.array([None], pa.null()),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    (source,) = list_sources([str(tmp_path / "m.parquet")])
    assert source.video_id == "7"
    assert source.extra == (
        ("score", 0.5),
        ("count", 3),
        ("group", "a"),
        ("day", datetime.date(2026, 1, 2)),
        ("none", None),
    )
    assert hash(source) == hash(pickle.loads(pickle.dumps(source)))
    row = pa.Table.from_pylist([dict(source.extra)])  # as the per-video pass builds its row
    assert row.schema.types == [pa.float64(), pa.int64(), pa.string(), pa.date32(), pa.null()]


@pytest.mark.parametrize(
    ("column", "held"),
    [
        (pa.array([{"a": 1}]), "struct<a: int64>"),
        (pa.array([["a", "b"]]), "list<element: string>"),
        (pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), "map<string"),
        (pa.array([b"\x00"], pa.binary()), "binary"),
    ],
)
def test_nested_and_other_manifest_columns_are_rejected(tmp_path: Path, column: pa.Array, held: str) -> None:
    pq.write_table(pa.table({"uri": ["v.mp4"], "meta": column}), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=r"m\.parquet: column 'meta' holds (.*), but it must hold") as error:
        list_sources([str(tmp_path / "m.parquet")])
    assert held in str(error.value) and "JSON-encode nested values" in str(error.value)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"uri": pa.array([1])}, r"column 'uri' holds int64, but it must hold strings"),
        ({"uri": ["v.mp4"], "video_id": pa.array([7.0])}, r"'video_id' holds double, .* strings or integers"),
    ],
)
def test_manifest_uri_and_video_id_must_be_text(tmp_path: Path, columns: dict, message: str) -> None:
    pq.write_table(pa.table(columns), tmp_path / "m.parquet")
    with pytest.raises(ValueError, match=message):
        list_sources([str(tmp_path / "m.parquet")])


def test_a_value_that_cannot_be_cast_is_named_by_row_and_column(tmp_path: Path) -> None:
    big = pa.array([1, 2**64 - 1], pa.uint64())  # int64 holds the first, not the second
    pq.write_table(pa.table({"uri": ["a.mp4", "b.mp4"], "size": big}), tmp_path / "m.parquet")
    with pytest.raises(
        ValueError, match=r"m\.parquet, row 2, column 'size': the value cannot be stored as int64"
    ):
        list_sources([str(tmp_path / "m.parquet")])


@pytest.mark.parametrize("name", sorted(set(schema.videos_schema().names) - {"video_id"}))
def test_manifest_columns_named_like_the_videos_tables_are_rejected(tmp_path: Path, name: str) -> None:
    (tmp_path / "m.csv").write_text(f"uri,label,{name}\nv.mp4,1,INJECTED\n")
    with pytest.raises(
        ValueError, match=rf"m\.csv: columns '{name}' are the videos table's own.*rename them"
    ):
        list_sources([str(tmp_path / "m.csv")])


def test_manifest_problems_name_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "twice.csv").write_text("uri,label,label\nv.mp4,1,2\n")
    with pytest.raises(ValueError, match=r"twice\.csv has more than one column named 'label'"):
        list_sources([str(tmp_path / "twice.csv")])
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=r"manifest .*broken\.parquet cannot be read: .*; fix the file"):
        list_sources([str(tmp_path / "broken.parquet")])


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


def test_images_are_inputs_of_their_own_given_found_or_in_a_manifest(tmp_path: Path) -> None:
    touch(tmp_path, "mixed/talk.mp4", "mixed/group.JPG", "mixed/faces/portrait.png", "mixed/.hidden.jpg")
    touch(tmp_path, "single.jpeg", "other/group.png")
    sources = list_sources([str(tmp_path / "mixed"), str(tmp_path / "single.jpeg")])
    assert [(s.video_id, s.kind) for s in sources] == [
        ("group", "image"),
        ("portrait", "image"),
        ("single", "image"),
        ("talk", "video"),
    ]
    assert sources[0].uri == str(tmp_path / "mixed/group.JPG")
    # Shared stems get their relative paths, without the extension, as videos do.
    shared = list_sources([str(tmp_path / "mixed"), str(tmp_path / "other")])
    assert ids(shared) == ["mixed/group", "other/group", "portrait", "talk"]
    globbed = list_sources([str(tmp_path / "mixed" / "**" / "*.png")])
    assert [(s.video_id, s.kind) for s in globbed] == [("portrait", "image")]
    (tmp_path / "m.csv").write_text("uri,video_id\nsingle.jpeg,photo_1\nmixed/talk.mp4,\n")
    listed = list_sources([str(tmp_path / "m.csv")], frame_folders=True)
    assert [(s.video_id, s.kind) for s in listed] == [("photo_1", "image"), ("talk", "video")]


def test_with_frame_folders_searched_images_are_frames_and_named_images_stay_images(tmp_path: Path) -> None:
    """The flag alone decides: no image is both a frame of a folder and an input of its own."""
    touch(tmp_path, "abaw/v1/00001.jpg", "abaw/v1/00002.jpg", "abaw/clip.mp4", "photo.png")
    inputs = [str(tmp_path / "abaw"), str(tmp_path / "photo.png")]
    framed = list_sources(inputs, frame_folders=True)
    assert [(s.video_id, s.kind) for s in framed] == [("clip", "video"), ("photo", "image"), ("v1", "frames")]
    plain = list_sources(inputs)
    assert [(s.video_id, s.kind) for s in plain] == [
        ("00001", "image"),
        ("00002", "image"),
        ("clip", "video"),
        ("photo", "image"),
    ]


def test_a_video_and_an_image_that_differ_only_by_extension_need_ids(tmp_path: Path) -> None:
    touch(tmp_path, "talk.mp4", "talk.jpg")
    with pytest.raises(
        ValueError, match=r"video_id 'talk' names two inputs: .*; give them distinct ids"
    ) as caught:
        list_sources([str(tmp_path)])
    assert str(tmp_path / "talk.mp4") in str(caught.value) and str(tmp_path / "talk.jpg") in str(caught.value)


def test_a_named_image_is_kept_missing_and_urls_take_their_kind_from_the_path(tmp_path: Path) -> None:
    (missing,) = list_sources([str(tmp_path / "gone.jpg")])
    assert (missing.video_id, missing.kind) == ("gone", "image")
    url = "https://host.example/b/face.png?X-Amz-Signature=abc.mp4"
    (image,) = list_sources([url])
    assert (image.uri, image.video_id, image.kind) == (url, "face", "image")
    (video,) = list_sources(["https://host.example/b/talk.mp4?v=x.png"])
    assert video.kind == "video"


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
    with pytest.raises(ValueError, match=r"extra values must be scalars \(tags are not\) for /v\.mp4"):
        VideoSource("/v.mp4", "v", extra={"label": 2, "tags": ["a"]})
    with pytest.raises(ValueError, match="kind must be one of video, frames, image, got 'audio'"):
        VideoSource("/v.mp4", "v", kind="audio")  # type: ignore[arg-type]


def test_inputs_that_match_nothing_say_what_was_looked_for(tmp_path: Path) -> None:
    touch(tmp_path, "empty/readme.txt")
    with pytest.raises(
        ValueError,
        match=r"empty holds no videos \(looked for \.mp4, .*\.flv\) and no images \(\.jpg, .*\.bmp\)$",
    ):
        list_sources([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=r"empty holds no videos \(.*\) and no folders of images \(\.jpg"):
        list_sources([str(tmp_path / "empty")], frame_folders=True)
    with pytest.raises(ValueError, match=r"the glob .*\*\.mov matches no videos"):
        list_sources([str(tmp_path / "*.mov")])
    with pytest.raises(ValueError, match=r"not found: .*nowhere; give a video or image file, a directory"):
        list_sources([str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="non-empty list"):
        list_sources(str(tmp_path))  # type: ignore[arg-type]


def test_an_input_naming_a_video_is_kept_whatever_its_lookup_says(tmp_path: Path) -> None:
    """A name too long for the file system fails as its own row (in probing), never the listing."""
    long = tmp_path / ("a" * 300 + ".mp4")
    (source,) = list_sources([str(long)])
    assert source.uri == str(long)
    with pytest.raises(ValueError, match=r"cannot read .*dddd: File name too long; check the path"):
        list_sources([str(tmp_path / ("d" * 300))])


@pytest.fixture
def failing_listing() -> Iterator:
    """The memory filesystem's listing fails with the given exception; retries do not wait. Undone at this
    fixture's own teardown (not the shared monkeypatch's), before `memory_root` cleans up by listing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "BACKOFF_S", 0.0)
        calls = []

        def fail_with(exc: Exception) -> list:
            def find(self, path, *args, **kwargs):
                calls.append(path)
                raise exc

            patch.setattr(fsspec.implementations.memory.MemoryFileSystem, "find", find)
            return calls

        yield fail_with


def test_a_listing_that_keeps_failing_stops_before_any_work(memory_root: str, failing_listing) -> None:
    fsspec.filesystem("memory").pipe(f"{memory_root}/a/one.mp4", b"x")
    calls = failing_listing(ConnectionResetError("connection reset by peer"))
    with pytest.raises(
        storage.StorageError, match=rf"could not list {memory_root}/a after 4 attempts .*again"
    ):
        list_sources([f"{memory_root}/a"])
    assert len(calls) == storage.ATTEMPTS  # transient: retried


def test_a_refused_listing_names_the_input_and_the_fix(memory_root: str, failing_listing) -> None:
    fsspec.filesystem("memory").pipe(f"{memory_root}/a/one.mp4", b"x")
    calls = failing_listing(PermissionError("denied"))
    glob = f"{memory_root}/*/one.mp4"
    with pytest.raises(
        storage.StorageError, match=rf"access denied: {re.escape(glob)}; check the credentials"
    ):
        list_sources([glob, "/elsewhere/two.mp4"])
    assert len(calls) == 1  # permanent: not retried


def test_storage_options_never_reach_http_urls() -> None:
    options = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert options_for("https://host/v.mp4?sig=1", options) == {}
    assert options_for("http://host/v.mp4", options) == {}
    assert options_for("s3://bucket/v.mp4", options) == options


def test_a_manifest_that_cannot_be_read_names_itself(memory_root: str, monkeypatch) -> None:
    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    fsspec.filesystem("memory").pipe(f"{memory_root}/m.csv", b"uri\nv.mp4\n")
    opened = []

    def reset(self, path, *args, **kwargs):
        opened.append(path)
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "_open", reset)
    with pytest.raises(
        storage.StorageError, match=r"could not read memory://.*/m\.csv after 4 attempts .*run the job again"
    ):
        list_sources([f"{memory_root}/m.csv"])
    assert len(opened) == storage.ATTEMPTS
