"""ONNX export: models saved with reference-style classes export to plain-conv graphs that
ONNX Runtime runs to within 1e-5 of PyTorch, and the graph checks catch what they must."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests import refstyle
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.exporters.onnx import check_graph, default_output, export_onnx, fold_constants
from wconv_deploy.loading import load_model
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv1d, WeightedConv2d
from wconv_deploy.options import CheckOptions
from wconv_deploy.spec import InputSpec

MUST_REACH_REL = 1e-5
WEIGHT_OPS = {"Mul", "Einsum", "Concat", "Slice", "Outer", "MatMul"}

# Architectures built from the reference's classes, as a user's training code would be.
NETS = '''
import torch
from torch import nn
import wConv
import wConv_Trainable


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = wConv_Trainable.wConv2d(c, c, 7, padding=3, groups=2)
        self.bn = nn.BatchNorm2d(c)
        self.b = wConv.wConv2d(c, c, 5, den=[0.3, 0.8], padding=4, dilation=2, bias=True)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.bn(self.a(x)))))


def net2d():
    return nn.Sequential(
        wConv.wConv2d(3, 8, 3, den=[0.6]), nn.BatchNorm2d(8), nn.ReLU(),
        ResBlock(8),
        wConv.wConv2d(8, 4, 3, den=[0.4], stride=2),
    )


def net1d():
    return nn.Sequential(
        wConv.wConv1d(2, 6, 3, den=[0.5], bias=True), nn.ReLU(),
        wConv_Trainable.wConv1d(6, 3, 7, padding=6, dilation=2),
    )


def net3d():
    return nn.Sequential(
        wConv.wConv3d(1, 4, 3, den=[0.7], stride=2), nn.BatchNorm3d(4), nn.ReLU(),
        wConv_Trainable.wConv3d(4, 2, 7, padding=3, groups=2),
    )


def randomise(model, seed):
    """Trained-looking state: densities off their defaults, BatchNorm statistics not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith("den"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.8 + 0.1)
            elif name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()
'''

SAVE = """
import torch
import nets
for i, name in enumerate(["net2d", "net1d", "net3d"]):
    torch.manual_seed(i)
    model = nets.randomise(getattr(nets, name)(), i)
    torch.save(model.state_dict(), name + ".pt")
    if name == "net2d":
        torch.save(model, "net2d_full.pt")
        torch.export.save(torch.export.export(model, (torch.randn(2, 3, 16, 16),)), "net2d.pt2")

# The reference classes are not scriptable; users who script switch imports to ours first.
import sys
import wconv_deploy.nn.wConv
import wconv_deploy.nn.wConv_Trainable
sys.modules["wConv"] = wconv_deploy.nn.wConv
sys.modules["wConv_Trainable"] = wconv_deploy.nn.wConv_Trainable
import importlib
importlib.reload(nets)
model = nets.net2d()
model.load_state_dict(torch.load("net2d.pt"))
torch.jit.script(model.eval()).save("net2d_script.pt")
"""

SHAPES = {"net2d": "1x3x16x16", "net1d": "2x2x32", "net3d": "1x1x8x8x8"}
LAYERS = {"net2d": 4, "net1d": 2, "net3d": 2}


@pytest.fixture(autouse=True)
def _forget_reference_modules() -> Iterator[None]:
    """--arch imports nets.py, which imports the reference-style modules; other tests check that
    loading alone never imports them, so they must not linger in sys.modules."""
    yield
    for name in ("wConv", "wConv_Trainable", "nets"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    refstyle.install(folder)
    (folder / "nets.py").write_text(textwrap.dedent(NETS))
    refstyle.run_with_reference(folder, SAVE)
    return folder


def _graph_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(path).graph.node}


def _assert_no_weight_arithmetic(path: Path) -> None:
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert all(name in inits for name in node.input[1:] if name), node
    assert not _graph_ops(path) & WEIGHT_OPS, _graph_ops(path)


@pytest.mark.parametrize("name", ["net2d", "net1d", "net3d"])
@pytest.mark.parametrize("dynamic", [None, "batch"])
def test_reference_models_export_plain_and_match(saved: Path, tmp_path: Path, name: str, dynamic: str | None) -> None:
    out = tmp_path / f"{name}.onnx"
    spec = InputSpec.parse(SHAPES[name], dynamic)
    report = export_onnx(load_model(saved / f"{name}.pt", arch=f"{saved / 'nets.py'}:{name}"), out, spec)
    assert len(report.fold.folded) == LAYERS[name]
    assert report.graph.passed and report.graph.conv_nodes == report.graph.expected_convs
    _assert_no_weight_arithmetic(out)
    assert report.validation is not None and report.validation.passed
    assert report.validation.worst["max_rel"] <= MUST_REACH_REL
    batch = spec.inputs[0].dims[0].opt
    assert len(report.validation.cases) == (1 if dynamic is None else len({batch, 1, 8}))  # opt, min, max (1..8)
    assert not (tmp_path / f"{name}.onnx.data").exists()  # one self-contained file


def test_torchscript_exporter_gives_the_same_guarantees(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "ts.onnx"
    spec = InputSpec.parse("1x3x16x16", "batch,height,width")
    report = export_onnx(load_model(saved / "net2d.pt", arch=f"{saved / 'nets.py'}:net2d"), out, spec, exporter="torchscript")
    assert report.exporter == "torch.onnx (TorchScript)"
    assert report.graph.passed and report.graph.conv_nodes == 4
    _assert_no_weight_arithmetic(out)
    dims = [d.dim_param or d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert report.validation is not None and report.validation.worst["max_rel"] <= MUST_REACH_REL
    with pytest.raises(InputError, match="--exporter"):
        export_onnx(load_model(saved / "net2d.pt", arch=f"{saved / 'nets.py'}:net2d"), out, spec, exporter="tflite")


def test_full_pickle_of_reference_classes_needs_trust_for_user_blocks(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = InputSpec.parse("1x3x16x16")
    with pytest.raises(InputError, match="nets.ResBlock"):
        export_onnx(load_model(saved / "net2d_full.pt"), tmp_path / "a.onnx", spec)
    assert not (tmp_path / "a.onnx").exists()
    monkeypatch.chdir(saved)  # the user's code is importable from where they run the tool
    report = export_onnx(load_model(saved / "net2d_full.pt", trust_pickle=True), tmp_path / "a.onnx", spec, fold_bn=True)
    assert len(report.fold.fused_bn) == 2  # stem and block
    assert report.validation is not None and report.validation.worst["max_rel"] <= MUST_REACH_REL


@pytest.mark.parametrize("source", ["net2d_script.pt", "net2d.pt2"])
def test_graph_only_formats_are_folded_on_the_graph(saved: Path, tmp_path: Path, source: str) -> None:
    out = tmp_path / "g.onnx"
    trust = source.endswith("_script.pt")  # TorchScript is code: loading it as a graph needs the flag
    report = export_onnx(load_model(saved / source, trust_pickle=trust), out, InputSpec.parse("2x3x16x16"))
    assert report.fold.deferred
    assert report.graph.passed and report.graph.conv_nodes == 4
    _assert_no_weight_arithmetic(out)
    assert report.validation is not None and report.validation.worst["max_rel"] <= MUST_REACH_REL


@pytest.mark.parametrize("source", ["net2d_script.pt", "net2d.pt2"])
def test_graph_formats_with_arch_export_their_weights_folded_as_modules(saved: Path, tmp_path: Path, source: str) -> None:
    """--arch takes only the tensors of a TorchScript archive or .pt2 program: nothing from the file
    runs, and the model is the user's own code, folded layer by layer like a state_dict."""
    out = tmp_path / "w.onnx"
    report = export_onnx(load_model(saved / source, arch=f"{saved / 'nets.py'}:net2d"), out, InputSpec.parse("2x3x16x16"))
    assert not report.fold.deferred and len(report.fold.folded) == 4
    assert report.validation is not None and report.validation.worst["max_rel"] <= MUST_REACH_REL
    import onnxruntime as ort

    export_onnx(load_model(saved / "net2d.pt2"), tmp_path / "g.onnx", InputSpec.parse("2x3x16x16"), validate_output=False)
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    ours, graph = (ort.InferenceSession(os.fspath(p)).run(None, x)[0] for p in (out, tmp_path / "g.onnx"))
    assert np.abs(ours - graph).max() <= 1e-4 * np.abs(graph).max()  # the file's weights, not a fresh init


def test_metadata_dynamic_names_and_report_file(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    spec = InputSpec.parse("1x3x16x16", "batch,height,width")
    report = export_onnx(load_model(saved / "net2d.pt", arch=f"{saved / 'nets.py'}:net2d"), out, spec)
    model = onnx.load(out)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["wconv_deploy.source_sha256"] == report.source_sha256
    assert InputSpec.from_dict(json.loads(props["wconv_deploy.input_spec"])) == spec
    assert len(json.loads(props["wconv_deploy.fold"])["folded"]) == 4
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["output"]
    saved_report = json.loads((tmp_path / "m.onnx.report.json").read_text())
    assert saved_report["validation"]["passed"] is True
    assert saved_report["graph"]["conv_nodes"] == 4


def test_failed_validation_writes_no_model_but_a_report(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict.onnx"
    with pytest.raises(MismatchError) as err:
        loaded = load_model(saved / "net2d.pt", arch=f"{saved / 'nets.py'}:net2d")
        export_onnx(loaded, out, InputSpec.parse("1x3x16x16"), checks=CheckOptions(atol=0, rtol=0))
    assert "would pass with --atol" in err.value.report.render()
    assert not out.exists()
    assert json.loads((tmp_path / "strict.onnx.report.json").read_text())["validation"]["passed"] is False
    assert [p.name for p in tmp_path.iterdir()] == ["strict.onnx.report.json"]  # no temporary left


def test_in_memory_module_shared_layer_and_multiple_inputs(tmp_path: Path) -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = WeightedConv2d(2, 2, 3, [0.5])
            self.side = TrainableWeightedConv2d(1, 2, 3, den=[0.8])

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.shared(self.shared(x)) * torch.sigmoid(self.side(mask))
            return y, y.mean(dim=(2, 3))

    torch.manual_seed(0)
    spec = InputSpec.parse("x:1x2x12x12,mask:1x1x12x12", "batch")
    report = export_onnx(TwoInputs().eval(), tmp_path / "two.onnx", spec)
    assert report.graph.conv_nodes == report.graph.expected_convs == 3  # the shared layer runs twice
    model = onnx.load(tmp_path / "two.onnx")
    assert [i.name for i in model.graph.input] == ["x", "mask"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    assert report.validation is not None and report.validation.passed


def test_fold_constants_turns_weight_products_into_initializers() -> None:
    w = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    phi = np.full((3, 3), 0.5, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["w", "phi"], ["wphi"]), helper.make_node("Conv", ["x", "wphi"], ["y"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(phi, "phi")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = check_graph(model, expected_convs=1)
    assert not before.passed and "computed by a Mul node" in before.problems[0]
    assert fold_constants(model) == 1
    after = check_graph(model, expected_convs=1)
    assert after.passed, after.problems
    (folded,) = [t for t in model.graph.initializer if t.name == "wphi"]
    np.testing.assert_array_equal(numpy_helper.to_array(folded), w * phi)
    assert {t.name for t in model.graph.initializer} == {"wphi"}  # inputs of the folded node dropped
    assert "1 Conv node(s) in the graph but 2" in check_graph(model, expected_convs=2).problems[0]


def test_shape_the_model_rejects_is_input_error(tmp_path: Path) -> None:
    model = nn.Sequential(WeightedConv1d(3, 2, 3, [0.5])).eval()
    with pytest.raises(InputError, match="rejects the example inputs"):
        export_onnx(model, tmp_path / "x.onnx", InputSpec.parse("1x4x16"))
    assert list(tmp_path.iterdir()) == []


def test_default_output_name() -> None:
    assert default_output("runs/best.pt") == Path("runs/best.onnx")
    assert default_output("zoo:dncnn?width=32") == Path("dncnn.onnx")
