"""Runtimes: one interface (:class:`Runtime`) to run any artifact on the same named inputs.

:data:`RUNTIMES` names every backend; :func:`unavailable_reason` says why one cannot run here
(missing package, missing device, unsupported precision) and :func:`create_runtime` builds one
from the artifact it needs (a PyTorch module or an ONNX file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import nn

from wconv_deploy.errors import InputError
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name, outputs_of

#: Runtime name -> the artifact it runs ("torch": a PyTorch module, "onnx": an ONNX file,
#: "engine": a serialised TensorRT engine).
RUNTIMES: dict[str, str] = {
    "torch": "torch",
    "torch-folded": "torch",
    "torch-compile": "torch",
    "torch-cuda": "torch",
    "torch-cuda-fp16": "torch",
    "torch-cuda-compile": "torch",
    "ort-cpu": "onnx",
    "ort-cuda": "onnx",
    "ort-trt": "onnx",
    "openvino": "onnx",
    "openvino-bf16": "onnx",
    "trt": "engine",
    "trt-graph": "engine",
}

__all__ = ["RUNTIMES", "Runtime", "RuntimeInfo", "cpu_name", "create_runtime", "outputs_of", "unavailable_reason"]


def unavailable_reason(name: str) -> str | None:
    """Why runtime ``name`` cannot run on this machine, or None when it can."""
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})")
    if name.startswith("torch-cuda"):
        import torch

        return None if torch.cuda.is_available() else "no CUDA device visible to torch"
    if name.startswith("ort-"):
        from wconv_deploy.runtimes import onnxruntime

        return onnxruntime.unavailable_reason(name)
    if name.startswith("openvino"):
        from wconv_deploy.runtimes import openvino

        return openvino.unavailable_reason(name)
    if name.startswith("trt"):
        from wconv_deploy.runtimes import tensorrt

        return tensorrt.unavailable_reason()
    return None


def create_runtime(
    name: str,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    engine_path: str | os.PathLike[str] | None = None,
    model: nn.Module | None = None,
    input_names: Sequence[str] = ("input",),
    threads: int = 0,
    trust_code: bool = False,
) -> Runtime:
    """Build runtime ``name`` on the artifact it needs; InputError if it is unavailable or the
    artifact is missing. ``trust_code`` lets a version-compatible TensorRT engine run the
    runtime code embedded in it."""
    reason = unavailable_reason(name)
    if reason:
        raise InputError(f"{name}: {reason}")
    if RUNTIMES[name] == "torch":
        if model is None:
            raise InputError(f"{name} needs a PyTorch model (a model file or zoo:NAME) among the artifacts")
        import torch

        from wconv_deploy.runtimes.torch import TorchRuntime

        if threads:
            torch.set_num_threads(threads)
        if name == "torch-folded":  # the deployable form: weighted layers and BatchNorm folded
            from wconv_deploy.fold import fold

            model = fold(model, fold_bn=True).model
        device = "cuda" if "cuda" in name else "cpu"
        dtype = torch.float16 if name.endswith("fp16") else torch.float32
        return TorchRuntime(model, input_names, device, compile=name.endswith("compile"), dtype=dtype, label=name)
    if RUNTIMES[name] == "engine":
        if engine_path is None:
            raise InputError(f"{name} needs a TensorRT engine (.plan or .engine) among the artifacts")
        from wconv_deploy.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(engine_path, cuda_graph=name == "trt-graph", trust_code=trust_code)
    if onnx_path is None:
        raise InputError(f"{name} needs an ONNX file among the artifacts")
    if name.startswith("ort-"):
        from wconv_deploy.runtimes.onnxruntime import OnnxRuntime

        return OnnxRuntime(onnx_path, name, threads=threads)
    from wconv_deploy.runtimes.openvino import OpenVinoRuntime

    return OpenVinoRuntime(onnx_path, name, threads=threads)
