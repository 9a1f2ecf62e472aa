"""Native TensorRT engines behind the :class:`Runtime` interface (TensorRT 10/11 Python API).

The engine is deserialised with Polygraphy's TensorRT logger (TensorRT's messages kept off the
console, see :func:`~wconv_deploy.exporters.tensorrt.route_polygraphy_log`) but by our code, not Polygraphy's
``EngineFromBytes``/``TrtRunner``: those always allow an engine's embedded host code, which
``--trust-pickle`` must decide, and CUDA-graph replay and device timing need our own buffers.
The engine's I/O lives in device buffers (torch CUDA tensors, reused while the shapes stay the
same); ``run`` checks the feeds against the engine's input spec (its manifest's; with several
optimisation profiles, the first that takes the feeds is selected), copies the inputs in,
enqueues ``execute_async_v3`` on a private stream and copies the outputs back. ``trt-graph``
captures the enqueue in a CUDA graph once per input shape and replays it. ``device_time_ms``
times the engine alone with CUDA events, inputs already on the device, apart from the end-to-end
time ``run`` costs. Importing this module imports neither TensorRT nor torch: both load when a
runtime is built or its availability is asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wconv_deploy._optional import missing, require
from wconv_deploy.artifacts import BuildManifest, manifest_path
from wconv_deploy.errors import InputError
from wconv_deploy.fileio import read_bytes, regular_file
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo
from wconv_deploy.runtimes.registry import Artifacts, RuntimeEntry, register
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:  # checked against the tensorrt-stubs package; TensorRT itself is imported lazily
    import tensorrt
    import torch


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here, or None when they can."""
    from wconv_deploy.exporters.trt_plan import tensorrt_missing

    reason = tensorrt_missing() or missing("polygraphy", "gpu")
    if reason:
        return reason
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    for name, torch_dtype in (("BF16", torch.bfloat16), ("INT64", torch.int64)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_dtype
    if dtype not in table:
        raise InputError(f"engine tensor type {dtype} has no torch equivalent")
    return table[dtype]


def _check_manifest(trt: Any, path: Path) -> BuildManifest | None:
    """The engine's manifest (``ENGINE.json``), checked against this TensorRT and GPU; None if absent."""
    from wconv_deploy.exporters.trt_plan import check_engine_compatible, local_gpu

    if not manifest_path(path).exists():
        return None
    manifest = BuildManifest.read(manifest_path(path))
    check_engine_compatible(manifest, trt.__version__, *local_gpu(), engine=path.name)
    return manifest


def _not_deserialised(trt: Any, path: Path, manifest: BuildManifest | None) -> str:
    """Why TensorRT returned no engine, as far as the manifest (or its absence) tells."""
    from wconv_deploy.exporters.trt_plan import local_gpu, rebuild_command

    gpu, cc = local_gpu()
    here = f"TensorRT {trt.__version__} on {gpu} (sm {cc})"
    if manifest is None:
        return (
            f"{path} is not a TensorRT engine that {here} can load (another TensorRT version or GPU, or a damaged file); "
            f"no manifest {manifest_path(path).name} says what it was built for: rebuild it with wconv-deploy build"
        )
    return (
        f"{here} could not deserialise {path}, built with TensorRT {manifest.tensorrt_version} for {manifest.gpu_name} "
        f"(sm {manifest.compute_capability}), {manifest.precision}: the file may be damaged; "
        f"rebuild it with {rebuild_command(manifest, path.name)}"
    )


class TensorRTRuntime(Runtime):
    """A deserialised TensorRT engine (``.plan``/``.engine``) on CUDA device 0.

    The manifest ``ENGINE.json`` (from ``wconv-deploy build``) is checked first, so a version
    or GPU mismatch reads as such; it also gives the precision and the input spec (``spec``
    overrides the latter). A version-compatible engine runs code embedded in the file and loads
    only with ``trust_code``."""

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        *,
        cuda_graph: bool = False,
        trust_code: bool = False,
        spec: InputSpec | None = None,
    ) -> None:
        import torch

        self.name = "trt-graph" if cuda_graph else "trt"
        reason = unavailable_reason()
        if reason:
            raise InputError(f"{self.name}: {reason}")
        trt = require("tensorrt", "gpu", attribute="Runtime")
        self._trt = trt
        path = Path(engine_path)
        if regular_file(path).stat().st_size == 0:
            raise InputError(f"{path}: the engine file is empty")
        manifest = _check_manifest(trt, path)  # before deserialising: a mismatch is a readable error
        if manifest is not None and manifest.version_compatible and not trust_code:
            raise InputError(  # such a plan carries TensorRT's lean runtime: code from the file
                f"{path.name} was built --version-compatible, so it embeds TensorRT runtime code that would run "
                "from the file; pass --trust-pickle if you trust it"
            )
        from polygraphy.backend.trt import get_trt_logger

        from wconv_deploy.exporters.tensorrt import polygraphy_log

        with polygraphy_log(f"TensorRT could not load {path.name}") as errors:
            self._runtime = trt.Runtime(get_trt_logger())
            self._runtime.engine_host_code_allowed = trust_code  # off unless trusted, whatever the manifest says
            engine: tensorrt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(read_bytes(path))
        if engine is None:
            said = f" (TensorRT: {errors[-1]})" if errors else ""
            raise InputError(_not_deserialised(trt, path, manifest) + said)
        self.manifest = manifest
        #: The input spec of each optimisation profile (the manifest's; ``spec`` replaces them).
        self.profile_specs: list[InputSpec | None] = (
            [spec]
            if spec is not None or manifest is None
            else [manifest.spec(path.name, i) for i in range(len(manifest.profiles))]
        )
        self.spec = self.profile_specs[0]
        self._profile = 0
        self.engine: tensorrt.ICudaEngine = engine
        self.context: tensorrt.IExecutionContext = engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self.device = torch.device("cuda", 0)
        self.on_gpu = True
        self.stream = torch.cuda.Stream(self.device)
        self.cuda_graph = cuda_graph
        self._buffers: dict[str, torch.Tensor] = {}
        self._shapes: tuple[tuple[int, ...], ...] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds``, on the first optimisation profile whose spec takes them (the
        error is the first profile's when none does)."""
        self._select_profile(feeds)
        return super().run(feeds)

    def _select_profile(self, feeds: Mapping[str, np.ndarray]) -> None:
        if len(self.profile_specs) < 2:
            return
        fits = [i for i, s in enumerate(self.profile_specs) if s is not None and _takes(s, feeds)]
        index = fits[0] if fits else 0
        if index != self._profile:
            if not self.context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise InputError(f"{self.name}: TensorRT refuses optimisation profile {index}")
            self._profile, self.spec, self._shapes = index, self.profile_specs[index], None

    def _prepare(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """(Re)allocate device buffers and bind them when the input shapes change."""
        import torch

        if shapes == self._shapes:
            return
        for name, shape in zip(self._inputs, shapes):
            if not self.context.set_input_shape(name, shape):
                raise InputError(f"trt: input {name} shape {list(shape)} is outside the engine's optimisation profile")
            self._buffers[name] = torch.empty(
                shape, dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)), device=self.device
            )
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            self._buffers[name] = torch.empty(
                shape, dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)), device=self.device
            )
        for name, buf in self._buffers.items():
            self.context.set_tensor_address(name, buf.data_ptr())
        self._shapes, self._graph = shapes, None

    def _enqueue(self) -> None:
        import torch

        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise InputError("trt: execute_async_v3 failed")
            return
        if self._graph is None:
            self.context.execute_async_v3(self.stream.cuda_stream)  # TensorRT's lazy set-up runs outside the capture
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self._graph = graph
        self._graph.replay()

    def _load_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        import torch

        self._prepare(tuple(tuple(int(s) for s in np.shape(feeds[n])) for n in self._inputs))
        with torch.cuda.stream(self.stream):
            for name in self._inputs:
                self._buffers[name].copy_(torch.from_numpy(np.ascontiguousarray(feeds[name])), non_blocking=False)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        self._load_inputs(feeds)
        with torch.cuda.stream(self.stream):
            self._enqueue()
            outs = [self._buffers[n].float().cpu() for n in self._outputs]
        self.stream.synchronize()
        return [o.numpy() for o in outs]

    def device_time_ms(self, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float]:
        """Engine time alone (CUDA events), inputs already on the device, per call."""
        import torch

        self._select_profile(feeds)
        self._load_inputs(feeds)
        times = []
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.stream(self.stream):
                start.record(self.stream)
                self._enqueue()
                end.record(self.stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
        return times

    def synchronize(self) -> None:
        self.stream.synchronize()

    def describe(self) -> RuntimeInfo:
        """The precision the manifest records; without one, fp16's error limits apply (an engine
        may hold any precision) and the detail says so."""
        import torch

        if self.manifest is not None:
            precision, detail = self.manifest.typed_precision, ""
        else:
            precision, detail = Precision.FP16, "precision unknown (no manifest)"
        versions = {"tensorrt": self._trt.__version__, "torch": torch.__version__}
        return RuntimeInfo(self.name, torch.cuda.get_device_name(self.device), precision, detail, versions)


def _takes(spec: InputSpec, feeds: Mapping[str, np.ndarray]) -> bool:
    try:
        spec.check_arrays(dict(feeds))
    except InputError:
        return False
    return True


def _build(entry: RuntimeEntry, artifacts: Artifacts) -> Runtime:
    assert artifacts.engine_path is not None
    return TensorRTRuntime(
        artifacts.engine_path, cuda_graph=entry.name == "trt-graph", trust_code=artifacts.trust_code, spec=artifacts.spec
    )


for _name in ("trt", "trt-graph"):
    register(
        RuntimeEntry(_name, "engine", "cuda", Precision.FP32, "gpu", unavailable_reason, _build, in_default_bench=_name == "trt")
    )
