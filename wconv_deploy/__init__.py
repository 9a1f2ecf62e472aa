"""wconv-deploy: deploy CNNs trained with the weighted convolution.

Load a trained model safely, fold every weighted convolution into an ordinary one, export it to
ONNX and prove the ONNX computes what PyTorch computes. The public API::

    from wconv_deploy import InputSpec, export_onnx, fold, load_model, validate
    loaded = load_model("model.pt")            # safe by default
    folded, report = fold(loaded, fold_bn=True)
    spec = InputSpec.parse("1x3x224x224", dynamic="batch")
    export = export_onnx(loaded, "model.onnx", spec)          # folds, exports, checks, validates
    check = validate("model.onnx", loaded)                     # the spec is read from the file
"""

from wconv_deploy.errors import InputError, MismatchError, WconvError
from wconv_deploy.fold import FoldReport, FoldResult, find_weighted, fold
from wconv_deploy.loading import LoadedModel, load_model
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import ValidationReport, validate  # (binds the function over the submodule name)

__version__ = "0.1.0"

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


def __getattr__(name: str) -> object:
    """``export_onnx`` imports onnx, so it loads on first use."""
    if name == "export_onnx":
        from wconv_deploy.exporters.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'wconv_deploy' has no attribute {name!r}")
