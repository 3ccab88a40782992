"""Session making: providers, the silent CPU fallback, threads, the uint8 input prefix."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from emotibatch.inference import runtime
from emotibatch.inference.preprocess import normalisation_lut

LUT = normalisation_lut((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_cpu_device_uses_the_cpu_provider_and_the_given_threads(emotion_path: Path) -> None:
    runner = runtime.make_runner(onnx.load(str(emotion_path)), LUT, device="cpu", num_threads=1)
    assert runner.providers == ["CPUExecutionProvider"] and runner.device == "cpu"
    assert runner.session.get_session_options().intra_op_num_threads == 1


def test_threads_default_to_the_cpu_share(emotion_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0})
    assert runtime.cpu_share() == 1
    runner = runtime.make_runner(onnx.load(str(emotion_path)), LUT, device="cpu")
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
        runtime.make_runner(model, LUT, device="cuda")
    runner = runtime.make_runner(model, LUT, device="auto")
    assert runner.device == "cpu" and "running on the CPU" in caplog.text
    assert runner.lut is None, "the CUDA-bound graph, normalising uint8 pixels itself, runs on the CPU"


def test_the_lookup_on_the_host_and_in_the_graph_are_exact(
    emotion_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU applies the table while filling float32 NCHW batches; CUDA graphs gather it from uint8."""
    model = onnx.load(str(emotion_path))
    host = runtime.make_runner(model, LUT, device="cpu", num_threads=1)
    monkeypatch.setattr(runtime, "providers_for", lambda device: [runtime.CUDA, runtime.CPU])
    in_graph = runtime.make_runner(model, LUT, device="auto", num_threads=1)  # CPU provider, as a fallback
    plain = ort.InferenceSession(str(emotion_path), providers=["CPUExecutionProvider"])
    images = list(np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))

    def copy(image: np.ndarray, out: np.ndarray) -> None:
        out[...] = image

    ((_, on_host, _),) = host.batches(images, 3, (224, 224), copy)
    ((_, pixels, _),) = in_graph.batches(images, 3, (224, 224), copy)
    normalised = np.stack([LUT[c][np.stack(images)[..., c]] for c in range(3)], axis=1)
    assert on_host.dtype == np.float32 and np.array_equal(on_host, normalised)
    assert pixels.dtype == np.uint8 and in_graph.session.get_inputs()[0].type == "tensor(uint8)"
    expected = plain.run(None, {"input": normalised})[0]
    # Equal float32 inputs (checked above) through the same weights: only onnxruntime's kernel choice for
    # each graph (fusions, summation order) differs, a few float32 ulps of these logits (|z| < 16: ulp < 1e-6).
    np.testing.assert_allclose(host.run(on_host)[0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(in_graph.run(pixels)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_batches_are_filled_in_order_and_ahead_with_fill_threads(threads: int) -> None:
    runner = runtime.Runner(session=None, device="cuda", fill_threads=threads)  # the filling alone
    third_batch_started = threading.Event()

    def fill(item: int, out: np.ndarray) -> int:
        if item == 8:
            third_batch_started.set()
        out[...] = item
        return item * 10

    seen = []
    for start, batch, results in runner.batches(list(range(10)), 4, (2, 3), fill):
        if start == 4:  # the caller holds the second batch: the third is being filled only with threads
            assert third_batch_started.wait(5 if threads else 0) == bool(threads)
        assert batch.dtype == np.uint8 and batch.shape[1:] == (2, 3, 3)
        seen.append((start, batch[:, 0, 0, 0].tolist(), results))
    assert seen == [
        (0, [0, 1, 2, 3], [0, 10, 20, 30]),
        (4, [4, 5, 6, 7], [40, 50, 60, 70]),
        (8, [8, 9], [80, 90]),
    ]
    assert list(runner.batches([], 4, (2, 3), fill)) == []
