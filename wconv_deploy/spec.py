"""The one description of a model's inputs: names, dtypes, and which axes vary over what range.

``--input-shape`` and ``--dynamic`` are parsed here once, into an :class:`InputSpec`. Everything
else that needs shapes asks the spec: the dummy inputs for export and validation, the
exporter's dynamic axes, and (in later stages) TensorRT optimisation profiles and Triton dims.

Syntax::

    --input-shape 1x3x224x224                      one input, named "input"
    --input-shape x:1x3x224x224,mask:1x1x224x224   named inputs
    --input-shape x:1x3x224x224:float16            an optional dtype per input
    --dynamic batch                                 axis 0 of every input varies
    --dynamic batch,height,width                    ... and the spatial axes
    --dynamic all                                   every axis but channels
    --dynamic batch=1:64,height=32:512              explicit min:max ranges

Axes are named by their position, as in PyTorch's layouts: rank 2 ``batch, features``;
rank 3 ``batch, channels, length``; rank 4 ``batch, channels, height, width``; rank 5
``batch, channels, depth, height, width``. The value in ``--input-shape`` is the optimum (the
shape exported and validated first); a dynamic axis without an explicit range spans
``1..max(8, 2*opt)`` for ``batch`` and ``opt//2..2*opt`` for the others. A name used by
several inputs is one shared dimension (every input has the same batch size).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .errors import InputError, first_line

AXIS_NAMES: dict[int, tuple[str, ...]] = {
    1: ("batch",),
    2: ("batch", "features"),
    3: ("batch", "channels", "length"),
    4: ("batch", "channels", "height", "width"),
    5: ("batch", "channels", "depth", "height", "width"),
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

#: The most bytes one set of inputs may take unless the user raises it (``--max-input-gb``): a
#: typo such as 1x3x99999x99999 must be one line, not a 40 GB allocation that kills the machine.
MAX_INPUT_GB = 4.0
#: No axis is larger than ONNX Runtime and TensorRT index (int32); a larger one is a corrupt spec.
MAX_DIM = 2**31 - 1

_input_limit: contextvars.ContextVar[float] = contextvars.ContextVar("input_limit_gb", default=MAX_INPUT_GB)


def input_limit_bytes() -> int:
    """The most bytes one set of inputs may take here (see :func:`input_limit`)."""
    return int(_input_limit.get() * 2**30)


@contextlib.contextmanager
def input_limit(gb: float) -> Iterator[None]:
    """Within the block, specs may take up to ``gb`` GiB per set of inputs (instead of MAX_INPUT_GB)."""
    if not gb > 0 or not math.isfinite(gb):
        raise InputError(f"--max-input-gb {gb}: must be a positive number")
    token = _input_limit.set(gb)
    try:
        yield
    finally:
        _input_limit.reset(token)


@dataclass(frozen=True)
class Dim:
    """One axis: its name and its size range; ``min == opt == max`` when static."""

    name: str
    opt: int
    min: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max


@dataclass(frozen=True)
class TensorSpec:
    """One named input: its axes and dtype."""

    name: str
    dims: tuple[Dim, ...]
    dtype: str = "float32"

    def shape(self, which: str = "opt") -> tuple[int, ...]:
        """The concrete shape at ``which`` in ``"min"``, ``"opt"`` or ``"max"``."""
        return tuple(getattr(d, which) for d in self.dims)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class InputSpec:
    """All inputs of a model, in the order ``forward`` takes them."""

    inputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        """Refuse a spec whose inputs could not be allocated, before anything allocates them."""
        for t in self.inputs:
            if any(d.max > MAX_DIM for d in t.dims):
                raise InputError(f"input {t.name!r}: an axis larger than {MAX_DIM} ({self.describe_one(t)}) is not a real shape")
        need, shapes = max((self._bytes(s), s) for s in self.validation_shapes())
        if need > input_limit_bytes():
            raise InputError(
                f"the inputs at {', '.join('x'.join(map(str, s)) for s in shapes)} take {need / 2**30:.1f} GiB, "
                f"more than the {_input_limit.get():g} GiB limit; check the shape, or pass --max-input-gb to raise the limit"
            )

    def _bytes(self, shapes: Sequence[tuple[int, ...]]) -> int:
        """Bytes of one set of inputs at ``shapes``."""
        return sum(math.prod(s) * np.dtype(t.dtype).itemsize for t, s in zip(self.inputs, shapes))

    # ----------------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, input_shape: str, dynamic: str | None = None) -> InputSpec:
        """Build a spec from the ``--input-shape`` and ``--dynamic`` strings (InputError if malformed)."""
        spec = cls(tuple(_parse_inputs(input_shape)))
        return spec.with_dynamic(dynamic) if dynamic else spec

    def with_dynamic(self, dynamic: str) -> InputSpec:
        """A copy in which the axes named in ``dynamic`` vary (see the module docstring)."""
        known = {d.name for t in self.inputs for d in t.dims}
        ranges: dict[str, tuple[int, int] | None] = {}
        for item in _split(dynamic, "--dynamic"):
            name, has_range, rng = item.partition("=")
            name = name.strip()
            if name == "all":
                if has_range:
                    raise InputError("--dynamic: 'all' takes no range")
                for n in known - {"channels"}:
                    ranges.setdefault(n, None)  # an explicit range given before 'all' stays
                continue
            if name not in known:
                raise InputError(f"--dynamic: no input has an axis named {name!r} (axes: {', '.join(_ordered_names(self))})")
            if name == "channels":
                raise InputError("--dynamic: channels cannot vary: a convolution's weights fix them")
            ranges[name] = _parse_range(name, rng) if has_range else None
        for name in ranges:  # one name is one dimension: every input must agree on its size
            sizes = {t.name: d.opt for t in self.inputs for d in t.dims if d.name == name}
            if len(set(sizes.values())) > 1:
                raise InputError(
                    f"--dynamic: {name} is one shared dimension but the inputs differ in it "
                    f"({', '.join(f'{k}={v}' for k, v in sizes.items())})"
                )
        inputs = tuple(
            replace(t, dims=tuple(_make_dynamic(d, ranges[d.name]) if d.name in ranges else d for d in t.dims))
            for t in self.inputs
        )
        return InputSpec(inputs)

    # ----------------------------------------------------------------------- queries
    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def dynamic_axes(self) -> dict[str, Dim]:
        """Every dynamic axis by name (one entry however many inputs share it)."""
        return {d.name: d for t in self.inputs for d in t.dims if d.dynamic}

    def shapes(self, which: str = "opt") -> list[tuple[int, ...]]:
        return [t.shape(which) for t in self.inputs]

    def validation_shapes(self) -> list[list[tuple[int, ...]]]:
        """Input shapes to validate at: the optimum, every dynamic axis at its minimum, and the
        non-batch dynamic axes at their maximum with a batch one larger than the optimum
        (kept small: the corners of a range cost time, not insight)."""
        sets = [self.shapes("opt"), self.shapes("min")]
        if self.dynamic_axes:
            big = []
            for t in self.inputs:
                big.append(tuple(min(d.max, d.opt + 1) if d.name == "batch" else d.max if d.dynamic else d.opt for d in t.dims))
            sets.append(big)
        unique: list[list[tuple[int, ...]]] = []
        for s in sets:
            if s not in unique:
                unique.append(s)
        return unique

    def example_inputs(self, shapes: Sequence[tuple[int, ...]] | None = None, seed: int = 0) -> list[torch.Tensor]:
        """Seeded standard-normal inputs (random integers for integer dtypes) of ``shapes``."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for t, shape in zip(self.inputs, shapes or self.shapes("opt")):
            if t.torch_dtype.is_floating_point:
                out.append(torch.randn(shape, generator=gen).to(t.torch_dtype))
            elif t.torch_dtype == torch.bool:
                out.append(torch.randint(0, 2, shape, generator=gen).bool())
            else:
                out.append(torch.randint(0, 10, shape, generator=gen).to(t.torch_dtype))
        return out

    def export_shapes(self) -> list[tuple[int, ...]]:
        """Shapes to trace with: the optimum, except that a dynamic axis never traces at size 0
        or 1 (torch.export would specialise the graph to that size)."""
        return [tuple(min(d.max, 2) if d.dynamic and d.opt < 2 else d.opt for d in t.dims) for t in self.inputs]

    def torch_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``dynamic_shapes`` for ``torch.export``/``torch.onnx.export(dynamo=True)``: one
        ``torch.export.Dim`` per axis name, shared across inputs, so the ONNX graph names its
        symbolic dimensions ``batch``, ``height``, ..."""
        dims = {name: torch.export.Dim(name, min=d.min, max=d.max) for name, d in self.dynamic_axes.items()}
        return tuple({i: dims[d.name] for i, d in enumerate(t.dims) if d.dynamic} for t in self.inputs)

    def legacy_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for the TorchScript-based exporter (inputs; outputs are named by the graph)."""
        axes = {t.name: {i: d.name for i, d in enumerate(t.dims) if d.dynamic} for t in self.inputs}
        return {k: v for k, v in axes.items() if v}

    def check_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Raise InputError unless ``arrays`` fits this spec (names, ranks, static sizes, ranges)."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise InputError(f"inputs lack {', '.join(missing)} (expected: {', '.join(self.names)})")
        for t in self.inputs:
            a = arrays[t.name]
            if a.ndim != len(t.dims) or any(not d.min <= s <= d.max for d, s in zip(t.dims, a.shape)):
                raise InputError(f"input {t.name!r} has shape {list(a.shape)}, which is outside {self.describe_one(t)}")

    # ----------------------------------------------------------------------- text and JSON
    def describe_one(self, t: TensorSpec) -> str:
        dims = "x".join(f"{d.name}[{d.min}..{d.max}]" if d.dynamic else str(d.opt) for d in t.dims)
        return f"{t.name}:{dims}:{t.dtype}"

    def __str__(self) -> str:
        return ", ".join(self.describe_one(t) for t in self.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [
                {"name": t.name, "dtype": t.dtype, "dims": [[d.name, d.min, d.opt, d.max] for d in t.dims]} for t in self.inputs
            ]
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Read a spec written by :meth:`to_dict` (InputError if it is not one)."""
        try:
            spec = cls(
                tuple(
                    TensorSpec(
                        str(t["name"]),
                        tuple(Dim(str(n), int(opt), int(lo), int(hi)) for n, lo, opt, hi in t["dims"]),
                        str(t.get("dtype", "float32")),
                    )
                    for t in data["inputs"]
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise InputError(f"not an input spec: {first_line(e)}") from None
        for t in spec.inputs:
            if t.dtype not in DTYPES or not _NAME.match(t.name):
                raise InputError(f"not an input spec: input {t.name!r} of dtype {t.dtype!r}")
            if not t.dims or any(not 1 <= d.min <= d.opt <= d.max for d in t.dims):
                raise InputError(f"not an input spec: input {t.name!r} has an empty or inverted range")
        return spec


def _split(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise InputError(f"{flag}: empty item in {text!r}")
    return items


def _ordered_names(spec: InputSpec) -> list[str]:
    seen: list[str] = []
    for t in spec.inputs:
        seen += [d.name for d in t.dims if d.name not in seen]
    return seen


def _parse_inputs(text: str) -> list[TensorSpec]:
    items = _split(text, "--input-shape")
    specs = []
    for i, item in enumerate(items):
        parts = item.split(":")
        if len(parts) == 1:
            name, shape, dtype = ("input" if len(items) == 1 else f"input_{i}"), parts[0], "float32"
        elif len(parts) == 2:
            if _is_shape(parts[0]):
                raise InputError(f"--input-shape: {item!r}: write name:shape[:dtype]")
            name, shape, dtype = parts[0], parts[1], "float32"
        elif len(parts) == 3:
            name, shape, dtype = parts
        else:
            raise InputError(f"--input-shape: {item!r} is not name:shape[:dtype]")
        name, dtype = name.strip(), dtype.strip()
        if not _NAME.match(name):
            raise InputError(f"--input-shape: {name!r} is not a valid input name")
        if dtype not in DTYPES:
            raise InputError(f"--input-shape: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not _is_shape(shape):
            raise InputError(f"--input-shape: {shape!r} is not a shape like 1x3x224x224")
        sizes = [int(s) for s in shape.strip().lower().split("x")]
        if any(s < 1 for s in sizes):
            raise InputError(f"--input-shape: {shape!r} has a zero-sized axis")
        if len(sizes) not in AXIS_NAMES:
            raise InputError(f"--input-shape: {shape!r} has rank {len(sizes)}; ranks 1 to 5 are supported")
        dims = tuple(Dim(n, s, s, s) for n, s in zip(AXIS_NAMES[len(sizes)], sizes))
        specs.append(TensorSpec(name, dims, dtype))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"--input-shape: input names repeat: {', '.join(names)}")
    return specs


def _is_shape(text: str) -> bool:
    return re.fullmatch(r"\s*\d+(\s*[xX]\s*\d+)*\s*", text) is not None


def _parse_range(name: str, text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m:
        raise InputError(f"--dynamic: {name}={text!r} is not a min:max range")
    lo, hi = int(m.group(1)), int(m.group(2))
    if not 1 <= lo <= hi:
        raise InputError(f"--dynamic: {name}={text}: need 1 <= min <= max")
    return lo, hi


def _make_dynamic(d: Dim, rng: tuple[int, int] | None) -> Dim:
    if rng is None:
        rng = (1, max(8, 2 * d.opt)) if d.name == "batch" else (max(1, d.opt // 2), 2 * d.opt)
    lo, hi = rng
    if not lo <= d.opt <= hi:
        raise InputError(f"--dynamic: {d.name}={lo}:{hi} does not contain the --input-shape size {d.opt}")
    if lo == hi:
        raise InputError(f"--dynamic: {d.name}={lo}:{hi} is a single size; leave the axis static instead")
    return Dim(d.name, d.opt, lo, hi)
