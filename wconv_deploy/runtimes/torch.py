"""PyTorch (eager, folded, ``torch.compile``; CPU or CUDA) behind the :class:`Runtime` interface."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wconv_deploy.forward import outputs_of
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name
from wconv_deploy.runtimes.registry import Artifacts, RuntimeEntry, register
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:
    from torch import nn

TORCH_DTYPES = {Precision.FP32: "float32", Precision.FP16: "float16", Precision.BF16: "bfloat16"}


class TorchRuntime(Runtime):
    """Calls ``model(*inputs)`` in eval mode under ``torch.inference_mode`` on ``device``.

    ``compile=True`` wraps the model in ``torch.compile`` (compiled on the first call, which the
    benchmark's warm-up absorbs). ``precision`` runs in that precision (inputs cast, outputs cast
    back to float32 for comparison)."""

    def __init__(
        self,
        model: nn.Module,
        input_names: Sequence[str],
        device: str = "cpu",
        *,
        compile: bool = False,
        precision: Precision = Precision.FP32,
        label: str | None = None,
        spec: InputSpec | None = None,
    ) -> None:
        import torch

        try:
            model = model.eval()
        except NotImplementedError:  # a torch.export program's module keeps the mode it was exported in
            pass
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.precision = precision
        self.dtype = getattr(torch, TORCH_DTYPES[precision])
        model = model.to(self.device, self.dtype) if precision != Precision.FP32 else model.to(self.device)
        self.model: Callable[..., Any] = torch.compile(model) if compile else model
        self._inputs = list(input_names)
        self._outputs = []  # ``output_0``, ... (a module does not name its outputs): known after the first run
        self.spec = spec
        self.compiled = compile
        self.name = label or ("torch-compile" if compile else "torch")

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._inputs]
        return [a.to(self.dtype) if a.is_floating_point() else a for a in args]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        args = self._args(feeds)
        with torch.inference_mode():
            result = self.model(*args)
        outs = [t.detach().float().cpu().numpy() for t in outputs_of(result)]
        self._outputs = [f"output_{i}" for i in range(len(outs))]
        return outs

    def device_time_ms(self, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float] | None:
        """Forward time alone on a CUDA device (CUDA events), inputs already there, per call."""
        import torch

        if self.device.type != "cuda":
            return None
        args = self._args(feeds)
        times = []
        with torch.inference_mode():
            for _ in range(iterations):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.model(*args)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        return times

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> RuntimeInfo:
        import torch

        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()
        mode = "compiled" if self.compiled else "eager, folded" if self.name == "torch-folded" else "eager"
        return RuntimeInfo(self.name, device, self.precision, mode, {"torch": torch.__version__})


class TorchReference(TorchRuntime):
    """fp32 PyTorch on the CPU as the reference artifacts are checked against, remembering each
    answer by its inputs' content: export, convert, deploy and the precision search check against
    the same inputs several times (validation, the task metric, the golden file, every deploy row,
    every search try), and the model then runs once per distinct input. ``source``: the model's
    file, for reports. The model must not change while the reference is in use."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], *, source: str | None = None) -> None:
        super().__init__(model, input_names)
        self.source = source
        self._answers: dict[bytes, list[np.ndarray]] = {}

    @classmethod
    def of(cls, reference: Any, input_names: Sequence[str]) -> TorchReference:
        """``reference`` (an nn.Module, a LoadedModel or a TorchReference, returned as it is)."""
        if isinstance(reference, TorchReference):
            return reference
        path = getattr(reference, "path", None)  # a LoadedModel
        return cls(getattr(reference, "model", reference), input_names, source=os.fspath(path) if path else None)

    @property
    def label(self) -> str:
        """``PyTorch (model.pt)``: what reports call this reference."""
        return f"PyTorch ({os.path.basename(self.source)})" if self.source else "PyTorch"

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        key = hashlib.blake2b(digest_size=16)
        for name in self._inputs:
            a = np.ascontiguousarray(feeds[name])
            key.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            key.update(a.data)
        digest = key.digest()
        if digest not in self._answers:
            self._answers[digest] = super()._run(feeds)
        return [a.copy() for a in self._answers[digest]]  # a caller may write to what it gets


def _cuda_missing() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


def _build(entry: RuntimeEntry, artifacts: Artifacts) -> Runtime:
    import torch

    model = artifacts.model
    if artifacts.threads:
        torch.set_num_threads(artifacts.threads)
    if entry.name == "torch-folded":  # the deployable form: weighted layers and BatchNorm folded
        from wconv_deploy.fold import fold

        model = fold(model, fold_bn=True).model
    return TorchRuntime(
        model,
        artifacts.names,
        entry.device,
        compile=entry.name.endswith("compile"),
        precision=entry.precision,
        label=entry.name,
        spec=artifacts.spec,
    )


for _name, _device, _precision in (
    ("torch", "cpu", Precision.FP32),
    ("torch-folded", "cpu", Precision.FP32),
    ("torch-compile", "cpu", Precision.FP32),
    ("torch-cuda", "cuda", Precision.FP32),
    ("torch-cuda-fp16", "cuda", Precision.FP16),
    ("torch-cuda-compile", "cuda", Precision.FP32),
):
    register(
        RuntimeEntry(
            _name,
            "torch",
            _device,  # type: ignore[arg-type]
            _precision,
            "cpu",
            _cuda_missing if _device == "cuda" else lambda: None,
            _build,
            serves=False,
            in_default_bench="compile" not in _name,
        )
    )

__all__ = ["TorchReference", "TorchRuntime", "outputs_of"]
