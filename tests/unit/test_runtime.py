"""Session making: providers, the silent CPU fallback, threads, the uint8 input prefix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from emotibatch import runtime
from emotibatch.preprocess import normalisation_lut


def test_cpu_device_uses_the_cpu_provider_and_the_given_threads(emotion_path: Path) -> None:
    runner = runtime.make_runner(onnx.load(str(emotion_path)), device="cpu", num_threads=1)
    assert runner.providers == ["CPUExecutionProvider"] and runner.device == "cpu"
    assert runner.session.get_session_options().intra_op_num_threads == 1


def test_threads_default_to_the_cpu_share(emotion_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0})
    assert runtime.cpu_share() == 1
    runner = runtime.make_runner(onnx.load(str(emotion_path)), device="cpu")
    assert runner.session.get_session_options().intra_op_num_threads == 1


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert runtime.providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match=r"install emotibatch\[gpu\]"):
        runtime.providers_for("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        runtime.providers_for("gpu")


def test_a_silent_fallback_to_the_cpu_is_caught(
    emotion_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """onnxruntime runs on the CPU without a word when CUDA cannot load; we check what is active."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is really available here; the fallback cannot be provoked this way")
    monkeypatch.setattr(
        runtime, "providers_for", lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    model = onnx.load(str(emotion_path))
    with pytest.raises(RuntimeError, match="asked for CUDAExecutionProvider but onnxruntime is running CPU"):
        runtime.make_runner(model, device="cuda")
    runner = runtime.make_runner(model, device="auto")
    assert runner.device == "cpu" and "running on the CPU" in caplog.text


def test_uint8_input_prefix_is_exact(emotion_path: Path) -> None:
    model = onnx.load(str(emotion_path))
    lut = normalisation_lut((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    prefixed = runtime.make_runner(runtime.with_uint8_input(model, lut), device="cpu")
    plain = runtime.make_runner(model, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    normalised = np.stack([lut[c][pixels[..., c]] for c in range(3)], axis=1)
    np.testing.assert_allclose(
        prefixed.run({runtime.PIXELS: pixels})[0], plain.run({"input": normalised})[0], rtol=0, atol=1e-5
    )
    assert prefixed.session.get_inputs()[0].type == "tensor(uint8)"
