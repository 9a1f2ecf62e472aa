"""Real training outputs: half-precision weights, training wrappers, detector-like and 3-D graphs in
fp16, per-layer names after Conv+BatchNorm fusion, and the inspect verdict that export agrees with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.contract import assert_ok, invoke, tiny_cnn
from wconv_deploy.artifacts import KEY_CONV_LAYERS
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.precision import convert_onnx, layer_errors
from wconv_deploy.inspection import inspect_model
from wconv_deploy.loading import LoadedModel, load_model
from wconv_deploy.nn import WeightedConv2d, WeightedConv3d
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import validate

HALF_NOTE = "cast to float32 for folding, export and validation"


def _fp32_initializers_only(path: Path) -> bool:
    return all(t.data_type != onnx.TensorProto.FLOAT16 for t in onnx.load(path).graph.initializer)


# --------------------------------------------------------------------------- fp16 / bf16 weights in


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pickle_exports_fp32_then_converts_to_fp16(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "half.pt"
    torch.save(tiny_cnn().to(dtype), path)
    loaded = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert any(HALF_NOTE in n and str(dtype).removeprefix("torch.") in n for n in loaded.notes), loaded.notes
    out = tmp_path / "half.onnx"
    r = assert_ok(invoke("export", path, "--input-shape", "1x3x16x16", "--exporter", "torchscript", "-o", out, "--json"))
    report = json.loads(r.stdout)
    assert report["validation"]["passed"] and _fp32_initializers_only(out)
    # the fp32 reference is the half weights widened: the ONNX matches the fp16 model to fp16 rounding
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        widened = tiny_cnn().to(dtype).float()(x)
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, widened.numpy(), rtol=1e-4, atol=1e-5)
    fp16 = tmp_path / "half.fp16.onnx"
    assert_ok(invoke("convert", out, "--precision", "fp16", "--reference", path, "-o", fp16))
    onnx.checker.check_model(str(fp16), full_check=True)


def test_half_state_dict_into_arch_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(tiny_cnn().half().state_dict(), path)
    loaded = load_model(path, arch=tiny_cnn)
    assert any(HALF_NOTE in n and "float16" in n for n in loaded.notes)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_float64_weights_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "f64.pt"
    torch.save(tiny_cnn().double(), path)
    loaded = load_model(path)
    assert all(p.dtype == torch.float64 for p in loaded.model.parameters())
    assert not any(HALF_NOTE in n for n in loaded.notes)


def test_bench_with_a_half_precision_reference(tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    torch.save(tiny_cnn().half(), path)
    args = ["--input-shape", "1x3x16x16", "--runtimes", "torch,torch-folded", "--iterations", "2", "--min-duration-s", "0"]
    r = assert_ok(invoke("bench", path, *args, "--warmup-ms", "0", "--json"))
    rows = json.loads(r.stdout)["rows"]
    assert [row["runtime"] for row in rows] == ["torch", "torch-folded"]
    assert all(row["unavailable"] is None and row["max_rel_error"] < 1e-4 for row in rows), rows


def test_bench_reference_is_its_own_fp32_copy() -> None:
    from wconv_deploy.bench import run_bench

    model = tiny_cnn().half()
    spec = InputSpec.parse("1x3x16x16")
    report = run_bench(runtimes=["torch", "torch-folded"], spec=spec, model=model, iterations=1, min_duration_s=0, warmup_ms=0)
    errors = [row.max_rel_error for row in report.rows]
    assert all(e is not None and e < 1e-4 for e in errors), report.rows  # fp32 runs against the fp32 reference
    assert next(model.parameters()).dtype == torch.float16  # the caller's module is untouched


# --------------------------------------------------------------------------- training wrappers


def test_data_parallel_pickle_is_unwrapped_and_exports_with_dynamic_batch(tmp_path: Path) -> None:
    path = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(tiny_cnn()), path)
    for trust in (False, True):
        loaded = load_model(path, trust_pickle=trust)
        assert isinstance(loaded.model, nn.Sequential) and "unwrapped DataParallel" in " ".join(loaded.notes)
    out = tmp_path / "dp.onnx"
    r = assert_ok(invoke("export", path, "--input-shape", "2x3x16x16", "--dynamic", "batch", "-o", out, "--json"))
    report = json.loads(r.stdout)
    assert report["validation"]["passed"] and len(report["validation"]["cases"]) == 3  # opt, min, max batch
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch


def test_ddp_checkpoint_is_unwrapped_without_a_process_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    path = tmp_path / "ddp.pt"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)  # gloo removes it
    try:
        torch.save({"epoch": 3, "model": nn.parallel.DistributedDataParallel(tiny_cnn())}, path)
    finally:
        dist.destroy_process_group()
    for trust in (False, True):  # DDP's own __setstate__ would ask for the default process group
        loaded = load_model(path, trust_pickle=trust)
        assert isinstance(loaded.model, nn.Sequential) and "unwrapped DistributedDataParallel" in " ".join(loaded.notes)
        with torch.no_grad():
            x = torch.randn(1, 3, 16, 16)
            torch.testing.assert_close(loaded.model(x), tiny_cnn()(x))


def test_torch_compile_pickle_is_unwrapped_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "compiled.pt"
    torch.save(torch.compile(tiny_cnn()), path)
    loaded = load_model(path, trust_pickle=True)
    assert isinstance(loaded.model, nn.Sequential) and "unwrapped OptimizedModule" in " ".join(loaded.notes)
    with pytest.raises(Exception, match="not on the allowlist"):  # its dynamo context is code: refused without trust
        load_model(path)


# --------------------------------------------------------------------------- fp16 on any graph


class ConvBNSiLU(nn.Module):
    """Ultralytics' Conv: a (weighted, for 3x3) convolution, BatchNorm and SiLU as attributes."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = (
            WeightedConv2d(c1, c2, 3, [0.7], stride=s, padding=1) if k == 3 else nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        )
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TinyDetector(nn.Module):
    """Backbone, an FPN-style neck (Upsample with scale_factor, Concat) and a head that splits
    boxes from class scores (Split, Sigmoid, Concat). ``untraceable`` adds what keeps torch.fx
    from tracing Ultralytics' Detect (a branch on a tensor's shape)."""

    def __init__(self, nc: int = 3, untraceable: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.b0, self.b1 = ConvBNSiLU(3, 8, 3, 2), ConvBNSiLU(8, 16, 3, 2)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.neck = ConvBNSiLU(24, 16, 1)
            self.head = nn.Conv2d(16, 4 + nc, 1)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):  # trained statistics, so fusing them changes the weights
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        self.nc, self.untraceable = nc, untraceable
        self.shape: tuple[int, ...] = ()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.b0(x)
        b = self.b1(a)
        y = self.neck(torch.cat([self.up(b), a], 1))
        if self.untraceable and self.shape != y.shape:
            self.shape = tuple(y.shape)
        box, cls = self.head(y).flatten(2).split((4, self.nc), 1)
        return torch.cat([box, cls.sigmoid()], 1)


class Tiny3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.c = WeightedConv3d(1, 4, 3, [0.5], padding=1)
            self.o = nn.Conv3d(4, 1, 1)
        self.up = nn.Upsample(scale_factor=2, mode="trilinear")
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.o(torch.relu(self.c(x))))


@pytest.mark.parametrize(("model", "shape"), [(TinyDetector, "1x3x32x32"), (Tiny3d, "1x1x8x8x8")])
def test_fp16_of_detector_and_3d_graphs_type_checks_and_validates(tmp_path: Path, model: type, shape: str) -> None:
    net = model()
    fp32 = tmp_path / "m.onnx"
    export_onnx(net, fp32, InputSpec.parse(shape), validate_output=False)  # dynamo: Resize scales as an initializer
    ops = {n.op_type for n in onnx.load(fp32).graph.node}
    assert "Resize" in ops and (model is Tiny3d or {"Concat", "Split", "Sigmoid"} <= ops), ops
    out = tmp_path / "m.fp16.onnx"
    report = convert_onnx(fp32, out, "fp16", reference=net)
    onnx.checker.check_model(str(out), full_check=True)
    assert report.validation is not None and report.validation.passed
    variant = onnx.load(out)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in variant.graph.initializer)  # really converted
    assert validate(out, net, InputSpec.parse(shape), atol=1e-2, rtol=1e-2, seed=5).passed  # on other inputs too


# --------------------------------------------------------------------------- per-layer names


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_per_layer_names_every_conv_after_batchnorm_fusion(tmp_path: Path, exporter: str) -> None:
    net = TinyDetector(untraceable=True)
    fp32 = tmp_path / "det.onnx"
    export_onnx(net, fp32, InputSpec.parse("1x3x32x32"), exporter=exporter, validate_output=False)
    model = onnx.load(fp32)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # fused by torch.onnx
    recorded = json.loads({p.key: p.value for p in model.metadata_props}[KEY_CONV_LAYERS])
    assert recorded == dict(zip([n.name for n in convs], ["b0.conv", "b1.conv", "neck.conv", "head"]))
    # the weights alone no longer say it: the fused weights match no PyTorch conv
    with torch.no_grad():
        w = dict(net.named_parameters())["neck.conv.weight"].numpy()
    fused = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == convs[2].input[1]))
    assert not np.allclose(fused, w, rtol=1e-3)
    out = tmp_path / "det.int8.onnx"
    report = convert_onnx(fp32, out, "int8", reference=net, per_layer=True, atol=10, rtol=10)
    assert [ly.module for ly in report.layers] == ["b0.conv", "b1.conv", "neck.conv", "head"]
    assert all(0 < ly.rel_error < 0.5 for ly in report.layers), [ly.rel_error for ly in report.layers]
    kept = convert_onnx(fp32, tmp_path / "keep.onnx", "int8", reference=net, keep_fp32=["neck.conv"], atol=10, rtol=10)
    assert kept.keep_fp32 == [convs[2].name]


def test_per_layer_errors_are_zero_against_the_same_graph(tmp_path: Path) -> None:
    net = TinyDetector(untraceable=True)
    fp32 = tmp_path / "det.onnx"
    export_onnx(net, fp32, InputSpec.parse("1x3x32x32"), exporter="torchscript", validate_output=False)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    layers = layer_errors(fp32, fp32, net, feeds)
    assert len(layers) == 4 and all(ly.rel_error == 0 and ly.max_abs == 0 for ly in layers)


def test_per_layer_cli_maps_every_conv(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_cnn(), path)
    fp32 = tmp_path / "tiny.onnx"
    assert_ok(invoke("export", path, "--input-shape", "1x3x16x16", "--exporter", "torchscript", "-o", fp32))
    r = invoke(
        "convert", fp32, "--precision", "int8", "--per-layer", "--reference", path, "--atol", "10", "--rtol", "10", "--json"
    )
    assert_ok(r)
    layers = json.loads(r.stdout)["layers"]
    assert [ly["module"] for ly in layers] == ["0", "3"]


# --------------------------------------------------------------------------- inspect agrees with export


class NeedsItsOwnShape(nn.Module):
    """Runs only on 8x8 inputs (a Linear after the conv): a guessed input does not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = WeightedConv2d(3, 2, 3, [0.5], padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_inspect_says_yes_only_for_a_model_seen_to_run(tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    torch.save(tiny_cnn().half(), path)
    ins = inspect_model(load_model(path))
    assert ins.folds_cleanly and "folds cleanly: yes" in ins.render()
    assert export_onnx(load_model(path), tmp_path / "h.onnx", InputSpec.parse("1x3x16x16"), exporter="torchscript")
    odd = inspect_model(LoadedModel(NeedsItsOwnShape().eval(), "pickle", tmp_path / "odd.pt", "0" * 64))
    assert not odd.folds_cleanly and "folds cleanly: unknown" in odd.render() and "does not fit" in odd.render()
