"""ONNX Runtime sessions (CPU by default) behind the :class:`Runtime` interface."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from wconv_deploy.errors import InputError
from wconv_deploy.runtimes.base import Runtime


class OnnxRuntime(Runtime):
    """An ``onnxruntime.InferenceSession`` on ``path`` with the given execution providers."""

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError(
                "onnxruntime is not installed: pip install 'wconv-deploy[cpu]' (or [gpu] for the CUDA build)"
            ) from None

        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise InputError(
                f"onnxruntime here lacks {', '.join(missing)} (available: {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would break one-line output
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=list(providers))
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
            raise InputError(f"onnxruntime cannot load {path}: {str(e).strip().splitlines()[0]}") from None
        self.name = "onnxruntime-" + providers[0].removesuffix("ExecutionProvider").lower()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, dict(feeds))]
