"""The one interface every backend implements, so validation, benchmarks and serving treat them alike.

A runtime is built from an artifact (a PyTorch module, an ONNX file or an engine), takes named
NumPy arrays and returns the model's outputs as a list of NumPy arrays in the model's output
order, and describes itself (device, typed precision, library versions) for reports. Building
one may be slow (sessions, compilation); ``run`` is the hot path the benchmark times.

``run`` is a template method (as Polygraphy's runners): it checks the feeds against the input
spec (names, ranks, axis ranges) and then calls the backend's ``_run``, so a wrong shape is one
line naming the input, whatever the backend would have said. Every capability is declared here:
``output_names``, ``device_time_ms`` (None where a backend cannot time the device alone).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.spec import InputSpec


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime is, for reports: ``device`` groups rows that may be compared; ``precision``
    keys the error limits; ``detail`` says more (``eager``, ``int8 model, fp32 compute``)."""

    name: str
    device: str
    precision: Precision
    detail: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``fp16 (compiled)``: the precision column of a table."""
        return f"{self.precision.value} ({self.detail})" if self.detail else self.precision.value


class Runtime(ABC):
    """Run a model on named inputs. ``name`` is what reports call it (e.g. ``ort-cpu``)."""

    name: str = "runtime"
    on_gpu: bool = False  # True when run() computes on a GPU (the benchmark then also times the device)
    #: The inputs ``run`` accepts; None: only the names are checked.
    spec: InputSpec | None = None

    #: What the backend read from its artifact; a backend that knows its names otherwise
    #: overrides the properties below.
    _inputs: list[str]
    _outputs: list[str]

    @property
    def input_names(self) -> list[str]:
        """The inputs ``run`` expects, in the model's order."""
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        """The outputs ``run`` returns, in order."""
        return list(self._outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (one array per input name), checked against the spec first."""
        if self.spec is not None:
            self.spec.check_arrays(dict(feeds))
        else:
            missing = [n for n in self.input_names if n not in feeds]
            if missing:
                raise InputError(f"inputs lack {', '.join(missing)} (expected: {', '.join(self.input_names)})")
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The backend's inference call (feeds already checked)."""

    def device_time_ms(self, feeds: Mapping[str, np.ndarray], iterations: int) -> list[float] | None:
        """Per-call compute time on the device alone (CUDA events), or None where not measurable."""
        return None

    @abstractmethod
    def describe(self) -> RuntimeInfo:
        """Device, precision and versions."""

    def synchronize(self) -> None:  # noqa: B027 - a no-op is right for synchronous runtimes
        """Wait for queued device work (GPU runtimes); ``run`` on CPU runtimes is synchronous."""


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
