"""The one interface every backend implements, so validation and benchmarks treat them alike.

A runtime takes named NumPy arrays and returns the model's outputs as a list of NumPy arrays,
in the model's output order. Building one may be slow (sessions, engines); running is the hot path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class Runtime(ABC):
    """Run a model on named inputs. ``name`` is what reports call it (e.g. ``onnxruntime-cpu``)."""

    name: str = "runtime"

    @property
    @abstractmethod
    def input_names(self) -> list[str]:
        """The inputs ``run`` expects, in the model's order."""

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (one array per input name)."""


def outputs_of(result: Any) -> list[torch.Tensor]:
    """The tensors of a forward result (a tensor, or tuples/lists/dicts of them), in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in outputs_of(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in outputs_of(v)]
    return []
