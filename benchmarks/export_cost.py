"""Time ``export_onnx`` (load, fold, export, graph checks, validation) on a ResNet-18-sized model.

The model is a CIFAR ResNet-18 (3x3 stem, stages 64/128/256/512, [2, 2, 2, 2] basic blocks,
BatchNorm, residual connections) whose 3x3 convolutions are weighted (density ``[0.8]``),
saved with ``torch.save(model)`` as users do. The target is at most 10 s on 2 CPU cores.

    .venv/bin/python benchmarks/export_cost.py [--dynamic batch] [--exporter torchscript] [--repeat 3]

Prints one line per stage and run, and a Markdown row for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.nn import WeightedConv2d
from wconv_deploy.spec import InputSpec


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = WeightedConv2d(cin, cout, 3, [0.8], stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = WeightedConv2d(cout, cout, 3, [0.8], padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet18_weighted(num_classes: int = 100) -> nn.Module:
    layers: list[nn.Module] = [WeightedConv2d(3, 64, 3, [0.8], padding=1), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dynamic", default=None, help="--dynamic for the export (default: static)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = resnet18_weighted()
    params = sum(p.numel() for p in model.parameters())
    spec = InputSpec.parse("1x3x32x32", args.dynamic)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: CIFAR ResNet-18, weighted 3x3 convs, {params / 1e6:.1f} M parameters; spec {spec}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet18_wconv.pt"
        torch.save(model, src)
        times = []
        for i in range(args.repeat):
            stages: list[tuple[str, float]] = []
            t0 = time.perf_counter()

            def mark(msg: str, stages: list[tuple[str, float]] = stages, t0: float = t0) -> None:
                stages.append((msg, time.perf_counter() - t0))

            # trust_pickle: the file is our own, and its Block class lives in this script
            report = export_onnx(src, Path(tmp) / "m.onnx", spec, progress=mark, trust_pickle=True, exporter=args.exporter)
            total = time.perf_counter() - t0
            times.append(total)
            marks = [t for _, t in stages] + [total]
            steps = ", ".join(f"{m.split()[0]} {b - a:.2f}s" for (m, a), b in zip(stages, marks[1:]))
            assert report.validation is not None
            print(f"run {i}: {total:.2f} s ({steps}); worst max rel err {report.validation.worst['max_rel']:.1e}")
    best = min(times)
    print()
    print("| model | spec | exporter | export+validate, best of runs (s) | first run (s) |")
    print("|---|---|---|---|---|")
    print(f"| CIFAR ResNet-18 wConv ({params / 1e6:.1f} M params) | {spec} | {args.exporter} | {best:.2f} | {times[0]:.2f} |")


if __name__ == "__main__":
    main()
