"""Calling a PyTorch model as every stage does: the tensors of a forward result, in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def outputs_of(result: Any) -> list[torch.Tensor]:
    """The tensors of a forward result (a tensor, or tuples/lists/dicts of them), in order."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in outputs_of(v)]
    if isinstance(result, (list, tuple)):
        return [t for v in result for t in outputs_of(v)]
    return []
