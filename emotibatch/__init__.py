"""emotibatch: EmotiEffLib facial emotion recognition at cluster scale.

The data path, one module per step: sources -> decode -> detect -> embed -> track -> sink -> aggregate.
"""

from importlib.metadata import PackageNotFoundError, version

from emotibatch.detect import Detections, FaceDetector
from emotibatch.embed import EmotionModel, EmotionOutput
from emotibatch.preprocess import crop_faces

try:
    __version__ = version("emotibatch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["Detections", "EmotionModel", "EmotionOutput", "FaceDetector", "__version__", "crop_faces"]
