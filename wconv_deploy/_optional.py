"""The one optional-import helper: a missing extra is one line that says what to install.

Heavy or optional dependencies (onnxruntime, openvino, tensorrt, pytriton, tritonclient,
matplotlib, polygraphy) are imported inside the function that needs them, through
:func:`require`, so importing wconv_deploy (and ``wconv-deploy --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from wconv_deploy.errors import InputError, first_line

#: What to type for each extra (the gpu one comes from NVIDIA's index).
INSTALL: dict[str, str] = {
    "cpu": "pip install 'wconv-deploy[cpu]' (or [gpu] for the CUDA build)",
    "gpu": "pip install 'wconv-deploy[gpu]' --extra-index-url https://pypi.nvidia.com "
    "(TensorRT wheels come from NVIDIA's package index)",
    "openvino": "pip install 'wconv-deploy[openvino]'",
    "plot": "pip install 'wconv-deploy[plot]'",
    "serve": "pip install 'wconv-deploy[serve]'",
    "dev": "pip install 'wconv-deploy[dev]'",
}


def install_hint(extra: str) -> str:
    """The command that installs ``extra``."""
    return INSTALL.get(extra, f"pip install 'wconv-deploy[{extra}]'")


def require(module: str, extra: str, *, attribute: str | None = None) -> ModuleType:
    """Import ``module`` (part of the ``extra``), or raise a one-line InputError naming the
    install command. ``attribute``: a name the real package has and a stub or a broken install
    lacks (``tensorrt-stubs`` installs a ``tensorrt`` without ``Runtime``)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        detail = "" if isinstance(e, ModuleNotFoundError) and e.name == top else f" ({first_line(e)})"
        raise InputError(f"{module} is not installed{detail}: {install_hint(extra)}") from None
    if attribute is not None and not hasattr(mod, attribute):
        raise InputError(f"{module} is installed without {attribute} (only its type stubs?): {install_hint(extra)}")
    return mod


def missing(module: str, extra: str, *, attribute: str | None = None) -> str | None:
    """Why ``module`` cannot be imported here (the one-line message), or None when it can."""
    try:
        require(module, extra, attribute=attribute)
    except InputError as e:
        return str(e)
    return None
