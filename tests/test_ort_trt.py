"""ONNX Runtime's TensorRT provider done right: options built from the input spec (an explicit
profile, an engine cache, fp16), and the same profile in Triton's config.pbtxt as the onnxruntime
backend's TensorRT accelerator, with a warm-up request from the spec. The provider itself needs
onnxruntime-gpu and TensorRT (its test skips here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.contract import assert_ok, assert_one_line_error, invoke
from wconv_deploy.artifacts import OnnxInfo
from wconv_deploy.runtimes import registry
from wconv_deploy.runtimes.onnxruntime import (
    OnnxRuntime,
    default_trt_cache_dir,
    session_providers,
    trt_profile_shapes,
    trt_provider_options,
)
from wconv_deploy.ship.config import ModelIO, config_text, parse_config
from wconv_deploy.spec import InputSpec

TWO = InputSpec.parse("x:1x3x32x32,mask:1x1x32x32", "batch=1:8,height=16:64,width=16:64")


def test_profile_shapes_span_the_spec() -> None:
    assert trt_profile_shapes(TWO) == {
        "min": "x:1x3x16x16,mask:1x1x16x16",
        "opt": "x:1x3x32x32,mask:1x1x32x32",
        "max": "x:8x3x64x64,mask:8x1x64x64",
    }


def test_provider_options_carry_profile_cache_and_fp16(tmp_path: Path) -> None:
    options = trt_provider_options(TWO, tmp_path, fp16=True)
    assert options == {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": "x:1x3x16x16,mask:1x1x16x16",
        "trt_profile_opt_shapes": "x:1x3x32x32,mask:1x1x32x32",
        "trt_profile_max_shapes": "x:8x3x64x64,mask:8x1x64x64",
    }
    plain = trt_provider_options(None, tmp_path)
    assert plain["trt_fp16_enable"] == "False" and not any(k.startswith("trt_profile") for k in plain)


def test_only_the_tensorrt_provider_gets_options(tmp_path: Path) -> None:
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = session_providers(wanted, TWO, tmp_path, False)
    assert providers[0] == ("TensorrtExecutionProvider", trt_provider_options(TWO, tmp_path, False))
    assert providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers(["CPUExecutionProvider"], TWO, tmp_path, False) == ["CPUExecutionProvider"]


def test_default_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_trt_cache_dir() == tmp_path / "wconv-deploy" / "ort-trt"


def test_fp16_flavour_is_registered() -> None:
    entry = registry.get("ort-trt-fp16")
    assert (entry.kind, entry.device, entry.precision.value, entry.extra) == ("onnx", "cuda", "fp16", "gpu")


def test_cpu_session_is_unchanged_and_makes_no_cache(dncnn_onnx: Path, tmp_path: Path) -> None:
    rt = OnnxRuntime(dncnn_onnx, "ort-cpu", trt_cache_dir=tmp_path / "cache")
    assert rt.providers == ["CPUExecutionProvider"] and not (tmp_path / "cache").exists()
    assert rt.run({"input": np.zeros((2, 1, 16, 24), np.float32)})[0].shape == (2, 1, 16, 24)


@pytest.mark.gpu
@pytest.mark.skipif(registry.unavailable_reason("ort-trt") is not None, reason=str(registry.unavailable_reason("ort-trt")))
def test_trt_session_gets_the_profile(dncnn_onnx: Path, tmp_path: Path) -> None:  # pragma: no cover - needs ORT's TensorRT EP
    rt = OnnxRuntime(dncnn_onnx, "ort-trt", trt_cache_dir=tmp_path)
    options = rt.session.get_provider_options()["TensorrtExecutionProvider"]
    assert options["trt_profile_max_shapes"] == "input:8x1x64x64" and options["trt_engine_cache_path"] == str(tmp_path)
    for shape in [(1, 1, 32, 32), (8, 1, 64, 64), (3, 1, 16, 40)]:
        assert rt.run({"input": np.zeros(shape, np.float32)})[0].shape == shape


# --------------------------------------------------------------------------- config.pbtxt


def test_config_carries_the_accelerator_and_a_warmup(dncnn_onnx: Path) -> None:
    io = ModelIO.of_onnx(OnnxInfo.read(dncnn_onnx))
    text = config_text("den", "onnxruntime_onnx", io, 8, "model.onnx", kind="gpu", accelerator="tensorrt-fp16", warmup=True)
    config = parse_config(text)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "trt_profile_min_shapes": "input:1x1x16x16",
        "trt_profile_opt_shapes": "input:1x1x32x32",
        "trt_profile_max_shapes": "input:8x1x64x64",
    }
    [warmup] = config.model_warmup
    assert (warmup.name, warmup.batch_size, list(warmup.inputs)) == ("opt_shape", 1, ["input"])
    sample = warmup.inputs["input"]
    assert (list(sample.dims), sample.random_data, sample.data_type) == ([1, 32, 32], True, 11)  # TYPE_FP32; no batch axis
    plain = parse_config(config_text("den", "onnxruntime_onnx", io, 8, "model.onnx"))
    assert not plain.HasField("optimization") and len(plain.model_warmup) == 0


def test_warmup_of_a_model_that_does_not_batch_has_full_dims(dncnn_static_onnx: Path) -> None:
    io = ModelIO.of_onnx(OnnxInfo.read(dncnn_static_onnx))
    [warmup] = parse_config(config_text("s", "onnxruntime_onnx", io, 0, "model.onnx", warmup=True)).model_warmup
    assert warmup.batch_size == 1 and list(warmup.inputs["input"].dims) == [1, 1, 16, 16]


def test_package_writes_accelerator_and_warmup(dncnn_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ("package", dncnn_onnx, "--repo", repo, "--name", "den", "--kind", "gpu", "--accelerator", "tensorrt", "--warmup")
    assert_ok(invoke(*args))
    config = parse_config((repo / "den" / "config.pbtxt").read_text())
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP32"
    assert len(config.model_warmup) == 1
    assert_ok(invoke("package", "--check", repo))


def test_package_refuses_the_accelerator_off_the_gpu(dncnn_onnx: Path, tmp_path: Path) -> None:
    result = invoke("package", dncnn_onnx, "--repo", tmp_path / "repo", "--name", "den", "--accelerator", "tensorrt")
    assert_one_line_error(result, 2, "--accelerator tensorrt", "--kind gpu")
    assert not (tmp_path / "repo").exists()
