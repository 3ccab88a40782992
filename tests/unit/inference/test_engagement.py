"""EngagementModel against a direct numpy transcription of EmotiEffLib's Keras engagement model.

The h5 files are written the way Keras 2 writes them (`save_weights`, and `save` with its `model_weights`
group), with random weights of the reference's layer names and shapes, so the loader meets the real layout.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from emotibatch.inference.engagement import ENGAGEMENT_CLASSES, FEATURE_DIM, EngagementModel, window_starts

# The reference model's layers in Keras order; only e, hidden_FC and the output Dense hold weights.
LAYER_NAMES = (
    "image_set",
    "e",
    "alignment",
    "alpha",
    "repeat",
    "alpha_repeated",
    "c",
    "context",
    "hidden_FC",
)
Weights = dict[str, tuple[np.ndarray, np.ndarray]]
# The reference runs in float32 as Keras does, ours in float64: the gap is the reference's rounding. Its
# widest sums have n = 2 x FEATURE_DIM terms, whose float32 error is typically sqrt(n) eps32 relative
# (Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.5): ~6e-6 on unit-scale logits, halved by
# the softmax (1/2-Lipschitz in the inf-norm), so 1e-5.
REFERENCE_ATOL = 1e-5


def random_weights(seed: int = 0, output: str = "dense") -> Weights:
    rng = np.random.default_rng(seed)

    def dense(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
        kernel = rng.normal(0.0, scale, (n_in, n_out)).astype(np.float32)
        return kernel, rng.normal(0.0, 0.1, n_out).astype(np.float32)

    return {
        "e": dense(2 * FEATURE_DIM, 1, 0.05),
        "hidden_FC": dense(2 * FEATURE_DIM, 512, 0.03),
        output: dense(512, 2, 0.06),
    }


def write_weights(group: h5py.Group, weights: Weights, layer_names: tuple[str, ...]) -> None:
    """Keras 2 `save_weights_to_hdf5_group`: every layer listed and grouped, weightless ones included."""
    group.attrs["layer_names"] = [name.encode("utf8") for name in layer_names]
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = b"2.15.0"
    for name in sorted(layer_names):
        layer = group.create_group(name)
        weight_names = [f"{name}/kernel:0", f"{name}/bias:0"] if name in weights else []
        layer.attrs["weight_names"] = [w.encode("utf8") for w in weight_names]  # [] is stored as float64
        for weight_name, value in zip(weight_names, weights.get(name, ())):
            layer.create_dataset(weight_name, data=value)


def write_h5(
    path: Path, weights: Weights, *, whole_model: bool = False, layer_names: tuple[str, ...] = ()
) -> Path:
    names = layer_names or (*LAYER_NAMES, *(n for n in weights if n not in LAYER_NAMES))
    with h5py.File(path, "w") as f:
        if whole_model:  # `model.save("x.h5")`: config at the root, weights under model_weights
            f.attrs["model_config"] = json.dumps({"class_name": "Functional"}).encode("utf8")
            f.attrs["keras_version"] = b"2.15.0"
            f.attrs["backend"] = b"tensorflow"
            write_weights(f.create_group("model_weights"), weights, names)
        else:
            write_weights(f, weights, names)
    return path


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def keras_head(inputs: np.ndarray, weights: Weights, output: str = "dense") -> np.ndarray:
    """The Keras layers of `_single_attention_model`, one by one, in float32 as Keras runs them."""
    (e_kernel, e_bias), (h_kernel, h_bias), (o_kernel, o_bias) = (
        weights["e"],
        weights["hidden_FC"],
        weights[output],
    )
    samples, dim = inputs.shape[1:]
    e = inputs @ e_kernel + e_bias  # Dense(1, linear), name e
    e = e.reshape(-1, samples)  # Reshape([samples])
    alpha = softmax(e)  # Activation softmax
    repeated = np.repeat(alpha[:, None, :], dim, axis=1)  # RepeatVector(dim): [B, dim, samples]
    alpha_repeated = repeated.transpose(0, 2, 1)  # Permute([2, 1])
    c = inputs * alpha_repeated  # Multiply
    x = c.sum(axis=1)  # Lambda K.sum(axis=1), context
    x = np.maximum(x @ h_kernel + h_bias, 0.0)  # Dense 512 relu, hidden_FC
    return softmax(x @ o_kernel + o_bias)  # Dense(n_classes, softmax)


def window_input(features: np.ndarray, i: int, window: int) -> np.ndarray:
    """One window's [window, 2 x dim] input, built as `classify_engagement` builds it."""
    x = features[i : i + window]
    mean_x = np.repeat(np.std(x, axis=0).reshape((1, -1)), len(x), axis=0)
    return np.concatenate((mean_x, x), axis=1)


def reference_scores(
    features: np.ndarray, weights: Weights, window: int, output: str = "dense"
) -> np.ndarray:
    """`classify_engagement`'s loop, `range(N - window)`, then the Keras model on all its windows."""
    return keras_head(
        np.array([window_input(features, i, window) for i in range(len(features) - window)]), weights, output
    )


def make_features(n: int, seed: int = 1) -> np.ndarray:
    """Non-negative like enet_b0's pooled activations, drifting over time so windows differ."""
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.normal(0.0, 0.05, (n, FEATURE_DIM)), axis=0)
    return (rng.gamma(2.0, 0.3, (n, FEATURE_DIM)) + np.abs(drift)).astype(np.float32)


@pytest.fixture(scope="module")
def weights() -> Weights:
    return random_weights()


@pytest.fixture(scope="module")
def model(weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> EngagementModel:
    return EngagementModel.load(write_h5(tmp_path_factory.mktemp("eng") / "weights.h5", weights))


@pytest.mark.parametrize("window", [128, 16])
def test_equals_keras_model_on_every_reference_window(
    model: EngagementModel, weights: Weights, window: int
) -> None:
    features = make_features(window + 40)
    expected = reference_scores(features, weights, window)
    scores = model.predict(features, window)
    assert scores.dtype == np.float32 and scores.shape == (len(expected) + 1, len(ENGAGEMENT_CLASSES))
    np.testing.assert_allclose(scores[:-1], expected, rtol=0, atol=REFERENCE_ATOL)
    assert 0.05 < expected[:, 1].mean() < 0.95 and expected[:, 1].std() > 1e-3  # not saturated, not constant


def test_last_window_is_scored_as_the_reference_would(model: EngagementModel, weights: Weights) -> None:
    features = make_features(150)
    expected = keras_head(window_input(features, 150 - 128, 128)[None], weights)
    np.testing.assert_allclose(model.predict(features)[-1:], expected, rtol=0, atol=REFERENCE_ATOL)


def test_exactly_one_window_of_frames_gives_one_score(model: EngagementModel, weights: Weights) -> None:
    features = make_features(128)
    expected = keras_head(window_input(features, 0, 128)[None], weights)
    np.testing.assert_allclose(model.predict(features), expected, rtol=0, atol=REFERENCE_ATOL)


@pytest.mark.parametrize("whole_model", [False, True])
@pytest.mark.parametrize("output", ["dense", "dense_3"])
def test_loads_both_keras_layouts_and_any_output_name(tmp_path: Path, whole_model: bool, output: str) -> None:
    weights = random_weights(seed=5, output=output)
    path = write_h5(tmp_path / "w.h5", weights, whole_model=whole_model)
    features = make_features(140, seed=2)
    expected = reference_scores(features, weights, 128, output)
    from_path = EngagementModel.load(path).predict(features)
    with h5py.File(path, "r") as f:
        from_file = EngagementModel.load(f).predict(features)
    np.testing.assert_allclose(from_path[:-1], expected, rtol=0, atol=REFERENCE_ATOL)
    np.testing.assert_array_equal(from_file, from_path)


def test_chunking_and_stride_do_not_change_results(model: EngagementModel) -> None:
    # Scores are computed in float64 and stored as float32: chunks and strides change float64 rounding
    # only, which moves a score in [0, 1] by at most one float32 ulp (<= eps32 / 2).
    atol = float(np.finfo(np.float32).eps)
    features = make_features(220, seed=3)
    full = model.predict(features)
    for chunk in (1, 7, 1000):
        np.testing.assert_allclose(model.predict(features, chunk=chunk), full, rtol=0, atol=atol)
    for stride in (3, 50, 128):
        starts = window_starts(len(features), 128, stride)
        np.testing.assert_allclose(model.predict(features, stride=stride), full[starts], rtol=0, atol=atol)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        model.predict(features, chunk=0)


def test_window_starts_include_the_last_window() -> None:
    assert window_starts(130).tolist() == [0, 1, 2]
    assert window_starts(300, 128, 100).tolist() == [0, 100, 172]  # strided: the last full window too
    assert window_starts(328, 128, 100).tolist() == [0, 100, 200]
    with pytest.raises(ValueError, match="stride"):
        window_starts(300, 128, 0)


def peak_bytes(model: EngagementModel, features: np.ndarray) -> int:
    tracemalloc.start()
    try:
        model.predict(features)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_stays_bounded_for_long_videos(model: EngagementModel) -> None:
    """Materialising the reference's inputs for 3000 frames would take 3.7 GB; a chunk takes a few MB."""
    short, long = (
        peak_bytes(model, make_features(600, seed=4)),
        peak_bytes(model, make_features(3000, seed=4)),
    )
    assert long < 32 * 2**20, f"peak {long / 2**20:.1f} MiB"
    assert long - short < 2**20, f"peak grows with the video: {short / 2**20:.1f} -> {long / 2**20:.1f} MiB"


@pytest.mark.parametrize("shape", [(200, 1408), (200, 2560), (1280,)])
def test_refuses_features_not_from_enet_b0(model: EngagementModel, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="enet_b0"):
        model.predict(np.zeros(shape, np.float32))


def test_too_few_frames_says_what_is_needed(model: EngagementModel) -> None:
    with pytest.raises(
        ValueError, match=r"at least 128 consecutive face frames of one track, got 127.*1 fps"
    ):
        model.predict(np.zeros((127, FEATURE_DIM), np.float32))


def test_refuses_a_file_missing_a_layer(tmp_path: Path, weights: Weights) -> None:
    del_hidden = {k: v for k, v in weights.items() if k != "hidden_FC"}
    names = tuple(n for n in (*LAYER_NAMES, "dense") if n != "hidden_FC")
    path = write_h5(tmp_path / "w.h5", del_hidden, layer_names=names)
    with pytest.raises(ValueError, match=r"expected 3 layers with weights .* found 2: e, dense"):
        EngagementModel.load(path)


def test_refuses_wrong_shapes(tmp_path: Path, weights: Weights) -> None:
    small_e = {**weights, "e": (weights["e"][0][:FEATURE_DIM], weights["e"][1])}
    with pytest.raises(ValueError, match=r"layer 'e' .* kernel \[2560, 1\] .* found \[\[1280, 1\], \[1\]\]"):
        EngagementModel.load(write_h5(tmp_path / "w.h5", small_e))


def test_refuses_files_not_written_by_keras(tmp_path: Path, weights: Weights) -> None:
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("e/kernel", data=weights["e"][0])
    with pytest.raises(ValueError, match="no `layer_names`"):
        EngagementModel.load(path)
    listed = write_h5(tmp_path / "listed.h5", weights)
    with h5py.File(listed, "a") as f:
        del f["hidden_FC/hidden_FC/bias:0"]
    with pytest.raises(ValueError, match=r"'hidden_FC' lacks its weights \['hidden_FC/bias:0'\]"):
        EngagementModel.load(listed)
    with h5py.File(listed, "a") as f:
        del f["alpha"]
    with pytest.raises(ValueError, match="'alpha' is listed in `layer_names` but has no group"):
        EngagementModel.load(listed)
