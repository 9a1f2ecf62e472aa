"""How far ONNX Runtime (CPU) and PyTorch disagree on correctly exported models: the data behind
the default validation tolerances (``atol=1e-5``, ``rtol=1e-4``) in wconv_deploy/validate.py.

Exports the weighted CIFAR VGG-16 and ResNet-18 of the other benchmarks with random (seeded)
weights and BatchNorm statistics, validates with zero tolerances so every difference shows, and
prints the worst max abs error, max error relative to the output scale, and the smallest atol
(at rtol 0) and rtol (at atol 0) that would pass.

    .venv/bin/python benchmarks/validation_errors.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from export_cost import resnet18_weighted
from fold_cost import vgg16_weighted
from torch import nn

from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import validate


def trained_looking(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def main() -> None:
    print("| model | inputs | max abs | max rel (to output scale) | smallest atol (rtol 0) | smallest rtol (atol 0) |")
    print("|---|---|---|---|---|---|")
    for name, build, shape in (
        ("VGG-16 wConv", vgg16_weighted, "8x3x32x32"),
        ("ResNet-18 wConv", resnet18_weighted, "8x3x32x32"),
    ):
        torch.manual_seed(0)
        model = trained_looking(build())
        spec = InputSpec.parse(shape)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.onnx"
            export_onnx(model, out, spec, validate_output=False)
            report = validate(out, model, spec, atol=0.0, rtol=0.0)  # returns the report, pass or fail
            w = report.worst
            print(
                f"| {name} | {shape} | {w['max_abs']:.2e} | {w['max_rel']:.2e} | "
                f"{w['needed_atol']:.2e} | {w['needed_rtol']:.2e} |"
            )


if __name__ == "__main__":
    main()
