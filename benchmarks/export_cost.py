"""What ``wconv-deploy export`` costs next to a bare ``torch.onnx.export`` script, cold, side by side.

The model is the CIFAR ResNet-18 with weighted 3x3 convolutions of :mod:`cifar_resnet` (11.2 M
parameters), saved with ``torch.save(model)`` as users do; its classes are importable (this folder
goes on ``PYTHONPATH``), so both processes unpickle the same file. Each round runs, in fresh
processes and in alternating order:

- ours: ``wconv-deploy export MODEL.pt --trust-pickle --input-shape 1x3x32x32 --dynamic batch``
  (load, fold, export, graph checks, validation in ONNX Runtime, report file);
- the peer: :data:`BARE` (``torch.load``, ``torch.onnx.export(dynamo=True)`` of the model as it is
  with the same dynamic batch, one ONNX Runtime session and one run).

    .venv/bin/python benchmarks/export_cost.py [--repeat 3] [--cli "COMMAND"]

``--cli`` times another copy of wconv-deploy (e.g. ``--cli "python -m wconv_deploy"`` with an older
checkout first on ``PYTHONPATH``); the default is the ``wconv-deploy`` script beside this Python.

Prints every run, both medians, their ratio and a Markdown row for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from cifar_resnet import resnet18_weighted

HERE = Path(__file__).resolve().parent
SHAPE, DYNAMIC, MAX_BATCH = "1x3x32x32", "batch", 8  # MAX_BATCH: --dynamic batch's default range

#: The peer: what a user would write to export the model and check that ONNX Runtime runs it.
BARE = f"""
import sys
import onnxruntime as ort
import torch

model = torch.load(sys.argv[1], weights_only=False).eval()
batch = torch.export.Dim("batch", min=1, max={MAX_BATCH})
x = torch.randn(2, 3, 32, 32)
torch.onnx.export(model, (x,), sys.argv[2], dynamo=True, dynamic_shapes=({{0: batch}},))
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
session.run(None, {{session.get_inputs()[0].name: x[:1].numpy()}})
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of ``cmd`` in a fresh process (its output discarded; a failure stops the run)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs both once)")
    ap.add_argument("--cli", default=str(Path(sys.executable).with_name("wconv-deploy")), help="command that runs wconv-deploy")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = resnet18_weighted()
    params = sum(p.numel() for p in model.parameters())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}")
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet18_wconv.pt"
        torch.save(model, src)
        cmds = {
            "ours": [*shlex.split(args.cli), "export", str(src), "--trust-pickle", "--input-shape", SHAPE, "--dynamic", DYNAMIC]
            + ["-o", str(Path(tmp) / "ours.onnx")],
            "bare": [sys.executable, "-c", BARE, str(src), str(Path(tmp) / "bare.onnx")],
        }
        for i in range(args.repeat):
            order = ["ours", "bare"] if i % 2 == 0 else ["bare", "ours"]  # drift hits both alike
            for name in order:
                times[name].append(timed(cmds[name], env))
            load = os.getloadavg()[0]
            print(f"round {i}: ours {times['ours'][-1]:.2f} s, bare {times['bare'][-1]:.2f} s (load average {load:.2f})")
    ours, bare = statistics.median(times["ours"]), statistics.median(times["bare"])
    print(f"median of {args.repeat}: ours {ours:.2f} s, bare {bare:.2f} s, ratio {ours / bare:.2f}x")
    print()
    print("| model | inputs | runs | `wconv-deploy export` (s, median) | bare script (s, median) | ratio |")
    print("|---|---|---|---|---|---|")
    print(
        f"| CIFAR ResNet-18 wConv ({params / 1e6:.1f} M params) | {SHAPE}, --dynamic {DYNAMIC} | {args.repeat} "
        f"| {ours:.2f} | {bare:.2f} | {ours / bare:.2f}x |"
    )


if __name__ == "__main__":
    main()
