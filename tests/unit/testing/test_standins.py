"""The EfficientNet-B0 stand-in: B0's size and EmotiEffLib's contract; it runs in EmotiEffLib's own class."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from emotibatch.testing import standins

pytestmark = pytest.mark.slow  # building EfficientNet-B0's graph takes seconds


@pytest.fixture(scope="module")
def enet_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standins.make_efficientnet_b0(tmp_path_factory.mktemp("enet") / "enet_b0_8_best_vgaf.onnx")


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_b0_stand_in_keeps_emotiefflibs_contract_and_b0s_size(enet_path: Path) -> None:
    model = onnx.load(enet_path)
    graph = model.graph
    assert [i.name for i in graph.input] == ["input"]
    batch, *rest = _dims(graph.input[0])
    assert isinstance(batch, str) and rest == [3, 224, 224]
    assert [o.name for o in graph.output] == ["output"] and _dims(graph.output[0])[1] == 8
    gemm = graph.node[-1]
    assert gemm.op_type == "Gemm" and len(gemm.input) == 3
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert weights[gemm.input[1]].shape == (8, 1280) and weights[gemm.input[2]].shape == (8,)
    # B0 with BatchNorm folded: 3,986,540 parameters before the classifier.
    assert 3.9e6 < sum(w.size for w in weights.values()) < 4.1e6


def test_va_stand_in_has_ten_outputs_at_its_input_size(tmp_path: Path) -> None:
    graph = onnx.load(standins.make_efficientnet_b0(tmp_path / "va.onnx", va=True, input_size=112)).graph
    assert _dims(graph.input[0])[1:] == [3, 112, 112]
    assert _dims(graph.output[0])[1] == 10 and graph.node[-1].op_type == "Gemm"


def test_a_face_scores_the_same_alone_and_in_a_batch(enet_path: Path) -> None:
    session = ort.InferenceSession(str(enet_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32)
    (one,) = session.run(None, {"input": x[:1]})
    (four,) = session.run(None, {"input": x})
    assert one.shape == (1, 8) and four.shape == (4, 8)
    assert np.isfinite(four).all() and not np.allclose(four[0], four[1:])
    # onnxruntime may pick other convolution kernels for 1 and 4 images: float32 sums in another order through
    # ~80 layers of a random (not trained, so poorly conditioned) network; only the graph's validity is at stake
    np.testing.assert_allclose(one[0], four[0], rtol=1e-3, atol=1e-3)


def test_emotiefflib_reference_loads_it(
    enet_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emotiefflib.facial_analysis import EmotiEffLibRecognizerOnnx

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".emotiefflib").mkdir()
    shutil.copy(enet_path, tmp_path / ".emotiefflib" / "enet_b0_8_best_vgaf.onnx")
    recognizer = EmotiEffLibRecognizerOnnx("enet_b0_8_best_vgaf")
    faces = list(np.random.default_rng(1).integers(0, 256, (3, 160, 120, 3), dtype=np.uint8))
    features = recognizer.extract_features(faces)
    assert features.shape == (3, 1280) and np.isfinite(features).all()
