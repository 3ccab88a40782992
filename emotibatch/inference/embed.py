"""EmotionModel: face crops -> EmotiEffLib features, emotion logits and probabilities, valence/arousal.

Equal to EmotiEffLib's ONNX recogniser on the same model file: the same resize and normalisation
(preprocess), features taken as the input of the graph's last node (a 3-input Gemm), and logits computed
as `features @ W.T + b` from that Gemm's weights, as the reference does (row by row, so that a face's
numbers are the same whatever batch it was in). Unlike the reference it batches
any number of crops, runs on CUDA where present, and never downloads in its constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from threadpoolctl import ThreadpoolController

from emotibatch.config import Device
from emotibatch.inference import registry
from emotibatch.inference.preprocess import check_images, normalisation_lut, resize_crop
from emotibatch.inference.runtime import Runner, make_runner
from emotibatch.io.redact import redact_uri

# Faces per onnxruntime call. On the CPU 16 ran as fast as 32 and 16% faster than 64 (cache), with a
# third of 64's peak RSS (531 against 1,669 MiB, EfficientNet-B0; docs/benchmarks.md).
DEFAULT_BATCH_SIZES = {"cpu": 16, "cuda": 64}
# numpy's BLAS, held to one thread around the classifier head (see EmotionModel.predict).
_BLAS = ThreadpoolController()


@dataclass(frozen=True)
class EmotionSettings:
    """What a model file does not say about itself: its name, input size, normalisation and classes."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...]
    has_va: bool
    feature_dim: int


@dataclass(frozen=True)
class EmotionOutput:
    """Per-face results; arrays have N rows in the order of the crops given."""

    features: np.ndarray  # float32 [N, D]
    logits: np.ndarray  # float32 [N, C], emotion classes only
    probs: np.ndarray  # float32 [N, C], softmax of logits
    labels: list[str]  # argmax class name per face
    valence: np.ndarray | None  # float32 [N], MTL models only
    arousal: np.ndarray | None
    classes: tuple[str, ...]


def _split_head(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Cut the final Gemm off `model`: return the feature graph and the Gemm's weights and bias."""
    graph = model.graph
    if not graph.node or graph.node[-1].op_type != "Gemm" or len(graph.node[-1].input) != 3:
        last = graph.node[-1].op_type if graph.node else "nothing"
        raise ValueError(
            f"{source}: not an EmotiEffLib-contract model: its last node must be a 3-input Gemm "
            f"(features -> logits), found {last}"
        )
    gemm = graph.node[-1]
    inits = {t.name: t for t in graph.initializer}
    if gemm.input[1] not in inits or gemm.input[2] not in inits:
        raise ValueError(f"{source}: the final Gemm's weights and bias must be initializers")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    weight = numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float32)
    if not attrs.get("transB", 0):
        weight = weight.T
    bias = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float32).reshape(-1)
    features = gemm.input[0]
    graph.node.remove(gemm)
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, [None, weight.shape[1]])
    )
    return model, weight, bias


def _static_input_size(model: onnx.ModelProto) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].HasField("dim_value") and dims[2].dim_value == dims[3].dim_value:
        return dims[2].dim_value or None
    return None


def _settings_from_name(name: str) -> dict:
    """EmotiEffLib's own rules, read from a model's name when nothing better is known."""
    small = "mbf_" in name
    size = 112 if small else 260 if "_b2_" in name else 224
    mean, std = ((0.5,) * 3, (0.5,) * 3) if small else (registry.MEAN_IMAGENET, registry.STD_IMAGENET)
    return {"input_size": size, "mean": mean, "std": std}


def infer_settings(
    model: onnx.ModelProto, weight: np.ndarray, name: str, card: registry.ModelCard | None, overrides: dict
) -> EmotionSettings:
    """A registry card, else the graph, else EmotiEffLib's name patterns; keyword overrides win over all."""
    outputs, feature_dim = weight.shape
    guess = _settings_from_name(name)
    if card is not None:
        input_size, mean, std, classes, has_va = (
            card.input_size,
            card.mean,
            card.std,
            card.classes,
            card.has_va,
        )
    else:
        input_size = _static_input_size(model) or guess["input_size"]
        mean, std = guess["mean"], guess["std"]
        if outputs == 10:
            classes, has_va = registry.CLASSES_8, True
        elif outputs in (7, 8):
            classes, has_va = (registry.CLASSES_7 if outputs == 7 else registry.CLASSES_8), False
        elif "classes" in overrides:
            classes, has_va = tuple(overrides["classes"]), outputs == len(overrides["classes"]) + 2
        else:
            raise ValueError(
                f"{name}: the final Gemm has {outputs} outputs; EmotiEffLib models have 7, 8 or 8 + 2 "
                "(valence, arousal): pass classes=[...] to name the emotion classes"
            )
    input_size = int(overrides.get("input_size", input_size))
    mean = tuple(float(v) for v in overrides.get("mean", mean))
    std = tuple(float(v) for v in overrides.get("std", std))
    classes = tuple(overrides.get("classes", classes))
    has_va = outputs == len(classes) + 2 if "classes" in overrides else has_va
    if outputs != len(classes) + (2 if has_va else 0):
        raise ValueError(
            f"{name}: {len(classes)} classes (+VA={has_va}) do not match the {outputs} Gemm outputs"
        )
    if len(mean) != 3 or len(std) != 3 or input_size <= 0:
        raise ValueError(f"{name}: mean and std need 3 values and input_size must be positive")
    return EmotionSettings(name, input_size, mean, std, classes, has_va, feature_dim)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax as the reference computes it (max-shifted exp over the emotion logits)."""
    if not len(logits):
        return logits.copy()
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class EmotionModel:
    """An EmotiEffLib emotion model on onnxruntime. Make one with `EmotionModel.load`."""

    def __init__(
        self,
        runner: Runner,
        settings: EmotionSettings,
        weight: np.ndarray,
        bias: np.ndarray,
        batch_size: int,
        sha256: str,
    ) -> None:
        self.runner = runner
        self.settings = settings
        self.weight = weight
        self.bias = bias
        self.batch_size = batch_size
        self.sha256 = sha256  # of the model file: recorded with the features it makes

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        device: Device = "auto",
        batch_size: int | None = None,
        num_threads: int | None = None,
        cache_dir: str | None = None,
        model_dir: str | None = None,
        storage_options: dict | None = None,
        **overrides,
    ) -> EmotionModel:
        """Load a registry name, local path or fsspec URI; `overrides`: input_size, mean, std, classes.

        `batch_size`: faces per onnxruntime call; by default 64 on CUDA, 16 on the CPU.
        """
        unknown = set(overrides) - {"input_size", "mean", "std", "classes"}
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; use input_size, mean, std or classes")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        card, graph, path = registry.load_onnx(
            str(model), "emotion", cache_dir=cache_dir, model_dir=model_dir, storage_options=storage_options
        )
        name = card.name if card else Path(str(model)).stem
        graph, weight, bias = _split_head(graph, redact_uri(str(model)))
        settings = infer_settings(graph, weight, name, card, overrides)
        lut = normalisation_lut(settings.mean, settings.std)
        runner = make_runner(graph, lut, device=device, num_threads=num_threads, name=name)
        # The file's digest identifies the model behind features, whatever it is named.
        batch_size = batch_size or DEFAULT_BATCH_SIZES[runner.device]
        return cls(runner, settings, weight, bias, batch_size, registry.file_sha256(path))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.settings.classes

    def features(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Feature vectors float32 [N, D] of RGB uint8 crops of any sizes."""
        check_images(crops, "crop")
        size = self.settings.input_size
        out = np.empty((len(crops), self.settings.feature_dim), np.float32)
        for start, batch, _ in self.runner.batches(crops, self.batch_size, (size, size), resize_crop):
            out[start : start + len(batch)] = self.runner.run(batch)[0]
        return out

    def predict(self, crops: Sequence[np.ndarray]) -> EmotionOutput:
        """Features, logits, probabilities, labels and (MTL models) valence and arousal per crop."""
        features = self.features(crops)
        # The reference's product, one row at a time (an [N, 1, D] @ [D, C] stack): a BLAS product over
        # the whole batch rounds differently with the batch's size, and a face's numbers must not depend
        # on which faces share its batch. On one BLAS thread: OpenBLAS's own threads spin ~0.1 s after a
        # call and take cores from the next onnxruntime run (predict: 0.87 of bare, 0.96 on one thread).
        with _BLAS.limit(limits=1, user_api="blas"):
            scores = (features[:, np.newaxis, :] @ self.weight.T)[:, 0] + self.bias
        n_classes = len(self.settings.classes)
        logits = np.ascontiguousarray(scores[:, :n_classes])
        probs = _softmax(logits)
        va = self.settings.has_va
        return EmotionOutput(
            features=features,
            logits=logits,
            probs=probs,
            labels=[self.settings.classes[i] for i in logits.argmax(axis=1)] if len(logits) else [],
            valence=np.ascontiguousarray(scores[:, n_classes]) if va else None,
            arousal=np.ascontiguousarray(scores[:, n_classes + 1]) if va else None,
            classes=self.settings.classes,
        )
