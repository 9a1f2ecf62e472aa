"""Building blocks shared by the zoo's networks: the conv factory that makes k x k (k > 1, odd)
convolutions weighted, and the default density per kernel size. Importing this module does not
import torch (listing the zoo must stay cheap); the factory does when it makes a layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

#: Default density per kernel size, inside the reference's suggested ranges (3x3: [0.5, 1.5];
#: 5x5: [0.05, 1], [0.5, 1.5]; 7x7: [0.05, 0.5], [0.15, 1.0], [0.25, 1.5]; outermost first).
DEFAULT_DEN: dict[int, tuple[float, ...]] = {3: (0.75,), 5: (0.5, 1.0), 7: (0.25, 0.5, 0.75)}

DenArg = float | Sequence[float] | Mapping[int, Sequence[float]] | None


def density_table(den: DenArg) -> dict[int, tuple[float, ...]]:
    """Normalise a ``den`` argument to {kernel size: density}.

    A float or a sequence of length m sets the density of (2m+1) x (2m+1) kernels; a mapping
    sets several sizes; other sizes keep :data:`DEFAULT_DEN`.
    """
    table = dict(DEFAULT_DEN)
    if den is None:
        return table
    if isinstance(den, Mapping):
        table.update({int(k): tuple(float(v) for v in d) for k, d in den.items()})
        return table
    values = (float(den),) if isinstance(den, (int, float)) else tuple(float(v) for v in den)
    if not values:
        raise ValueError("den must not be empty")
    table[2 * len(values) + 1] = values
    return table


class ConvFactory:
    """Makes the 2-D convolutions of a zoo network: weighted (fixed or trainable density) for
    odd k x k kernels with k > 1, ordinary ``nn.Conv2d`` otherwise or when ``weighted=False``."""

    def __init__(self, weighted: bool = True, den: DenArg = None, trainable: bool = False) -> None:
        self.weighted = weighted
        self.trainable = trainable
        self.den = density_table(den)

    def __call__(self, cin: int, cout: int, k: int, **kw: Any) -> nn.Module:
        from torch import nn

        from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d

        kw.setdefault("padding", k // 2)
        kw.setdefault("bias", True)
        if not self.weighted or k == 1 or k % 2 == 0:
            return nn.Conv2d(cin, cout, k, **kw)
        den = self.den.get(k)
        if den is None:
            raise ValueError(f"no density for {k}x{k} kernels; pass den={{{k}: [...]}}")
        if self.trainable:
            return TrainableWeightedConv2d(cin, cout, k, den=den, **kw)
        return WeightedConv2d(cin, cout, k, den, **kw)
