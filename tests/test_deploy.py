"""`wconv-deploy deploy`: the whole chain on a small zoo model, with real files and runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.contract import DNCNN, assert_ok, assert_one_line_error, invoke
from wconv_deploy.deploy import Verdict, deploy
from wconv_deploy.errors import InputError
from wconv_deploy.loading import load_model
from wconv_deploy.precision import TOLERANCES, Precision
from wconv_deploy.reports import Status
from wconv_deploy.spec import InputSpec

SPEC = InputSpec.parse("input:1x1x32x32", "batch=1:4")


def test_deploy_exports_converts_times_and_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TOLERANCES, Precision.INT8, (1e-9, 1e-9))  # int8 must fail: its row says so
    report = deploy(load_model(DNCNN), SPEC, tmp_path / "out", precisions=["fp32", "fp16", "int8"], bench_duration_s=0.05)
    out = tmp_path / "out"
    assert (out / "dncnn.onnx").is_file() and (out / "dncnn.fp16.onnx").is_file()
    assert not (out / "dncnn.int8.onnx").exists()
    by = {(r.artifact, r.runtime): r for r in report.rows}
    assert by[("PyTorch (training form)", "torch")].latency_ms > 0  # type: ignore[operator]
    fp32, fp16 = by[("dncnn.onnx", "ort-cpu")], by[("dncnn.fp16.onnx", "ort-cpu")]
    assert fp32.validation.status == Status.OK and fp16.validation.status == Status.OK
    assert fp32.validation.text.startswith("pass")
    assert fp32.latency_ms and fp32.latency_ms > 0 and fp32.size_mb and fp32.size_mb > 0
    failed = by[("dncnn.int8.onnx", "-")]
    assert (
        failed.validation == Verdict(Status.FAILED, "FAILED (not written)")
        and "not written" in failed.note
        and not failed.triton_model
    )
    assert any("no TensorRT engines" in n for n in report.notes)  # no TensorRT on these machines
    assert fp32.triton_model == "dncnn_fp32" and fp16.triton_model == "dncnn_fp16"
    assert (out / "triton" / "dncnn_fp32" / "config.pbtxt").is_file()
    assert (out / "triton" / "dncnn_fp16" / "1" / "model.onnx").is_file()
    saved = json.loads((out / "deploy.json").read_text())
    assert saved["triton_repository"] == str(out / "triton") and len(saved["rows"]) == len(report.rows)
    text = report.render()
    assert "vs eager" in text and "FAILED (not written)" in text and "wconv-deploy serve" in text


def test_deploy_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--precision .fp8."):
        deploy(load_model(DNCNN), SPEC, tmp_path / "o", precisions=["fp8"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        deploy(load_model(DNCNN), SPEC, tmp_path / "file")


def test_cli_deploy(tmp_path: Path) -> None:
    args = ("--input-shape", "1x1x32x32", "--out", tmp_path / "o", "--bench-duration-s", "0.05", "--no-package", "--json")
    data = json.loads(assert_ok(invoke("deploy", DNCNN, *args)).stdout)
    assert {r["runtime"] for r in data["rows"]} >= {"torch", "ort-cpu"} and data["triton_repository"] is None
    bad = invoke("deploy", tmp_path / "missing.pt", "--input-shape", "1x1x32x32", "--out", tmp_path / "o2")
    assert_one_line_error(bad, 2, "missing.pt")
