"""The report protocol: every stage returns a dataclass whose JSON comes from its fields.

A report declares its data once, as dataclass fields (plus ``JSON_EXTRA``: derived properties
such as ``passed`` that JSON readers want too), and writes only ``render()``, the terminal view of
those same fields. :func:`dumps` is the one JSON writer: dataclasses, enums, paths and NumPy
scalars become JSON values, and NaN or infinities become ``null``, so output is always valid
JSON (Python's ``json`` would print the invalid tokens ``NaN`` and ``Infinity``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar


class Status(str, enum.Enum):
    """The outcome of one step or row: typed, never a string prefix to test."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (see the module docstring)."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, Report) and callable(getattr(value, "to_dict", None)):
        return jsonable(value.to_dict())  # a value with its own file format (InputSpec)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
        for name in getattr(value, "JSON_EXTRA", ()):
            data[name] = jsonable(getattr(value, name))
        return data
    if isinstance(value, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a NumPy scalar or 0-d array
        return jsonable(value.item())
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return str(value)


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """Valid JSON for ``value`` (a report, or any data :func:`jsonable` takes)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


class Report:
    """Base of every report dataclass: JSON from the fields, ``render()`` for the terminal."""

    #: Properties included in the JSON besides the fields (e.g. ``("passed",)``).
    JSON_EXTRA: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        data = jsonable(self)
        assert isinstance(data, dict)
        return data

    def to_json(self) -> str:
        return dumps(self)

    def render(self) -> str:
        """The report as terminal text."""
        raise NotImplementedError
