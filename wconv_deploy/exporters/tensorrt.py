"""Build TensorRT engines from an exported ONNX file, and record what each engine was built for.

:func:`build_engine` is the pipeline behind ``wconv-deploy build``: read the ONNX file
(:class:`~wconv_deploy.artifacts.OnnxInfo`: its input spec, I/O and precision), plan the build
(:mod:`wconv_deploy.exporters.trt_plan`: the optimisation profile, how the precision is
obtained), parse the ONNX with TensorRT's parser, build, and write the engine and its manifest
(``ENGINE.json``, :class:`~wconv_deploy.artifacts.BuildManifest`) beside it, each atomically.
This module holds only what talks to TensorRT: the builder config, the logger, the progress
monitor, the timing cache and the parser's errors. TensorRT and torch are imported when a build
starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wconv_deploy._optional import require
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path, version_tuple
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.trt_plan import (
    AMPERE,
    HARDWARE_COMPATIBILITY,
    BuildConfig,
    BuildPlan,
    local_gpu,
    manifest_for,
    network_flags_for,
    plan_build,
    profiles_from_spec,
    profiles_to_json,
)
from wconv_deploy.fileio import atomic_output, read_bytes, regular_file
from wconv_deploy.precision import Precision

if TYPE_CHECKING:  # checked against the tensorrt-stubs package; TensorRT itself is imported lazily
    import tensorrt

Progress = Callable[[str], None]


def apply_build_config(trt: Any, builder: Any, config: Any, build: BuildConfig, plan: BuildPlan) -> None:
    """Set ``plan``'s flags and ``build``'s profiles, workspace and compatibility on a builder
    config (duck-typed ``trt``, ``builder`` and ``config``; the timing cache is handled apart)."""
    for name in plan.flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise InputError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{name}: --precision {build.precision.value} needs it"
            )
        config.set_flag(flag)
    for name in plan.clear:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    for p in build.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise InputError(f"TensorRT rejects the optimisation profile {profiles_to_json([p])[0]}")
    if build.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_gb * 2**30))
    if build.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if build.hardware_compatibility is not None:
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[build.hardware_compatibility], None)
        if level is None:
            raise InputError(f"TensorRT {trt.__version__} has no hardware compatibility level {build.hardware_compatibility}")
        config.hardware_compatibility_level = level


def _check_output(out: Path, onnx_path: Path) -> None:
    if out.is_dir():
        raise InputError(f"-o {out}: is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"-o {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"-o {out}: folder {parent} is not writable")
    if out.resolve() == onnx_path.resolve():
        raise InputError(f"-o {out}: would overwrite the ONNX file")


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the error messages (for the one-line error)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg.strip())

    return Logger()


def _progress_monitor(trt: Any, say: Progress) -> Any:
    """A ``trt.IProgressMonitor`` that reports the builder's top-level phases (None if this
    TensorRT has none)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if not parent_phase:
                say(f"TensorRT: {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # go on

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _parser_errors(parser: Any) -> str:
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        try:
            where = e.node_name() or f"node {e.node()}"
            errors.append(f"{where}: {_one_line(e.desc())}")
        except AttributeError:  # an older ParserError without node_name()
            errors.append(_one_line(str(e)))
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(errors[:3]) + more if errors else "no parser error reported"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


def _load_timing_cache(config: Any, path: Path | None, say: Progress) -> Any:
    """A timing cache from ``path`` (a new one if it is absent or unusable), set on ``config``."""
    data = read_bytes(path) if path is not None and path.exists() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # TensorRT raises on a damaged cache file
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):
        say(f"timing cache {path} is from another TensorRT or GPU (or damaged): starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def build_engine(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    precision: Precision | str = Precision.FP32,
    *,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    version_compatible: bool = False,
    hardware_compatibility: str | None = None,
    strongly_typed: bool = False,
    progress: Progress | None = None,
) -> BuildManifest:
    """Build a TensorRT engine from ``onnx_path`` and write it to ``output``, with its manifest
    at ``output + ".json"``; returns the manifest.

    Needs TensorRT and a CUDA GPU (InputError, one line, without them). Raises InputError for
    options or an ONNX file TensorRT cannot build; nothing is written at ``output`` then. The
    timing cache, when given, is read before the build and written back after it.
    """
    import torch

    say = progress or (lambda _msg: None)
    src, out = Path(onnx_path), Path(output)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    build = BuildConfig(
        Precision.parse(precision),
        workspace_gb=workspace_gb,
        timing_cache=os.fspath(cache_path) if cache_path else None,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        strongly_typed=strongly_typed,
    )
    build.check()
    regular_file(src)
    _check_output(out, src)
    trt = require("tensorrt", "gpu", attribute="Runtime")  # (a stubs-only install has no Runtime)
    if not torch.cuda.is_available():
        raise InputError("building a TensorRT engine needs a CUDA GPU, and torch sees none")
    gpu_name, cc = local_gpu()
    if hardware_compatibility == "ampere+" and version_tuple(cc, "compute capability") < AMPERE:
        raise InputError(f"--hardware-compatibility ampere+ needs an Ampere or later GPU to build on; {gpu_name} is sm {cc}")

    info = OnnxInfo.read(src)
    spec = info.spec_or_static()
    build.profiles = profiles_from_spec(spec, min_shape, opt_shape, max_shape)
    plan = plan_build(
        trt.__version__, build.precision, info.precision, info.qdq_nodes > 0, strongly_typed=strongly_typed, onnx_name=src.name
    )
    io = (info.inputs, info.outputs)
    del info  # the graph's weights: TensorRT's parser reads the file itself

    logger = _make_logger(trt)
    builder: tensorrt.Builder = trt.Builder(logger)
    network: tensorrt.INetworkDefinition = builder.create_network(network_flags_for(trt, plan))
    parser: tensorrt.OnnxParser = trt.OnnxParser(network, logger)
    say(f"parsing {src.name} with TensorRT {trt.__version__}'s ONNX parser")
    if not parser.parse_from_file(os.fspath(src)):
        raise InputError(f"TensorRT cannot parse {src.name}: {_parser_errors(parser)}")
    names = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if names != sorted(spec.names):
        raise InputError(f"{src.name}: TensorRT sees inputs {names}, the input spec names {sorted(spec.names)}")

    config: tensorrt.IBuilderConfig = builder.create_builder_config()
    apply_build_config(trt, builder, config, build, plan)
    cache = _load_timing_cache(config, cache_path, say) if cache_path is not None else None
    monitor = _progress_monitor(trt, say)  # kept alive until the build returns
    if monitor is not None and progress is not None:
        config.progress_monitor = monitor
    say(f"building a {build.precision.value} engine on {gpu_name} (sm {cc}); this can take minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(logger.errors[-3:]) or "no error reported"
        raise InputError(f"TensorRT could not build an engine from {src.name}: {errors}")

    manifest = manifest_for(
        src, build, plan, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, io=io, spec=spec
    )
    with atomic_output(out) as tmp_engine, atomic_output(manifest_path(out)) as tmp_manifest:
        tmp_engine.write_bytes(memoryview(serialized))
        tmp_manifest.write_text(manifest.to_json())
    if cache_path is not None and cache is not None:
        with atomic_output(cache_path) as tmp_cache:
            tmp_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {manifest_path(out).name}")
    return manifest
