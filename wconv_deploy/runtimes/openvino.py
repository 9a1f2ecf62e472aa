"""OpenVINO on the CPU behind the :class:`Runtime` interface, with an explicit inference precision."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from wconv_deploy._optional import missing, require
from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name
from wconv_deploy.runtimes.registry import Artifacts, RuntimeEntry, register
from wconv_deploy.spec import InputSpec

#: Runtime name -> OpenVINO's INFERENCE_PRECISION_HINT.
HINTS = {"openvino": "f32", "openvino-bf16": "bf16"}


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here (no package, or a CPU without bf16), or None if it can."""
    reason = missing("openvino", "openvino")
    if reason:
        return reason
    if HINTS[name] == "bf16":
        caps = require("openvino", "openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return f"this CPU has no bf16 support (OpenVINO CPU capabilities: {', '.join(caps)})"
    return None


class OpenVinoRuntime(Runtime):
    """An OpenVINO model compiled for the CPU from an ONNX file at the precision ``name`` asks."""

    def __init__(
        self, path: str | os.PathLike[str], name: str = "openvino", *, threads: int = 0, spec: InputSpec | None = None
    ) -> None:
        from wconv_deploy.artifacts import OnnxInfo

        reason = unavailable_reason(name)
        if reason:
            raise InputError(f"{name}: {reason}")
        ov = require("openvino", "openvino")
        self.name = name
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINTS[name], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        # A port may carry several tensor names; the ONNX graph's names, in order, are the API.
        info = OnnxInfo.read(path)  # a regular file whose external data stays in its folder
        self._inputs = [t.name for t in info.inputs]
        self._outputs = [t.name for t in info.outputs]
        self._model_precision = info.precision
        self.spec = spec or info.stored_spec
        try:
            self.compiled = core.compile_model(core.read_model(os.fspath(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses for unreadable models
            raise InputError(f"openvino cannot compile {path}: {str(e).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self._version = ov.__version__

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer([np.ascontiguousarray(feeds[n]) for n in self._inputs])
        return [np.asarray(v) for v in result.to_tuple()]  # in the model's output order

    def describe(self) -> RuntimeInfo:
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        compute = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        compute = {"f32": "fp32", "f16": "fp16"}.get(compute, compute)
        # a converted variant: int8 QDQ runs as int8, fp16 weights widen; else the compute precision rules
        precision: Precision = self._model_precision
        if precision != Precision.FP32:
            detail = f"{compute} compute"
        else:
            precision, detail = Precision.parse(compute, "OpenVINO precision"), ""
        return RuntimeInfo(self.name, cpu_name(), precision, detail, {"openvino": self._version})


def _build(entry: RuntimeEntry, artifacts: Artifacts) -> Runtime:
    assert artifacts.onnx_path is not None
    return OpenVinoRuntime(artifacts.onnx_path, entry.name, threads=artifacts.threads, spec=artifacts.spec)


for _name, _precision in (("openvino", Precision.FP32), ("openvino-bf16", Precision.BF16)):
    register(RuntimeEntry(_name, "onnx", "cpu", _precision, "openvino", partial(unavailable_reason, _name), _build))
