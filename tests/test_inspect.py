"""`inspect` on artifacts: an ONNX file, a TensorRT engine (its manifest only: the engine is never
deserialised) and a Triton entry, with their golden files; --json too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.contract import assert_ok, assert_one_line_error, invoke
from wconv_deploy.artifacts import graph_io, manifest_path, read_onnx
from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
from wconv_deploy.golden import golden_path
from wconv_deploy.ship.package import package
from wconv_deploy.spec import InputSpec


def test_inspect_an_onnx_file(dncnn_onnx: Path) -> None:
    info = json.loads(assert_ok(invoke("inspect", dncnn_onnx, "--json")).stdout)
    assert (info["kind"], info["precision"], info["opset"], info["qdq_nodes"]) == ("onnx", "fp32", 18, 0)
    assert info["conv_nodes"] == 3  # DNCNN depth 3
    assert info["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": "?x1x?x?", "range": "1x1x16x16 / 1x1x32x32 / 8x1x64x64"}
    ]
    assert info["outputs"][0]["name"] == "output"
    assert info["provenance"]["source"].startswith("zoo:dncnn")
    assert info["golden"]["artifact"] == dncnn_onnx.name and len(info["golden"]["summary"]) == 3
    text = assert_ok(invoke("inspect", dncnn_onnx)).stdout
    for needle in ("opset 18, 3 Conv, 0 Q/DQ", "precision   fp32", "dncnn.golden.npz: 3 case(s), fp32 atol=1e-05"):
        assert needle in text, (needle, text)


def _engine(onnx_file: Path, folder: Path) -> Path:
    """A file named like an engine (not one: inspect must not load it) with a real manifest."""
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    plan = folder / "dncnn.plan"
    plan.write_bytes(b"not an engine: inspect reads only the manifest")
    manifest_for(
        onnx_file, BuildConfig("fp16", profiles_from_spec(spec)), BuildPlan(True),
        tensorrt_version="10.3.0", gpu_name="Test GPU", compute_capability="9.0", io=graph_io(read_onnx(onnx_file)),
    ).write(manifest_path(plan))  # fmt: skip
    return plan


def test_inspect_an_engine_reads_only_its_manifest(dncnn_onnx: Path, tmp_path: Path) -> None:
    shutil.copy(golden_path(dncnn_onnx), tmp_path / "dncnn.golden.npz")
    plan = _engine(dncnn_onnx, tmp_path)
    info = json.loads(assert_ok(invoke("inspect", plan, "--json")).stdout)
    assert (info["kind"], info["precision"]) == ("engine", "fp16")
    assert info["engine_manifest"]["tensorrt_version"] == "10.3.0" and info["engine_manifest"]["compute_capability"] == "9.0"
    assert info["inputs"][0]["range"] == "1x1x16x16 / 1x1x32x32 / 8x1x64x64"
    assert info["golden"] is not None
    text = assert_ok(invoke("inspect", plan)).stdout
    assert "TensorRT 10.3.0, Test GPU (sm 9.0)" in text and "profile 0" in text
    manifest_path(plan).unlink()
    assert_one_line_error(invoke("inspect", plan), 2, "manifest")


def test_inspect_a_triton_entry(dncnn_onnx: Path, tmp_path: Path) -> None:
    package([dncnn_onnx], tmp_path / "repo", "den")
    for target in (tmp_path / "repo", tmp_path / "repo" / "den"):
        info = json.loads(assert_ok(invoke("inspect", target, "--json")).stdout)
        assert info["entry"] == {"name": "den", "version": 1, "max_batch": 8, "runtime": "ort-cpu"}
        assert info["path"].endswith("den/1/model.onnx") and info["golden"]["artifact"] == dncnn_onnx.name


@pytest.mark.parametrize("name", ["model.onnx", "model.plan"])
def test_inspect_refuses_broken_artifacts_in_one_line(tmp_path: Path, name: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(b"\x00garbage")
    assert_one_line_error(invoke("inspect", bad), 2)
