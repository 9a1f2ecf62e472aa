"""What the serving tests share: the small weighted model they serve, its PyTorch answers, a
tritonclient call, and the skip markers for the serve extra."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from wconv_deploy._optional import install_hint
from wconv_deploy.nn import WeightedConv2d

SERVE_HINT = install_hint("serve")
needs_pytriton = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason=f"no pytriton: {SERVE_HINT}")
needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None, reason=f"no tritonclient: {SERVE_HINT}")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        WeightedConv2d(1, 4, 3, [0.3], padding=1), nn.ReLU(), WeightedConv2d(4, 2, 5, [0.1, 0.6], padding=2)
    ).eval()


def reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model()(torch.from_numpy(x)).numpy()


def client(url: str) -> tuple[Any, Any]:
    scheme, address = url.split("://")
    mod = importlib.import_module(f"tritonclient.{scheme}")
    return mod, mod.InferenceServerClient(address)


def infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    """The served model ``name``'s output for ``x``."""
    mod, server = client(url)
    request = mod.InferInput("input", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    return server.infer(name, [request]).as_numpy("output")


def proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2]
