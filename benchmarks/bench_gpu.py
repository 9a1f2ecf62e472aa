"""GPU latency tables for docs/BENCHMARKS.md, for a machine with CUDA (e.g. a lent H100).

    python benchmarks/bench_gpu.py [--min-duration-s 3]

Same cases as bench_cpu.py; runtimes: PyTorch eager fp32 and fp16 and torch.compile on CUDA,
ONNX Runtime with the CUDA and TensorRT providers (need onnxruntime-gpu), and ONNX Runtime CPU
for scale. Unavailable runtimes are listed with the reason, never guessed.
"""

from __future__ import annotations

import argparse

from wconv_deploy.bench import run_bench
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model

CASES = [("dncnn", "1x1x256x256", [1, 8]), ("resnet18_cifar", "1x3x32x32", [1, 8, 32, 128])]
RUNTIMES = ["torch-cuda", "torch-cuda-fp16", "torch-cuda-compile", "ort-cuda", "ort-trt", "ort-cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-duration-s", type=float, default=3.0)
    args = ap.parse_args()
    for name, shape, batches in CASES:
        report = run_bench(
            runtimes=RUNTIMES,
            spec=InputSpec.parse(shape),
            model=create_model(name).eval(),
            batches=batches,
            warmup_ms=1000,
            iterations=50,
            min_duration_s=args.min_duration_s,
        )
        print(f"## {name} {shape}")
        print(report.render())
        print()


if __name__ == "__main__":
    main()
