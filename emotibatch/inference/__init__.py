"""Models: registry and verified cache, onnxruntime sessions, the crop rule, detector, emotion model,
engagement head. Only this package imports onnx and onnxruntime."""
