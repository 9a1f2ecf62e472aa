"""wconv-deploy: deploy CNNs trained with the weighted convolution.

Load a trained model safely, fold every weighted convolution into an ordinary one, and (in the
stages that follow) export, validate, benchmark and ship it. The public API::

    from wconv_deploy import load_model, fold
    loaded = load_model("model.pt")            # safe by default
    folded, report = fold(loaded, fold_bn=True)
"""

from wconv_deploy.errors import InputError, MismatchError, WconvError
from wconv_deploy.fold import FoldReport, FoldResult, find_weighted, fold
from wconv_deploy.loading import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "FoldReport",
    "FoldResult",
    "InputError",
    "LoadedModel",
    "MismatchError",
    "WconvError",
    "__version__",
    "find_weighted",
    "fold",
    "load_model",
]
