"""Remote files: retries with backoff, and errors a person can act on.

Transient errors (connection resets, timeouts, 5xx, throttling) are retried at two levels: each S3
request by botocore (`S3_DEFAULTS`, fsspec's defaults for s3:// from import on; explicit storage options
or fsspec's own config win), and whole operations by `retrying`, with exponential backoff. Permanent ones
(403, 404, other 4xx) fail at once. Either way the error is a `StorageError` naming the redacted URI, the
HTTP status where known, and what to do. Whole-file writes are in `files`, the node-local copies of
remote videos in `video_cache`.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec

from emotibatch.io.redact import clean_text

log = logging.getLogger(__name__)

ATTEMPTS = 4
BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# botocore's "standard" mode retries 5xx, throttling (503 SlowDown) and connection errors per request.
# total_max_attempts, not max_attempts: botocore rewrites the latter in place, in this shared dict.
S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"retries": {"total_max_attempts": 5, "mode": "standard"}}}
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --storage-options"

# Errors in our code or the caller's, not in the storage: never retried.
_BUGS = (TypeError, ValueError, AttributeError, KeyError, IndexError, NotImplementedError, AssertionError)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_RETRIED_4XX = (408, 429)  # request timeout, too many requests
_HTTP_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https")

T = TypeVar("T")


class StorageError(OSError):
    """A remote file that could not be read or written. The message names it (redacted) and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message  # what handlers of any OSError show as its reason


def _install_defaults() -> None:
    """Make `S3_DEFAULTS` fsspec's defaults for every s3:// filesystem this process opens."""
    defaults = fsspec.config.conf.setdefault("s3", {})
    for key, value in S3_DEFAULTS.items():
        defaults.setdefault(key, copy.deepcopy(value))


_install_defaults()


# -- errors and retries ----------------------------------------------------------------------------------


def _http_status(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and S3 error code behind `exc`, if any: s3fs keeps botocore's error as the cause,
    fsspec's HTTP filesystem raises aiohttp's ClientResponseError."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(response.get("Error", {}).get("Code") or "")
            return status, "" if code == str(status) else code  # a HEAD's error has no body, no code
        if getattr(seen, "request_info", None) is not None and isinstance(getattr(seen, "status", None), int):
            return seen.status, ""  # type: ignore[attr-defined]
        seen = seen.__cause__ or seen.__context__
    return None, ""


def one_line(exc: BaseException) -> str:
    """`exc` in one short line, credentials in it redacted (a presigned URL carries its signature)."""
    return f"{type(exc).__name__}: {clean_text(' '.join(str(exc).split()))}"[:300]


def _invalid_request(exc: BaseException) -> bool:
    """botocore refuses to send a request whose parameters are invalid (a bucket name holding "user:key@",
    say): no HTTP status says so, and sending it again cannot help. botocore is only imported by s3fs, so
    an error of a process that never imported it is not botocore's."""
    exceptions = sys.modules.get("botocore.exceptions")
    if exceptions is None:
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, exceptions.ParamValidationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT) or _invalid_request(exc):
        return True
    status, _ = _http_status(exc)
    return status is not None and 400 <= status < 500 and status not in _RETRIED_4XX


def _message(exc: BaseException, shown: str, verb: str, attempts: int) -> str:
    status, code = _http_status(exc)
    if status is None and shown.split("://", 1)[0] in _HTTP_SCHEMES:
        # Object stores' filesystems raise these for 404 / 403 but may drop the response (s3fs on HEAD).
        status = {FileNotFoundError: 404, PermissionError: 403}.get(type(exc))
    http = f"HTTP {status} {code}".strip() if status else ""
    where = f"{shown} ({http})" if http else shown
    if isinstance(exc, FileNotFoundError) or status == 404:
        return f"not found: {where}; check the path"
    if isinstance(exc, PermissionError) or status in (401, 403):
        return (
            f"access denied: {where}; check the credentials ({CREDENTIALS_HINT}) and that the bucket "
            f"policy lets them {verb} it"
        )
    if _is_permanent(exc):
        return f"the storage refused to {verb} {where}; check the path and --storage-options"
    return (
        f"could not {verb} {shown} after {attempts} attempts ({http or one_line(exc)}); the storage was "
        "unreachable or overloaded: run the job again"
    )


def retrying(action: Callable[[], T], shown: str, verb: str = "read") -> T:
    """`action()`, run again after a backoff while it fails with a transient storage error.

    `shown` (a redacted URI) and `verb` ("read", "write") make the message of the StorageError raised for
    a permanent error, or once ATTEMPTS are spent. Errors of the program itself propagate unchanged.
    """
    attempt = 1
    while True:
        try:
            return action()
        except (StorageError, *_BUGS):
            raise
        except Exception as exc:
            if _is_permanent(exc) or attempt == ATTEMPTS:
                raise StorageError(_message(exc, shown, verb, attempt)) from None
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("%s %s failed (%s); retrying in %.1f s", verb, shown, one_line(exc), delay)
            time.sleep(delay)
            attempt += 1
