"""CPU latency tables for docs/BENCHMARKS.md: the zoo's DnCNN and ResNet-18, every CPU runtime.

    .venv/bin/python benchmarks/bench_cpu.py [--compile] [--min-duration-s 3]

DnCNN (17 x 64, the zoo default, random weights) on one 256x256 grayscale image; CIFAR
ResNet-18 (random weights) at batch 1, 8 and 32. Runtimes: PyTorch eager on the unfolded model
(plus torch.compile with --compile), ONNX Runtime CPU and OpenVINO f32 and bf16 on the folded
ONNX export. Unavailable runtimes are listed with the reason. Prints each report.
"""

from __future__ import annotations

import argparse

from wconv_deploy.bench import run_bench
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model

CASES = [("dncnn", "1x1x256x256", [1]), ("resnet18_cifar", "1x3x32x32", [1, 8, 32])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--min-duration-s", type=float, default=3.0)
    args = ap.parse_args()
    runtimes = ["torch", *(["torch-compile"] if args.compile else []), "ort-cpu", "openvino", "openvino-bf16"]
    for name, shape, batches in CASES:
        report = run_bench(
            runtimes=runtimes,
            spec=InputSpec.parse(shape),
            model=create_model(name).eval(),
            batches=batches,
            warmup_ms=500,
            iterations=20,
            min_duration_s=args.min_duration_s,
        )
        print(f"## {name} {shape}")
        print(report.render())
        print()


if __name__ == "__main__":
    main()
