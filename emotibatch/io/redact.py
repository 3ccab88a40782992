"""Credentials never reach outputs, logs or messages: the one place that strips them.

- `redact_uri`: one URI, safe to store (`source_uri`, settings).
- `scrub`: settings or storage options at any depth: values under credential-like keys, and the user info
  and query of every URL in any string.
- `clean_text`: free text made from an exception (error rows, log lines, CLI messages). Libraries quote
  what they were given: botocore names a bucket `"KEY:SECRET@bucket"` (no scheme), a signed URL carries
  its signature in the query, so URLs, scheme-less `user:password@`, `key=value` pairs with a
  credential-like key, AWS key ids and the values of credential variables in the environment all go.
- `RedactingFilter` / `install_log_filter`: the same for every log record the process's handlers emit.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

REDACTED = "<redacted>"
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session", "signature")
_WORDS = "|".join(_SECRET_WORDS)
_STOP = r"\s'\"<>`"  # what ends a URL or a value quoted in a message
_URL = re.compile(rf"[a-zA-Z][a-zA-Z0-9+.-]*://[^{_STOP}]+")
# `user:password@` without a scheme; the password may hold ':' but never '/' or '@' (URL-encoded there).
_USER_INFO = re.compile(rf"[^{_STOP}/@:=]+:[^{_STOP}/@]*@")
_PAIR = re.compile(rf"([\w.-]*(?:{_WORDS})[\w.-]*=)[^{_STOP}&;,)]+", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{16}\b")
# Environment variables whose values are credentials; shorter values are too common to replace in text.
_SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|KEY_ID|API_KEY|CREDENTIAL", re.IGNORECASE)
_MIN_SECRET_CHARS = 8


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


def _secret_env_values() -> list[str]:
    """Credential values in the environment (AWS_SECRET_ACCESS_KEY, ...), longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= _MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def clean_text(text: str) -> str:
    """`text` (a message made from an exception) with every credential it may quote replaced."""
    text = _URL.sub(lambda m: redact_uri(m.group()), text)
    text = _USER_INFO.sub(f"{REDACTED}@", text)
    text = _PAIR.sub(rf"\1{REDACTED}", text)
    text = _AWS_KEY_ID.sub(REDACTED, text)
    for value in _secret_env_values():
        text = text.replace(value, REDACTED)
    return text


def scrub(options: Any) -> Any:
    """Settings or storage options (nested dicts and lists) with every value under a credential-like key
    replaced and every string cleaned (`clean_text`: an endpoint_url may carry `user:password@`)."""
    if isinstance(options, dict):
        return {
            k: REDACTED if any(w in str(k).lower() for w in _SECRET_WORDS) else scrub(v)
            for k, v in options.items()
        }
    if isinstance(options, list | tuple):
        return [scrub(v) for v in options]
    if isinstance(options, str):
        return clean_text(options)
    return options


class RedactingFilter(logging.Filter):
    """Cleans each record's message and traceback (`clean_text`) before a handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = clean_text(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = clean_text(record.exc_text)
        if record.stack_info:
            record.stack_info = clean_text(record.stack_info)
        return True


def install_log_filter() -> None:
    """Add a `RedactingFilter` (once) to every handler configured so far: the root's, those of loggers that
    do not propagate (Ray's), and logging's last resort. Handler filters see the records of every logger
    that reaches them; a logger's own filters would see only the records logged on it."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
    for handler in [*handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
