"""PyTorch eager (or TorchScript) models behind the :class:`Runtime` interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wconv_deploy.runtimes.base import Runtime, outputs_of


class TorchRuntime(Runtime):
    """Calls ``model(*inputs)`` in eval mode under ``torch.no_grad`` on ``device``."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], device: str = "cpu") -> None:
        try:
            model = model.eval()
        except NotImplementedError:  # a torch.export program's module keeps the mode it was exported in
            pass
        self.model = model.to(device)
        self.device = torch.device(device)
        self._input_names = list(input_names)
        self.name = f"torch-{self.device.type}"

    @property
    def input_names(self) -> list[str]:
        return self._input_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._input_names]
        with torch.no_grad():
            result = self.model(*args)
        return [t.detach().cpu().numpy() for t in outputs_of(result)]
