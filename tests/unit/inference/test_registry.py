"""Model registry: cards, integrity, cache, fsspec URIs and downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import multiprocessing
import socket
import subprocess
import threading
import urllib.parse
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from emotibatch.inference import registry
from emotibatch.inference.registry import (
    CARDS,
    CLASSES_7,
    IntegrityError,
    ModelCard,
    ModelUnavailableError,
    git_blob_sha1,
    pin_sha256,
    redact_uri,
    resolve,
    resolve_card,
)

ONNX = b"fake onnx " + bytes(range(256)) * 64
OTHER = b"another fake onnx " + bytes(range(255, -1, -1)) * 64


@dataclasses.dataclass(frozen=True)
class Truncated:
    """A response that announces all of `data` but sends only its first half, then closes."""

    data: bytes


class FakeServer(http.server.ThreadingHTTPServer):
    """Serves `routes[path]`: a list of responses given in turn, the last one repeated; counts GETs."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, list[bytes | Truncated]] = {}
        self.gets: Counter[str] = Counter()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeServer

    def _respond(self, *, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        responses = self.server.routes.get(path)
        if not responses:
            self.send_error(404)
            return
        if body:
            self.server.gets[path] += 1
        response = responses[min(self.server.gets[path], len(responses)) - 1] if body else responses[-1]
        data = response.data if isinstance(response, Truncated) else response
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data[: len(data) // 2] if isinstance(response, Truncated) else data)

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache, no model dir from the environment, and a fresh licence notice."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV, str(cache))
    monkeypatch.delenv(registry.MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(registry, "_license_shown", set())
    return cache


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def emotion_card(url: str, data: bytes = ONNX, name: str = "test_emotion") -> ModelCard:
    return dataclasses.replace(CARDS["enet_b0_8_best_vgaf"], name=name, url=url, git_sha1=blob_sha1(data))


def detector_card(url: str, name: str = "det_10g") -> ModelCard:
    return dataclasses.replace(CARDS[name], url=url)


def zip_pack(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as pack:
        for name, data in members.items():
            pack.writestr(name, data)
    return buffer.getvalue()


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def leftovers(cache: Path) -> list[str]:
    """Files in the cache other than models, pins and lock files: scratch files that should be gone."""
    return sorted(
        p.name
        for p in cache.rglob("*")
        if p.is_file() and (p.name.startswith(".tmp-") or not p.name.endswith((".onnx", ".lock", ".json")))
    )


def pins(cache: Path) -> dict[str, str]:
    return json.loads((cache / "pins.json").read_text())


# Cards


def test_cards_of_each_kind_are_complete_and_get_card_knows_only_registered_names() -> None:
    for card in registry.list_cards():
        if card.kind in ("emotion", "engagement"):
            assert card.url.endswith(f"/{card.filename}") and len(card.git_sha1 or "") == 40
            continue
        assert (card.input_size, card.classes, card.feature_dim, card.sha256) == (None, (), None, None)
        # SCRFD's normalisation is preprocess.SCRFD_LUT alone: a card value here would be a second source.
        assert (card.mean, card.std) == (None, None)
        assert "non-commercial" in card.license
    assert [c.name for c in registry.list_cards() if c.has_va] == [
        "enet_b0_8_va_mtl",
        "mbf_va_mtl",
        "mobilevit_va_mtl",
    ]
    assert CARDS["enet_b2_7"].classes == CLASSES_7 and "Contempt" not in CLASSES_7
    assert registry.get_card("det_500m") is CARDS["det_500m"] and registry.get_card("nope") is None


# Hashes and redaction


def test_git_blob_sha1_matches_git_hash_object(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(ONNX)
    expected = subprocess.run(
        ["git", "hash-object", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_blob_sha1(path) == expected
    assert git_blob_sha1(path) != hashlib.sha1(ONNX).hexdigest()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/models/x.onnx", "s3://bucket/models/x.onnx"),
        ("https://user:secret@host:8080/x.onnx?X-Amz-Signature=abc#frag", "https://host:8080/x.onnx"),
        ("s3://KEY:SECRET@bucket/x.onnx", "s3://bucket/x.onnx"),
        ("/local/models/x.onnx", "/local/models/x.onnx"),
    ],
)
def test_redact_uri_drops_credentials_and_queries(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


# Integrity of copies from a model dir


def test_integrity_accepts_right_bytes_and_rejects_one_changed_byte(tmp_path: Path, isolated: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "test_emotion.onnx").write_bytes(ONNX)
    (bad / "test_emotion.onnx").write_bytes(ONNX[:100] + bytes([ONNX[100] ^ 1]) + ONNX[101:])
    card = emotion_card(closed_port_url("/never.onnx"))

    with pytest.raises(IntegrityError) as error:
        resolve_card(card, model_dir=str(bad))
    assert f"expected git blob SHA-1 {card.git_sha1}" in str(error.value)
    assert "test_emotion" in str(error.value)
    assert not (isolated / "test_emotion.onnx").exists()

    assert resolve_card(card, model_dir=str(good)).read_bytes() == ONNX
    assert leftovers(isolated) == []


def test_model_dir_from_environment_as_memory_uri(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/offline-models/test_emotion.onnx", ONNX)
    monkeypatch.setenv(registry.MODEL_DIR_ENV, "memory://offline-models")
    try:
        path = resolve_card(emotion_card(closed_port_url("/never.onnx")))
    finally:
        fs.rm("/offline-models", recursive=True)
    assert path == isolated / "test_emotion.onnx" and path.read_bytes() == ONNX


# Downloads


def test_a_download_is_cached_and_not_fetched_again(server: FakeServer, isolated: Path) -> None:
    server.routes["/m.onnx"] = [ONNX]
    card = emotion_card(server.url("/m.onnx"))
    assert resolve_card(card).read_bytes() == ONNX
    assert resolve_card(card).read_bytes() == ONNX
    assert server.gets["/m.onnx"] == 1


def test_offline_without_copy_raises_one_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    url = closed_port_url("/models/test_emotion.onnx")
    secret_url = url.replace("http://", "http://user:hunter2@") + "?token=s3cr3t"
    for card_url in (url, secret_url):
        with pytest.raises(ModelUnavailableError) as error:
            resolve_card(emotion_card(card_url))
        message = str(error.value)
        assert "test_emotion" in message and url in message
        assert "emotibatch models pull test_emotion --output DIR_OR_URI" in message
        assert "--model-dir DIR_OR_URI" in message and registry.MODEL_DIR_ENV in message
        assert "local path or URI" in message
    assert "hunter2" not in message + caplog.text and "s3cr3t" not in message + caplog.text


def test_corrupted_cache_is_detected_and_fetched_again(
    server: FakeServer, isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/m.onnx"] = [ONNX]
    card = emotion_card(server.url("/m.onnx"))
    path = resolve_card(card)
    path.write_bytes(ONNX[:-1] + b"X")
    assert resolve_card(card).read_bytes() == ONNX
    assert server.gets["/m.onnx"] == 2
    assert "corrupt" in caplog.text


@pytest.mark.parametrize("first", [Truncated(ONNX), OTHER], ids=["truncated", "wrong-bytes"])
def test_bad_download_is_fetched_again_once(
    server: FakeServer, isolated: Path, first: bytes | Truncated
) -> None:
    server.routes["/m.onnx"] = [first, ONNX]
    assert resolve_card(emotion_card(server.url("/m.onnx"))).read_bytes() == ONNX
    assert server.gets["/m.onnx"] == 2
    assert leftovers(isolated) == []


@pytest.mark.parametrize("bad", [Truncated(ONNX), OTHER], ids=["truncated", "wrong-bytes"])
def test_bad_download_never_lands_in_cache(
    server: FakeServer, isolated: Path, bad: bytes | Truncated
) -> None:
    server.routes["/m.onnx"] = [bad]
    card = emotion_card(server.url("/m.onnx"))
    with pytest.raises(IntegrityError) as error:
        resolve_card(card)
    message = str(error.value)
    assert "test_emotion" in message and server.url("/m.onnx") in message
    if bad == OTHER:
        assert f"expected git blob SHA-1 {card.git_sha1}, got {blob_sha1(OTHER)}" in message
    assert server.gets["/m.onnx"] == 2
    assert not (isolated / "test_emotion.onnx").exists()
    assert leftovers(isolated) == []


# Zip packs, trust on first use, pins, licence


def test_zip_pack_member_trusted_on_first_use_then_enforced(
    server: FakeServer, isolated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/buffalo_l.zip"] = [
        zip_pack({"buffalo_l/det_10g.onnx": ONNX, "buffalo_l/w600k_r50.onnx": OTHER})
    ]
    card = detector_card(server.url("/buffalo_l.zip"))

    path = resolve_card(card)
    assert path.read_bytes() == ONNX
    assert pins(isolated) == {"det_10g": hashlib.sha256(ONNX).hexdigest()}
    assert "trusted this first copy" in caplog.text
    assert leftovers(isolated) == []

    path.unlink()
    server.routes["/buffalo_l.zip"] = [zip_pack({"det_10g.onnx": OTHER})]
    with pytest.raises(IntegrityError, match=hashlib.sha256(ONNX).hexdigest()):
        resolve_card(card)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "det_10g.onnx").write_bytes(OTHER)
    with pytest.raises(IntegrityError, match=r"other/det_10g.onnx"):
        resolve_card(card, model_dir=str(other_dir))
    assert not path.exists()


def test_pack_without_the_member_is_an_integrity_error(server: FakeServer) -> None:
    server.routes["/buffalo_l.zip"] = [zip_pack({"w600k_r50.onnx": OTHER})]
    with pytest.raises(IntegrityError, match=r"det_10g.onnx is not in the pack"):
        resolve_card(detector_card(server.url("/buffalo_l.zip")))


def test_user_sha256_pin_is_enforced(server: FakeServer, isolated: Path) -> None:
    server.routes["/buffalo_sc.zip"] = [zip_pack({"det_500m.onnx": ONNX})]
    card = detector_card(server.url("/buffalo_sc.zip"), name="det_500m")

    pin_sha256("det_500m", hashlib.sha256(OTHER).hexdigest())
    with pytest.raises(IntegrityError, match=f"got {hashlib.sha256(ONNX).hexdigest()}"):
        resolve_card(card)

    pin_sha256("det_500m", hashlib.sha256(ONNX).hexdigest().upper())
    assert resolve_card(card).read_bytes() == ONNX
    assert pins(isolated) == {"det_500m": hashlib.sha256(ONNX).hexdigest()}


@pytest.mark.parametrize(
    ("name", "digest", "match"),
    [
        ("enet_b2_8", "0" * 64, "published hash"),
        ("det_10g", "xyz", "not a sha256"),
        ("nope", "0" * 64, "registered models: enet_b0_8_best_vgaf"),
    ],
)
def test_pin_sha256_rejects_published_models_bad_digests_and_unknown_names(
    name: str, digest: str, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        pin_sha256(name, digest)


def test_insightface_licence_is_shown_once_per_process(
    server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.routes["/buffalo_l.zip"] = [zip_pack({"det_10g.onnx": ONNX})]
    card = detector_card(server.url("/buffalo_l.zip"))
    with caplog.at_level(logging.WARNING, logger="emotibatch.inference.registry"):
        resolve_card(card)
        resolve_card(card)
    notices = [r for r in caplog.records if "non-commercial research only" in r.getMessage()]
    assert len(notices) == 1


# Names, paths and fsspec URIs


def test_unknown_name_lists_registered_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"registered models: enet_b0_8_best_vgaf, .*det_500m"):
        resolve(str(tmp_path / "missing.onnx"))


def test_local_path_and_file_uri_are_used_in_place(tmp_path: Path, isolated: Path) -> None:
    path = tmp_path / "mine.onnx"
    path.write_bytes(ONNX)
    assert resolve(str(path)) == path
    assert resolve(f"file://{path}") == path
    assert not isolated.exists()
    with pytest.raises(FileNotFoundError, match=r"missing.onnx"):
        resolve(f"file://{tmp_path}/missing.onnx")


def test_memory_uri_is_cached_and_refetched_when_it_changes(tmp_path: Path, isolated: Path) -> None:
    fs = fsspec.filesystem("memory")
    uri = f"memory://{tmp_path.name}/remote.onnx"
    fs.pipe(uri, ONNX)
    try:
        first = resolve(uri)
        inode = first.stat().st_ino
        assert first.parent == isolated / "uri" and first.name.endswith("-remote.onnx")
        assert first.read_bytes() == ONNX
        assert resolve(uri).stat().st_ino == inode
        fs.pipe(uri, OTHER)
        assert resolve(uri) == first and first.read_bytes() == OTHER
    finally:
        fs.rm(f"/{tmp_path.name}", recursive=True)
    with pytest.raises(FileNotFoundError, match=r"remote.onnx"):
        resolve(uri)


def test_unreachable_uri_falls_back_to_cached_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fs = fsspec.filesystem("memory")
    uri = f"memory://{tmp_path.name}/remote.onnx"
    fs.pipe(uri, ONNX)
    try:
        cached = resolve(uri)

        def offline(self: object, path: str, **kwargs: object) -> None:
            raise ConnectionError("network is unreachable")

        monkeypatch.setattr(type(fs), "info", offline)
        assert resolve(uri) == cached
        assert "using the cached copy" in caplog.text
        with pytest.raises(ModelUnavailableError, match=r"other.onnx"):
            resolve(f"memory://{tmp_path.name}/other.onnx")
    finally:
        fs.rm(f"/{tmp_path.name}", recursive=True)


def test_http_uri_through_fsspec_keeps_queries_out_of_cache_names(server: FakeServer, isolated: Path) -> None:
    server.routes["/remote.onnx"] = [ONNX]
    path = resolve(server.url("/remote.onnx") + "?signature=s3cr3t")
    assert path.read_bytes() == ONNX
    assert path.name.endswith("-remote.onnx")
    assert not any("s3cr3t" in p.name for p in isolated.rglob("*"))


def test_an_http_model_is_read_without_the_object_stores_options(server: FakeServer, isolated: Path) -> None:
    """--storage-options are for s3:// and the like: given to fsspec's HTTP filesystem they were arguments it
    does not know (a TypeError that ended the job before any work)."""
    server.routes["/remote.onnx"] = [ONNX]
    s3_options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert resolve(server.url("/remote.onnx"), storage_options=s3_options).read_bytes() == ONNX


# Several processes on one node


def _resolve_in_child(card: ModelCard, cache: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    results.put(str(resolve_card(card, cache_dir=cache)))  # type: ignore[attr-defined]


@pytest.mark.slow
def test_concurrent_processes_download_once_and_share_one_good_file(
    server: FakeServer, isolated: Path
) -> None:
    server.routes["/m.onnx"] = [ONNX]
    card = emotion_card(server.url("/m.onnx"))
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_resolve_in_child, args=(card, str(isolated), barrier, results)) for _ in range(n)
    ]
    for proc in procs:
        proc.start()
    paths = {results.get(timeout=30) for _ in procs}
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0] * n
    assert paths == {str(isolated / "test_emotion.onnx")}
    assert (isolated / "test_emotion.onnx").read_bytes() == ONNX
    assert server.gets["/m.onnx"] == 1
    assert leftovers(isolated) == []
