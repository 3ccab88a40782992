#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one run, on a machine with an NVIDIA GPU and emotibatch[gpu]
# installed (onnxruntime-gpu), with insightface (--no-deps) and PyAV importable:
#
#   bash benchmarks/gpu_check.sh [OUTDIR]      # about 5 minutes on an H100 node with 16 cores
#
# It stops at once when onnxruntime cannot run CUDA, rather than measuring the CPU under a GPU label.
# Results: OUTDIR/models-cuda.json, OUTDIR/extract-cuda.json, their logs and the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
# A local Ray started by the benchmark needs no token: its ports stay on this machine.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
python=${PYTHON:-python3}
"$python" - <<'PY' || exit 1
import pathlib
import tempfile

import onnx

from emotibatch.inference.preprocess import SCRFD_LUT
from emotibatch.inference.runtime import make_runner
from emotibatch.testing.standins import make_emotion_model

path = make_emotion_model(pathlib.Path(tempfile.mkdtemp()) / "probe.onnx")
runner = make_runner(onnx.load(str(path)), SCRFD_LUT, device="cuda", name="probe")  # raises unless CUDA runs
print("CUDA check:", runner.providers)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv" || exit 1
failed=()
step() {  # step NAME COMMAND...: run it with its log in OUTDIR; a failure does not stop the next steps
  local name=$1
  shift
  "$@" 2>&1 | tee "$out/$name.log" || failed+=("$name")
}
# 4 threads: the CPUs docs/cluster.md gives a face actor per GPU; then the emotion model on every core.
step models-cuda "$python" benchmarks/models.py --device cuda --threads 4 --repeats 5 --out "$out/models-cuda.json"
step models-cuda-allcores "$python" benchmarks/models.py --device cuda --threads "$(nproc)" --repeats 5 \
  --cases emotion fill --out "$out/models-cuda-allcores.json"
step extract-cuda "$python" benchmarks/extract.py --device cuda --cpus "$(nproc)" --out "$out/extract-cuda.json"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
