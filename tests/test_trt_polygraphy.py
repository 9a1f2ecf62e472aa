"""TensorRT builds through Polygraphy's loaders, with a test double only at the ``tensorrt``
module boundary (TensorRT cannot be installed here): the loader chain and the CreateConfig
arguments we hand Polygraphy, what Polygraphy then asks of TensorRT (profiles, precision flags,
timing cache, workspace limit, compatibility), one-line errors from Polygraphy's log, the
progress line that keeps moving during a slow build, and the trt runtime's deserialisation."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.contract import fake_local_gpu
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path
from wconv_deploy.errors import InputError
from wconv_deploy.exporters import tensorrt as builder_module
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.tensorrt import BuildProgress, build_engine, create_config, polygraphy_log
from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
from wconv_deploy.precision import Precision
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model

# --------------------------------------------------------------------------- the double


class FakeTensorRT(types.ModuleType):
    """Just the TensorRT API Polygraphy's loaders call, recording what they set. ``fail``: the
    build logs an error and returns no engine; ``parser_errors``: the parser reports these."""

    def __init__(self, version: str = "10.3.0", *, fail: bool = False, parser_errors: tuple[str, ...] = ()) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.fail, self.parser_errors = fail, parser_errors
        self.input_names = ["input"]
        self.on_build: Any = None  # called inside build_serialized_network (a slow build)
        E = enum.IntEnum
        self.BuilderFlag = E("BuilderFlag", "FP16 BF16 INT8 TF32 VERSION_COMPATIBLE", start=0)
        self.NetworkDefinitionCreationFlag = E("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED", start=0)
        self.MemoryPoolType = E("MemoryPoolType", "WORKSPACE", start=0)
        self.HardwareCompatibilityLevel = E("HardwareCompatibilityLevel", "NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY", start=0)
        self.ProfilingVerbosity = E("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED", start=0)
        self.DeviceType = E("DeviceType", "GPU DLA", start=0)
        self.LayerType = E("LayerType", "SHAPE QUANTIZE DEQUANTIZE", start=0)
        self.OnnxParserFlag = E("OnnxParserFlag", "NATIVE_INSTANCENORM", start=0)
        self.TensorIOMode = E("TensorIOMode", "NONE INPUT OUTPUT", start=0)
        self.Logger = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)
        self.ILogger = type("ILogger", (), {"__init__": lambda self: None})
        self.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
        self.engine: Any = None  # what Runtime.deserialize_cuda_engine returns
        fake = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger, self.engine_host_code_allowed = logger, False
                fake.runtimes.append(self)

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                fake.calls.append(("deserialize", bytes(data), self.engine_host_code_allowed))
                if fake.engine is None:
                    self.logger.log(fake.Logger.ERROR, "Serialization assertion failed: magic tag")
                return fake.engine

        self.Runtime = Runtime
        self.runtimes: list[Runtime] = []
        self.configs: list[FakeConfig] = []

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool:
        return True

    def Builder(self, logger: Any) -> FakeBuilder:  # noqa: N802 - TensorRT's name
        return FakeBuilder(self, logger)

    def OnnxParser(self, network: Any, logger: Any) -> Any:  # noqa: N802 - TensorRT's name
        fake = self

        class Parser:
            flags = 0
            num_errors = len(fake.parser_errors)

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse", path))
                return not fake.parser_errors

            def get_error(self, i: int) -> str:
                return fake.parser_errors[i]

        return Parser()


class FakeBuilder:
    def __init__(self, trt: FakeTensorRT, logger: Any) -> None:
        self.trt, self.logger = trt, logger

    def create_network(self, flags: int = 0) -> Any:
        self.trt.calls.append(("network flags", flags))
        return FakeNetwork(self.trt.input_names)

    def create_optimization_profile(self) -> Any:
        trt = self.trt

        class OptimizationProfile:
            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                trt.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        return OptimizationProfile()

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig(self.trt)

    def build_serialized_network(self, network: Any, config: FakeConfig) -> bytes | None:
        if config.progress_monitor is not None:
            config.progress_monitor.phase_start("Building engine", None, 2)
            config.progress_monitor.phase_start("a nested phase", "Building engine", 2)
        if self.trt.on_build is not None:
            self.trt.on_build()
        if self.trt.fail:
            self.logger.log(self.trt.Logger.ERROR, "no kernel for layer conv_3")
            return None
        return b"ENGINE"


class FakeNetwork:
    """Inputs with dynamic shapes, no layers."""

    def __init__(self, names: list[str]) -> None:
        self.inputs = [types.SimpleNamespace(name=n, shape=(-1, 1, -1, -1), dtype="FLOAT", is_shape_tensor=False) for n in names]
        self.num_inputs = len(self.inputs)

    def get_input(self, i: int) -> Any:
        return self.inputs[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def combine(self, other: FakeTimingCache, ignore_mismatch: bool) -> bool:
        return True

    def serialize(self) -> contextlib.nullcontext[bytes]:
        return contextlib.nullcontext(b"CACHE:" + self.data)


class FakeConfig:
    DLA_core = -1
    num_optimization_profiles = 1

    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt, self.calls = trt, trt.calls
        self.default_device_type = trt.DeviceType.GPU
        self.profiling_verbosity: Any = None
        self.progress_monitor: Any = None
        self._hardware: Any = None
        self._cache: FakeTimingCache | None = None
        self.flags: set[Any] = {trt.BuilderFlag.TF32}  # TensorRT 10 enables TF32 by default
        trt.configs.append(self)

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: Any) -> int:
        self.calls.append(("add_optimization_profile",))
        return 0

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.calls.append(("pool", pool.name, size))

    def get_memory_pool_limit(self, pool: Any) -> int:
        return 0

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        if bytes(data).startswith(b"BAD"):
            raise RuntimeError("Error Code 1: Serialization (timing cache is damaged)\nmore")
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.calls.append(("timing cache", cache.data))
        self._cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self._cache

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._hardware

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, level: Any) -> None:
        self.calls.append(("hardware", level.name))
        self._hardware = level


def _reset_polygraphy_imports() -> None:
    """Forget the ``tensorrt`` module Polygraphy's lazy imports hold (and its TensorRT logger),
    so the double stays scoped to one test."""
    import polygraphy.backend.trt.util as trt_util

    trt_util.TRT_LOGGER = None
    for name, module in list(sys.modules.items()):
        lazy = getattr(module, "trt", None) if name.startswith("polygraphy") else None
        if lazy is not None and type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install a FakeTensorRT (and an H100 as torch's device 0) for one test; returns a factory."""

    def install(*args: Any, **kwargs: Any) -> FakeTensorRT:
        trt = FakeTensorRT(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        _reset_polygraphy_imports()
        fake_local_gpu(monkeypatch, "NVIDIA H100", (9, 0))
        return trt

    yield install
    _reset_polygraphy_imports()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small denoiser exported with dynamic batch, height and width (channels static at 1)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    spec = InputSpec.parse("1x1x16x16", "batch=1:8,height=8:32,width=8:32")
    export_onnx(create_model("dncnn", depth=3, width=8).eval(), path, spec, exporter="torchscript", validate_output=False)
    return path


PROFILE = {"input": ((1, 1, 8, 8), (1, 1, 16, 16), (8, 1, 32, 32))}


# --------------------------------------------------------------------------- the CreateConfig we hand Polygraphy


def test_create_config_carries_profiles_flags_cache_pool_and_compatibility(fake_trt: Any) -> None:
    trt = fake_trt()
    two = [PROFILE, {"input": ((1, 1, 8, 8), (4, 1, 64, 64), (16, 1, 128, 128))}]
    build = BuildConfig("fp16", two, workspace_gb=1.5, version_compatible=True, hardware_compatibility="ampere+")
    cache, monitor = object(), object()
    with polygraphy_log("test"):
        config = create_config(trt, build, BuildPlan(False, ("FP16",), ("TF32",)), timing_cache=cache, progress_monitor=monitor)
    assert [{n: tuple(map(tuple, s)) for n, s in p.items()} for p in config.profiles] == two
    assert (config.fp16, config.tf32, config.bf16, config.int8) == (True, False, False, False)
    assert config.timing_cache_path is cache and config.progress_monitor is monitor
    assert config.memory_pool_limits == {trt.MemoryPoolType.WORKSPACE: int(1.5 * 2**30)}
    assert config.version_compatible is True
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    with polygraphy_log("test"):
        plain = create_config(trt, BuildConfig("tf32", [PROFILE]), BuildPlan(True, ("TF32",)))
    assert (plain.tf32, plain.fp16, plain.memory_pool_limits, plain.version_compatible, plain.hardware_compatibility_level) == (
        True, False, None, None, None,
    )  # fmt: skip


def test_create_config_refuses_a_level_this_tensorrt_lacks(fake_trt: Any) -> None:
    trt = fake_trt()
    trt.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", "NONE AMPERE_PLUS", start=0)
    with pytest.raises(InputError, match="TensorRT 10.3.0 has no hardware compatibility level same-compute-capability"):
        create_config(trt, BuildConfig(hardware_compatibility="same-compute-capability"), BuildPlan(False))


# --------------------------------------------------------------------------- the whole chain on the double


def test_build_runs_polygraphy_chain_and_writes_engine_manifest_cache(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    trt = fake_trt()
    out, cache = tmp_path / "m.plan", tmp_path / "t.cache"
    cache.write_bytes(b"OLD")
    said: list[str] = []
    m = build_engine(
        onnx_file,
        out,
        "fp16",
        min_shape=["1x1x8x8", "2x1x8x8"],
        max_shape=["4x1x64x64", "8x1x32x32"],
        opt_shape=["1x1x16x16", "4x1x16x16"],
        workspace_gb=1.0,
        timing_cache=cache,
        hardware_compatibility="ampere+",
        progress=said.append,
    )
    assert trt.calls.count(("add_optimization_profile",)) == 2
    assert [c[1:] for c in trt.calls if c[0] == "set_shape"] == [
        ("input", (1, 1, 8, 8), (1, 1, 16, 16), (4, 1, 64, 64)),
        ("input", (2, 1, 8, 8), (4, 1, 16, 16), (8, 1, 32, 32)),
    ]
    assert ("parse", os.fspath(onnx_file)) in trt.calls and ("network flags", 0) in trt.calls
    assert ("pool", "WORKSPACE", 2**30) in trt.calls and ("hardware", "AMPERE_PLUS") in trt.calls
    assert ("timing cache", b"OLD") in trt.calls  # the old cache is what the build starts from
    assert [c.flags for c in trt.configs] == [{trt.BuilderFlag.FP16}]  # TF32 cleared: fp16 with exact fp32 fallback
    assert out.read_bytes() == b"ENGINE" and cache.read_bytes() == b"CACHE:OLD"
    assert BuildManifest.read(manifest_path(out)) == m
    assert (m.tensorrt_version, m.gpu_name, m.compute_capability, m.precision, m.builder_flags) == (
        "10.3.0", "NVIDIA H100", "9.0", "fp16", ["FP16"],
    )  # fmt: skip
    assert [p["input"]["max"] for p in m.profiles] == [[4, 1, 64, 64], [8, 1, 32, 32]]
    assert "TensorRT: Building engine" in said and not any("nested" in s for s in said)
    assert sorted(os.listdir(tmp_path)) == ["m.plan", "m.plan.json", "t.cache"]  # no temporary or .lock files
    assert capfd.readouterr() == ("", "")  # Polygraphy's and TensorRT's log stay off the console


def test_strongly_typed_build_asks_polygraphy_for_the_flag(onnx_file: Path, tmp_path: Path, fake_trt: Any) -> None:
    trt = fake_trt()
    m = build_engine(onnx_file, tmp_path / "m.plan", strongly_typed=True, version_compatible=True)
    assert ("network flags", 1 << 1) in trt.calls and m.strongly_typed and m.version_compatible
    assert trt.configs[-1].flags == {trt.BuilderFlag.VERSION_COMPATIBLE}  # fp32: TF32 cleared
    assert not any(c[0] in ("pool", "hardware") for c in trt.calls)  # TensorRT's defaults where not asked
    assert sorted(os.listdir(tmp_path)) == ["m.plan", "m.plan.json"]


def test_tensorrt_11_builds_strongly_typed_without_the_flag(onnx_file: Path, tmp_path: Path, fake_trt: Any) -> None:
    """TensorRT 11 has no STRONGLY_TYPED creation flag (every network is): none is asked for."""
    trt = fake_trt("11.0.0")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", start=0)
    assert build_engine(onnx_file, tmp_path / "m.plan").strongly_typed
    assert ("network flags", 0) in trt.calls


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"fail": True}, "TensorRT could not build an engine from m.onnx: no kernel for layer conv_3"),
        (
            {"parser_errors": ("In node 3 (conv_3): unsupported op NoSuchOp\nmore detail",)},
            "TensorRT cannot parse m.onnx: In node 3 (conv_3): unsupported op NoSuchOp",
        ),
    ],
)
def test_failed_build_is_one_line_and_writes_nothing(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, kwargs: dict[str, Any], needle: str, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_trt(**kwargs)
    (tmp_path / "m.plan").write_bytes(b"previous engine")
    (tmp_path / "t.cache").write_bytes(b"OLD")
    with pytest.raises(InputError) as e:
        build_engine(onnx_file, tmp_path / "m.plan", timing_cache=tmp_path / "t.cache")
    assert str(e.value) == needle
    assert sorted(os.listdir(tmp_path)) == ["m.plan", "t.cache"] and (tmp_path / "m.plan").read_bytes() == b"previous engine"
    assert (tmp_path / "t.cache").read_bytes() == b"OLD"
    assert capfd.readouterr() == ("", "")


def test_what_this_tensorrt_lacks_and_a_damaged_cache_are_one_line_errors(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    trt = fake_trt()
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 INT8 TF32 VERSION_COMPATIBLE", start=0)  # no BF16
    with pytest.raises(InputError) as e:
        build_engine(onnx_file, tmp_path / "m.plan", "bf16")
    assert (
        str(e.value)
        == "TensorRT could not build an engine from m.onnx: bf16 in CreateConfig is not available on TensorRT version 10.3.0."
    )
    (tmp_path / "t.cache").write_bytes(b"BAD")
    with pytest.raises(InputError) as e:
        build_engine(onnx_file, tmp_path / "m.plan", timing_cache=tmp_path / "t.cache")
    assert str(e.value) == "TensorRT could not build an engine from m.onnx: Error Code 1: Serialization (timing cache is damaged)"
    assert os.listdir(tmp_path) == ["t.cache"] and capfd.readouterr() == ("", "")


def test_inputs_the_spec_does_not_name_are_refused(onnx_file: Path, tmp_path: Path, fake_trt: Any) -> None:
    fake_trt().input_names = ["x"]
    with pytest.raises(InputError, match=r"m.onnx: TensorRT sees inputs \['x'\], the input spec names \['input'\]"):
        build_engine(onnx_file, tmp_path / "m.plan")
    assert os.listdir(tmp_path) == []


def test_build_refuses_ampere_plus_on_an_older_gpu(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trt()
    fake_local_gpu(monkeypatch, "Tesla T4", (7, 5))
    with pytest.raises(InputError, match="ampere\\+ needs an Ampere or later GPU to build on; Tesla T4 is sm 7.5"):
        build_engine(onnx_file, tmp_path / "m.plan", hardware_compatibility="ampere+")


def test_unequal_profile_counts_are_refused_before_tensorrt_is_asked(onnx_file: Path, tmp_path: Path, fake_trt: Any) -> None:
    trt = fake_trt()
    with pytest.raises(InputError, match="--min-shape 1 times, --max-shape 2 times: give each of them once per"):
        build_engine(onnx_file, tmp_path / "m.plan", min_shape=["1x1x8x8"], max_shape=["4x1x32x32", "8x1x32x32"])
    assert trt.calls == [] and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- progress that moves


def test_progress_keeps_moving_during_a_slow_build(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake build blocks until three progress lines have come from the ticking thread: a
    build that only returns once the line moved (no wall-time assumption)."""
    trt = fake_trt()
    monkeypatch.setattr(builder_module, "PROGRESS_INTERVAL_S", 0.01)
    said: list[str] = []
    ticked = threading.Event()

    def say(msg: str) -> None:
        said.append(msg)
        if sum("so far" in s for s in said) >= 3:
            ticked.set()

    trt.on_build = lambda: ticked.wait(30)
    build_engine(onnx_file, tmp_path / "m.plan", progress=say)
    assert ticked.is_set()
    ticks = [s for s in said if "so far" in s]
    assert all(s.startswith("TensorRT: Building engine (") for s in ticks), ticks  # the phase the monitor reported
    seconds = [int(s.split("(")[1].split(" ")[0]) for s in ticks]
    assert seconds == sorted(seconds)


def test_progress_thread_stops_with_the_block() -> None:
    said: list[str] = []
    with BuildProgress(said.append, interval=0.001) as moving:
        moving.phase = "Calibrating"
        while not said:
            threading.Event().wait(0.001)
    assert not moving._thread.is_alive()
    n = len(said)
    threading.Event().wait(0.01)
    assert len(said) == n and said[0].startswith("TensorRT: ")


# --------------------------------------------------------------------------- the runtime's deserialisation


def _engine_double() -> Any:
    return types.SimpleNamespace(
        num_io_tensors=2,
        get_tensor_name=lambda i: ("input", "output")[i],
        get_tensor_mode=lambda name: 1 if name == "input" else 2,  # TensorIOMode.INPUT / OUTPUT
        create_execution_context=lambda: types.SimpleNamespace(
            set_optimization_profile_async=lambda i, stream: True,
        ),
    )


def _manifest(onnx_file: Path, profiles: list[Any] | None = None, **changes: Any) -> BuildManifest:
    spec = OnnxInfo.read(onnx_file).spec
    build = BuildConfig("fp16", profiles or profiles_from_spec(spec))
    m = manifest_for(
        onnx_file, build, BuildPlan(False, ("FP16",)), tensorrt_version="10.3.0", gpu_name="NVIDIA H100", compute_capability="9.0"
    )
    for k, v in changes.items():
        setattr(m, k, v)
    return m


def test_version_compatible_engines_run_embedded_code_only_when_trusted(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wconv_deploy.runtimes.tensorrt import TensorRTRuntime

    trt = fake_trt()
    monkeypatch.setattr(torch.cuda, "Stream", lambda _device: types.SimpleNamespace(cuda_stream=0))
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    _manifest(onnx_file, version_compatible=True).write(manifest_path(engine))
    with pytest.raises(InputError, match="embeds TensorRT runtime code .* pass --trust-pickle"):
        TensorRTRuntime(engine)
    assert trt.runtimes == []  # refused before any TensorRT runtime exists
    with pytest.raises(InputError, match=r"could not deserialise .* \(TensorRT: Serialization assertion failed: magic tag\)$"):
        TensorRTRuntime(engine, trust_code=True)
    assert trt.calls[-1] == ("deserialize", b"plan", True)
    manifest_path(engine).unlink()  # no manifest: Polygraphy's loaders would allow host code; ours do not
    trt.engine = _engine_double()
    TensorRTRuntime(engine)
    assert trt.calls[-1] == ("deserialize", b"plan", False)


def test_runtime_selects_the_profile_that_takes_the_feeds(
    onnx_file: Path, tmp_path: Path, fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wconv_deploy.runtimes.tensorrt import TensorRTRuntime

    trt = fake_trt()
    trt.engine = _engine_double()
    monkeypatch.setattr(torch.cuda, "Stream", lambda _device: types.SimpleNamespace(cuda_stream=0))
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    spec = InputSpec.parse("1x1x16x16", "batch=1:8,height=8:32,width=8:32")
    small, big = profiles_from_spec(spec, max_shape=["2x1x16x16", "8x1x32x32"], opt_shape=["1x1x16x16", "4x1x32x32"])
    _manifest(onnx_file, [small, big]).write(manifest_path(engine))
    rt = TensorRTRuntime(engine)
    assert [str(s) for s in rt.profile_specs] == [
        "input:batch[1..2]x1xheight[8..16]xwidth[8..16]:float32",
        "input:batch[1..8]x1xheight[8..32]xwidth[8..32]:float32",
    ]
    picked: list[int] = []
    rt.context.set_optimization_profile_async = lambda i, stream: picked.append(i) or True
    monkeypatch.setattr(rt, "_run", lambda feeds: [])
    rt.run({"input": np.zeros((4, 1, 32, 32), np.float32)})
    rt.run({"input": np.zeros((4, 1, 24, 24), np.float32)})  # still profile 1: no switch
    rt.run({"input": np.zeros((1, 1, 16, 16), np.float32)})
    assert picked == [1, 0] and rt.spec == rt.profile_specs[0]
    with pytest.raises(InputError, match=r"shape \[9, 1, 16, 16\], which is outside input:batch\[1..2\]"):
        rt.run({"input": np.zeros((9, 1, 16, 16), np.float32)})  # none takes it: profile 0's error


def test_runtime_takes_precision_and_spec_from_the_manifest(
    onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_trt: Any
) -> None:
    from wconv_deploy.runtimes.tensorrt import TensorRTRuntime

    fake_trt().engine = _engine_double()
    monkeypatch.setattr(torch.cuda, "Stream", lambda _device: types.SimpleNamespace())
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    unknown = TensorRTRuntime(engine, cuda_graph=True)  # no manifest
    assert (unknown.name, unknown.input_names, unknown.output_names, unknown.spec) == ("trt-graph", ["input"], ["output"], None)
    info = unknown.describe()
    assert (info.device, info.precision, info.detail) == ("NVIDIA H100", Precision.FP16, "precision unknown (no manifest)")
    with pytest.raises(InputError, match="inputs lack input"):
        unknown.run({"x": np.zeros((1, 1, 16, 16), np.float32)})

    _manifest(onnx_file).write(manifest_path(engine))
    rt = TensorRTRuntime(engine)
    assert (
        rt.spec == OnnxInfo.read(onnx_file).spec and rt.describe().precision == Precision.FP16 and rt.describe().label == "fp16"
    )
    _manifest(onnx_file, precision="tf32").write(manifest_path(engine))
    assert TensorRTRuntime(engine).describe().label == "tf32"
    with pytest.raises(InputError, match=r"input 'input' has shape \[1, 3, 16, 16\], which is outside"):
        rt.run({"input": np.zeros((1, 3, 16, 16), np.float32)})  # refused before anything reaches the engine
    given = InputSpec.parse("1x1x16x16")
    assert TensorRTRuntime(engine, spec=given).spec == given


def test_polygraphy_log_is_silent_and_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    from polygraphy.logger import G_LOGGER

    with pytest.raises(InputError) as e, polygraphy_log("doing it") as errors:
        G_LOGGER.info("chatter")
        G_LOGGER.error("first\nsecond line")
        G_LOGGER.critical("gave up")
    assert str(e.value) == "doing it: first" and errors == ["first"]
    with polygraphy_log("quiet") as errors:
        G_LOGGER.warning("a warning")
    G_LOGGER.warning("a TensorRT warning while an engine runs, after the block")
    G_LOGGER.error("and an error")
    assert errors == [] and capfd.readouterr() == ("", "")
    handlers = [type(h).__name__ for h in logging.getLogger("Polygraphy").handlers]
    assert "NullHandler" in handlers and "Collect" not in handlers  # (pytest adds its own capture handlers)


def test_cli_build_takes_repeated_profiles_and_prints_json(onnx_file: Path, tmp_path: Path, fake_trt: Any) -> None:
    from tests.contract import assert_ok, invoke

    fake_trt()
    out = tmp_path / "m.plan"
    shapes = ("--max-shape", "2x1x16x16", "--max-shape", "8x1x32x32", "--opt-shape", "1x1x16x16", "--opt-shape", "4x1x32x32")
    result = assert_ok(invoke("build", onnx_file, "-o", out, "--precision", "fp16", *shapes, "--json"))
    report = json.loads(result.stdout)  # only the report: no progress or Polygraphy lines on stdout
    assert [p["input"]["max"] for p in report["profiles"]] == [[2, 1, 16, 16], [8, 1, 32, 32]]
    assert BuildManifest.read(manifest_path(out)).profiles == report["profiles"]
