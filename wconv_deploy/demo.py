"""`wconv-deploy demo`: the pipeline so far, end to end, on a small built-in network.

Builds a small denoiser-shaped network from weighted convolutions (fixed and trainable density,
BatchNorm), saves it the way users do (``torch.save(model)``), loads it back through the safe
loader, inspects it, folds it (Conv+BN fused), writes the folded model and reads it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from wconv_deploy.fileio import atomic_output
from wconv_deploy.fold import fold, relative_error
from wconv_deploy.inspection import inspect_model
from wconv_deploy.loading import load_model
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d


def demo_network(width: int = 16, depth: int = 5, seed: int = 0) -> nn.Sequential:
    """A DnCNN-shaped stack: wConv 3x3 + ReLU, (wConv 5x5 + BN + ReLU) x depth-2, trainable wConv 3x3 out."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [WeightedConv2d(1, width, 3, [0.9]), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [WeightedConv2d(width, width, 5, [0.3, 0.8], padding=2), nn.BatchNorm2d(width), nn.ReLU()]
    layers.append(TrainableWeightedConv2d(width, 1, 3, den=[0.7], bias=True))
    model = nn.Sequential(*layers)
    with torch.no_grad():  # BatchNorm statistics as if trained, so the fusion has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def run_demo(out_dir: Path, echo: Callable[[str], None] = print) -> Path:
    """Run the demo, writing into ``out_dir``; returns the folded model's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source, target = out_dir / "demo_model.pt", out_dir / "demo_model.folded.pt"

    echo("[1/4] building a small weighted-convolution network (random weights; a trained one comes with the model zoo)")
    with atomic_output(source) as tmp:
        torch.save(demo_network(), tmp)
    echo(f"      saved with torch.save(model) -> {source}")

    echo("[2/4] loading it with the safe (weights-only) loader and inspecting it")
    loaded = load_model(source)
    echo(inspect_model(loaded).render())

    echo("[3/4] folding weighted convolutions and BatchNorm into plain convolutions")
    folded, report = fold(loaded, fold_bn=True)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = relative_error(folded(x), loaded.model(x))
    convs = sum(isinstance(m, nn.Conv2d) for m in folded.modules())
    echo(
        f"      {len(report.folded)} weighted layers folded, {len(report.fused_bn)} BatchNorms fused, "
        f"{convs} nn.Conv2d left; rel error on a 64x64 image {err:.1e}"
    )

    echo("[4/4] writing the folded model")
    with atomic_output(target) as tmp:
        torch.save(folded, tmp)
    reread = load_model(target).model
    with torch.no_grad():
        err = relative_error(reread(x), loaded.model(x))
    kinds = ", ".join(sorted({type(m).__name__ for m in reread.children()}))
    echo(f"      {target}: only torch.nn layers ({kinds}); read back, rel error {err:.1e}")
    return target
