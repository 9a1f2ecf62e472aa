"""fp16 and int8 variants (`wconv_deploy.exporters.precision`): real conversions of real exports,
validated against fp32 PyTorch, with the task metric and the per-layer report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.contract import DENOISER_SPEC, assert_ok, assert_one_line_error, invoke
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.precision import (
    JUMP_FLOOR,
    LayerError,
    _int8_weight_error,
    convert_onnx,
    first_jump,
    render_layers,
)
from wconv_deploy.loading import load_model
from wconv_deploy.nn import WeightedConv2d
from wconv_deploy.runtimes.onnxruntime import OnnxRuntime
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import load_inputs
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, add_gaussian_noise, demo_image


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        WeightedConv2d(3, 8, 3, [0.3], padding=1),
        nn.ReLU(),
        WeightedConv2d(8, 8, 5, [0.1, 0.6], padding=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("precision")
    export_onnx(load_model("zoo:denoiser"), d / "den.onnx", InputSpec.parse(*DENOISER_SPEC))
    torch.save(_classifier(), d / "cls.pt")
    export_onnx(load_model(d / "cls.pt", trust_pickle=True), d / "cls.onnx", InputSpec.parse("input:1x3x16x16", "batch=1:4"))
    # calibration: the demo photo under four other noise draws than the one PSNR is measured on
    clean = demo_image()
    noisy = [add_gaussian_noise(clean, DENOISER_SIGMA, seed)[None].numpy() for seed in (11, 12, 13, 14)]
    np.savez(d / "calib.npz", input=np.stack(noisy).astype(np.float32))
    return d


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_fp16_keeps_float32_io_and_the_denoisers_psnr(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.fp16.onnx"
    report = convert_onnx(work / "den.onnx", out, "fp16")
    assert report.validation is not None and report.validation.passed
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert {t.data_type for t in model.graph.initializer if t.name in conv_weights} == {onnx.TensorProto.FLOAT16}
    assert _props(out)["wconv_deploy.precision"] == "fp16"
    assert OnnxRuntime(out).describe().precision == "fp16"  # bench judges it by fp16's error limit
    assert abs(report.task["psnr_variant_db"] - report.task["psnr_fp32_torch_db"]) < 0.01
    saved = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert saved["validation"]["passed"] and saved["precision"] == "fp16"


def test_int8_calibrated_on_photos_is_qdq_per_channel_within_a_tenth_of_a_db(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.int8.onnx"
    report = convert_onnx(work / "den.onnx", out, "int8", calibration=work / "calib.npz", per_layer=True)
    model = onnx.load(out)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 8 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]  # the weight comes through a per-channel DequantizeLinear
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].dtype == np.int8 and inits[dq.input[1]].shape == (inits[dq.input[0]].shape[0],)
    assert report.validation is not None and report.validation.passed
    assert [c.label for c in report.validation.cases] == [f"calib.npz[{i}]" for i in range(4)]  # real data, not seeded normals
    loss = report.task["psnr_fp32_torch_db"] - report.task["psnr_variant_db"]
    assert -0.05 < loss < 0.1, report.task
    assert len(report.layers) == 8 and all(ly.module.startswith("body.") for ly in report.layers)
    assert all(0 < ly.rel_error < 0.5 and ly.max_abs > 0 for ly in report.layers)
    assert "per-layer error vs the fp32 graph" in report.render()


def test_keep_fp32_takes_pytorch_layer_names_and_leaves_that_conv_unquantised(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.int8.onnx"
    report = convert_onnx(work / "den.onnx", out, "int8", calibration=work / "calib.npz", keep_fp32=["body.0"])
    model = onnx.load(out)
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    assert report.keep_fp32 == [first.name] and json.loads(_props(out)["wconv_deploy.keep_fp32"]) == [first.name]
    inits = {t.name for t in model.graph.initializer}
    assert first.input[1] in inits  # float weights fed straight in, no DequantizeLinear
    others = [n for n in model.graph.node if n.op_type == "Conv" and n is not first]
    assert all(n.input[1] not in inits for n in others)


def test_keep_fp32_unknown_name_is_input_error_and_nothing_written(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    with pytest.raises(InputError, match="no node or layer named nope"):
        convert_onnx(work / "den.onnx", out, "fp16", keep_fp32=["nope"])
    assert not out.exists()


def test_failed_validation_writes_no_variant_but_the_report(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.int8.onnx"
    with pytest.raises(MismatchError, match="not written") as info:
        convert_onnx(work / "den.onnx", out, "int8", atol=1e-9, rtol=1e-9, per_layer=True)
    assert not out.exists()
    text = info.value.report.render()
    assert "per-layer error" in text and "FAILED" in text
    saved = json.loads(out.with_name(out.name + ".report.json").read_text())
    assert saved["validation"]["passed"] is False and len(saved["layers"]) == 8
    assert saved["calibration"].startswith("seeded random inputs")


def test_classifier_variants_report_top1_agreement(work: Path, tmp_path: Path) -> None:
    ref = load_model(work / "cls.pt", trust_pickle=True)
    fp16 = convert_onnx(work / "cls.onnx", tmp_path / "c16.onnx", "fp16", reference=ref)
    assert fp16.task == {"top1_agreement": 1.0}
    int8 = convert_onnx(work / "cls.onnx", tmp_path / "c8.onnx", "int8", reference=ref, per_layer=True)
    assert 0.0 <= int8.task["top1_agreement"] <= 1.0
    assert [ly.module for ly in int8.layers] == ["0", "2"]


def test_without_a_reference_a_non_zoo_export_asks_for_one(work: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--reference"):
        convert_onnx(work / "cls.onnx", tmp_path / "c16.onnx", "fp16")
    assert not (tmp_path / "c16.onnx").exists()


def test_an_npz_larger_than_the_largest_batch_becomes_one_input_per_sample(work: Path) -> None:
    spec = InputSpec.parse("input:1x1x256x256", "batch=1:2")
    cases = load_inputs(work / "calib.npz", spec)
    assert len(cases) == 4 and all(c[1]["input"].shape == (1, 1, 256, 256) for c in cases)
    assert len(load_inputs(work / "calib.npz", InputSpec.parse("input:1x1x256x256", "batch=1:8"))) == 1


def test_int8_weight_error_is_larger_on_border_taps_shrunk_by_the_density_mask() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g).numpy()
    mask = np.full((3, 3), 0.05, dtype=np.float32)
    mask[1, 1] = 1.0
    plain_all, plain_border = _int8_weight_error(w)
    dense_all, dense_border = _int8_weight_error(w * mask)
    assert plain_border is not None and dense_border is not None
    assert dense_border > 5 * plain_border  # the scale fits the centre; borders keep few levels
    assert _int8_weight_error(w[:, :, :1, :1])[1] is None  # 1x1: no border
    assert 0 < plain_all < 1 / 127


def _layers(*errors: float) -> list[LayerError]:
    return [LayerError(f"n{i}", f"m{i}", e, e, 0.0, None) for i, e in enumerate(errors)]


def test_first_jump_names_the_first_layer_that_doubles_the_worst_error_before_it() -> None:
    assert first_jump(_layers(1e-4, 2e-4, 1.5e-2, 4e-2)) is not None
    assert first_jump(_layers(1e-4, 2e-4, 1.5e-2, 4e-2)).node == "n2"  # type: ignore[union-attr]
    assert first_jump(_layers(2e-3, 3e-3, 4e-3)).node == "n0"  # type: ignore[union-attr]
    assert first_jump(_layers(JUMP_FLOOR / 2, JUMP_FLOOR / 1.5)) is None
    text = render_layers(_layers(1e-4, 2e-4, 1.5e-2))
    assert "error jumps first at n2" in text and "--keep-fp32 n2" in text


def test_cli_convert(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.fp16.onnx"
    ok = assert_ok(invoke("convert", work / "den.onnx", "--precision", "fp16", "-o", out, "--json"))
    assert json.loads(ok.stdout)["validation"]["passed"] and out.is_file()
    assert_one_line_error(invoke("convert", tmp_path / "missing.onnx", "--precision", "fp16"), 2, "does not exist")
    bad = invoke("convert", work / "den.onnx", "--precision", "int8", "--keep-fp32", "nope", "-o", tmp_path / "k.onnx")
    assert_one_line_error(bad, 2, "--keep-fp32", "nope")
    assert not (tmp_path / "k.onnx").exists()
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    calib = invoke("convert", work / "den.onnx", "--precision", "int8", "--calibration", empty, "-o", tmp_path / "c.onnx")
    assert_one_line_error(calib, 2, "empty.npz")
    assert_one_line_error(invoke("convert", work / "den.onnx", "--precision", "int4"), 2, "int4")


def test_resnet18_variants_validate_and_run_in_onnxruntime_and_openvino(tmp_path: Path) -> None:
    """The issue's CPU bar: fp16 and int8 ResNet-18 made, validated, and timed in both CPU runtimes."""
    from wconv_deploy.bench import run_bench

    fp32 = tmp_path / "r18.onnx"
    export_onnx(load_model("zoo:resnet18_cifar"), fp32, InputSpec.parse("input:1x3x32x32", "batch=1:4"))
    ref = load_model("zoo:resnet18_cifar")
    for precision in ("fp16", "int8"):
        out = tmp_path / f"r18.{precision}.onnx"
        report = convert_onnx(fp32, out, precision)  # the zoo reference is found through the metadata
        assert report.validation is not None and report.validation.passed
        assert report.task["top1_agreement"] >= 0.9
        bench = run_bench(
            runtimes=["ort-cpu", "openvino"],
            spec=InputSpec.parse("input:1x3x32x32"),
            model=ref.model,
            onnx_path=out,
            iterations=3,
            min_duration_s=0.0,
            warmup_ms=0,
        )
        for row in bench.rows:
            assert row.stats is not None and row.stats.median_ms > 0, row.unavailable
            assert precision in row.precision and not row.wrong, (row.runtime, row.max_rel_error)
