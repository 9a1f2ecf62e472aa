"""ONNX Runtime sessions behind the :class:`Runtime` interface: CPU, CUDA (IOBinding, inputs
already on the device) and the TensorRT execution provider (``ort-trt``, ``ort-trt-fp16``).

The TensorRT provider gets options built from the input spec (:func:`trt_provider_options`): one
explicit optimisation profile spanning the spec, and an engine and timing cache folder. Without
an explicit profile ONNX Runtime builds a new TensorRT engine for every new input shape
(onnxruntime issues #16889 and #18272), minutes each time a batch size or image size first
appears."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.artifacts import OnnxInfo
from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name
from wconv_deploy.runtimes.registry import Artifacts, RuntimeEntry, register
from wconv_deploy.spec import InputSpec

#: Runtime name -> the execution providers it asks for, in order of preference.
PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt-fp16": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: The runtimes whose TensorRT provider may use fp16 kernels.
FP16_RUNTIMES = ("ort-trt-fp16",)
TRT_PROVIDER = "TensorrtExecutionProvider"


def trt_profile_shapes(spec: InputSpec) -> dict[str, str]:
    """The spec as TensorRT profile shapes in ONNX Runtime's (and Triton's) syntax:
    ``{"min": "input:1x1x8x8,mask:1x1x8x8", "opt": ..., "max": ...}``."""
    return {
        which: ",".join(f"{t.name}:{'x'.join(map(str, t.shape(which)))}" for t in spec.inputs) for which in ("min", "opt", "max")
    }


def default_trt_cache_dir() -> Path:
    """Where ``ort-trt`` keeps TensorRT engines and timing caches between sessions
    (``$XDG_CACHE_HOME/wconv-deploy/ort-trt``; ONNX Runtime names each file by model and shapes)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wconv-deploy" / "ort-trt"


def trt_provider_options(spec: InputSpec | None, cache_dir: str | os.PathLike[str], fp16: bool = False) -> dict[str, str]:
    """The TensorRT execution provider's options: the spec's min/opt/max shapes as one explicit
    profile (none without a spec), engine and timing caches in ``cache_dir``, and fp16 kernels
    allowed or not."""
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": os.fspath(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": os.fspath(cache_dir),
        "trt_fp16_enable": str(fp16),
    }
    if spec is not None:
        options |= {f"trt_profile_{which}_shapes": shapes for which, shapes in trt_profile_shapes(spec).items()}
    return options


def unavailable_reason(name: str) -> str | None:
    """Why the ONNX Runtime flavour ``name`` cannot run here, or None if it can."""
    try:
        ort = require("onnxruntime", "cpu")
    except InputError as e:
        return str(e)
    first = PROVIDERS[name][0]
    if first not in ort.get_available_providers():
        return f"this onnxruntime has no {first} (has: {', '.join(ort.get_available_providers())})"
    return None


class OnnxRuntime(Runtime):
    """An ``onnxruntime.InferenceSession`` on ``path``.

    ``providers`` may be a runtime name from :data:`PROVIDERS` or a list of provider names. With
    a CUDA provider, inputs are copied to the device once per ``run`` through IOBinding and the
    outputs are bound on the device, as a serving loop would do; ``threads`` sets the intra-op
    thread count (0: ONNX Runtime's default). ``spec``: the inputs ``run`` accepts (default: the
    spec the file stores, if any; for a foreign file, its static shapes). With the TensorRT
    provider, ``trt_cache_dir`` holds its engines [:func:`default_trt_cache_dir`]."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | Sequence[str] = "ort-cpu",
        *,
        threads: int = 0,
        spec: InputSpec | None = None,
        trt_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        ort = require("onnxruntime", "cpu")
        self.name = providers if isinstance(providers, str) else "ort"
        wanted = list(PROVIDERS[providers] if isinstance(providers, str) else providers)
        if wanted[0] not in ort.get_available_providers():
            raise InputError(
                f"{self.name}: this onnxruntime has no {wanted[0]} (has: {', '.join(ort.get_available_providers())})"
            )
        info = OnnxInfo.read(path)  # a regular file whose external data stays in its folder, before ORT opens anything
        self.spec = spec or info.stored_spec
        self.precision = info.precision
        fp16 = self.name in FP16_RUNTIMES
        if fp16 and self.precision == Precision.FP32:
            self.precision = Precision.FP16  # TensorRT may run any layer in fp16
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would break one-line output
        if threads:
            options.intra_op_num_threads = threads
        cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir()
        if TRT_PROVIDER in wanted:
            cache.mkdir(parents=True, exist_ok=True)
        chosen = session_providers(wanted, self.spec or _static_spec(info), cache, fp16)
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=chosen)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
            raise InputError(f"onnxruntime cannot load {path}: {str(e).strip().splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.on_gpu = self.providers[0] in ("CUDAExecutionProvider", TRT_PROVIDER)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._ort = ort

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return [np.asarray(o) for o in self.session.run(None, {n: feeds[n] for n in self._inputs})]
        binding = self.session.io_binding()
        for name in self._inputs:
            binding.bind_ortvalue_input(
                name, self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[name]), "cuda", 0)
            )
        for name in self._outputs:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return [np.asarray(v) for v in binding.copy_outputs_to_cpu()]

    def describe(self) -> RuntimeInfo:
        device = cpu_name()
        if self.on_gpu:
            try:
                import torch

                device = torch.cuda.get_device_name(0)
            except Exception:  # no torch CUDA build: name the provider instead
                device = "CUDA device 0"
        return RuntimeInfo(self.name, device, self.precision, versions={"onnxruntime": self._ort.__version__})


def session_providers(
    wanted: Sequence[str], spec: InputSpec | None, cache_dir: Path, fp16: bool
) -> list[str | tuple[str, dict[str, str]]]:
    """The ``providers`` argument of a session: ``wanted``, the TensorRT provider with its
    options (:func:`trt_provider_options`); the others as they are."""
    return [(p, trt_provider_options(spec, cache_dir, fp16)) if p == TRT_PROVIDER else p for p in wanted]


def _static_spec(info: OnnxInfo) -> InputSpec | None:
    """A foreign file's static input shapes (None when some are dynamic: ORT picks profiles itself then)."""
    try:
        return info.spec_or_static()
    except InputError:
        return None


def _build(entry: RuntimeEntry, artifacts: Artifacts) -> Runtime:
    assert artifacts.onnx_path is not None
    return OnnxRuntime(artifacts.onnx_path, entry.name, threads=artifacts.threads, spec=artifacts.spec)


for _name, _device in (("ort-cpu", "cpu"), ("ort-cuda", "cuda"), ("ort-trt", "cuda"), ("ort-trt-fp16", "cuda")):
    register(
        RuntimeEntry(
            _name,
            "onnx",
            _device,  # type: ignore[arg-type]
            Precision.FP16 if _name in FP16_RUNTIMES else Precision.FP32,
            "cpu" if _device == "cpu" else "gpu",
            partial(unavailable_reason, _name),
            _build,
        )
    )
