"""Numeric precisions, typed: one enum for conversion, engine builds, runtimes and error limits.

Each precision knows its default validation tolerances (``atol``, ``rtol`` for NumPy's
``isclose``, used by ``validate`` and ``convert``) and the largest relative error a benchmark
row may show before it is marked wrong. 16-bit formats (fp16, bf16, and TF32's 10-bit
mantissa) get the loose limits; int8 the loosest.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from wconv_deploy.errors import InputError


class Precision(str, enum.Enum):
    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str | Precision, flag: str = "--precision", allowed: Iterable[Precision] | None = None) -> Precision:
        """``text`` as a Precision (InputError naming ``flag`` if it is not one of ``allowed``)."""
        choices = list(allowed) if allowed is not None else list(cls)
        try:
            value = cls(str(text).strip().lower())
        except ValueError:
            value = None
        if value not in choices:
            raise InputError(f"{flag} {text!r}: choose from {', '.join(c.value for c in choices)}")
        assert value is not None
        return value

    @classmethod
    def parse_list(cls, text: str, flag: str = "--precision", allowed: Iterable[Precision] | None = None) -> list[Precision]:
        """A comma-separated list of precisions, in order, without repeats."""
        out: list[Precision] = []
        for item in (s.strip() for s in text.split(",")):
            p = cls.parse(item, flag, allowed)
            if p not in out:
                out.append(p)
        if not out:
            raise InputError(f"{flag}: give at least one precision")
        return out

    @property
    def low(self) -> bool:
        """Whether the graph itself must hold this precision (a converted ONNX), not only the builder."""
        return self in (Precision.FP16, Precision.BF16, Precision.INT8)

    @property
    def tolerance(self) -> tuple[float, float]:
        """Default ``(atol, rtol)`` when validating an artifact of this precision against fp32 PyTorch."""
        return TOLERANCES[self]

    @property
    def error_limit(self) -> float:
        """The largest max-relative error a benchmark row of this precision may show."""
        return ERROR_LIMITS[self]


#: (atol, rtol). fp32: ORT and PyTorch differ by float32 rounding only (about 2e-7 absolute on
#: the ResNet-18 benchmarks in docs/BENCHMARKS.md), 50x below atol.
TOLERANCES: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-5, 1e-4),
    Precision.TF32: (1e-2, 1e-2),
    Precision.FP16: (1e-2, 1e-2),
    Precision.BF16: (5e-2, 5e-2),
    Precision.INT8: (1e-1, 1e-1),
}

ERROR_LIMITS: dict[Precision, float] = {
    Precision.FP32: 1e-4,
    Precision.TF32: 5e-2,
    Precision.FP16: 5e-2,
    Precision.BF16: 5e-2,
    Precision.INT8: 1e-1,
}
