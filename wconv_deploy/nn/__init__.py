"""Weighted convolution layers.

A weighted convolution multiplies every kernel tap by a density value that depends only on the
tap's offset from the kernel centre (see ``shared/spec/weighted-convolution.md``)::

    alfa = den ++ [1] ++ reverse(den)          # length k = 2 * len(den) + 1
    Phi  = alfa ⊗ ... ⊗ alfa                   # one factor per spatial dimension
    y    = conv_nd(x, weight * Phi, bias, stride, padding, dilation, groups)

The classes here keep the reference implementation's constructor signatures, defaults
(``padding=1``, ``bias=False``), attribute names and ``state_dict`` keys, so a model trained with
the reference code loads into them unchanged. Readable names:

- :class:`WeightedConv1d`, :class:`WeightedConv2d`, :class:`WeightedConv3d`: fixed density
  (buffers ``alfa`` and ``Phi``), the reference's ``wConv.wConvNd``;
- :class:`TrainableWeightedConv1d`, ... : learned density (parameter ``den``), the reference's
  ``wConv_Trainable.wConvNd``.

The reference names are importable from :mod:`wconv_deploy.nn.wConv` and
:mod:`wconv_deploy.nn.wConv_Trainable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

__all__ = [
    "REFERENCE_TRAINABLE_DEN",
    "TrainableWeightedConv1d",
    "TrainableWeightedConv2d",
    "TrainableWeightedConv3d",
    "WeightedConv1d",
    "WeightedConv2d",
    "WeightedConv3d",
    "WeightedConvNd",
    "alfa_from_den",
    "phi_from_alfa",
    "phi_from_den",
]

#: The reference's initial trainable density (outermost first); it fits a 7-tap kernel.
REFERENCE_TRAINABLE_DEN = (0.27, 0.17, 0.54)

IntOrTuple = int | Sequence[int]


def alfa_from_den(den: Tensor) -> Tensor:
    """The symmetric 1-D profile ``den ++ [1] ++ reverse(den)`` (length ``2 * len(den) + 1``)."""
    centre = torch.ones(1, dtype=den.dtype, device=den.device)
    return torch.cat([den, centre, torch.flip(den, dims=[0])])


def phi_from_alfa(alfa: Tensor, dims: int) -> Tensor:
    """The separable mask ``alfa ⊗ ... ⊗ alfa`` with ``dims`` factors (shape ``(k,) * dims``)."""
    phi = alfa
    for _ in range(dims - 1):
        phi = phi.unsqueeze(-1) * alfa
    return phi


def phi_from_den(den: Tensor, dims: int) -> Tensor:
    """The density mask ``Phi`` for a density vector ``den`` (outermost value first)."""
    return phi_from_alfa(alfa_from_den(den), dims)


def _den_tensor(den: Sequence[float] | Tensor) -> Tensor:
    """``den`` as a 1-D floating tensor (the default dtype unless it already is floating)."""
    t = torch.as_tensor(den)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() != 1:
        raise ValueError(f"den must be a 1-D sequence of numbers, got shape {tuple(t.shape)}")
    return t.detach().clone()


class WeightedConvNd(nn.Module):
    """Shared state and forward pass of every weighted convolution.

    Subclasses set ``dims`` and implement :meth:`phi`. Only the attributes the reference stores
    live in ``__dict__`` (``stride``, ``padding``, ``kernel_size``, ``dilation``, ``groups``,
    ``weight``, ``bias``); everything else is derived, so modules unpickled from reference
    files behave exactly like freshly built ones.
    """

    dims: ClassVar[int]
    trainable: ClassVar[bool]
    __constants__ = ["dims"]  # lets torch.jit.script read the class attribute

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple | str = 1,
        groups: int = 1,
        dilation: IntOrTuple = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        tup = _ntuple(self.dims)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        self.stride = tuple(tup(stride))
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or numbers, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: tuple[int, ...] | str = padding
        else:
            self.padding = tuple(tup(padding))
        self.kernel_size = tuple(tup(kernel_size))
        self.groups = groups
        self.dilation = tuple(tup(dilation))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def phi(self) -> Tensor:
        """The density mask, shape ``kernel_size``."""
        raise NotImplementedError

    def density(self) -> list[float]:
        """The density vector ``den`` (outermost value first) as plain floats."""
        raise NotImplementedError

    def folded_weight(self) -> Tensor:
        """``weight * Phi``: the weight of the ordinary convolution this layer equals."""
        phi = self.phi()
        # weight.shape[2:] is kernel_size; a tracer would record the comparison as a constant
        if not torch.jit.is_tracing() and phi.shape != self.weight.shape[2:]:
            raise ValueError(
                f"density of length {(phi.shape[0] - 1) // 2} gives a {list(phi.shape)} mask, "
                f"but kernel_size is {self.kernel_size}"
            )
        return self.weight * phi

    def forward(self, x: Tensor) -> Tensor:
        # One call per dimensionality (not a lookup table) so that torch.jit.script compiles it.
        weight = self.folded_weight()
        if self.dims == 1:
            return F.conv1d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.dims == 2:
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.conv3d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        den = ", ".join(f"{v:.4g}" for v in self.density())
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"den=[{den}], stride={self.stride}, padding={self.padding}"
        )
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"


class _FixedWeightedConvNd(WeightedConvNd):
    """Fixed density: ``alfa`` and ``Phi`` are buffers saved in the state_dict."""

    if TYPE_CHECKING:  # buffers, for the type checker (TorchScript cannot read these annotations)
        alfa: Tensor
        Phi: Tensor

    trainable = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        den: Sequence[float] | Tensor,
        stride: IntOrTuple = 1,
        padding: IntOrTuple | str = 1,
        groups: int = 1,
        dilation: IntOrTuple = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups, dilation, bias)
        alfa = alfa_from_den(_den_tensor(den))
        phi = phi_from_alfa(alfa, self.dims).clone()
        self.register_buffer("alfa", alfa)
        self.register_buffer("Phi", phi)
        if tuple(phi.shape) != tuple(self.kernel_size):
            raise ValueError(
                f"den of length {len(alfa) // 2} gives a {len(alfa)}-tap kernel, but kernel_size is {self.kernel_size}"
            )

    def phi(self) -> Tensor:
        return self.Phi

    def density(self) -> list[float]:
        return [float(v) for v in self.alfa[: self.alfa.shape[0] // 2]]


class _TrainableWeightedConvNd(WeightedConvNd):
    """Learned density: ``den`` is a parameter and ``Phi`` is rebuilt on every forward pass.

    ``den`` (keyword only, an extension of the reference signature) sets the initial density.
    By default a 7-tap kernel starts from the reference's initial values and any other kernel
    size from all ones (a plain convolution), so every odd kernel size can be built.
    """

    trainable = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple | str = 1,
        groups: int = 1,
        dilation: IntOrTuple = 1,
        bias: bool = False,
        *,
        den: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups, dilation, bias)
        k = self.kernel_size[0]
        if any(s != k for s in self.kernel_size) or k % 2 == 0:
            raise ValueError(f"kernel_size must be odd and the same in every dimension, got {self.kernel_size}")
        if den is None:
            m = (k - 1) // 2
            den = REFERENCE_TRAINABLE_DEN if m == len(REFERENCE_TRAINABLE_DEN) else [1.0] * m
        den_t = _den_tensor(den)
        if 2 * den_t.shape[0] + 1 != k:
            raise ValueError(
                f"den of length {den_t.shape[0]} gives a {2 * den_t.shape[0] + 1}-tap kernel, "
                f"but kernel_size is {self.kernel_size}"
            )
        self.den = nn.Parameter(den_t)

    def phi(self) -> Tensor:
        return phi_from_den(self.den, self.dims)

    def density(self) -> list[float]:
        return [float(v) for v in self.den.detach()]


class WeightedConv1d(_FixedWeightedConvNd):
    """1-D weighted convolution with fixed density (reference: ``wConv.wConv1d``)."""

    dims = 1


class WeightedConv2d(_FixedWeightedConvNd):
    """2-D weighted convolution with fixed density (reference: ``wConv.wConv2d``)."""

    dims = 2


class WeightedConv3d(_FixedWeightedConvNd):
    """3-D weighted convolution with fixed density (reference: ``wConv.wConv3d``)."""

    dims = 3


class TrainableWeightedConv1d(_TrainableWeightedConvNd):
    """1-D weighted convolution with learned density (reference: ``wConv_Trainable.wConv1d``)."""

    dims = 1


class TrainableWeightedConv2d(_TrainableWeightedConvNd):
    """2-D weighted convolution with learned density (reference: ``wConv_Trainable.wConv2d``)."""

    dims = 2


class TrainableWeightedConv3d(_TrainableWeightedConvNd):
    """3-D weighted convolution with learned density (reference: ``wConv_Trainable.wConv3d``)."""

    dims = 3


FIXED: dict[int, type[WeightedConvNd]] = {1: WeightedConv1d, 2: WeightedConv2d, 3: WeightedConv3d}
TRAINABLE: dict[int, type[WeightedConvNd]] = {
    1: TrainableWeightedConv1d,
    2: TrainableWeightedConv2d,
    3: TrainableWeightedConv3d,
}
