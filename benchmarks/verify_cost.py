"""What ``wconv-deploy verify`` costs on a packaged model, cold, as a user runs it on the target.

For the zoo denoiser (trained weighted DnCNN 8x32, its default spec 1x1x256x256 with dynamic
batch, height and width) and the CIFAR ResNet-18 (``zoo:resnet18_cifar``, 1x3x32x32): export
(with its golden file), package into a Triton repository, then time ``wconv-deploy verify
REPO/NAME`` in fresh processes (interpreter start, imports, reading the golden file, the ONNX
Runtime session, every golden case, the comparison): ``--repeat`` runs after one warm-up run
(page cache), median reported.

    .venv/bin/python benchmarks/verify_cost.py [--repeat 5]

Prints every run, the medians and Markdown rows for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.golden import read_golden
from wconv_deploy.loading import load_model
from wconv_deploy.options import ShapeOptions
from wconv_deploy.runtimes.base import cpu_name
from wconv_deploy.ship.package import package

MODELS = {"denoiser": "zoo:denoiser", "resnet18": "zoo:resnet18_cifar"}
CLI = [sys.executable, "-m", "wconv_deploy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, uri in MODELS.items():
            onnx_file = folder / f"{name}.onnx"
            spec = ShapeOptions().resolve(uri)
            export_onnx(load_model(uri), onnx_file, spec, exporter="torchscript")
            package([onnx_file], folder / "repo", name)
            entry = folder / "repo" / name
            golden = read_golden(entry / "1" / "model.golden.npz")
            times = []
            for i in range(args.repeat + 1):
                t0 = time.perf_counter()
                done = subprocess.run([*CLI, "verify", entry, "--json"], capture_output=True, text=True, cwd=tmp)
                elapsed = time.perf_counter() - t0
                if done.returncode != 0 or not json.loads(done.stdout)["passed"]:
                    raise SystemExit(f"verify {name} failed: {done.stderr.strip()}")
                print(f"{name} run {i}{' (warm-up)' if i == 0 else ''}: {elapsed:.2f} s")
                if i:
                    times.append(elapsed)
            shapes = "; ".join("x".join(map(str, c.inputs[golden.input_names[0]].shape)) for c in golden.cases)
            size = os.path.getsize(entry / "1" / "model.golden.npz") / 1e3
            rows.append((name, len(golden.cases), shapes, size, statistics.median(times)))
    print(f"\n{cpu_name()}, {os.cpu_count()} CPUs, median of {args.repeat} runs\n")
    print("| model | golden cases | input shapes | golden file | `verify` (median) |")
    print("|---|---|---|---|---|")
    for name, n, shapes, size, median in rows:
        print(f"| {name} | {n} | {shapes} | {size:,.0f} kB | {median:.2f} s |")


if __name__ == "__main__":
    main()
