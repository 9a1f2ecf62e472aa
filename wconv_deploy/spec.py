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

The spec answers every shape question: the largest batch, whether a model batches (the one rule
Triton packaging and serving share, :meth:`InputSpec.batches`), the spec at one batch size, the
spec an engine's optimisation profile describes, and the dims Triton's config lists. Importing
this module does not import torch (``verify`` runs where torch is not installed).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, first_line

if TYPE_CHECKING:
    import torch

AXIS_NAMES: dict[int, tuple[str, ...]] = {
    1: ("batch",),
    2: ("batch", "features"),
    3: ("batch", "channels", "length"),
    4: ("batch", "channels", "height", "width"),
    5: ("batch", "channels", "depth", "height", "width"),
}

#: The input dtypes a spec may name (NumPy's names; torch has a dtype of the same name for each).
DTYPES: tuple[str, ...] = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

#: The most bytes one set of inputs may take unless the user raises it (``--max-input-gb``): a
#: typo such as 1x3x99999x99999 must be one line, not a 40 GB allocation that kills the machine.
MAX_INPUT_GB = 4.0
#: No axis is larger than ONNX Runtime and TensorRT index (int32); a larger one is a corrupt spec.
MAX_DIM = 2**31 - 1

#: The most bytes of inputs validation feeds at a range's maximum: a larger batch is cut to fit.
VALIDATION_INPUT_BYTES = 64 << 20

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
        import torch

        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype

    def tensor(self) -> Tensor:
        """This input as a :class:`Tensor` (-1 where an axis varies)."""
        return Tensor(self.name, self.dtype, tuple(-1 if d.dynamic else d.opt for d in self.dims))


@dataclass(frozen=True)
class Tensor:
    """One input or output of an artifact, as its graph, an engine or Triton sees it: name, dtype
    (NumPy's name, e.g. ``float32``) and shape, -1 where an axis varies (None: the graph gives no
    shape). The one tensor type of the project; an input's size *ranges* live in the spec."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None

    @property
    def batch_axis(self) -> bool:
        """Whether axis 0 varies (a candidate batch axis)."""
        return bool(self.shape) and self.shape[0] == -1  # type: ignore[index]

    def triton_dims(self, batching: bool) -> list[int]:
        """The dims Triton's config lists: without axis 0 when the model batches."""
        if self.shape is None:
            raise InputError(f"the graph gives no shape for {self.name!r}; Triton's config needs one")
        if not batching:
            return list(self.shape)
        if len(self.shape) == 1:
            raise InputError(
                f"{self.name!r} has only a batch axis; Triton would need a reshape, which wconv-deploy does not write"
            )
        return list(self.shape[1:])


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

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """The inputs as :class:`Tensor` (-1 where an axis varies)."""
        return tuple(t.tensor() for t in self.inputs)

    # ----------------------------------------------------------------------- batching
    def not_batching_reason(self, outputs: Sequence[Tensor] = ()) -> str | None:
        """Why a model with this spec and these outputs does not batch, or None when it does.

        The one rule (Triton's): axis 0 of every input is the dynamic ``batch`` axis, and axis 0
        of every output varies. ``package`` writes ``max_batch_size`` and ``serve`` serves by it."""
        for t in self.inputs:
            if not t.dims or t.dims[0].name != "batch" or not t.dims[0].dynamic:
                return f"axis 0 of input {t.name!r} is not a dynamic batch ({self.describe_one(t)})"
        for o in outputs:
            if not o.batch_axis:
                return f"axis 0 of output {o.name!r} is fixed: {list(o.shape or [])}"
        return None

    def batches(self, outputs: Sequence[Tensor] = ()) -> bool:
        """Whether the model batches (see :meth:`not_batching_reason`)."""
        return self.not_batching_reason(outputs) is None

    @property
    def max_batch(self) -> int:
        """The largest batch every input takes (0 when axis 0 is not a dynamic batch)."""
        if not self.batches():
            return 0
        return min(t.dims[0].max for t in self.inputs)

    @property
    def min_batch(self) -> int:
        """The smallest batch every input takes (0 when axis 0 is not a dynamic batch)."""
        if not self.batches():
            return 0
        return max(t.dims[0].min for t in self.inputs)

    def at_batch(self, batch: int) -> InputSpec:
        """This spec with the ``batch`` axis fixed at ``batch`` (inputs without one unchanged)."""
        if batch < 1:
            raise InputError(f"batch {batch}: must be 1 or more")
        inputs = []
        for t in self.inputs:
            if t.dims and t.dims[0].name == "batch":
                d = t.dims[0]
                if d.dynamic and not d.min <= batch <= d.max:
                    raise InputError(f"batch {batch} is outside input {t.name!r}'s batch range {d.min}..{d.max}")
                t = replace(t, dims=(Dim(d.name, batch, batch, batch), *t.dims[1:]))
            inputs.append(t)
        return InputSpec(tuple(inputs))

    # ----------------------------------------------------------------------- engine profiles
    def profile(self) -> dict[str, dict[str, list[int]]]:
        """The optimisation profile spanning this spec: ``{input: {"min", "opt", "max"}}``."""
        return {t.name: {k: list(t.shape(k)) for k in ("min", "opt", "max")} for t in self.inputs}

    @classmethod
    def from_profile(cls, profile: Mapping[str, Mapping[str, Sequence[int]]], dtypes: dict[str, str] | None = None) -> InputSpec:
        """The spec an engine's optimisation profile describes (axes named by rank, as parsed)."""
        inputs = []
        for name, shapes in profile.items():
            try:
                lo, opt, hi = (tuple(int(v) for v in shapes[k]) for k in ("min", "opt", "max"))
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"profile of input {name!r} is not min/opt/max shapes: {first_line(e)}") from None
            if len(opt) not in AXIS_NAMES or not len(lo) == len(opt) == len(hi):
                raise InputError(f"profile of input {name!r}: rank {len(opt)}; ranks 1 to 5 are supported")
            if any(not 1 <= a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise InputError(f"profile of input {name!r}: need 1 <= min <= opt <= max on every axis")
            dims = tuple(Dim(n, o, a, c) for n, a, o, c in zip(AXIS_NAMES[len(opt)], lo, opt, hi))
            inputs.append(TensorSpec(name, dims, (dtypes or {}).get(name, "float32")))
        if not inputs:
            raise InputError("the optimisation profile names no inputs")
        return cls(tuple(inputs))

    def validation_shapes(self) -> list[list[tuple[int, ...]]]:
        """Input shapes to validate at: the optimum, every dynamic axis at its minimum, and every
        dynamic axis at its maximum (the batch cut to fit :data:`VALIDATION_INPUT_BYTES`, never
        below the optimum + 1; :meth:`validation_note` says when it was cut)."""
        sets = [self.shapes("opt"), self.shapes("min")]
        if self.dynamic_axes:
            sets.append(self._max_corner()[0])
        unique: list[list[tuple[int, ...]]] = []
        for s in sets:
            if s not in unique:
                unique.append(s)
        return unique

    def validation_note(self) -> str | None:
        """Why validation stops short of a range's maximum (the batch cut by memory), or None."""
        shapes, cut_from = self._max_corner()
        if cut_from is None:
            return None
        batch = next(s[0] for t, s in zip(self.inputs, shapes) if t.dims[0].name == "batch")
        return (
            f"validated up to batch {batch}, not the range's maximum {cut_from}: inputs at the maximum take more "
            f"than {VALIDATION_INPUT_BYTES >> 20} MiB (the model's activations, in PyTorch and ONNX Runtime at once, "
            "are many times that)"
        )

    def _max_corner(self) -> tuple[list[tuple[int, ...]], int | None]:
        """Every axis at its maximum, the batch halved (not below the optimum + 1) until the inputs
        fit VALIDATION_INPUT_BYTES; and the batch maximum when it was cut, else None."""

        def at(batch: int) -> list[tuple[int, ...]]:
            return [tuple(max(d.min, min(d.max, batch)) if d.name == "batch" else d.max for d in t.dims) for t in self.inputs]

        batches = [t.dims[0] for t in self.inputs if t.dims[0].name == "batch" and t.dims[0].dynamic]
        if not batches:
            return at(0), None
        top = min(d.max for d in batches)
        floor = min(top, max(d.opt for d in batches) + 1)
        batch = top
        while batch > floor and self._bytes(at(batch)) > VALIDATION_INPUT_BYTES:
            batch = max(floor, batch // 2)
        return at(batch), (top if batch < top else None)

    def example_inputs(self, shapes: Sequence[tuple[int, ...]] | None = None, seed: int = 0) -> list[torch.Tensor]:
        """Seeded standard-normal inputs (random integers for integer dtypes) of ``shapes``."""
        import torch

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
        import torch

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
