"""Credentials never reach outputs, logs or messages: the one place that strips them."""

from __future__ import annotations

from typing import Any

_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "signature")


def redact_uri(uri: str) -> str:
    """`uri` without its query string, fragment and `user:password@`: safe to write anywhere.

    Presigned URLs carry their signature in the query; `s3://key:secret@bucket` style URIs in the user
    info. Local paths (no "://") are returned unchanged.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def scrub(options: Any) -> Any:
    """Storage options (nested dicts and lists) with every value under a credential-like key replaced."""
    if isinstance(options, dict):
        return {
            k: "<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else scrub(v)
            for k, v in options.items()
        }
    if isinstance(options, list):
        return [scrub(v) for v in options]
    return options
