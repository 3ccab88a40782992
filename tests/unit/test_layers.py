"""Layers point one way: what runs in Ray workers imports no model runtime. And the tree explains itself:
what code and docs cite is in it.

A Ray task's function is imported again in every worker that runs it, with all its module imports, so a
decode or aggregate worker that pulled in onnxruntime would pay its import time and memory for nothing.
`extract.face_stage` (the actor that holds the models) is the one worker-side module that needs them.
"""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import emotibatch.io

WORKER_MODULES = (
    "emotibatch.extract.decode",
    "emotibatch.extract.output",
    "emotibatch.extract.finalize",
    "emotibatch.extract.track",
    "emotibatch.clips.aggregate",
    "emotibatch.cluster",
    "emotibatch.config",
    *(f"emotibatch.io.{m.name}" for m in pkgutil.iter_modules(emotibatch.io.__path__)),
)
MODEL_RUNTIMES = ("onnxruntime", "onnx")
ROOT = Path(__file__).parents[2]
DOCS_CITED = re.compile(r"\bdocs/[\w.-]+\.md\b")


def modules_after(module: str) -> set[str]:
    """sys.modules after importing `module` in a fresh interpreter."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def imported_after(module: str) -> set[str]:
    """The top-level packages imported by `module` (in a fresh interpreter)."""
    return {name.split(".")[0] for name in modules_after(module)}


@pytest.mark.parametrize("module", WORKER_MODULES)
def test_worker_side_modules_import_no_model_runtime(module: str) -> None:
    assert not imported_after(module) & set(MODEL_RUNTIMES)


def test_the_face_stage_does_import_it() -> None:
    """The check above can see an import: the face actor's module does bring onnxruntime in."""
    assert set(MODEL_RUNTIMES) <= imported_after("emotibatch.extract.face_stage")


def test_settings_import_no_stage_of_the_job() -> None:
    """config is read by every layer (cli, decode, pipeline), so it may import none of them."""
    assert not {m for m in modules_after("emotibatch.config") if m.startswith("emotibatch.extract")}


def test_code_and_docs_cite_only_documents_of_this_tree() -> None:
    """Every `docs/*.md` cited exists, and nothing cites the outside REFERENCE notes the facts came from."""
    texts = {
        path: path.read_text()
        for pattern in (
            "emotibatch/**/*.py",
            "benchmarks/*.py",
            "jobs/*.py",
            "docs/*.md",
            "*.md",
            "models/*.md",
        )
        for path in ROOT.glob(pattern)
    }
    cited = {doc for text in texts.values() for doc in DOCS_CITED.findall(text)}
    assert {"docs/models.md", "docs/corpora.md"} <= cited
    assert not [doc for doc in cited if not (ROOT / doc).is_file()]
    assert not [str(path) for path, text in texts.items() if "REFERENCE" in text]
