"""No credential reaches anything a run leaves: `emotibatch extract` as a user runs it (its own process, its
own embedded local Ray), with a distinct secret planted in every place one can be given, then every byte
the run left scanned: output files (raw bytes, Parquet values and schema metadata), stdout, stderr, Ray's
session logs, the caches.

The places: AWS variables in the environment; storage-option keys, and a nested value holding a URL
with user info; user info and query strings of input URIs; and a
manifest uri of the `s3://KEY:SECRET@bucket/...` form (botocore quotes its bucket name with no scheme).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import REGION

from emotibatch.testing import samples

ENV = {
    "AWS_ACCESS_KEY_ID": "env-key-id-Pq01",
    "AWS_SECRET_ACCESS_KEY": "env-secret-Pq02",
    "AWS_SESSION_TOKEN": "env-token-Pq03",
}
OPTION_KEY, OPTION_SECRET, OPTION_TOKEN = "opt-key-id-Pq04", "opt-secret-Pq05", "opt-token-Pq06"
PROXY_USER, PROXY_PASSWORD = "proxy-user-Pq07", "proxy-pw-Pq08"
HTTP_USER, HTTP_PASSWORD = "http-user-Pq09", "http-pw-Pq10"
QUERY_SIGNATURE, QUERY_CREDENTIAL = "query-sig-Pq11", "query-cred-Pq12"
MANIFEST_KEY, MANIFEST_SECRET = "AKIAMANIFESTPq13", "manifest-secret-Pq14"
SECRETS = [
    *ENV.values(),
    OPTION_KEY,
    OPTION_SECRET,
    OPTION_TOKEN,
    PROXY_USER,
    PROXY_PASSWORD,
    HTTP_USER,
    HTTP_PASSWORD,
    QUERY_SIGNATURE,
    QUERY_CREDENTIAL,
    MANIFEST_KEY,
    MANIFEST_SECRET,
]
# A proxy for https only: the endpoint is http, so it is recorded in the settings but never dialled.
PROXY_HOST = "192.0.2.1:3128"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The run's TMPDIR (Ray's session and logs go there): short, since Ray's socket paths must fit in
    107 bytes, which pytest's tmp_path may not leave room for."""
    path = Path(tempfile.mkdtemp(prefix="eb-secrets-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _leaks(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


def test_no_planted_secret_anywhere(
    s3: s3fs.S3FileSystem, s3_endpoint: str, bucket: str, emotion_path, scrfd_path, tmp_path, short_tmp
) -> None:
    root = f"{bucket}/secrets"
    video = samples.make_video(
        tmp_path / "a.mp4",
        width=320,
        height=180,
        fps=25.0,
        seconds=1.0,
        faces=[samples.FaceTrack(32, (64, 64), (128, 64), first=0, last=24)],
    )
    for name in ("a", "b"):
        s3.put_file(str(video), f"{root}/in/{name}.mp4")
    host = s3_endpoint.removeprefix("http://")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "uri,video_id\n"
        f"s3://{root}/in/a.mp4,a\n"
        f"s3://{MANIFEST_KEY}:{MANIFEST_SECRET}@{root}/in/a.mp4,userinfo\n"
    )
    presigned = (
        f"http://{HTTP_USER}:{HTTP_PASSWORD}@{host}/{root}/in/b.mp4"
        f"?X-Amz-Signature={QUERY_SIGNATURE}&X-Amz-Credential={QUERY_CREDENTIAL}"
    )
    # The endpoint comes from the environment, where botocore reads it; the options' secrets are planted
    # in keys and nested values.
    options = {
        "key": OPTION_KEY,
        "secret": OPTION_SECRET,
        "token": OPTION_TOKEN,
        "config_kwargs": {"proxies": {"https": f"http://{PROXY_USER}:{PROXY_PASSWORD}@{PROXY_HOST}"}},
    }
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        ENV,
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL_S3=s3_endpoint,
        TMPDIR=str(short_tmp),
        EMOTIBATCH_VIDEO_CACHE=str(short_tmp / "videos"),
        EMOTIBATCH_CACHE=str(short_tmp / "models"),
        RAY_USAGE_STATS_ENABLED="0",
        COLUMNS="1000",
    )
    args = [
        str(manifest),
        presigned,
        "-o",
        str(out),
        "--model",
        str(emotion_path),
        "--detector",
        str(scrfd_path),
    ]
    args += ["--device", "cpu", "--every", "5", "--storage-options", json.dumps(options)]
    run = subprocess.run(
        [sys.executable, "-m", "emotibatch", "extract", *args], env=env, capture_output=True, timeout=600
    )
    assert run.returncode == 3, run.stdout.decode() + run.stderr.decode()

    # What the run did: the plain row is ok, and so is the presigned URL (read over http as given: moto
    # checks no signature); the s3:// URI with user info is no bucket name botocore will send, by name.
    videos = pq.read_table(out / "videos").to_pylist()
    status = {v["video_id"]: (v["status"], v["error"]) for v in videos}
    assert status["a"][0] == "ok" and status["b"][0] == "ok" and status["userinfo"][0] == "failed", status
    assert f"the storage refused to read s3://{root}/in/a.mp4" in status["userinfo"][1]

    leaks = {"stdout": _leaks(run.stdout), "stderr": _leaks(run.stderr)}
    scanned = []
    for path in [*out.rglob("*"), *short_tmp.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            scanned.append(path)
            leaks[str(path)] = _leaks(path.read_bytes())
            if path.suffix == ".parquet":  # values may sit in compressed pages: read them too
                table = pq.read_table(path)
                text = json.dumps([table.to_pylist(), str(table.schema.metadata)], default=str)
                leaks[f"{path} (values)"] = _leaks(text.encode())
    assert not {where: found for where, found in leaks.items() if found}
    # The scan saw what it must: Ray's session logs, the faces file (settings in its metadata), the settings.
    assert any("session_" in str(p) and "logs" in p.parts for p in scanned)
    faces = next(p for p in scanned if p.parent.name == "faces" and p.suffix == ".parquet")
    assert b"emotibatch" in pq.read_schema(faces).metadata
    settings = json.loads(pq.read_table(out / "runs").to_pylist()[0]["settings"])
    assert settings["storage_options"]["config_kwargs"]["proxies"] == {"https": f"http://{PROXY_HOST}"}
