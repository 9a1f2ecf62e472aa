"""ONNX Runtime sessions behind the :class:`Runtime` interface: CPU, CUDA (IOBinding, inputs
already on the device) and the TensorRT execution provider."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np

from wconv_deploy._optional import require
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
}


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
    spec the file stores, if any)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | Sequence[str] = "ort-cpu",
        *,
        threads: int = 0,
        spec: InputSpec | None = None,
    ) -> None:
        from wconv_deploy.artifacts import OnnxInfo

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
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would break one-line output
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=wanted)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
            raise InputError(f"onnxruntime cannot load {path}: {str(e).strip().splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._ort = ort

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

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


def _build(entry: RuntimeEntry, artifacts: Artifacts) -> Runtime:
    assert artifacts.onnx_path is not None
    return OnnxRuntime(artifacts.onnx_path, entry.name, threads=artifacts.threads, spec=artifacts.spec)


for _name, _device in (("ort-cpu", "cpu"), ("ort-cuda", "cuda"), ("ort-trt", "cuda")):
    register(
        RuntimeEntry(
            _name,
            "onnx",
            _device,  # type: ignore[arg-type]
            Precision.FP32,
            "cpu" if _device == "cpu" else "gpu",
            partial(unavailable_reason, _name),
            _build,
        )
    )
