"""EmotiEffLib's pretrained engagement model (Distracted / Engaged) applied in numpy, without TensorFlow.

What it needs: per-frame features of ONE person, i.e. one face track, from an enet_b0 emotion model
(1280-d; the enet_b2, mbf and mobilevit models give other widths and are refused). The model scores
windows of `window` (128) consecutive face frames of that track, so a track needs at least 128 face
frames: at 1 fps one window spans 128 s of video, at 2 fps 64 s. Pass the track's frames in time order;
frames where the face was not found are simply absent, and the model cannot tell such a gap from
consecutive frames.

The reference (`EmotiEffLib.classify_engagement`) builds, per window of frames `x` [128, 1280], the input
rows `[std(x) ‖ x_t]` [128, 2560] and runs a Keras attention head on them: `e_t = r_t @ w_e + b_e`,
`alpha = softmax_t(e)`, context `c = Σ alpha_t r_t`, then Dense 512 relu and Dense 2 softmax. Two
identities make that cheap here: the std half of `r_t` is the same for every row of a window, so its
part of `e_t` (and `b_e`) cancels in the softmax, and since `Σ alpha_t = 1` the context is
`[std(x) ‖ Σ alpha_t x_t]`. Windows are scored a chunk at a time, their means and attention sums as
banded matrix products over the chunk's frames, so memory is bounded by the chunk, not the video.

Unlike the reference, the last window (starting at N - 128) is scored too: the reference's
`range(N - 128)` skips it, and with exactly 128 frames scores nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["DEFAULT_WINDOW", "ENGAGEMENT_CLASSES", "FEATURE_DIM", "EngagementModel", "window_starts"]

ENGAGEMENT_CLASSES = ("Distracted", "Engaged")
FEATURE_DIM = 1280  # enet_b0 features; the model's input rows are [std ‖ frame], 2 x 1280 wide
DEFAULT_WINDOW = 128
_HIDDEN = 512
# The Dense layers holding weights, in the model's layer order (Keras loads h5 weights by that order,
# not by name; the output layer's name is auto-generated: dense, dense_1, ...).
_LAYERS = (
    ("e", (2 * FEATURE_DIM, 1)),
    ("hidden_FC", (2 * FEATURE_DIM, _HIDDEN)),
    ("output Dense", (_HIDDEN, len(ENGAGEMENT_CLASSES))),
)


def window_starts(n_frames: int, window: int = DEFAULT_WINDOW, stride: int = 1) -> np.ndarray:
    """First frame of each window `predict` scores, the last full window (start n_frames - window) included."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got window={window}, stride={stride}")
    if n_frames < window:
        raise ValueError(
            f"engagement needs at least {window} consecutive face frames of one track, got {n_frames}: "
            f"at 1 fps that is {window} s of video with the face found in every sampled frame "
            f"(sampling at 2 fps halves it); use a longer track"
        )
    starts = np.arange(0, n_frames - window + 1, stride)
    return starts if starts[-1] == n_frames - window else np.append(starts, n_frames - window)


def _strings(values: object) -> list[str]:
    """An h5 string-list attribute as Keras writes it: bytes array, str array, or an empty float array."""
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(values)]


def _dense_layers(group: h5py.Group, source: str) -> list[tuple[str, list[np.ndarray]]]:
    """The layers with weights, in `layer_names` order, each with its weights in `weight_names` order."""
    if "layer_names" not in group.attrs and "model_weights" in group:
        group = group["model_weights"]  # a whole model saved by `model.save`
    if "layer_names" not in group.attrs:
        raise ValueError(f"{source}: not a Keras h5 weights file (no `layer_names` attribute)")
    layers = []
    for name in _strings(group.attrs["layer_names"]):
        if name not in group:
            raise ValueError(f"{source}: layer {name!r} is listed in `layer_names` but has no group")
        weight_names = _strings(group[name].attrs.get("weight_names", []))
        missing = [w for w in weight_names if w not in group[name]]
        if missing:
            raise ValueError(f"{source}: layer {name!r} lacks its weights {missing}")
        if weight_names:
            layers.append((name, [np.asarray(group[name][w]) for w in weight_names]))
    return layers


@dataclass(frozen=True, eq=False)
class EngagementModel:
    """The attention head's weights, float64; `load` reads them from the reference's Keras h5 file.

    Only the frame half of `e`'s kernel is kept: its std half and its bias add the same value to every
    logit of a window and cancel in the softmax.
    """

    attention: np.ndarray  # [1280], e kernel rows that multiply the frame features
    hidden_kernel: np.ndarray  # [2560, 512]
    hidden_bias: np.ndarray  # [512]
    output_kernel: np.ndarray  # [512, 2]
    output_bias: np.ndarray  # [2]

    @classmethod
    def load(cls, source: str | os.PathLike[str] | h5py.Group) -> EngagementModel:
        """Weights saved by Keras 2 `save_weights` or `save` (h5); shapes are checked, names are not."""
        if isinstance(source, h5py.Group):
            where = source.file.filename
            layers = _dense_layers(source, where)
        else:
            where = os.fspath(source)
            with h5py.File(where, "r") as f:
                layers = _dense_layers(f, where)
        if len(layers) != len(_LAYERS):
            raise ValueError(
                f"{where}: expected {len(_LAYERS)} layers with weights ({', '.join(n for n, _ in _LAYERS)}), "
                f"found {len(layers)}: {', '.join(n for n, _ in layers) or 'none'}"
            )
        weights = []
        for (name, kernel_and_bias), (role, shape) in zip(layers, _LAYERS):
            got = [w.shape for w in kernel_and_bias]
            if got != [shape, shape[1:]]:
                raise ValueError(
                    f"{where}: layer {name!r} ({role}) must hold a kernel {list(shape)} and a bias "
                    f"[{shape[1]}], found {[list(s) for s in got]}"
                )
            weights.append([w.astype(np.float64) for w in kernel_and_bias])
        (e_kernel, _), (hidden_kernel, hidden_bias), (output_kernel, output_bias) = weights
        return cls(e_kernel[FEATURE_DIM:, 0], hidden_kernel, hidden_bias, output_kernel, output_bias)

    def predict(
        self, features: np.ndarray, window: int = DEFAULT_WINDOW, stride: int = 1, *, chunk: int | None = None
    ) -> np.ndarray:
        """Scores (softmax over `ENGAGEMENT_CLASSES`) float32 [W, 2] of the windows at `window_starts`.

        `features` [N, 1280] are one track's frames in time order. `chunk` windows are scored at a time
        (default: as many as span two windows' frames), which bounds memory; it does not change results.
        """
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise ValueError(
                f"engagement needs [frames, {FEATURE_DIM}] features from an enet_b0 model, got shape "
                f"{features.shape} (enet_b2 models give 1408, mbf 512: the model cannot use them)"
            )
        starts = window_starts(len(features), window, stride)
        chunk = window // stride + 1 if chunk is None else chunk
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        scores = np.empty((len(starts), len(ENGAGEMENT_CLASSES)), np.float32)
        for first in range(0, len(starts), chunk):
            local = starts[first : first + chunk] - starts[first]
            rows = features[starts[first] : starts[first] + local[-1] + window].astype(np.float64)
            scores[first : first + len(local)] = self._score(rows, local, window)
        return scores

    def _score(self, rows: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
        """Scores of the windows at `starts` (offsets into `rows`), each as the reference computes it."""
        # One banded matrix per chunk, row w covering the frames of window w: with 1/window it gives the
        # windows' means, with the attention weights their context. The std is taken about the chunk's
        # mean so that E[x²] - E[x]² does not cancel.
        band = np.zeros((len(starts), len(rows)))
        in_window = (np.arange(len(starts))[:, None], starts[:, None] + np.arange(window))
        band[in_window] = 1.0 / window
        centred = rows - rows.mean(axis=0)
        mean, mean_sq = np.split(band @ np.concatenate([centred, centred * centred], axis=1), 2, axis=1)
        std = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))

        logits = sliding_window_view(rows @ self.attention, window)[starts]
        alpha = np.exp(logits - logits.max(axis=1, keepdims=True))
        band[in_window] = alpha / alpha.sum(axis=1, keepdims=True)
        context = np.concatenate([std, band @ rows], axis=1)

        hidden = np.maximum(context @ self.hidden_kernel + self.hidden_bias, 0.0)
        out = hidden @ self.output_kernel + self.output_bias
        out = np.exp(out - out.max(axis=1, keepdims=True))
        return out / out.sum(axis=1, keepdims=True)
