"""EmotionModel against EmotiEffLib 1.1.1's own ONNX recogniser on the same model files and crops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from emotibatch.inference import registry
from emotibatch.inference.embed import EmotionModel
from emotibatch.testing import standins

# The base tolerance, the one the others follow from: the same float32 backbone run by another onnxruntime
# build, CPU family (other SIMD kernels, another summation order) or the CUDA code path.
FEATURE_ATOL = 1e-4
EPS32 = float(np.finfo(np.float32).eps)


def head_atol(weight: np.ndarray, features: np.ndarray, feature_dev: float) -> float:
    """What the head's outputs (logits, valence, arousal) may differ by, given features `feature_dev` apart.

    z = W f + b, so |dz|_inf <= ||W||_inf |df|_inf (||W||_inf: the largest row sum of |W|); each side's
    float32 dot product adds at most D eps sum_j |W_ij f_j| (Higham, Accuracy and Stability of Numerical
    Algorithms, 2nd ed., eq. 3.5).
    """
    w = np.abs(weight).astype(np.float64)
    rounding = 2 * weight.shape[1] * EPS32 * (np.abs(features).astype(np.float64) @ w.T).max()
    return float(w.sum(axis=1).max() * feature_dev + rounding)


def probs_atol(logit_dev: float, classes: int) -> float:
    """softmax is 1/2-Lipschitz in the inf-norm: its Jacobian diag(p) - p p^T has row i summing in |.| to
    2 p_i (1 - p_i) <= 1/2, so |dp|_inf <= |dz|_inf / 2 along the segment between the two logit vectors;
    each side's float32 softmax (C exps, a sum of C, a division) adds at most (C + 2) eps, as p <= 1."""
    return logit_dev / 2 + 2 * (classes + 2) * EPS32


def diverse_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """Crops of many sizes and colours (a stand-in model separates them by colour and texture)."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        h, w = (224, 224) if i == 0 else (1, 1) if i == 1 else rng.integers(8, 320, 2)
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, rng.uniform(0, 80), (h, w, 3))
        crops.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return crops


@pytest.fixture
def reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """EmotiEffLib's recogniser, reading `~/.emotiefflib/<name>.onnx` from a private HOME."""
    facial_analysis = pytest.importorskip("emotiefflib.facial_analysis")
    monkeypatch.setenv("HOME", str(tmp_path))

    def make(name: str, model: Path):
        (tmp_path / ".emotiefflib").mkdir(exist_ok=True)
        shutil.copy(model, tmp_path / ".emotiefflib" / f"{name}.onnx")
        return facial_analysis.EmotiEffLibRecognizerOnnx(name)

    return make


def test_faces_per_call_default_to_the_device(request: pytest.FixtureRequest, emotion_path: Path) -> None:
    assert EmotionModel.load(str(emotion_path), device="cpu").batch_size == 16
    assert EmotionModel.load(str(emotion_path), device="cpu", batch_size=5).batch_size == 5
    request.getfixturevalue("cuda_code_path")
    assert EmotionModel.load(str(emotion_path), device="auto").batch_size == 64


@pytest.mark.parametrize("path_of", ["cpu", "cuda"], ids=["cpu-path", "cuda-path"])
@pytest.mark.parametrize("name", ["enet_b0_8_best_vgaf", "enet_b0_8_va_mtl"])
def test_equals_emotiefflib(request, reference, model_dir: Path, name: str, path_of: str) -> None:
    path = model_dir / f"{name}.onnx"
    ref = reference(name, path)
    if path_of == "cuda":
        request.getfixturevalue("cuda_code_path")
    ours = EmotionModel.load(str(path), device="auto" if path_of == "cuda" else "cpu", batch_size=16)
    assert ours.runner.device == path_of
    crops = diverse_crops(40)
    out = ours.predict(crops)
    ref_features = ref.extract_features(crops)
    ref_labels, ref_scores = ref.classify_emotions(ref_features, logits=True)
    mtl = name.endswith("_mtl")
    np.testing.assert_allclose(out.features, ref_features, atol=FEATURE_ATOL, rtol=0)
    # Each later check follows from the deviation measured before it, not from its tolerance: the bound is
    # then as tight as this machine's numbers allow and still holds on any other.
    logit_atol = head_atol(ours.weight, ref_features, float(np.abs(out.features - ref_features).max()))
    ref_logits = ref_scores[:, :-2] if mtl else ref_scores
    np.testing.assert_allclose(out.logits, ref_logits, atol=logit_atol, rtol=0)
    assert out.labels == ref_labels
    assert len(set(out.labels)) > 1, "crops should not all get one label, or the label check proves little"
    _, ref_probs = ref.classify_emotions(ref_features, logits=False)
    atol = probs_atol(float(np.abs(out.logits - ref_logits).max()), len(out.classes))
    np.testing.assert_allclose(out.probs, ref_probs[:, :-2] if mtl else ref_probs, atol=atol, rtol=0)
    if mtl:  # valence and arousal are two more rows of the same head
        np.testing.assert_allclose(out.valence, ref_scores[:, -2], atol=logit_atol, rtol=0)
        np.testing.assert_allclose(out.arousal, ref_scores[:, -1], atol=logit_atol, rtol=0)
    else:
        assert out.valence is None and out.arousal is None
    assert out.features.dtype == out.logits.dtype == out.probs.dtype == np.float32
    assert out.classes == registry.CLASSES_8


def test_batching_does_not_change_results(emotion_path: Path) -> None:
    """Bit for bit: a face's numbers must not depend on which faces share its batch or its call (the
    face actors' batches depend on timing)."""
    crops = diverse_crops(11, seed=3)
    whole = EmotionModel.load(str(emotion_path), device="cpu", batch_size=64).predict(crops)
    model = EmotionModel.load(str(emotion_path), device="cpu", batch_size=3)
    for parts in ([crops], [crops[:1], crops[1:5], crops[5:]]):
        outs = [model.predict(p) for p in parts]
        for field in ("features", "logits", "probs"):
            np.testing.assert_array_equal(
                np.concatenate([getattr(o, field) for o in outs]), getattr(whole, field)
            )
        assert [label for o in outs for label in o.labels] == whole.labels


def test_empty_input_gives_empty_outputs_of_the_right_shapes(mtl_path: Path) -> None:
    out = EmotionModel.load(str(mtl_path), device="cpu").predict([])
    assert out.features.shape == (0, 1280) and out.features.dtype == np.float32
    assert out.logits.shape == out.probs.shape == (0, 8)
    assert out.labels == []
    assert out.valence.shape == out.arousal.shape == (0,)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (np.zeros((10, 10), np.uint8), "grayscale"),
        (np.zeros((10, 10, 4), np.uint8), "4-channel"),
        (np.zeros((0, 10, 3), np.uint8), "zero-size"),
        (np.zeros((10, 10, 3), np.float32), "dtype float32"),
    ],
)
def test_bad_crops_name_the_index(emotion_path: Path, bad: np.ndarray, expected: str) -> None:
    model = EmotionModel.load(str(emotion_path), device="cpu")
    with pytest.raises(ValueError, match=rf"crop 2: .*{expected}"):
        model.predict([*diverse_crops(2), bad])


def test_settings_from_the_graph_then_the_name_then_overrides(tmp_path: Path) -> None:
    seven = standins.make_emotion_model(tmp_path / "anything.onnx", classes=7, input_size=112)
    model = EmotionModel.load(str(seven), device="cpu")
    assert model.classes == registry.CLASSES_7
    assert model.settings.input_size == 112  # static input size read from the graph
    assert model.settings.mean == registry.MEAN_IMAGENET

    mbf = standins.make_emotion_model(tmp_path / "mbf_va_mtl.onnx", va=True, input_size=112)
    settings = EmotionModel.load(str(mbf), device="cpu").settings
    assert settings.has_va and settings.mean == (0.5, 0.5, 0.5) and settings.std == (0.5, 0.5, 0.5)

    custom = EmotionModel.load(
        str(seven), device="cpu", classes=list("abcdefg"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    assert custom.classes == tuple("abcdefg") and custom.settings.std == (0.25, 0.25, 0.25)
    assert custom.predict(diverse_crops(3)).labels[0] in "abcdefg"
    with pytest.raises(ValueError, match="do not match"):
        EmotionModel.load(str(seven), device="cpu", classes=["a", "b"])
    with pytest.raises(TypeError, match="unknown settings"):
        EmotionModel.load(str(seven), device="cpu", size=3)


def test_dynamic_input_size_comes_from_the_name(tmp_path: Path) -> None:
    b2 = standins.make_emotion_model(tmp_path / "enet_b2_8.onnx", input_size=260)
    model = onnx.load(str(b2))
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "size"
    onnx.save(model, str(b2))
    assert EmotionModel.load(str(b2), device="cpu").settings.input_size == 260


def test_files_that_break_the_contract_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx: not an ONNX model"):
        EmotionModel.load(str(junk), device="cpu")
    path = standins.make_emotion_model(tmp_path / "headless.onnx")
    model = onnx.load(str(path))
    gemm = model.graph.node[-1]
    model.graph.node.remove(gemm)
    model.graph.output[0].name = gemm.input[0]
    onnx.save(model, str(path))
    with pytest.raises(
        ValueError, match=r"headless\.onnx: .*last node must be a 3-input Gemm.*found Flatten"
    ):
        EmotionModel.load(str(path), device="cpu")
