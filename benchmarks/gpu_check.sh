#!/usr/bin/env bash
# GPU truth for issue 14, prepared for a lent device (one H200: finishes well under 8 minutes).
#
#   bash benchmarks/gpu_check.sh            # on the device, from the repository root
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# The device image has torch with CUDA and the CPU build of onnxruntime, no TensorRT and no
# network: the package is used from the checkout (PYTHONPATH), nothing is installed. Writes the
# markdown tables (bench_gpu.md), their JSON (bench_gpu.json) and the GPU's nvidia-smi line to
# $OUT. Every python step has its own time limit, so the whole script stays under 8 minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-gpu-check-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true
timeout 60 "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  | tee "$OUT/torch.txt"
# The tables: harness (fp32, fp16, torch.compile), CUDA-graph replay, harness overhead, fp16 PSNR.
timeout 400 "$PY" benchmarks/bench_gpu.py --min-duration-s 1 --iterations 200 --out "$OUT" | tee "$OUT/bench_gpu.md"
echo "wrote $OUT/bench_gpu.md and $OUT/bench_gpu.json"
