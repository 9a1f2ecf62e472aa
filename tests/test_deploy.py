"""`wconv-deploy deploy`: the whole chain on a small zoo model, with real files and runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.contract import DNCNN, assert_ok, assert_one_line_error, invoke, png_size
from wconv_deploy.deploy import Verdict, _check_on, _RowCheck, deploy
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.options import TaskBudget
from wconv_deploy.precision import TOLERANCES, Precision
from wconv_deploy.reports import Status
from wconv_deploy.runtimes.torch import TorchReference
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
    # each packaged entry was served and its answers checked against its golden file
    assert fp32.served == fp16.served == Verdict(Status.OK, "pass (http, grpc)")
    assert (out / "triton" / "dncnn_fp16" / "1" / "model.golden.npz").is_file()
    for artifact in ("dncnn.onnx", "dncnn.fp16.onnx"):  # validated again on OpenVINO, its own verdict
        row = by[(artifact, "openvino")]
        assert row.validation.status == Status.OK and row.validation.text.startswith("pass (max rel")
        assert not row.triton_model  # the Triton entry runs ONNX Runtime: the ort-cpu row decides
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


def test_row_check_runs_on_the_rows_runtime_and_can_fail(dncnn_onnx: Path, tmp_path: Path) -> None:
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:4")
    same = _RowCheck(TorchReference.of(load_model(DNCNN), spec.names), spec, None, None)
    assert _check_on(same, "openvino", Precision.FP32, onnx_path=dncnn_onnx).status == Status.OK
    changed = load_model(DNCNN)
    with torch.no_grad():
        next(changed.model.parameters()).mul_(1.5)  # the artifact no longer computes this model
    other = _RowCheck(TorchReference.of(changed, spec.names), spec, None, None)
    failed = _check_on(other, "openvino", Precision.FP32, onnx_path=dncnn_onnx)
    assert failed.status == Status.FAILED and failed.text.startswith("FAILED (max rel")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    unreadable = _check_on(same, "openvino", Precision.FP32, onnx_path=garbage)
    assert unreadable.status == Status.FAILED and "garbage.onnx" in unreadable.text


def test_deploy_gates_variants_on_the_task_budget(tmp_path: Path) -> None:
    """The zoo denoiser's int8 variant (seeded-normal calibration) loses about 0.2 dB on the
    shipped photo: with 0.1 dB allowed it fails and is not written, fp16 passes and is packaged."""
    spec = InputSpec.parse("input:1x1x256x256", "batch=1:2")
    budget = TaskBudget(max_psnr_drop=0.1)
    out = tmp_path / "out"
    report = deploy(
        load_model("zoo:denoiser"),
        spec,
        out,
        precisions=["fp16", "int8"],
        bench_duration_s=0.02,
        budget=budget,
        serve_check=False,
    )
    by = {(r.artifact, r.runtime): r for r in report.rows}
    int8 = by[("denoiser.int8.onnx", "-")]
    assert int8.validation.status == Status.FAILED and "misses the task budget: PSNR drops" in int8.note
    assert not (out / "denoiser.int8.onnx").exists()
    for runtime in ("ort-cpu", "openvino"):
        assert by[("denoiser.fp16.onnx", runtime)].validation.status == Status.OK
        assert "PSNR" in by[("denoiser.fp16.onnx", runtime)].validation.text
    assert by[("denoiser.fp16.onnx", "ort-cpu")].triton_model == "denoiser_fp16"
    assert sorted(p.name for p in (out / "triton").iterdir() if p.is_dir()) == ["denoiser_fp16", "denoiser_fp32"]
    assert png_size(out / "compare.png") == (1152, 792)  # fp32 PyTorch | fp32 | fp16, error maps below
    assert any("compare.png" in n for n in report.notes)


def test_task_budget() -> None:
    psnr = {"psnr_fp32_torch_db": 30.0, "psnr_variant_db": 29.95}
    assert TaskBudget(max_psnr_drop=0.1).miss(psnr) is None
    assert "drops 0.050 dB" in (TaskBudget(max_psnr_drop=0.01).miss(psnr) or "")
    assert "no PSNR" in (TaskBudget(max_psnr_drop=0.1).miss({"top1_agreement": 1.0}) or "")
    assert TaskBudget(min_top1_agreement=0.9).miss({"top1_agreement": 0.95}) is None
    assert "below" in (TaskBudget(min_top1_agreement=0.99).miss({"top1_agreement": 0.95}) or "")
    assert "no top-1" in (TaskBudget(min_top1_agreement=0.5).miss(psnr) or "")
    assert TaskBudget().miss({}) is None
    nan = {"psnr_fp32_torch_db": 30.0, "psnr_variant_db": float("nan")}  # a NaN metric never passes
    assert TaskBudget(max_psnr_drop=0.1).miss(nan) is not None
    with pytest.raises(InputError, match="--max-psnr-drop"):
        TaskBudget(max_psnr_drop=-1)
    with pytest.raises(InputError, match="--min-top1-agreement"):
        TaskBudget(min_top1_agreement=1.5)


def test_cli_convert_fails_a_variant_outside_the_budget(tmp_path: Path) -> None:
    fp32 = tmp_path / "den.onnx"
    export_onnx(load_model("zoo:denoiser"), fp32, InputSpec.parse("input:1x1x256x256"), exporter="torchscript")
    # with --keep-fp32 the budget only gates (without it convert searches for layers to keep)
    bad = invoke("convert", fp32, "--precision", "int8", "--keep-fp32", "body.20", "--max-psnr-drop", "0.1", "--json")
    assert bad.exit_code == 1 and not (tmp_path / "den.int8.onnx").exists()
    assert json.loads(bad.stdout)["task"]["psnr_variant_db"] > 0
    assert "misses the task budget" in bad.stderr
    good = invoke("convert", fp32, "--precision", "fp16", "--max-psnr-drop", "0.1")
    assert_ok(good)
    assert (tmp_path / "den.fp16.onnx").is_file()
    assert png_size(tmp_path / "den.fp16.compare.png") == (768, 792)  # fp32 PyTorch | fp16, error map below
    assert_one_line_error(invoke("convert", fp32, "--precision", "fp16", "--max-psnr-drop", "-2"), 2, "--max-psnr-drop")
