"""What a command is asked to do, as data: where the model comes from, which shapes, which
tolerances. The CLI's option groups fill these in; library users build them directly. Importing
this module imports neither torch nor onnx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.spec import MAX_INPUT_GB, InputSpec

if TYPE_CHECKING:
    from wconv_deploy.artifacts import OnnxInfo
    from wconv_deploy.loading import LoadedModel


@dataclass(frozen=True)
class ModelSource:
    """A model file or ``zoo:NAME`` and how to load it (the arguments of ``load_model``)."""

    uri: str
    arch: str | None = None
    checkpoint_key: str | None = None
    trust_code: bool = False  # let code inside the file run (full unpickling, TorchScript, .pt2)

    @property
    def is_zoo(self) -> bool:
        return self.uri.startswith("zoo:")

    def load(self) -> LoadedModel:
        """The model, loaded safely unless ``trust_code``."""
        from wconv_deploy.loading import load_model

        return load_model(self.uri, arch=self.arch, trust_pickle=self.trust_code, checkpoint_key=self.checkpoint_key)


@dataclass(frozen=True)
class ShapeOptions:
    """``--input-shape`` and ``--dynamic`` as given (None: not given), and the memory limit."""

    input_shape: str | None = None
    dynamic: str | None = None
    max_input_gb: float = MAX_INPUT_GB

    def resolve(self, model: str | None = None, onnx: OnnxInfo | None = None) -> InputSpec:
        """The spec to use: the one given; else the one an exported ONNX file stores; else a zoo
        model's defaults (``--dynamic`` still applies). InputError when none says."""
        if self.input_shape:
            return InputSpec.parse(self.input_shape, self.dynamic)
        if onnx is not None:
            if self.dynamic:
                raise InputError("--dynamic needs --input-shape (the ONNX file's own spec is used otherwise)")
            return onnx.spec
        if model is not None and model.startswith("zoo:"):
            from wconv_deploy.zoo.registry import default_spec_args

            input_shape, default_dynamic = default_spec_args(model)
            return InputSpec.parse(input_shape, self.dynamic or default_dynamic)
        raise InputError("--input-shape is required (e.g. --input-shape 1x3x224x224)")

    def given(self) -> InputSpec | None:
        """The spec given on the command line, or None (``--dynamic`` alone is refused)."""
        if self.dynamic and not self.input_shape:
            raise InputError("--dynamic needs --input-shape")
        return InputSpec.parse(self.input_shape, self.dynamic) if self.input_shape else None


@dataclass(frozen=True)
class CheckOptions:
    """How outputs are compared: tolerances (None: the precision's default), the seed of the
    random inputs, and extra inputs (an ``.npz`` or a folder of images)."""

    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    inputs: Path | None = None

    def tolerance(self, precision: Precision = Precision.FP32) -> tuple[float, float]:
        """``(atol, rtol)``: the given ones, else ``precision``'s defaults."""
        atol, rtol = precision.tolerance
        return (atol if self.atol is None else self.atol), (rtol if self.rtol is None else self.rtol)


def artifact_kind(path: str | os.PathLike[str]) -> str:
    """What a file given as ARTIFACT is, by its suffix: ``onnx``, ``engine`` (TensorRT) or
    ``torch`` (a model file or ``zoo:NAME``)."""
    name = os.fspath(path).lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".plan", ".engine")):
        return "engine"
    return "torch"


def variant_path(onnx: str | os.PathLike[str], precision: Precision) -> Path:
    """Where ``convert`` writes a variant by default: ``ONNX.PRECISION.onnx``."""
    p = Path(onnx)
    return p.with_name(f"{p.stem}.{precision.value}.onnx")


def engine_path(onnx: str | os.PathLike[str]) -> Path:
    """Where ``build`` writes an engine by default: the ONNX file with ``.plan``."""
    return Path(onnx).with_suffix(".plan")


def int_list(text: str, flag: str) -> list[int]:
    """``"1,8,32"`` as integers (InputError naming ``flag`` otherwise)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a comma-separated list of integers") from None


def name_list(text: str) -> list[str]:
    """``"a, b,,c"`` as ``["a", "b", "c"]``."""
    return [n.strip() for n in text.split(",") if n.strip()]


@dataclass(frozen=True)
class TaskBudget:
    """How much task quality a lower precision may lose: PSNR in dB (``max_psnr_drop``, image-to-
    image models) and the share of top-1 classes that must agree with fp32 PyTorch
    (``min_top1_agreement``, classifiers). None: no gate."""

    max_psnr_drop: float | None = None
    min_top1_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.max_psnr_drop is not None and not self.max_psnr_drop >= 0:
            raise InputError(f"--max-psnr-drop {self.max_psnr_drop}: must be a number of dB >= 0")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise InputError(f"--min-top1-agreement {self.min_top1_agreement}: must be between 0 and 1")

    def miss(self, task: dict[str, float]) -> str | None:
        """Why ``task`` (the metrics convert reports) misses the budget; None if it meets it.
        A budget for a metric the model does not have is a miss: the gate cannot be checked."""
        if self.max_psnr_drop is not None:
            if "psnr_variant_db" not in task:
                return "--max-psnr-drop: this model has no PSNR (not a single-channel image-to-image model)"
            drop = task["psnr_fp32_torch_db"] - task["psnr_variant_db"]
            if not drop <= self.max_psnr_drop:
                return f"PSNR drops {drop:.3f} dB, more than the {self.max_psnr_drop:g} dB allowed"
        if self.min_top1_agreement is not None:
            if "top1_agreement" not in task:
                return "--min-top1-agreement: this model has no top-1 (not a classifier)"
            if not task["top1_agreement"] >= self.min_top1_agreement:
                return f"top-1 agreement {task['top1_agreement']:.3f} is below the {self.min_top1_agreement:g} required"
        return None
