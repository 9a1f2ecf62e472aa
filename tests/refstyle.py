"""Reference-style weighted convolution code, written from the spec (not copied), for tests.

Users trained with two modules, ``wConv`` (fixed density) and ``wConv_Trainable`` (learned
density), each defining ``wConv1d/2d/3d`` as plain ``nn.Module`` subclasses. :func:`install`
writes modules that follow the spec's description of them (constructor signatures, defaults,
attribute names, buffers and parameters) into a folder, so tests can pickle whole models that
refer to ``wConv.wConv2d`` and friends and then load them where that folder is not importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_COMMON = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _ntuple

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _mask(alfa, dims):
    if dims == 1:
        return alfa
    if dims == 2:
        return torch.outer(alfa, alfa)
    return torch.einsum("i,j,k->ijk", alfa, alfa, alfa)


def _init(self, dims, in_channels, out_channels, kernel_size, stride, padding, groups, dilation, bias):
    nn.Module.__init__(self)
    tup = _ntuple(dims)
    self.stride = tup(stride)
    self.padding = tup(padding)
    self.kernel_size = tup(kernel_size)
    self.groups = groups
    self.dilation = tup(dilation)
    self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
    nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
    self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
"""

FIXED_SOURCE = (
    _COMMON
    + """

class _Fixed(nn.Module):
    dims = 0

    def __init__(self, in_channels, out_channels, kernel_size, den, stride=1, padding=1, groups=1, dilation=1, bias=False):
        _init(self, self.dims, in_channels, out_channels, kernel_size, stride, padding, groups, dilation, bias)
        d = torch.tensor(den)
        self.register_buffer("alfa", torch.cat([d, torch.tensor([1.0]), d.flip(0)]))
        self.register_buffer("Phi", _mask(self.alfa, self.dims))
        if tuple(self.Phi.shape) != tuple(self.kernel_size):
            raise ValueError("den does not fit kernel_size")

    def forward(self, x):
        w = self.weight * self.Phi.to(x.device)
        return _CONV[self.dims](x, w, bias=self.bias, stride=self.stride, padding=self.padding,
                                groups=self.groups, dilation=self.dilation)


class wConv1d(_Fixed):
    dims = 1


class wConv2d(_Fixed):
    dims = 2


class wConv3d(_Fixed):
    dims = 3
"""
)

TRAINABLE_SOURCE = (
    _COMMON
    + """

class _Trainable(nn.Module):
    dims = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=1, groups=1, dilation=1, bias=False):
        _init(self, self.dims, in_channels, out_channels, kernel_size, stride, padding, groups, dilation, bias)
        self.den = nn.Parameter(torch.tensor([0.27, 0.17, 0.54]))

    def forward(self, x):
        one = torch.ones(1, device=self.den.device, dtype=self.den.dtype)
        phi = _mask(torch.cat([self.den, one, self.den.flip(0)]), self.dims)
        if tuple(phi.shape) != tuple(self.kernel_size):
            raise ValueError("den does not fit kernel_size")
        return _CONV[self.dims](x, self.weight * phi, bias=self.bias, stride=self.stride,
                                padding=self.padding, groups=self.groups, dilation=self.dilation)


class wConv1d(_Trainable):
    dims = 1


class wConv2d(_Trainable):
    dims = 2


class wConv3d(_Trainable):
    dims = 3
"""
)


def install(folder: Path) -> Path:
    """Write ``wConv.py`` and ``wConv_Trainable.py`` into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wConv.py").write_text(FIXED_SOURCE)
    (folder / "wConv_Trainable.py").write_text(TRAINABLE_SOURCE)
    return folder


def run_with_reference(folder: Path, script: str) -> None:
    """Run ``script`` in a fresh interpreter with the reference-style modules importable from
    ``folder`` (its working directory), failing the test if the script fails."""
    install(folder)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"reference-style script failed:\n{result.stderr}")
