"""The one interface every backend implements, so validation and benchmarks treat them alike.

A runtime is built from an artifact (a PyTorch module or an ONNX file), takes named NumPy
arrays and returns the model's outputs as a list of NumPy arrays in the model's output order,
and describes itself (device, precision, library versions) for reports. Building one may be
slow (sessions, compilation); ``run`` is the hot path the benchmark times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime is, for reports: ``device`` groups rows that may be compared."""

    name: str
    device: str
    precision: str
    versions: dict[str, str] = field(default_factory=dict)


class Runtime(ABC):
    """Run a model on named inputs. ``name`` is what reports call it (e.g. ``ort-cpu``)."""

    name: str = "runtime"
    on_gpu: bool = False  # True when run() computes on a GPU (the benchmark then also times the device)

    @property
    @abstractmethod
    def input_names(self) -> list[str]:
        """The inputs ``run`` expects, in the model's order."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (one array per input name)."""

    def describe(self) -> RuntimeInfo:
        """Device, precision and versions (subclasses say more)."""
        return RuntimeInfo(self.name, "cpu", "fp32")

    def synchronize(self) -> None:  # noqa: B027 - a no-op is right for synchronous runtimes
        """Wait for queued device work (GPU runtimes); ``run`` on CPU runtimes is synchronous."""


def outputs_of(result: Any) -> list[torch.Tensor]:
    """The tensors of a forward result (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in outputs_of(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in outputs_of(v)]
    return []


def cpu_name() -> str:
    """The CPU model and the vector/matrix extensions that matter for inference speed."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    found = [f for f in wanted if f in flags]
    return f"{model} ({', '.join(found) if found else 'no AVX2/AVX-512/AMX flags'})"
