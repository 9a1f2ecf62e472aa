"""Ultralytics-style checkpoints: a YOLO-like DetectionModel built from reference weighted
convolutions, saved in fp16 the way Ultralytics' trainer saves ``last.pt``/``best.pt`` (a dict with
the model under ``ema`` or ``model``, ``train_args``, an fp16 optimizer state, ...), then exported
with ``--arch`` (weights only, nothing from the file runs) and with ``--trust-pickle``.

The ``ultralytics`` package itself is not installed here (it pulls in OpenCV, matplotlib and more,
and may replace the CPU torch build), so the test writes a small package of that name whose classes
keep Ultralytics' module paths, attributes (``f``, ``i``, ``type`` on every layer, a shared SiLU,
a plain ``stride`` tensor) and forward loop, and whose Detect head torch.fx cannot trace."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from tests import refstyle
from tests.contract import assert_ok, assert_one_line_error, invoke
from wconv_deploy.loading import load_model

MODULES = textwrap.dedent(
    """
    import torch
    from torch import nn
    from wConv import wConv2d


    class Conv(nn.Module):
        default_act = nn.SiLU()  # one module shared by every layer, as in Ultralytics

        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            if k == 3:
                self.conv = wConv2d(c1, c2, 3, [0.7], stride=s, padding=1)
            else:
                self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = self.default_act

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))


    class C2f(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = Conv(c1, 2 * self.c, 1)
            self.m = nn.ModuleList([Conv(self.c, self.c, 3)])
            self.cv2 = Conv(3 * self.c, c2, 1)

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))


    class Concat(nn.Module):
        def __init__(self, dimension=1):
            super().__init__()
            self.d = dimension

        def forward(self, x):
            return torch.cat(x, self.d)


    class Detect(nn.Module):
        def __init__(self, nc, ch):
            super().__init__()
            self.nc, self.nl = nc, len(ch)
            self.stride = torch.zeros(self.nl)  # a plain tensor attribute, not a buffer
            self.shape = None
            self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, 16, 3), nn.Conv2d(16, 4, 1)) for c in ch)
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, 16, 3), nn.Conv2d(16, nc, 1)) for c in ch)

        def forward(self, x):
            for i in range(self.nl):
                x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
            if self.shape != x[0].shape:  # what keeps torch.fx from tracing Ultralytics' head
                self.shape = x[0].shape
            box, cls = torch.cat([xi.flatten(2) for xi in x], 2).split((4, self.nc), 1)
            return torch.cat((box, cls.sigmoid()), 1), x
    """
)

TASKS = textwrap.dedent(
    """
    import torch
    from torch import nn
    from ultralytics.nn.modules import C2f, Concat, Conv, Detect


    class DetectionModel(nn.Module):
        def __init__(self, cfg="yolo-tiny.yaml", ch=3, nc=3):
            super().__init__()
            self.yaml = {"nc": nc, "yaml_file": cfg, "ch": ch}
            layers = [
                (-1, Conv(ch, 8, 3, 2)),
                (-1, Conv(8, 16, 3, 2)),
                (-1, C2f(16, 16)),
                (-1, Conv(16, 32, 3, 2)),
                (-1, C2f(32, 32)),
                (-1, nn.Upsample(None, 2, "nearest")),
                ([-1, 2], Concat(1)),
                (-1, C2f(48, 16)),
                ([7, 4], Detect(nc, (16, 32))),
            ]
            for i, (f, m) in enumerate(layers):
                m.f, m.i, m.type = f, i, f"{type(m).__module__}.{type(m).__name__}"  # `type` shadows nn.Module.type
            self.model = nn.Sequential(*[m for _, m in layers])
            self.save = [2, 4, 7]
            self.names = {i: f"class{i}" for i in range(nc)}
            self.stride = torch.tensor([4.0, 8.0])
            self.model[-1].stride = self.stride
            self.args = {"imgsz": 32, "task": "detect"}

        def forward(self, x):
            y = []
            for m in self.model:
                if m.f != -1:
                    x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                x = m(x)
                y.append(x if m.i in self.save else None)
            return x
    """
)

#: Writes last.pt (the EMA model, fp16 optimizer state) and best.pt (what strip_optimizer leaves),
#: from a model whose BatchNorm statistics are "trained" (so that fusing them changes the weights).
SAVE = """
import datetime, torch
from ultralytics.nn.tasks import DetectionModel
torch.manual_seed(0)
model = DetectionModel()
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.3, 0.3)
        m.running_var.uniform_(0.5, 1.5)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
model(torch.randn(2, 3, 32, 32))[0].sum().backward()
opt.step()
model.eval()
half = model.half()
state = opt.state_dict()
for s in state["state"].values():
    s["momentum_buffer"] = s["momentum_buffer"].half()
train_args = {"model": "yolo-tiny.yaml", "data": "coco8.yaml", "epochs": 3, "imgsz": 32, "batch": 2,
              "device": None, "amp": True, "fraction": 1.0, "project": None, "name": "train"}
common = {"epoch": 2, "best_fitness": 0.25, "updates": 6, "train_args": train_args,
          "train_metrics": {"metrics/mAP50(B)": 0.25}, "train_results": {"epoch": [1, 2, 3]},
          "date": datetime.datetime(2026, 1, 1).isoformat(), "version": "8.3.0",
          "license": "AGPL-3.0 License", "docs": "https://docs.example/ultralytics"}
torch.save({**common, "model": None, "ema": half, "optimizer": state}, "last.pt")
torch.save({**common, "model": half, "ema": None, "optimizer": None}, "best.pt")
torch.save(half.float().state_dict(), "fp32_state.pt")
"""

ARCH = """
from ultralytics.nn.tasks import DetectionModel


def yolo_tiny():
    return DetectionModel().eval()
"""


def _forget() -> None:
    for name in list(sys.modules):
        if name in ("wConv", "wConv_Trainable", "yolo_arch") or name == "ultralytics" or name.startswith("ultralytics."):
            del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the Ultralytics-like package, reference wConv code, the arch file and the
    checkpoints written by a separate interpreter."""
    folder = tmp_path_factory.mktemp("yolo")
    pkg = folder / "ultralytics" / "nn"
    pkg.mkdir(parents=True)
    (folder / "ultralytics" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "modules.py").write_text(MODULES)
    (pkg / "tasks.py").write_text(TASKS)
    (folder / "yolo_arch.py").write_text(ARCH)
    refstyle.run_with_reference(folder, SAVE)
    return folder


@pytest.fixture(autouse=True)
def _no_leftover_modules() -> Iterator[None]:
    yield
    _forget()


def test_checkpoint_is_refused_without_arch_or_trust(yolo: Path) -> None:
    r = invoke("export", yolo / "last.pt", "--input-shape", "1x3x32x32")
    assert_one_line_error(r, 2, "ultralytics.nn.tasks.DetectionModel", "--trust-pickle", "--arch")


@pytest.mark.parametrize("ckpt", ["last.pt", "best.pt"])
def test_arch_loads_only_the_weights_and_exports_fp32(yolo: Path, tmp_path: Path, ckpt: str) -> None:
    loaded = load_model(yolo / ckpt, arch=f"{yolo / 'yolo_arch.py'}:yolo_tiny")
    assert loaded.checkpoint_key == ("ema" if ckpt == "last.pt" else "model")
    notes = " ".join(loaded.notes)
    assert "placeholders" in notes and "cast to float32" in notes and "float16" in notes
    out = tmp_path / "yolo.onnx"
    arch = f"{yolo / 'yolo_arch.py'}:yolo_tiny"
    args = ["--arch", arch, "--input-shape", "1x3x32x32", "--exporter", "torchscript", "-o", out, "--json"]
    report = json.loads(assert_ok(invoke("export", yolo / ckpt, *args)).stdout)
    assert report["validation"]["passed"] and len(report["fold"]["folded"]) == 10  # every 3x3 wConv2d
    model = onnx.load(out)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer if t.data_type in (1, 10))
    ops = {n.op_type for n in model.graph.node}
    assert {"Resize", "Concat", "Split", "Sigmoid"} <= ops and "BatchNormalization" not in ops
    fp16 = tmp_path / "yolo.fp16.onnx"
    conv = invoke("convert", out, "--precision", "fp16", "--reference", yolo / ckpt, "--arch", arch, "-o", fp16, "--json")
    assert json.loads(assert_ok(conv).stdout)["validation"]["passed"]
    onnx.checker.check_model(str(fp16), full_check=True)


def test_trusted_checkpoint_exports_and_names_every_conv(yolo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(yolo)  # the trusted file's classes import from the working directory, as in a project
    out = tmp_path / "yolo.onnx"
    args = ["--trust-pickle", "--input-shape", "1x3x32x32", "--exporter", "torchscript", "-o", out, "--json"]
    report = json.loads(assert_ok(invoke("export", yolo / "last.pt", *args)).stdout)
    assert report["validation"]["passed"]
    model = onnx.load(out)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    layers = json.loads({p.key: p.value for p in model.metadata_props}["wconv_deploy.conv_layers"])
    assert len(convs) == 20 and sorted(layers) == sorted(convs)  # every Conv, BatchNorms fused by the exporter
    int8 = tmp_path / "yolo.int8.onnx"
    r = invoke(
        "convert", out, "--precision", "int8", "--per-layer", "--reference", yolo / "last.pt", "--trust-pickle",
        "--atol", "10", "--rtol", "10", "-o", int8, "--json",
    )  # fmt: skip
    per_layer = json.loads(assert_ok(r).stdout)["layers"]
    assert len(per_layer) == 20 and all(ly["module"].startswith("model.") for ly in per_layer)
