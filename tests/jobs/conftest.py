"""Fixtures for the jobs/ tests: one in-process Ray for the session and the stand-in models as options.

`ray.init` takes 15-25 s on a small machine, so the in-process tests share one session (or the one the
tests in tests/ray already started). `moto` serves S3 for the tests that need it. Helpers are in
jobs_helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import s3server


@pytest.fixture(scope="session")
def model_args(emotion_path: Path, scrfd_path: Path) -> list[str]:
    """The stand-in models as CLI options, on the CPU."""
    return ["--model", str(emotion_path), "--detector", str(scrfd_path), "--device", "cpu"]


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (tests/s3/s3server.py); its endpoint URL."""
    process, endpoint = s3server().start()
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait()
