"""`wconv-deploy export` and `wconv-deploy validate` run in this process through click, plus one real
process for an interpreter without onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.contract import assert_ok, assert_one_line_error, invoke, tiny_cnn
from wconv_deploy.nn import WeightedConv2d

ARCH = """
import torch
from torch import nn
from wconv_deploy.nn import WeightedConv2d


class Branchy(nn.Module):
    '''Data-dependent control flow: torch.export cannot trace it.'''

    def __init__(self):
        super().__init__()
        self.conv = WeightedConv2d(3, 2, 3, [0.5])

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


def branchy():
    return Branchy()
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("export")
    other = tiny_cnn()
    with torch.no_grad():
        other.get_parameter("0.weight").mul_(1.01)  # a slightly different network: validation must notice
    torch.save(other, d / "other.pt")
    (d / "arch.py").write_text(textwrap.dedent(ARCH))
    holder = nn.Module()
    holder.conv = WeightedConv2d(3, 2, 3, [0.5])  # the state_dict Branchy expects
    torch.save(holder.state_dict(), d / "branchy.pt")
    return d


def test_export_writes_a_checked_file_and_validate_agrees(work: Path, tiny_cnn_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    r = assert_ok(invoke("export", tiny_cnn_pt, "-o", out, "--input-shape", "1x3x16x16", "--dynamic", "batch,height,width"))
    assert r.stderr == ""
    for needle in ("2 weighted layer(s) folded", "Conv 2", "passed: 3 input set(s)", f"wrote {out}"):
        assert needle in r.stdout, (needle, r.stdout)
    assert "... exporting" in r.stdout  # progress is shown
    assert json.loads((tmp_path / "m.onnx.report.json").read_text())["validation"]["passed"] is True

    np.savez(tmp_path / "x.npz", input=np.random.default_rng(0).standard_normal((3, 3, 20, 24)).astype(np.float32))
    r = assert_ok(invoke("validate", out, "--reference", tiny_cnn_pt, "--inputs", tmp_path / "x.npz", "--json"))
    report = json.loads(r.stdout)
    assert report["passed"] is True
    assert [c["label"] for c in report["cases"]][-1] == "x.npz"
    assert report["worst"]["max_rel"] <= 1e-5

    r = invoke("validate", out, "--reference", work / "other.pt")
    assert_one_line_error(r, 1, "does not compute what")
    assert "FAIL" in r.stdout and "would pass with --atol" in r.stdout


def test_export_json_and_default_output(tiny_cnn_pt: Path, tmp_path: Path) -> None:
    src = tmp_path / "net.pt"
    src.write_bytes(tiny_cnn_pt.read_bytes())
    r = assert_ok(invoke("export", src, "--input-shape", "2x3x8x8", "--fold-bn", "--json"))
    report = json.loads(r.stdout)  # nothing but JSON on stdout
    assert report["output"] == str(tmp_path / "net.onnx") and (tmp_path / "net.onnx").is_file()
    assert len(report["fold"]["fused_bn"]) == 1
    assert report["graph"]["ops"] == {"Conv": 2, "Relu": 1}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--input-shape", "1x3x"], ["--input-shape", "not a shape"]),
        (["--input-shape", "1x5x16x16"], ["rejects", "[1, 5, 16, 16]", "channels"]),
        (["--input-shape", "1x3x16x16", "--dynamic", "time"], ["no input has an axis named 'time'", "height"]),
        (["--input-shape", "1x3x16x16", "-o", "{tmp}/missing/m.onnx"], ["does not exist"]),
        (["--input-shape", "1x3x16x16", "-o", "{tmp}"], ["is a directory"]),
        (["--input-shape", "1x3x16x16", "--opset", "3"], ["--opset 3"]),
        ([], ["--input-shape is required"]),
        (["--input-shape", "1x3x16x16", "--inputs", "{tmp}/none.npz"], ["does not exist"]),
    ],
)
def test_export_bad_input_is_one_line_exit_2_and_no_file(
    tiny_cnn_pt: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = ["-o", str(tmp_path / "m.onnx")] if "-o" not in args else []
    r = invoke("export", tiny_cnn_pt, *out, *args)
    assert_one_line_error(r, 2, *needles)
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("*.tmp"))


def test_export_failing_inside_torch_is_one_line(work: Path, tmp_path: Path) -> None:
    r = invoke(
        "export",
        work / "branchy.pt",
        "--arch",
        f"{work / 'arch.py'}:branchy",
        "--input-shape",
        "1x3x8x8",
        "-o",
        tmp_path / "b.onnx",
    )
    assert_one_line_error(r, 2, "torch.onnx.export failed", "data-dependent")
    assert list(tmp_path.iterdir()) == []


def test_validate_bad_input(tiny_cnn_pt: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    assert_one_line_error(invoke("validate", garbage, "--reference", tiny_cnn_pt), 2, "g.onnx")
    assert_one_line_error(invoke("validate", tmp_path / "none.onnx", "--reference", tiny_cnn_pt), 2, "does not exist")


def test_zoo_list_and_export_with_the_zoo_defaults(tmp_path: Path) -> None:
    r = assert_ok(invoke("zoo", "list"))
    for name in ("vgg16_cifar", "resnet18_cifar", "dncnn", "nafnet", "denoiser"):
        assert name in r.stdout
    out = tmp_path / "small.onnx"
    r = assert_ok(invoke("export", "zoo:dncnn?depth=4&width=8", "-o", out, "--json"))  # no --input-shape: the zoo's default
    report = json.loads(r.stdout)
    assert report["input_spec"]["inputs"][0]["dims"][2] == ["height", 32, 64, 128]
    assert report["validation"]["passed"] is True and out.is_file()
    assert_one_line_error(invoke("export", "zoo:dncnn?colour=2", "-o", out), 2, "unknown option(s) colour")


def test_missing_onnxruntime_is_one_line_naming_the_extra(tiny_cnn_pt: Path, tmp_path: Path) -> None:
    """A user who installed neither extra gets told which to install; nothing is written. A real
    process: only a fresh interpreter shows what importing without onnxruntime does."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # what an absent package looks like to import
        "from wconv_deploy.cli import main; main()"
    )
    out = tmp_path / "m.onnx"
    r = subprocess.run(
        [sys.executable, "-c", code, "export", str(tiny_cnn_pt), "--input-shape", "1x3x8x8", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(r, 2, "onnxruntime is not installed", "wconv-deploy[cpu]", "[gpu]")
    assert not out.exists() and list(tmp_path.iterdir()) == []
