"""OpenVINO on the CPU behind the :class:`Runtime` interface, with an explicit inference precision."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from wconv_deploy.errors import InputError
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name

#: Runtime name -> OpenVINO's INFERENCE_PRECISION_HINT.
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise InputError("openvino is not installed: pip install 'wconv-deploy[openvino]'") from None
    return openvino


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here (no package, or a CPU without bf16), or None if it can."""
    try:
        ov = import_openvino()
    except InputError as e:
        return str(e)
    if PRECISIONS[name] == "bf16":
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return f"this CPU has no bf16 support (OpenVINO CPU capabilities: {', '.join(caps)})"
    return None


def _onnx_inputs_and_precision(path: str | os.PathLike[str]) -> tuple[list[str], str | None]:
    """The graph's input names in order and the precision ``wconv-deploy convert`` stamped."""
    from wconv_deploy.artifacts import read_onnx, wconv_metadata

    model = read_onnx(path)  # a regular file whose external data stays in its folder
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], wconv_metadata(model).get("wconv_deploy.precision")


class OpenVinoRuntime(Runtime):
    """An OpenVINO model compiled for the CPU from an ONNX file at the precision ``name`` asks."""

    def __init__(self, path: str | os.PathLike[str], name: str = "openvino", *, threads: int = 0) -> None:
        reason = unavailable_reason(name)
        if reason:
            raise InputError(f"{name}: {reason}")
        ov = import_openvino()
        self.name = name
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[name], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        # A port may carry several tensor names; the ONNX graph's input names, in order, are the API.
        self._inputs, self._model_precision = _onnx_inputs_and_precision(path)
        try:
            self.compiled = core.compile_model(core.read_model(os.fspath(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses for unreadable models
            raise InputError(f"openvino cannot compile {path}: {str(e).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self._version = ov.__version__

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer([np.ascontiguousarray(feeds[n]) for n in self._inputs])
        return [np.asarray(v) for v in result.to_tuple()]  # in the model's output order

    def describe(self) -> RuntimeInfo:
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        precision = {"f32": "fp32", "f16": "fp16"}.get(precision, precision)
        if self._model_precision:  # a converted variant: int8 QDQ runs as int8; fp16 weights widen
            precision = f"{self._model_precision} model, {precision} compute"
        return RuntimeInfo(self.name, cpu_name(), precision, {"openvino": self._version})
