"""The one place that makes onnxruntime sessions.

- Providers follow `device`: "cuda" asks for CUDA (TensorRT first where its libraries are present),
  "cpu" for the CPU, "auto" for CUDA when onnxruntime-gpu can use it, else the CPU. onnxruntime falls
  back to the CPU silently when CUDA libraries are missing, so the active providers are checked after the
  session is made: asking for "cuda" and getting the CPU is an error that says why; "auto" logs it.
- Threads are sized to the CPU share the caller has (a Ray actor's `num_cpus`, else the process's
  CPU affinity), never to the whole node, so that many workers on one node do not oversubscribe it.
  In a Ray worker they sleep rather than spin between parallel regions: the cores are shared.
- Normalisation is a per-channel table of the byte (preprocess.normalisation_lut), applied where it is
  cheapest. On the CPU the batch fill applies it (cv2.LUT of each resized image into a float32 NCHW
  batch, 0.05 ms per 224x224 crop) and the graph runs as it is: in the graph the lookup cost more than
  the resize. On CUDA it is a Gather inside the graph (`with_uint8_input`), so only uint8 pixels are
  uploaded, a quarter of float32, through IO binding: one upload per batch.
- On CUDA the host work that fills a batch (a cv2 resize per crop, a letterbox per frame) outweighs the
  model, so `Runner.batches` spreads it over the caller's CPU share and fills the next batch while the
  device runs this one (cv2 and onnxruntime both release the GIL). On the CPU the session already has
  every thread: batches are filled inline.
"""

from __future__ import annotations

import ctypes.util
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from emotibatch.config import DEVICES, Device

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
PIXELS = "pixels"
Item = TypeVar("Item")
# fill(item, out) writes one item's uint8 RGB pixels into `out` [H, W, 3] and returns anything.
Fill = Callable[[Item, np.ndarray], Any]


def _ray_cpus() -> float | None:
    """The CPUs Ray assigned to this task or actor; None outside Ray workers (the driver has none)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_assigned_resources().get("CPU") or None
    except (ImportError, AssertionError):
        pass
    return None


def cpu_share() -> int:
    """CPU cores this process may use: a Ray task's or actor's assigned CPUs, else its affinity set."""
    assigned = _ray_cpus()
    if assigned:  # fractional shares round up: an actor given 1.5 CPUs runs 2 threads
        return max(1, math.ceil(assigned))
    return max(1, len(os.sched_getaffinity(0)))


def _tensorrt_present() -> bool:
    return TENSORRT in ort.get_available_providers() and ctypes.util.find_library("nvinfer") is not None


def cuda_available() -> bool:
    """Whether onnxruntime-gpu is installed and its CUDA provider can load (not a guarantee of a GPU)."""
    if CUDA not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # the CUDA/cuDNN wheels or system libraries are absent
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    return True


def providers_for(device: Device) -> list[str]:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return [CPU]
    if device == "cuda" and not cuda_available():
        raise RuntimeError(
            "device='cuda' but onnxruntime has no CUDA provider: install emotibatch[gpu] "
            "(onnxruntime-gpu, never together with the CPU onnxruntime package)"
        )
    return ([TENSORRT] if _tensorrt_present() else []) + [CUDA, CPU]


def with_uint8_input(model: onnx.ModelProto, lut: np.ndarray) -> onnx.ModelProto:
    """Return `model` fed by uint8 NHWC `pixels` instead of its float NCHW input, normalised by `lut`.

    `lut` [3, 256] maps each channel's byte to the float the model expects; a Gather on the flattened
    table does it in the graph, exactly (see preprocess.normalisation_lut).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input, found {[i.name for i in inputs]}")
    original = inputs[0]
    dims = original.type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise ValueError(f"expected an NCHW input with 3 channels, got {original.name} {_shape(dims)}")
    batch, height, width = (_dim(d) for d in (dims[0], dims[2], dims[3]))
    graph.input.remove(original)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, [batch, height, width, 3]))
    graph.initializer.extend(
        [
            numpy_helper.from_array(lut.reshape(-1).astype(np.float32), "emotibatch_lut"),
            numpy_helper.from_array(
                np.array([0, 256, 512], np.int32).reshape(1, 3, 1, 1), "emotibatch_channel_offset"
            ),
        ]
    )
    # Transpose the bytes first (a quarter of the data), then offset whole channel planes: adding a
    # 3-value offset along the innermost NHWC axis cost more than the model's first layers.
    prefix = [
        helper.make_node("Transpose", [PIXELS], ["emotibatch_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["emotibatch_nchw"], ["emotibatch_pixels_i32"], to=TensorProto.INT32),
        helper.make_node("Add", ["emotibatch_pixels_i32", "emotibatch_channel_offset"], ["emotibatch_index"]),
        helper.make_node("Gather", ["emotibatch_lut", "emotibatch_index"], [original.name], axis=0),
    ]
    for node in reversed(prefix):
        graph.node.insert(0, node)
    return model


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return d.dim_value
    return d.dim_param or None


def _shape(dims) -> list:
    return [_dim(d) for d in dims]


@dataclass
class Runner:
    """An onnxruntime session with its device and input format, run with IO binding on CUDA.

    `lut` [3, 256] is the normalisation applied on the host while batches are filled, the graph taking
    float32 NCHW; None when the graph takes uint8 NHWC pixels and normalises them itself.
    `fill_threads` > 0 fills batches on that many threads, one batch ahead (see `batches`).
    """

    session: ort.InferenceSession
    device: Literal["cpu", "cuda"]
    lut: np.ndarray | None = None
    fill_threads: int = 0
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _planes: list[np.ndarray] = field(default_factory=list, init=False, repr=False)  # cv2.LUT's tables

    def __post_init__(self) -> None:
        if self.lut is not None:
            self._planes = [np.ascontiguousarray(self.lut[c].reshape(256, 1)) for c in range(3)]
        if self.fill_threads:
            self._pool = ThreadPoolExecutor(self.fill_threads, thread_name_prefix="emotibatch-fill")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for a batch made by `batches`."""
        name = self.session.get_inputs()[0].name
        if self.device == "cpu":
            return self.session.run(None, {name: batch})
        binding = self.session.io_binding()
        binding.bind_cpu_input(name, np.ascontiguousarray(batch))
        for out in self.session.get_outputs():
            binding.bind_output(out.name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def batches(
        self, items: Sequence[Item], batch_size: int, size: tuple[int, int], fill: Fill
    ) -> Iterator[tuple[int, np.ndarray, list]]:
        """Yield (start, input batch, fill's return values) for consecutive `items` of `size` (H, W).

        The batch is what `run` takes: uint8 [n, H, W, 3], or with a host `lut` float32 [n, 3, H, W].
        With fill threads the next batch is being filled while the caller runs this one; at most two
        batches are held at once.
        """
        waiting = self._fill(items[:batch_size], size, fill)
        for start in range(0, len(items), batch_size):
            batch, results = waiting()
            following = start + batch_size
            if following < len(items):
                waiting = self._fill(items[following : following + batch_size], size, fill)
            yield start, batch, results

    def _fill(
        self, items: Sequence[Item], size: tuple[int, int], fill: Fill
    ) -> Callable[[], tuple[np.ndarray, list]]:
        """Start filling a batch of `items` on the fill threads; return a call that waits for it."""
        height, width = size
        if self.lut is None:
            batch = np.empty((len(items), height, width, 3), np.uint8)
        else:
            batch = np.empty((len(items), 3, height, width), np.float32)

        def part(lo: int, hi: int) -> list:
            if self.lut is None:
                return [fill(items[i], batch[i]) for i in range(lo, hi)]
            pixels = np.empty((height, width, 3), np.uint8)
            results = []
            for i in range(lo, hi):
                results.append(fill(items[i], pixels))
                for c, plane in enumerate(cv2.split(pixels)):
                    cv2.LUT(plane, self._planes[c], dst=batch[i, c])
            return results

        if self._pool is None:  # filled when waited for, not ahead
            return lambda: (batch, part(0, len(items)))
        bounds = np.linspace(0, len(items), min(self.fill_threads, len(items)) + 1).astype(int)
        futures = [self._pool.submit(part, lo, hi) for lo, hi in itertools.pairwise(bounds)]
        return lambda: (batch, [r for f in futures for r in f.result()])


def make_runner(
    model: onnx.ModelProto,
    lut: np.ndarray,
    *,
    device: Device = "auto",
    num_threads: int | None = None,
    name: str = "model",
) -> Runner:
    """Make a session for `model` (float NCHW input, normalised by `lut` [3, 256]) on `device` with
    threads sized to the caller's CPU share; where `lut` is applied follows the device (module docstring).
    """
    providers = providers_for(device)
    on_host = providers == [CPU]
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or cpu_share()
    options.inter_op_num_threads = 1
    if _ray_cpus():
        # A Ray worker shares the node's cores with other tasks (decoding above all): threads spinning
        # between parallel regions take cores those need. Alone in a process spinning is 2-5% faster.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    graph = model if on_host else with_uint8_input(model, lut)
    session = ort.InferenceSession(graph.SerializeToString(), sess_options=options, providers=providers)
    active = session.get_providers()
    on_gpu = active[0] in (CUDA, TENSORRT)
    if not on_host and not on_gpu:
        message = (
            f"{name}: asked for {providers[0]} but onnxruntime is running {active[0]}: the CUDA or cuDNN "
            "libraries could not be loaded (try `python -c 'import onnxruntime; onnxruntime.preload_dlls()'` "
            "and the CUDA version onnxruntime-gpu was built for)"
        )
        if device == "cuda":
            raise RuntimeError(message)
        log.warning("%s; running on the CPU", message)
    log.info("%s: onnxruntime providers %s, %d threads", name, active, options.intra_op_num_threads)
    if on_gpu:
        return Runner(session, "cuda", fill_threads=options.intra_op_num_threads)
    return Runner(session, "cpu", lut=lut if on_host else None)
