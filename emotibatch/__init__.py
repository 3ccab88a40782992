"""emotibatch: EmotiEffLib facial emotion recognition at cluster scale.

The tree follows the data path: `io` (inputs, storage) -> `extract` (decode, the face stage running
`inference`'s detector and emotion model, tracks, the output's commits) -> `clips` (descriptors,
classifiers) -> `reports`. `testing` makes the stand-in models and sample videos.

The model classes load on first use: Ray workers that decode, stage or commit import submodules of this
package and should not pay for onnx and onnxruntime.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emotibatch.inference.detect import Detections, FaceDetector
    from emotibatch.inference.embed import EmotionModel, EmotionOutput
    from emotibatch.inference.preprocess import crop_faces

try:
    __version__ = version("emotibatch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Detections": "emotibatch.inference.detect",
    "FaceDetector": "emotibatch.inference.detect",
    "EmotionModel": "emotibatch.inference.embed",
    "EmotionOutput": "emotibatch.inference.embed",
    "crop_faces": "emotibatch.inference.preprocess",
}
__all__ = ["Detections", "EmotionModel", "EmotionOutput", "FaceDetector", "__version__", "crop_faces"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emotibatch' has no attribute {name!r}")
