"""storage.retrying without a server: which errors are tried again (tests/s3/test_storage.py has the rest)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ParamValidationError

from emotibatch.io import storage


def test_a_request_botocore_refuses_to_send_fails_at_once_without_the_secret() -> None:
    """An invalid bucket name (here one holding credentials) is not a storage outage: no retries, and the
    message says to check the path rather than to run the job again."""
    calls = []

    def action() -> None:
        calls.append(1)
        raise ParamValidationError(report='Invalid bucket name "AKIAEXAMPLE:s3cr3t@bucket"')

    with pytest.raises(
        storage.StorageError, match=r"refused to read s3://bucket/x\.mp4; check the path"
    ) as caught:
        storage.retrying(action, "s3://bucket/x.mp4")
    assert calls == [1]
    assert "s3cr3t" not in str(caught.value)
