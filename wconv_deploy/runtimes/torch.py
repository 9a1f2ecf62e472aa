"""PyTorch (eager, optionally ``torch.compile``) behind the :class:`Runtime` interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from wconv_deploy.errors import InputError
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, outputs_of


class TorchRuntime(Runtime):
    """Calls ``model(*inputs)`` in eval mode under ``torch.inference_mode`` on ``device``.

    ``compile=True`` wraps the model in ``torch.compile`` (compiled on the first call, which the
    benchmark's warm-up absorbs). ``dtype`` runs in that precision (inputs cast, outputs cast back
    to float32 for comparison)."""

    def __init__(
        self,
        model: nn.Module,
        input_names: Sequence[str],
        device: str = "cpu",
        *,
        compile: bool = False,
        dtype: torch.dtype = torch.float32,
        label: str | None = None,
    ) -> None:
        try:
            model = model.eval()
        except NotImplementedError:  # a torch.export program's module keeps the mode it was exported in
            pass
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.dtype = dtype
        model = model.to(self.device, dtype) if dtype != torch.float32 else model.to(self.device)
        self.model: Callable[..., Any] = torch.compile(model) if compile else model
        self._input_names = list(input_names)
        self.compiled = compile
        self.name = label or ("torch-compile" if compile else "torch")

    @property
    def input_names(self) -> list[str]:
        return self._input_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._input_names]
        if self.dtype != torch.float32:
            args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            result = self.model(*args)
        return [t.detach().float().cpu().numpy() for t in outputs_of(result)]

    def device_time_ms(self, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float]:
        """Forward time alone on a CUDA device (CUDA events), inputs already there, per call."""
        if self.device.type != "cuda":
            raise InputError("device time is measured on CUDA devices only")
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._input_names]
        args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
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
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> RuntimeInfo:
        from wconv_deploy.runtimes.base import cpu_name

        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()
        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype))
        mode = "compiled" if self.compiled else "eager, folded" if self.name == "torch-folded" else "eager"
        return RuntimeInfo(self.name, device, f"{precision} {mode}", {"torch": torch.__version__})
