"""Build TensorRT engines from an exported ONNX file with NVIDIA's Polygraphy loaders, and record
what each engine was built for.

:func:`build_engine` is the pipeline behind ``wconv-deploy build``: read the ONNX file
(:class:`~wconv_deploy.artifacts.OnnxInfo`: its input spec, I/O and precision), plan the build
(:mod:`wconv_deploy.exporters.trt_plan`: the optimisation profiles, how the precision is
obtained), then hand Polygraphy's loaders what the plan says: ``NetworkFromOnnxPath`` parses,
``CreateConfig`` sets profiles, precision flags, timing cache, workspace limit, version and
hardware compatibility and the progress monitor, ``EngineBytesFromNetwork`` builds. Polygraphy
is tested by NVIDIA against every TensorRT release; this module keeps only the glue: the
arguments, a progress line that keeps moving during the build (:class:`BuildProgress`), one-line
errors from Polygraphy's log (:func:`polygraphy_log`), and atomic writes of the engine, its
manifest (``ENGINE.json``, :class:`~wconv_deploy.artifacts.BuildManifest`) and the timing cache.
TensorRT, Polygraphy and torch are imported when a build starts.

(Polygraphy's ``SaveEngine`` is not used: it writes in place and needs a deserialised engine; the
bytes go through :func:`~wconv_deploy.fileio.atomic_output` instead.)
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wconv_deploy._optional import require
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path, version_tuple
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.trt_plan import (
    AMPERE,
    HARDWARE_COMPATIBILITY,
    BuildConfig,
    BuildPlan,
    Profile,
    local_gpu,
    manifest_for,
    plan_build,
    profiles_from_spec,
    strongly_typed_network,
    tensorrt_missing,
)
from wconv_deploy.fileio import atomic_output, read_bytes, regular_file
from wconv_deploy.precision import Precision

Progress = Callable[[str], None]

#: Seconds between two progress lines while TensorRT builds (its own callbacks are sparse).
PROGRESS_INTERVAL_S = 5.0


# --------------------------------------------------------------------------- Polygraphy's log


def route_polygraphy_log() -> logging.Logger:
    """Send Polygraphy's log, and TensorRT's (Polygraphy's TensorRT logger forwards it), to the
    Python logger ``Polygraphy``, which does not propagate: none of it reaches the console, now or
    later (an engine's warnings while it runs would otherwise print to stdout and break ``--json``
    output). Attach a handler to that logger to see it. Returns the logger; calling again is harmless."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.use_python_logging_system = True
    G_LOGGER.colors = False  # (asking for colours prints a hint to stdout when the colored package is absent)
    logger = logging.getLogger("Polygraphy")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


@contextmanager
def polygraphy_log(failure: str) -> Iterator[list[str]]:
    """Run a block with Polygraphy's log off the console (:func:`route_polygraphy_log`),
    collecting its error lines into the yielded list; a Polygraphy failure
    (``PolygraphyException``), or a ``RuntimeError`` from TensorRT's bindings (a damaged timing
    cache, say), becomes ``InputError(f"{failure}: {errors}")``, one line."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # colours, then the "[E] " prefix
            plain = re.sub(r"^\[[A-Z]+\]\s*", "", plain).strip()
            if record.levelno == G_LOGGER.ERROR and plain:  # (Polygraphy logs empty backtraces as errors)
                errors.append(_one_line(plain))

    logger, handler = route_polygraphy_log(), Collect(logging.ERROR)
    logger.addHandler(handler)
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            yield errors
    except (PolygraphyException, RuntimeError) as e:
        said = "; ".join(errors[-3:]) if errors else _one_line(str(e))
        raise InputError(f"{failure}: {said}") from None
    finally:
        logger.removeHandler(handler)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


# --------------------------------------------------------------------------- progress


class BuildProgress:
    """While a build runs (``with`` block), a line every ``interval`` seconds through ``say``:
    the current TensorRT phase and the time so far, so a long build never looks frozen.
    :meth:`monitor` makes the ``trt.IProgressMonitor`` that tells it the phase."""

    def __init__(self, say: Progress, interval: float | None = None) -> None:
        self.say = say
        self.interval = PROGRESS_INTERVAL_S if interval is None else interval
        self.phase = "building"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="trt-build-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> BuildProgress:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.say(f"TensorRT: {self.phase} ({time.monotonic() - self._started:.0f} s so far)")

    def monitor(self, trt: Any) -> Any:
        """A progress monitor that records the builder's top-level phase (None if this TensorRT has none)."""
        if not hasattr(trt, "IProgressMonitor"):
            return None
        progress = self

        class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if not parent_phase:
                    progress.phase = phase_name
                    progress.say(f"TensorRT: {phase_name}")

            def step_complete(self, phase_name: str, step: int) -> bool:
                return True  # go on

            def phase_finish(self, phase_name: str) -> None:
                pass

        return Monitor()


# --------------------------------------------------------------------------- the loaders


def polygraphy_profiles(profiles: Sequence[Profile]) -> list[Any]:
    """Our profiles as Polygraphy ``Profile`` objects (input -> min/opt/max)."""
    from polygraphy.backend.trt import Profile as PolygraphyProfile

    out = []
    for p in profiles:
        profile = PolygraphyProfile()
        for name, (lo, opt, hi) in p.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        out.append(profile)
    return out


def create_config(
    trt: Any, build: BuildConfig, plan: BuildPlan, *, timing_cache: Any = None, progress_monitor: Any = None
) -> Any:
    """Polygraphy's ``CreateConfig`` loader with ``build``'s profiles, workspace limit and
    compatibility and ``plan``'s precision flags (TF32 off unless asked: Polygraphy clears it).
    ``timing_cache``: a readable file object holding the cache to start from."""
    from polygraphy.backend.trt import CreateConfig

    level = None
    if build.hardware_compatibility is not None:
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[build.hardware_compatibility], None)
        if level is None:
            raise InputError(f"TensorRT {trt.__version__} has no hardware compatibility level {build.hardware_compatibility}")
    pools = None if build.workspace_gb is None else {trt.MemoryPoolType.WORKSPACE: int(build.workspace_gb * 2**30)}
    return CreateConfig(
        tf32="TF32" in plan.flags,
        fp16="FP16" in plan.flags,
        bf16="BF16" in plan.flags,
        int8="INT8" in plan.flags,
        profiles=polygraphy_profiles(build.profiles),
        load_timing_cache=timing_cache,
        memory_pool_limits=pools,
        version_compatible=build.version_compatible or None,
        hardware_compatibility_level=level,
        progress_monitor=progress_monitor,
    )


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


def build_engine(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    precision: Precision | str = Precision.FP32,
    *,
    min_shape: str | Sequence[str] | None = None,
    opt_shape: str | Sequence[str] | None = None,
    max_shape: str | Sequence[str] | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    version_compatible: bool = False,
    hardware_compatibility: str | None = None,
    strongly_typed: bool = False,
    progress: Progress | None = None,
) -> BuildManifest:
    """Build a TensorRT engine from ``onnx_path`` and write it to ``output``, with its manifest
    at ``output + ".json"``; returns the manifest.

    ``min_shape``/``opt_shape``/``max_shape``: profile overrides (a list of N each: N profiles,
    see :func:`~wconv_deploy.exporters.trt_plan.profiles_from_spec`). Needs TensorRT, Polygraphy
    and a CUDA GPU (InputError, one line naming the install command, without them). Raises
    InputError for options or an ONNX file TensorRT cannot build; nothing is written then. The
    timing cache, when given, is read before the build and replaced after it.
    """
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
    reason = tensorrt_missing()
    if reason:
        raise InputError(f"building an engine needs TensorRT: {reason}")
    trt = require("tensorrt", "gpu")
    require("polygraphy", "gpu")
    import torch

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
    io_tensors = (info.inputs, info.outputs)
    del info  # the graph's weights: TensorRT's parser reads the file itself

    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath

    say(f"parsing {src.name} with TensorRT {trt.__version__}'s ONNX parser (through Polygraphy)")
    with polygraphy_log(f"TensorRT cannot parse {src.name}"):
        network = NetworkFromOnnxPath(os.fspath(src), strongly_typed=strongly_typed_network(trt, plan))()
    names = sorted(network[1].get_input(i).name for i in range(network[1].num_inputs))
    if names != sorted(spec.names):
        raise InputError(f"{src.name}: TensorRT sees inputs {names}, the input spec names {sorted(spec.names)}")

    old_cache = _CacheBytes(read_bytes(cache_path)) if cache_path is not None and cache_path.exists() else None
    say(f"building a {build.precision.value} engine on {gpu_name} (sm {cc}); this can take minutes")
    with (
        atomic_output(out) as tmp_engine,
        atomic_output(manifest_path(out)) as tmp_manifest,
        _timing_cache_output(cache_path) as new_cache,
        BuildProgress(say) as moving,
        polygraphy_log(f"TensorRT could not build an engine from {src.name}"),
    ):
        config = create_config(trt, build, plan, timing_cache=old_cache, progress_monitor=moving.monitor(trt))
        serialized = EngineBytesFromNetwork(network, config=config, save_timing_cache=new_cache)()
        manifest = manifest_for(
            src, build, plan, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, io=io_tensors, spec=spec
        )
        tmp_engine.write_bytes(memoryview(serialized))
        tmp_manifest.write_text(manifest.to_json())
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {manifest_path(out).name}")
    return manifest


class _CacheBytes(io.BytesIO):
    """A timing cache read through our checked reader, as the binary file object Polygraphy takes."""

    mode = "rb"


@contextmanager
def _timing_cache_output(path: Path | None) -> Iterator[Any]:
    """A new, empty file object for Polygraphy to write the timing cache into, that replaces
    ``path`` atomically when the block succeeds (None without a path)."""
    if path is None:
        yield None
        return
    with atomic_output(path) as tmp, open(tmp, "w+b") as f:
        yield f
