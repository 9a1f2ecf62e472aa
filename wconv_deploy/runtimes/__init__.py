"""Runtimes: one interface (:class:`Runtime`) to run any artifact on the same named inputs.

Every module of this package other than ``base`` and ``registry`` is a backend that registers its
runtimes on import (:mod:`wconv_deploy.runtimes.registry`); they are imported here, and each
imports its heavy library (torch, onnxruntime, openvino, tensorrt) only when a runtime is built
or its availability is asked.
"""

from __future__ import annotations

import importlib
import pkgutil

from wconv_deploy.runtimes.base import Runtime, RuntimeInfo, cpu_name
from wconv_deploy.runtimes.registry import (
    Artifacts,
    RuntimeEntry,
    create,
    create_runtime,
    entries,
    get,
    names,
    unavailable_reason,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Artifacts",
    "Runtime",
    "RuntimeEntry",
    "RuntimeInfo",
    "cpu_name",
    "create",
    "create_runtime",
    "entries",
    "get",
    "names",
    "unavailable_reason",
]
