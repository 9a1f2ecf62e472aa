"""The runtime registry: every backend module registers its runtimes here; this module imports none.

An entry says what a runtime needs (a PyTorch module, an ONNX file or an engine), where it
computes, at which precision, which extra installs it, why it cannot run here, and how to build
it. Importing this module imports its package, ``wconv_deploy.runtimes``, whose ``__init__``
imports every backend module in the folder, so the registry is full before anyone asks it; adding
a runtime is one new module (plus its tests) that calls :func:`register`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:
    from wconv_deploy.runtimes.base import Runtime

#: What a runtime runs: a PyTorch module, an ONNX file, or a serialised TensorRT engine.
ArtifactKind = Literal["torch", "onnx", "engine"]
#: How each kind is named in messages.
KIND_NAMES: dict[str, str] = {
    "torch": "a PyTorch model (a model file or zoo:NAME)",
    "onnx": "an ONNX file",
    "engine": "a TensorRT engine (.plan or .engine)",
}


@dataclass(frozen=True)
class Artifacts:
    """What runtimes are built on; each takes the one of its kind. ``spec`` describes the inputs
    (the runtime checks feeds against it); ``trust_code`` lets a version-compatible TensorRT
    engine run the runtime code embedded in it."""

    model: Any = None  # an nn.Module
    onnx_path: Path | None = None
    engine_path: Path | None = None
    spec: InputSpec | None = None
    input_names: tuple[str, ...] = ("input",)
    threads: int = 0
    trust_code: bool = False

    @property
    def names(self) -> list[str]:
        """The model's input names: the spec's, else ``input_names``."""
        return self.spec.names if self.spec is not None else list(self.input_names)

    def of_kind(self, kind: ArtifactKind) -> Any:
        return {"torch": self.model, "onnx": self.onnx_path, "engine": self.engine_path}[kind]


@dataclass(frozen=True)
class RuntimeEntry:
    """One registered runtime."""

    name: str
    kind: ArtifactKind
    device: Literal["cpu", "cuda"]
    precision: Precision
    extra: str  # the wconv-deploy extra that installs it
    unavailable: Callable[[], str | None]  # why it cannot run on this machine; None: it can
    build: Callable[[RuntimeEntry, Artifacts], Runtime]
    serves: bool = True  # whether `serve` may run an artifact with it (torch runtimes: no)
    in_default_bench: bool = True  # part of bench's default list (compiling ones are not: minutes)


_ENTRIES: dict[str, RuntimeEntry] = {}


def register(entry: RuntimeEntry) -> None:
    """Add a runtime (each name once)."""
    if entry.name in _ENTRIES:
        raise ValueError(f"runtime {entry.name!r} is registered twice")
    _ENTRIES[entry.name] = entry


def entries() -> list[RuntimeEntry]:
    """Every registered runtime, in registration order."""
    return list(_ENTRIES.values())


def names(kind: ArtifactKind | None = None) -> list[str]:
    """The registered runtime names (of one artifact kind)."""
    return [e.name for e in entries() if kind is None or e.kind == kind]


def get(name: str) -> RuntimeEntry:
    """The entry of runtime ``name`` (InputError listing the known names)."""
    if name not in _ENTRIES:
        raise InputError(f"unknown runtime {name!r} (known: {', '.join(_ENTRIES)})")
    return _ENTRIES[name]


def unavailable_reason(name: str) -> str | None:
    """Why runtime ``name`` cannot run on this machine, or None when it can."""
    return get(name).unavailable()


def create(name: str, artifacts: Artifacts) -> Runtime:
    """Build runtime ``name`` on the artifact it needs; InputError if it is unavailable here or
    the artifact is missing."""
    entry = get(name)
    reason = entry.unavailable()
    if reason:
        raise InputError(f"{name}: {reason}")
    if artifacts.of_kind(entry.kind) is None:
        raise InputError(f"{name} needs {KIND_NAMES[entry.kind]} among the artifacts")
    return entry.build(entry, artifacts)


def create_runtime(
    name: str,
    *,
    onnx_path: str | os.PathLike[str] | None = None,
    engine_path: str | os.PathLike[str] | None = None,
    model: Any = None,
    spec: InputSpec | None = None,
    input_names: Sequence[str] = ("input",),
    threads: int = 0,
    trust_code: bool = False,
) -> Runtime:
    """:func:`create` with keyword arguments (``input_names``: a PyTorch model's inputs when no
    ``spec`` names them)."""
    return create(
        name,
        Artifacts(
            model=model,
            onnx_path=None if onnx_path is None else Path(onnx_path),
            engine_path=None if engine_path is None else Path(engine_path),
            spec=spec,
            input_names=tuple(input_names),
            threads=threads,
            trust_code=trust_code,
        ),
    )
