"""Redaction: settings at any depth, free error text, log records (emotibatch/io/redact.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from emotibatch.config import ExtractConfig
from emotibatch.io import redact, storage
from emotibatch.io.redact import REDACTED, RedactingFilter, clean_text, install_log_filter, scrub

PASSWORD, SIGNATURE, TOKEN, ENV_SECRET = "pw-Qx81", "sig-Hh27", "tok-Lm55", "env-secret-Vb93kk"


def test_scrub_redacts_user_info_and_queries_at_any_depth() -> None:
    options = {
        "anon": False,
        "key": "plain-key-id",
        "client_kwargs": {
            "endpoint_url": f"http://user:{PASSWORD}@minio:9000",
            "proxies": [f"https://proxy/?X-Amz-Signature={SIGNATURE}"],
        },
        "config_kwargs": {"retries": {"total_max_attempts": 5}},
    }
    assert scrub(options) == {
        "anon": False,
        "key": REDACTED,
        "client_kwargs": {"endpoint_url": "http://minio:9000", "proxies": ["https://proxy/"]},
        "config_kwargs": {"retries": {"total_max_attempts": 5}},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # botocore names the bucket of s3://KEY:SECRET@bucket/x.mp4 with no scheme
        (
            f'Invalid bucket name "AKIAEXAMPLE:{PASSWORD}@bucket": Bucket name must match',
            f'Invalid bucket name "{REDACTED}@bucket": Bucket name must match',
        ),
        (f"GET https://u:{PASSWORD}@h:9/b/x.mp4?sig=1 failed", "GET https://h:9/b/x.mp4 failed"),
        (
            f"bucket/x.mp4?X-Amz-Signature={SIGNATURE}&X-Amz-Date=1",
            f"bucket/x.mp4?X-Amz-Signature={REDACTED}&X-Amz-Date=1",
        ),
        (f"bad header session_token={TOKEN}, retrying", f"bad header session_token={REDACTED}, retrying"),
        ("key id AKIAIOSFODNN7EXAMPLE is unknown", f"key id {REDACTED} is unknown"),
        # what must stay: paths, ratios, e-mail-like text without a password, times
        (
            "frames 0-4 of /data/a b.mp4: ratio 16:9 at 12:30",
            "frames 0-4 of /data/a b.mp4: ratio 16:9 at 12:30",
        ),
        ("mail admin@example.org", "mail admin@example.org"),
    ],
)
def test_clean_text(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_text_removes_credential_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("XDG_SESSION_ID", "3")  # not a credential variable, and too short to replace
    assert (
        clean_text(f"signature mismatch for {ENV_SECRET} in 3 parts")
        == f"signature mismatch for {REDACTED} in 3 parts"
    )


def test_public_settings_hold_no_credentials_at_any_depth() -> None:
    config = ExtractConfig(
        inputs=(f"s3://AKIA:{PASSWORD}@bucket/in/",),
        output=f"https://out/?token={TOKEN}",
        address=f"ray://admin:{PASSWORD}@head:10001",
        storage_options={
            "client_kwargs": {"endpoint_url": f"http://user:{PASSWORD}@host:9000"},
            "secret": TOKEN,
        },
    )
    public = config.public()
    text = json.dumps(public)
    for secret in (PASSWORD, TOKEN):
        assert secret not in text
    assert public["storage_options"] == {
        "client_kwargs": {"endpoint_url": "http://host:9000"},
        "secret": REDACTED,
    }
    assert (public["inputs"], public["output"], public["address"]) == (
        ["s3://bucket/in/"],
        "https://out/",
        "ray://head:10001",
    )


def test_storage_messages_are_cleaned() -> None:
    """The retry warnings and the StorageError of s3://KEY:SECRET@bucket quoted botocore's bucket name."""
    exc = ValueError(f'Invalid bucket name "AKIAEXAMPLE:{PASSWORD}@bucket": must match')
    assert PASSWORD not in storage.one_line(exc)


def test_log_filter_cleans_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("emotibatch.test_redact")
    log.addHandler(handler)
    try:
        log.warning("read %s failed", f"s3://k:{PASSWORD}@b/x.mp4")
        try:
            raise OSError(f"https://h/x?X-Amz-Signature={SIGNATURE}")
        except OSError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "read s3://b/x.mp4 failed" in text and "Traceback" in text
    assert PASSWORD not in text and SIGNATURE not in text


def test_install_log_filter_covers_every_handler_once(monkeypatch: pytest.MonkeyPatch) -> None:
    root, own = logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(logging.getLogger(), "handlers", [root])
    monkeypatch.setattr(logging.getLogger("emotibatch.test_redact.own"), "handlers", [own])  # like Ray's
    monkeypatch.setattr(logging.lastResort, "filters", [])
    install_log_filter()
    install_log_filter()
    for h in (root, own, logging.lastResort):
        assert sum(isinstance(f, redact.RedactingFilter) for f in h.filters) == 1
