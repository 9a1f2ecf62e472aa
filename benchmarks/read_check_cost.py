"""What the safe ONNX reader costs: ``artifacts.read_onnx`` (regular-file open, parse, every
external-data tensor checked) against creating the ONNX Runtime session it precedes, on the
exported weighted ResNet-18 (CIFAR, 45 MB). Goal: well under the session's own cost.

    .venv/bin/python benchmarks/read_check_cost.py [--rounds 7]

Alternates the two (``rounds`` times each, after one warm-up of each) and reports the medians
and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from wconv_deploy.artifacts import read_onnx
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.spec import InputSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.onnx"
        export_onnx(load_model("zoo:resnet18_cifar"), path, InputSpec.parse("1x3x32x32"), exporter="torchscript",
                    validate_output=False)  # fmt: skip
        read, session = [], []
        for i in range(args.rounds + 1):
            t0 = time.perf_counter()
            read_onnx(path)
            t1 = time.perf_counter()
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            t2 = time.perf_counter()
            if i:  # the first round warms the caches
                read.append(t1 - t0)
                session.append(t2 - t1)
        r, s = statistics.median(read) * 1e3, statistics.median(session) * 1e3
        print(f"model        {path.stat().st_size / 1e6:.1f} MB")
        print(f"read_onnx    {r:.1f} ms (median of {args.rounds})")
        print(f"ORT session  {s:.1f} ms (median of {args.rounds})")
        print(f"ratio        {r / s:.2f}")


if __name__ == "__main__":
    main()
