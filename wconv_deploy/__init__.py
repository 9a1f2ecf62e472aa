"""wconv-deploy: deploy CNNs trained with the weighted convolution.

Load a trained model safely, fold every weighted convolution into an ordinary one, export it to
ONNX and prove the ONNX computes what PyTorch computes. The public API::

    from wconv_deploy import InputSpec, export_onnx, fold, load_model, validate
    loaded = load_model("model.pt")            # safe by default
    folded, report = fold(loaded, fold_bn=True)
    spec = InputSpec.parse("1x3x224x224", dynamic="batch")
    export = export_onnx(loaded, "model.onnx", spec)          # folds, exports, checks, validates
    check = validate("model.onnx", loaded)                     # the spec is read from the file

Names load on first use, so importing the package (and ``wconv-deploy --help``) imports neither
torch nor onnx.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from wconv_deploy._version import __version__
from wconv_deploy.errors import InputError, MismatchError, WconvError
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:
    from wconv_deploy.exporters.onnx import export_onnx
    from wconv_deploy.fold import FoldReport, FoldResult, find_weighted, fold
    from wconv_deploy.loading import LoadedModel, load_model
    from wconv_deploy.validate import ValidationReport, validate

#: Public name -> the module that defines it.
_LAZY = {
    "FoldReport": "wconv_deploy.fold",
    "FoldResult": "wconv_deploy.fold",
    "find_weighted": "wconv_deploy.fold",
    "fold": "wconv_deploy.fold",
    "LoadedModel": "wconv_deploy.loading",
    "load_model": "wconv_deploy.loading",
    "ValidationReport": "wconv_deploy.validate",
    "validate": "wconv_deploy.validate",
    "export_onnx": "wconv_deploy.exporters.onnx",
}

__all__ = [
    "FoldReport",
    "FoldResult",
    "InputError",
    "InputSpec",
    "LoadedModel",
    "MismatchError",
    "ValidationReport",
    "WconvError",
    "__version__",
    "export_onnx",
    "find_weighted",
    "fold",
    "load_model",
    "validate",
]


class _Package(types.ModuleType):
    """``fold`` and ``validate`` name both a submodule and the function in it: importing the
    submodule must not replace the public function with the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("fold", "validate") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    """The heavy names (they import torch or onnx) load on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wconv_deploy' has no attribute {name!r}")
