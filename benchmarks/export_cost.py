"""What ``wconv-deploy export`` costs next to a bare ``torch.onnx.export`` script, cold, side by side.

The model is the CIFAR ResNet-18 with weighted 3x3 convolutions of :mod:`cifar_resnet` (11.2 M
parameters), saved with ``torch.save(model)`` as users do; its classes are importable (this folder
goes on ``PYTHONPATH``), so both processes unpickle the same file. Each round runs, in fresh
processes and in alternating order:

- ours: ``wconv-deploy export MODEL.pt --trust-pickle --input-shape 1x3x32x32 --dynamic batch``
  (load, fold, export, graph checks, validation in ONNX Runtime, report file);
- the peer: :data:`BARE` (``torch.load``, ``torch.onnx.export(dynamo=True)`` of the model as it is
  with the same dynamic batch, one ONNX Runtime session and one run).

    .venv/bin/python benchmarks/export_cost.py [--repeat 3] [--checkout DIR ...]

``--checkout DIR`` also times the wconv-deploy of another source tree (``python -m wconv_deploy``
with DIR first on ``PYTHONPATH``; e.g. ``git archive OLD wconv_deploy | tar -x -C DIR``) in the
same rounds, for a before/after against the same peer. Every command runs from the temporary
folder, so ``-m`` never picks up the package of the current directory.

Prints every run, the medians, each ratio to the peer and Markdown rows for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    """Wall time of ``cmd`` in a fresh process (its output discarded; a failure stops the run)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def with_path(*folders: str) -> dict[str, str]:
    """The environment with ``folders`` first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*folders, os.environ.get("PYTHONPATH")]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs every command once)")
    ap.add_argument("--checkout", action="append", default=[], metavar="DIR", help="also time wconv-deploy from this tree")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = resnet18_weighted()
    params = sum(p.numel() for p in model.parameters())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet18_wconv.pt"
        torch.save(model, src)
        export = ["export", str(src), "--trust-pickle", "--input-shape", SHAPE, "--dynamic", DYNAMIC, "-o"]
        runs = {  # name -> (command, environment)
            "ours": ([str(Path(sys.executable).with_name("wconv-deploy")), *export, f"{tmp}/ours.onnx"], with_path(str(HERE))),
            "bare": ([sys.executable, "-c", BARE, str(src), f"{tmp}/bare.onnx"], with_path(str(HERE))),
        }
        for i, tree in enumerate(args.checkout):
            cmd = [sys.executable, "-m", "wconv_deploy", *export, f"{tmp}/checkout{i}.onnx"]
            runs[tree] = (cmd, with_path(str(Path(tree).resolve()), str(HERE)))
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for i in range(args.repeat):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotated: drift hits all alike
                times[name].append(timed(*runs[name], tmp))
            line = ", ".join(f"{name} {t[-1]:.2f} s" for name, t in times.items())
            print(f"round {i}: {line} (load average {os.getloadavg()[0]:.2f})")
    medians = {name: statistics.median(t) for name, t in times.items()}
    bare = medians.pop("bare")
    print(
        f"median of {args.repeat}: bare {bare:.2f} s, "
        + ", ".join(f"{n} {m:.2f} s ({m / bare:.2f}x)" for n, m in medians.items())
    )
    print()
    print("| wconv-deploy | model | inputs | runs | `wconv-deploy export` (s, median) | bare script (s, median) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, m in medians.items():
        print(
            f"| {name} | CIFAR ResNet-18 wConv ({params / 1e6:.1f} M params) | {SHAPE}, --dynamic {DYNAMIC} "
            f"| {args.repeat} | {m:.2f} | {bare:.2f} | {m / bare:.2f}x |"
        )


if __name__ == "__main__":
    main()
