"""TensorRT engine builds: optimisation profiles from an exported ONNX's input spec, the precision
plan for TensorRT 10 and 11, the manifest and the compatibility check, the install hint without
TensorRT, and (with TensorRT and a GPU) real engines that match PyTorch. The Polygraphy loader
chain on a TensorRT double is in test_trt_polygraphy.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.contract import fake_local_gpu
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, graph_precision, manifest_path, qdq_count
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.tensorrt import build_engine
from wconv_deploy.exporters.trt_plan import (
    BuildConfig,
    BuildPlan,
    check_engine_compatible,
    manifest_for,
    plan_build,
    profiles_from_spec,
    profiles_to_json,
    strongly_typed_network,
    trt_major,
)
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes import registry, unavailable_reason
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model

TRT_REASON = unavailable_reason("trt")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dncnn", depth=3, width=8).eval()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory, model: torch.nn.Module) -> Path:
    """A small denoiser exported with dynamic batch, height and width (channels static at 1)."""
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    spec = InputSpec.parse("1x1x16x16", "batch=1:8,height=8:32,width=8:32")
    export_onnx(model, path, spec, exporter="torchscript", validate_output=False)
    return path


def spec_from_onnx(path: Path) -> InputSpec:
    return OnnxInfo.read(path).spec


def test_planning_imports_neither_tensorrt_nor_torch() -> None:
    """The planning module (and the trt runtime, imported with every backend at start-up) stay
    importable where TensorRT or torch is missing, and cheap for wconv-deploy --help."""
    code = (
        "import sys, wconv_deploy.exporters.trt_plan, wconv_deploy.runtimes.tensorrt; "
        "print(sorted(m for m in ('tensorrt', 'torch', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_trt_runtimes_are_registered() -> None:
    trt, graph = registry.get("trt"), registry.get("trt-graph")
    assert (trt.kind, trt.device, trt.extra, trt.serves, trt.in_default_bench) == ("engine", "cuda", "gpu", True, True)
    assert (graph.kind, graph.serves, graph.in_default_bench) == ("engine", True, False)


# --------------------------------------------------------------------------- profiles


def test_profile_comes_from_the_exported_spec(onnx_file: Path) -> None:
    spec = spec_from_onnx(onnx_file)
    assert profiles_from_spec(spec) == [{"input": ((1, 1, 8, 8), (1, 1, 16, 16), (8, 1, 32, 32))}]
    static = InputSpec.parse("x:2x3x4,y:2x5")
    assert profiles_from_spec(static) == [{"x": ((2, 3, 4),) * 3, "y": ((2, 5),) * 3}]


def test_profile_overrides_are_applied(onnx_file: Path) -> None:
    spec = spec_from_onnx(onnx_file)
    [p] = profiles_from_spec(spec, min_shape="1x1x8x8", opt_shape="4x1x64x64", max_shape="input:16x1x128x128")
    assert p == {"input": ((1, 1, 8, 8), (4, 1, 64, 64), (16, 1, 128, 128))}  # beyond the export's range: allowed
    [p] = profiles_from_spec(spec, opt_shape="input:2x1x24x24")
    assert p == {"input": ((1, 1, 8, 8), (2, 1, 24, 24), (8, 1, 32, 32))}
    two = InputSpec.parse("a:1x3x8x8,b:1x1x8x8", "batch")
    [p] = profiles_from_spec(two, max_shape="4x3x8x8,4x1x8x8")
    assert p["a"][2] == (4, 3, 8, 8) and p["b"][2] == (4, 1, 8, 8)
    [p] = profiles_from_spec(two, max_shape="b:2x1x8x8")
    assert p["a"][2] == (8, 3, 8, 8) and p["b"][2] == (2, 1, 8, 8)


def test_repeated_overrides_make_several_profiles(onnx_file: Path) -> None:
    spec = spec_from_onnx(onnx_file)
    profiles = profiles_from_spec(spec, min_shape=["1x1x8x8", "1x1x16x16"], max_shape=("4x1x16x16", "8x1x64x64"))
    assert profiles == [
        {"input": ((1, 1, 8, 8), (1, 1, 16, 16), (4, 1, 16, 16))},
        {"input": ((1, 1, 16, 16), (1, 1, 16, 16), (8, 1, 64, 64))},
    ]
    assert profiles_from_spec(spec, min_shape=[], max_shape=()) == profiles_from_spec(spec)  # click's empty tuples
    with pytest.raises(InputError, match="^profile 1: input 'input' axis 0 \\(batch\\): min 2 is larger than opt 1$"):
        profiles_from_spec(
            spec, min_shape=["1x1x8x8", "2x1x8x8"], max_shape=["4x1x16x16", "8x1x64x64"], opt_shape=["1x1x16x16"] * 2
        )
    with pytest.raises(InputError, match="^profile 0: --max-shape: input 'input' has rank 4"):
        profiles_from_spec(spec, max_shape=["8x1x32", "8x1x32x32"])
    with pytest.raises(InputError, match="--opt-shape 2 times, --max-shape 3 times: give each of them once per"):
        profiles_from_spec(spec, opt_shape=["1x1x16x16"] * 2, max_shape=["8x1x32x32"] * 3)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"min_shape": "1x16x16"}, ["--min-shape", "'input'", "rank 4", "not 3"]),
        ({"opt_shape": "1x3x16x16"}, ["--opt-shape", "'input'", "axis 1 (channels)", "static", "1, not 3"]),
        ({"min_shape": "4x1x16x16", "opt_shape": "2x1x16x16"}, ["'input'", "axis 0 (batch)", "min 4", "opt 2"]),
        ({"max_shape": "1x1x12x16"}, ["'input'", "axis 2 (height)", "opt 16", "max 12"]),
        ({"max_shape": "x:8x1x32x32"}, ["--max-shape", "no input named x"]),
        ({"max_shape": "8x1x32"}, ["--max-shape", "rank 4", "not 3"]),
        ({"min_shape": "1x1x0x8"}, ["--min-shape", "zero-sized"]),
        ({"min_shape": "big"}, ["--min-shape", "not a shape"]),
    ],
)
def test_profile_overrides_are_checked(onnx_file: Path, overrides: dict[str, str], needles: list[str]) -> None:
    with pytest.raises(InputError) as e:
        profiles_from_spec(spec_from_onnx(onnx_file), **overrides)
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_overrides_name_every_input_or_none() -> None:
    two = InputSpec.parse("a:1x3x8x8,b:1x1x8x8", "batch")
    with pytest.raises(InputError, match="name every input"):
        profiles_from_spec(two, max_shape="4x3x8x8,b:4x1x8x8")
    with pytest.raises(InputError, match="1 shape\\(s\\) for 2 input"):
        profiles_from_spec(two, max_shape="4x3x8x8")


# --------------------------------------------------------------------------- precision plan


@pytest.mark.parametrize(
    ("version", "precision", "onnx_prec", "qdq", "strongly", "plan"),
    [
        ("10.3.0", "fp32", "fp32", False, False, BuildPlan(False, (), ("TF32",))),
        ("10.3.0.26", "tf32", "fp32", False, False, BuildPlan(False, ("TF32",), ())),
        ("10.3.0", "fp16", "fp32", False, False, BuildPlan(False, ("FP16",), ())),
        ("10.3.0", "fp16", "fp16", False, False, BuildPlan(False, ("FP16",), ())),
        ("10.3.0", "bf16", "fp32", False, False, BuildPlan(False, ("BF16",), ())),
        ("10.7.0", "int8", "int8", True, False, BuildPlan(False, ("INT8",), ())),
        ("10.7.0", "fp16", "fp16", False, True, BuildPlan(True, (), ())),
        ("10.7.0", "fp32", "fp32", False, True, BuildPlan(True, (), ("TF32",))),
        ("11.0.0", "fp32", "fp32", False, False, BuildPlan(True, (), ("TF32",))),
        ("11.0.0", "tf32", "fp32", False, False, BuildPlan(True, ("TF32",), ())),
        ("11.0.0", "fp16", "fp16", False, False, BuildPlan(True, (), ())),
        ("11.2.1", "bf16", "bf16", False, False, BuildPlan(True, (), ())),
        ("11.0.0", "int8", "int8", True, False, BuildPlan(True, (), ())),
    ],
)
def test_plan_build(version: str, precision: str, onnx_prec: str, qdq: bool, strongly: bool, plan: BuildPlan) -> None:
    assert plan_build(version, precision, Precision(onnx_prec), qdq, strongly_typed=strongly) == plan


TRT11 = "TensorRT 11 builds strongly typed networks"


@pytest.mark.parametrize(
    ("version", "precision", "onnx_prec", "qdq", "strongly", "needles"),
    [
        ("11.0.0", "fp16", "fp32", False, False, [TRT11, "convert first: wconv-deploy convert m.onnx --precision fp16"]),
        ("11.1.0", "int8", "fp32", False, False, [TRT11, "wconv-deploy convert m.onnx --precision int8"]),
        ("11.0.0", "bf16", "fp32", False, False, ["strongly typed", "bf16", "makes fp16 and int8"]),
        ("10.7.0", "fp16", "fp32", False, True, ["a strongly typed build", "wconv-deploy convert m.onnx --precision fp16"]),
        ("10.3.0", "int8", "fp32", False, False, ["Q/DQ", "no calibrator", "wconv-deploy convert m.onnx --precision int8"]),
        ("10.3.0", "fp32", "fp16", False, False, ["m.onnx is an fp16 ONNX", "--precision fp16"]),
        ("11.0.0", "fp16", "int8", True, False, ["m.onnx is an int8 ONNX", "--precision int8"]),
        ("10.3.0", "fp8", "fp32", False, False, ["--precision 'fp8'", "fp32, tf32, fp16, bf16, int8"]),
        ("unknown", "fp32", "fp32", False, False, ["not a version number"]),
    ],
)  # fmt: skip
def test_plan_build_refuses(version: str, precision: str, onnx_prec: str, qdq: bool, strongly: bool, needles: list[str]) -> None:
    with pytest.raises(InputError) as e:
        plan_build(version, precision, Precision(onnx_prec), qdq, strongly_typed=strongly, onnx_name="m.onnx")
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def _tiny_onnx(dtype: int, qdq: bool = False, precision: str | None = None) -> onnx.ModelProto:
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}[dtype]
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np_dtype), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"])]
    inits = [w]
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("Conv", ["xd", "w"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", dtype, None)],
        inits,
    )
    model = helper.make_model(graph)
    if precision:
        helper.set_model_props(model, {"wconv_deploy.precision": precision})
    return model


def test_onnx_precision_is_read_from_metadata_or_graph(onnx_file: Path) -> None:
    """What plan_build is given: the graph's precision and whether it holds Q/DQ nodes."""
    exported = onnx.load(onnx_file)
    assert (graph_precision(exported), qdq_count(exported)) == (Precision.FP32, 0)
    assert graph_precision(_tiny_onnx(TensorProto.FLOAT16)) == Precision.FP16
    qdq = _tiny_onnx(TensorProto.FLOAT, qdq=True)
    assert (graph_precision(qdq), qdq_count(qdq)) == (Precision.INT8, 2)
    assert graph_precision(_tiny_onnx(TensorProto.FLOAT, precision="fp16")) == Precision.FP16  # our converter's stamp wins


def test_spec_of_a_foreign_onnx_is_its_static_shapes(onnx_file: Path) -> None:
    """The spec build_engine profiles: the stored one, else a foreign file's static shapes."""
    assert OnnxInfo.read(onnx_file).spec_or_static() == spec_from_onnx(onnx_file)
    assert str(OnnxInfo.of(_tiny_onnx(TensorProto.FLOAT), "t.onnx").spec_or_static()) == "x:1x1x8x8:float32"
    dynamic = _tiny_onnx(TensorProto.FLOAT)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    with pytest.raises(InputError, match="t.onnx has dynamic input 'x' and no wconv-deploy input spec"):
        OnnxInfo.of(dynamic, "t.onnx").spec_or_static()


# --------------------------------------------------------------------------- build options


def test_strongly_typed_network_only_where_the_flag_exists() -> None:
    from types import SimpleNamespace as NS

    with_flag, without = NS(NetworkDefinitionCreationFlag=NS(STRONGLY_TYPED=1)), NS(NetworkDefinitionCreationFlag=NS())
    assert strongly_typed_network(with_flag, BuildPlan(True)) is True
    assert strongly_typed_network(with_flag, BuildPlan(False, ("FP16",))) is False
    assert strongly_typed_network(without, BuildPlan(True)) is False  # TensorRT 11: strongly typed always


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"precision": "fp64"}, "--precision 'fp64'"),
        ({"workspace_gb": 0.0}, "--workspace-gb 0.0: must be positive"),
        ({"hardware_compatibility": "turing+"}, "choose ampere+ or same-compute-capability"),
    ],
)
def test_build_config_check(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InputError) as e:
        BuildConfig(**kwargs).check()
    assert needle in str(e.value)


# --------------------------------------------------------------------------- manifest


def _manifest(onnx_file: Path, **changes: Any) -> BuildManifest:
    build = BuildConfig("fp16", profiles_from_spec(spec_from_onnx(onnx_file)), workspace_gb=2.0, timing_cache="t.cache")
    m = manifest_for(
        onnx_file, build, BuildPlan(False, ("FP16",)), tensorrt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability="9.0"
    )
    for k, v in changes.items():
        setattr(m, k, v)
    return m


def test_manifest_round_trip(onnx_file: Path, tmp_path: Path) -> None:
    m = _manifest(onnx_file)
    assert m.onnx_sha256 == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert m.profiles == [{"input": {"min": [1, 1, 8, 8], "opt": [1, 1, 16, 16], "max": [8, 1, 32, 32]}}]
    assert (m.precision, m.strongly_typed, m.builder_flags, m.workspace_gb, m.timing_cache) == (
        "fp16",
        False,
        ["FP16"],
        2.0,
        "t.cache",
    )
    assert datetime.fromisoformat(m.created).tzinfo is not None
    path = manifest_path(tmp_path / "m.plan")
    assert path.name == "m.plan.json"
    m.write(path)
    assert json.loads(path.read_text())["gpu_name"] == "NVIDIA H100"
    assert BuildManifest.read(path) == m
    assert BuildManifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    text = m.render()
    assert "TensorRT 10.3.0 on NVIDIA H100 (sm 9.0)" in text and "1x1x8x8 / 1x1x16x16 / 8x1x32x32" in text


def test_manifest_records_the_graph_io_and_the_export_spec(onnx_file: Path) -> None:
    m = _manifest(onnx_file)
    assert m.io == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
        "outputs": [{"name": m.io["outputs"][0]["name"], "dtype": "float32", "shape": [-1, 1, -1, -1]}],
    }  # the format Triton packaging reads
    spec = spec_from_onnx(onnx_file)
    assert m.input_spec == spec.to_dict()
    assert m.spec("m.plan") == spec  # the profile spans the export's spec here
    wider = manifest_for(
        onnx_file,
        BuildConfig("fp32", profiles_from_spec(spec, max_shape="16x1x64x64")),
        BuildPlan(False),
        tensorrt_version="10.3.0",
        gpu_name="G",
        compute_capability="9.0",
    )
    assert str(wider.spec("m.plan")) == "input:batch[1..16]x1xheight[8..64]xwidth[8..64]:float32"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "is not a readable build manifest: not valid JSON"),
        ("[1, 2]", "not a build manifest: not a JSON object"),
        ('{"tensorrt_version": "10.3.0"}', "not a build manifest: it lacks gpu_name"),
        (None, "no such build manifest"),
    ],
)
def test_bad_manifest_is_a_one_line_input_error(onnx_file: Path, tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "m.plan.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as e:
        BuildManifest.read(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
    bad = {**_manifest(onnx_file).to_dict(), "precision": "fp64"}
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match="unknown precision 'fp64'"):
        BuildManifest.read(path)


# --------------------------------------------------------------------------- compatibility


@pytest.mark.parametrize(
    ("changes", "trt", "cc"),
    [
        ({}, "10.3.0", "9.0"),
        ({}, "10.3.0.26", "9.0"),  # as far as both strings go
        ({"version_compatible": True}, "10.7.0", "9.0"),
        ({"version_compatible": True}, "10.3.0", "9.0"),
        ({"hardware_compatibility": "ampere+"}, "10.3.0", "8.6"),
        ({"hardware_compatibility": "ampere+"}, "10.3.0", "12.0"),
        ({"hardware_compatibility": "same-compute-capability"}, "10.3.0", "9.0"),
    ],
)
def test_compatible_engines_pass(onnx_file: Path, changes: dict[str, Any], trt: str, cc: str) -> None:
    check_engine_compatible(_manifest(onnx_file, **changes), trt, "NVIDIA A10", cc)


@pytest.mark.parametrize(
    ("changes", "trt", "cc", "needle"),
    [
        ({}, "10.7.0", "9.0", "runs only under the TensorRT version that built it"),
        ({"tensorrt_version": "10.3.0.26"}, "10.3.0.30", "9.0", "runs only under the TensorRT version that built it"),
        ({}, "10.3.0", "8.6", "runs only on GPUs of the compute capability it was built for"),
        ({"hardware_compatibility": "same-compute-capability"}, "10.3.0", "8.9", "compute capability it was built for"),
        ({"version_compatible": True}, "10.2.0", "9.0", "from 10.3.0 on"),
        ({"version_compatible": True}, "11.0.0", "9.0", "TensorRT 10.x"),
        ({"hardware_compatibility": "ampere+"}, "10.3.0", "7.5", "needs a GPU of sm 8.0 or later"),
    ],
)
def test_incompatible_engines_are_refused(onnx_file: Path, changes: dict[str, Any], trt: str, cc: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        check_engine_compatible(_manifest(onnx_file, **changes), trt, "NVIDIA A10", cc, engine="model.plan")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert msg.startswith(
        f"model.plan was built with TensorRT {changes.get('tensorrt_version', '10.3.0')} for NVIDIA H100 (sm 9.0); "
    )
    assert f"this machine has TensorRT {trt} and NVIDIA A10 (sm {cc})" in msg
    assert f"rebuild it here with wconv-deploy build {onnx_file} --precision fp16" in msg and msg.endswith("-o model.plan")


def test_rebuild_command_names_profiles_that_are_not_the_exports(onnx_file: Path) -> None:
    from wconv_deploy.exporters.trt_plan import rebuild_command

    assert rebuild_command(_manifest(onnx_file), "m.plan") == f"wconv-deploy build {onnx_file} --precision fp16 -o m.plan"
    spec = spec_from_onnx(onnx_file)
    two = _manifest(onnx_file, profiles=profiles_to_json(profiles_from_spec(spec, max_shape=["2x1x16x16", "8x1x64x64"])))
    assert rebuild_command(two, "m.plan") == (
        f"wconv-deploy build {onnx_file} --precision fp16 "
        "--min-shape input:1x1x8x8 --opt-shape input:1x1x16x16 --max-shape input:2x1x16x16 "
        "--min-shape input:1x1x8x8 --opt-shape input:1x1x16x16 --max-shape input:8x1x64x64 -o m.plan"
    )  # what the CLI takes back: the same two profiles
    args = rebuild_command(two).split()
    again = profiles_from_spec(
        spec, *([args[i + 1] for i, a in enumerate(args) if a == f"--{w}-shape"] for w in ("min", "opt", "max"))
    )
    assert profiles_to_json(again) == two.profiles


def test_runtime_checks_the_manifest_before_loading(onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's hook, with this machine's GPU and TensorRT faked (no TensorRT here)."""
    from wconv_deploy.runtimes.tensorrt import _check_manifest, _not_deserialised

    fake_local_gpu(monkeypatch, "NVIDIA A10", (8, 6))
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    here = SimpleNamespace(__version__="10.3.0")
    assert _check_manifest(here, engine) is None
    assert "no manifest model.plan.json" in _not_deserialised(here, engine, None)
    _manifest(onnx_file).write(manifest_path(engine))
    with pytest.raises(InputError, match=r"^model.plan was built with TensorRT 10.3.0 for NVIDIA H100 \(sm 9.0\); this machine"):
        _check_manifest(here, engine)
    _manifest(onnx_file, compute_capability="8.6").write(manifest_path(engine))
    m = _check_manifest(here, engine)
    assert m is not None and m.precision == "fp16"
    assert "built with TensorRT 10.3.0 for NVIDIA H100 (sm 8.6), fp16" in _not_deserialised(here, engine, m)
    manifest_path(engine).write_text("{oops")
    with pytest.raises(InputError, match="not a readable build manifest"):
        _check_manifest(here, engine)


# --------------------------------------------------------------------------- build_engine without TensorRT


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are present")
def test_build_without_tensorrt_says_how_to_install(onnx_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.plan"
    with pytest.raises(InputError) as e:
        build_engine(onnx_file, out, "fp16", timing_cache=tmp_path / "t.cache")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("building an engine needs TensorRT: tensorrt is ")
    assert "pip install tensorrt-cu12 (it pulls TensorRT's libraries from NVIDIA's package index, pypi.nvidia.com)" in msg
    assert sorted(os.listdir(tmp_path)) == []  # no engine, manifest, cache or temporary file


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"precision": "fp64"}, "--precision 'fp64'"),
        ({"hardware_compatibility": "volta+"}, "--hardware-compatibility 'volta+'"),
        ({"onnx_path": "missing.onnx"}, "missing.onnx does not exist"),
        ({"output": "no-such-folder/m.plan"}, "no-such-folder does not exist"),
    ],
)
def test_build_refuses_bad_arguments_first(onnx_file: Path, tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {"onnx_path": onnx_file, "output": tmp_path / "m.plan", **kwargs}
    for key in ("onnx_path", "output"):
        if isinstance(args[key], str):
            args[key] = tmp_path / args[key]
    with pytest.raises(InputError) as e:
        build_engine(**args)
    assert needle in str(e.value)
    assert not (tmp_path / "m.plan").exists()


# --------------------------------------------------------------------------- real engines (TensorRT + CUDA)


def _torch_out(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_REASON is not None, reason=str(TRT_REASON))
def test_engine_matches_torch(
    onnx_file: Path, model: torch.nn.Module, tmp_path: Path, precision: str
) -> None:  # pragma: no cover - needs TensorRT and CUDA
    import tensorrt as trt

    from wconv_deploy.runtimes.tensorrt import TensorRTRuntime

    source = onnx_file
    if precision == "fp16" and trt_major(trt.__version__) >= 11:  # strongly typed: convert first
        from wconv_deploy.exporters.precision import convert_onnx

        source = tmp_path / "m.fp16.onnx"
        convert_onnx(onnx_file, source, "fp16", reference=model)
    out, cache = tmp_path / "m.plan", tmp_path / "t.cache"
    phases: list[str] = []
    manifest = build_engine(source, out, precision, max_shape="4x1x32x32", timing_cache=cache, progress=phases.append)
    assert out.stat().st_size > 0 and cache.stat().st_size > 0 and phases
    assert BuildManifest.read(manifest_path(out)) == manifest
    assert manifest.precision == precision and manifest.profiles[0]["input"]["max"] == [4, 1, 32, 32]
    rt = TensorRTRuntime(out)
    assert rt.describe().precision == Precision(precision) and rt.spec == manifest.spec(out.name)
    limit = 1e-4 if precision == "fp32" else 5e-2
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 16, 16), (1, 1, 8, 8), (4, 1, 32, 32), (3, 1, 24, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        expected, actual = _torch_out(model, x), rt.run({"input": x})[0]
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() / np.abs(expected).max() < limit, (precision, shape)
    with pytest.raises(InputError, match=r"shape \[5, 1, 16, 16\], which is outside input:batch\[1..4\]"):
        rt.run({"input": np.zeros((5, 1, 16, 16), np.float32)})  # checked against the manifest's spec first
    # the manifest is checked before deserialising: a different TensorRT version is refused
    m = BuildManifest.read(manifest_path(out))
    m.tensorrt_version = "9.0.0"
    m.write(manifest_path(out))
    with pytest.raises(InputError, match="was built with TensorRT 9.0.0"):
        TensorRTRuntime(out)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_REASON is not None, reason=str(TRT_REASON))
def test_build_reports_parse_errors_and_precision_refusals(
    onnx_file: Path, tmp_path: Path
) -> None:  # pragma: no cover - needs TensorRT and CUDA
    import tensorrt as trt

    bad = tmp_path / "bad.onnx"
    model = _tiny_onnx(TensorProto.FLOAT)
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, bad)
    with pytest.raises(InputError, match="TensorRT cannot parse bad.onnx"):
        build_engine(bad, tmp_path / "bad.plan")
    if trt_major(trt.__version__) >= 11:
        with pytest.raises(InputError, match="strongly typed"):
            build_engine(onnx_file, tmp_path / "m.plan", "fp16")
    with pytest.raises(InputError, match="Q/DQ|strongly typed"):
        build_engine(onnx_file, tmp_path / "m.plan", "int8")
    assert not list(tmp_path.glob("*.plan*"))


def test_every_precision_has_a_plan_on_tensorrt_10() -> None:
    for precision in Precision:
        onnx_prec = Precision.INT8 if precision == Precision.INT8 else Precision.FP32
        assert plan_build("10.3.0", precision, onnx_prec, precision == Precision.INT8).strongly_typed is False


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are present")
def test_cli_build_without_tensorrt_is_one_line_exit_2(onnx_file: Path, tmp_path: Path) -> None:
    from tests.contract import assert_one_line_error, invoke

    result = invoke("build", onnx_file, "-o", tmp_path / "m.plan", "--precision", "fp16")
    assert_one_line_error(result, 2, "pip install tensorrt-cu12", "NVIDIA's package index")
    assert os.listdir(tmp_path) == []
    assert_one_line_error(invoke("build", onnx_file, "--precision", "fp64"), 2, "fp64")
