"""Fold every weighted convolution into an ordinary convolution, and prove it changed nothing.

A weighted convolution computes ``conv(x, weight * Phi)`` and ``Phi`` does not depend on the
input, so the layer *is* an ``nn.ConvNd`` whose weight is ``weight * Phi``. :func:`fold` makes
that replacement on a copy of the model, for our layers, the reference implementation's classes
and look-alikes recognised by their state (a ``weight`` plus a ``Phi`` buffer or a ``den``
parameter). Optionally it also fuses Conv+BatchNorm pairs (eval mode). Every replacement is
checked on seeded inputs, layer by layer and on the whole model, and a mismatch raises
:class:`~wconv_deploy.errors.MismatchError`.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, cast

import torch
from torch import Tensor, nn

from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.forward import outputs_of
from wconv_deploy.loading import LoadedModel
from wconv_deploy.nn import WeightedConvNd, phi_from_den
from wconv_deploy.reports import Report
from wconv_deploy.table import format_table

__all__ = ["FoldReport", "FoldResult", "WeightedLayer", "find_weighted", "fold", "relative_error"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

#: Largest accepted ``max|a - b| / max|b|`` per dtype, for a single replaced layer and for the
#: whole model (where Conv+BN fusion rounding accumulates through depth).
LAYER_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
MODEL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


# --------------------------------------------------------------------------- detection


@dataclass
class WeightedLayer:
    """A weighted convolution found in a model, described from its state and attributes."""

    name: str
    cls: str
    kind: str  # "fixed" or "trainable"
    dims: int
    kernel: tuple[int, ...]
    den: list[float]
    phi_min: float
    phi_max: float
    in_channels: int
    out_channels: int
    stride: Any
    padding: Any
    dilation: Any
    groups: Any
    bias: bool
    mask_shape: tuple[int, ...] | None = None  # shape of Phi; differs from kernel when den does not fit
    problem: str | None = None  # why it cannot be folded, if it cannot


def _tensors(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    # remove_duplicate=False: a 1-D reference layer may register one tensor as both alfa and Phi
    return (
        dict(module.named_parameters(recurse=False, remove_duplicate=False)),
        dict(module.named_buffers(recurse=False, remove_duplicate=False)),
    )


def _phi_of(module: nn.Module, dims: int) -> Tensor:
    """The mask the module multiplies its weight by: its ``Phi`` buffer or one built from ``den``."""
    if isinstance(module, WeightedConvNd):
        return module.phi()
    params, buffers = _tensors(module)
    if "Phi" in buffers:
        return buffers["Phi"]
    return phi_from_den(params["den"], dims)


def _den_of(phi: Tensor) -> list[float]:
    """The density vector read back from a mask: the first axis through the centre of the others."""
    centre = (phi.shape[0] - 1) // 2
    line = phi[(slice(None),) + (centre,) * (phi.dim() - 1)]
    return [float(v) for v in line[:centre]]


def _class_name(module: nn.Module) -> str:
    name = getattr(module, "original_name", None)  # TorchScript keeps the Python class name here
    if isinstance(name, str):
        return name
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _describe(name: str, module: nn.Module) -> WeightedLayer | None:
    """Describe ``module`` if it is a weighted convolution (by class or by state), else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return None
    params, buffers = _tensors(module)
    weight = params.get("weight")
    if weight is None or weight.dim() not in (3, 4, 5) or not ("Phi" in buffers or "den" in params):
        return None
    dims = weight.dim() - 2
    kernel = tuple(weight.shape[2:])
    problem, mask_shape = None, None
    try:
        with torch.no_grad():
            phi = _phi_of(module, dims).detach()
        den = _den_of(phi)
        phi_min, phi_max = float(phi.min()), float(phi.max())
        mask_shape = tuple(phi.shape)
        if mask_shape != kernel:
            problem = f"density of length {len(den)} gives a {tuple(phi.shape)} mask but the kernel is {kernel}"
    except Exception as e:  # a look-alike whose state cannot make a mask
        den, phi_min, phi_max = [], float("nan"), float("nan")
        problem = f"cannot build its density mask: {e}"
    missing = [a for a in ("stride", "padding", "dilation", "groups") if not hasattr(module, a)]
    if missing and problem is None:
        problem = f"has no {', '.join(missing)} attribute(s), so its convolution is unknown"
    groups = getattr(module, "groups", None)
    return WeightedLayer(
        name=name,
        cls=_class_name(module),
        kind="trainable" if "den" in params else "fixed",
        dims=dims,
        kernel=kernel,
        den=den,
        phi_min=phi_min,
        phi_max=phi_max,
        in_channels=weight.shape[1] * (groups if isinstance(groups, int) else 1),
        out_channels=weight.shape[0],
        stride=getattr(module, "stride", None),
        padding=getattr(module, "padding", None),
        dilation=getattr(module, "dilation", None),
        groups=groups,
        bias=params.get("bias") is not None,
        mask_shape=mask_shape,
        problem=problem,
    )


def find_weighted(model: nn.Module) -> list[WeightedLayer]:
    """Every weighted convolution in ``model`` (also inside TorchScript modules), in module order."""
    found = []
    for name, module in model.named_modules():
        layer = _describe(name, module)
        if layer is not None:
            found.append(layer)
    return found


# --------------------------------------------------------------------------- report


@dataclass
class FusedBatchNorm:
    conv: str
    bn: str
    rel_error: float


@dataclass
class ModelCheck:
    """The whole-model comparison: inputs used, the worst relative error over outputs, and how
    many times the folded model's forward pass called an ``nn.Conv1d/2d/3d`` (shared layers count
    per call; the exported graph must hold as many Conv nodes)."""

    inputs: list[list[int]]
    rel_error: float | None
    skipped: str | None = None
    conv_calls: int | None = None


@dataclass
class FoldReport(Report):
    """What :func:`fold` did: each layer folded (with its check), what it left alone and why."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("clean",)

    folded: list[WeightedLayer] = field(default_factory=list)
    layer_errors: dict[str, float] = field(default_factory=dict)
    not_folded: list[WeightedLayer] = field(default_factory=list)
    fused_bn: list[FusedBatchNorm] = field(default_factory=list)
    bn_not_fused: list[tuple[str, str]] = field(default_factory=list)
    deferred: str | None = None
    model_check: ModelCheck | None = None

    @property
    def clean(self) -> bool:
        """Every weighted layer was folded here (not deferred, none left behind)."""
        return not self.not_folded and self.deferred is None

    def render(self) -> str:
        lines = []
        if self.deferred:
            lines.append(f"folding deferred: {self.deferred}")
        if self.folded:
            rows = [
                [
                    ly.name,
                    ly.kind,
                    _kernel_str(ly.kernel),
                    _den_str(ly.den),
                    f"{ly.phi_min:.3g}..{ly.phi_max:.3g}",
                    f"{self.layer_errors.get(ly.name, 0.0):.1e}",
                ]
                for ly in self.folded
            ]
            lines.append(format_table(["folded layer", "kind", "kernel", "den", "Phi range", "rel err"], rows))
        for ly in self.not_folded:
            lines.append(f"not folded: {ly.name} ({ly.cls}): {ly.problem}")
        if self.fused_bn:
            lines.append(
                f"fused {len(self.fused_bn)} Conv+BatchNorm pair(s), worst rel err {max(f.rel_error for f in self.fused_bn):.1e}"
            )
        for bn, reason in self.bn_not_fused:
            lines.append(f"BatchNorm not fused: {bn}: {reason}")
        if self.model_check is not None:
            mc = self.model_check
            if mc.skipped:
                lines.append(f"whole-model check skipped: {mc.skipped}")
            else:
                lines.append(f"whole-model check on inputs {mc.inputs}: rel err {mc.rel_error:.1e}")
        return "\n".join(lines)


def _kernel_str(kernel: Sequence[int]) -> str:
    return "x".join(map(str, kernel))


def _den_str(den: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in den) + "]"


class FoldResult(NamedTuple):
    model: nn.Module
    report: FoldReport


# --------------------------------------------------------------------------- folding


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max|actual - expected| / max|expected|``: the error relative to the output's scale."""
    a, e = actual.detach().double(), expected.detach().double()
    scale = float(e.abs().max()) if e.numel() else 0.0
    diff = float((a - e).abs().max()) if e.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _check_finite(model: nn.Module) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_floating_point() or not t.numel():
            continue
        wide = t if t.element_size() > 1 else t.float()  # float8 has no min/max kernel
        with torch.no_grad():  # min and max propagate NaN: finite iff both are (one pass, no mask tensor)
            finite = all(bool(torch.isfinite(v)) for v in wide.aminmax())
        if not finite:
            bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise InputError(f"{name} contains {bad} values; refusing to fold a model with non-finite weights")


def _probe_input(conv: nn.modules.conv._ConvNd, gen: torch.Generator) -> Tensor:
    """A seeded input big enough for every tap of ``conv`` to touch data."""
    size = [d * (k - 1) + 1 + 2 * s for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride)]
    w = conv.weight
    x = torch.randn(1, conv.in_channels, *size, generator=gen, dtype=torch.float64)
    return x.to(dtype=w.dtype, device=w.device)


def _as_conv(layer: WeightedLayer, module: nn.Module) -> nn.modules.conv._ConvNd:
    """The ``nn.ConvNd`` equal to a weighted ``module``: same hyperparameters, weight * Phi."""
    weight = cast(Tensor, module.weight)
    conv = _CONV[layer.dims](  # on the meta device: no random init of the tensors replaced below
        layer.in_channels,
        layer.out_channels,
        layer.kernel,  # type: ignore[arg-type]  # nn.ConvNd accepts a tuple
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias,
        device="meta",
        dtype=weight.dtype,
    )
    with torch.no_grad():
        tensors = {"weight": weight * _phi_of(module, layer.dims)}
        if conv.bias is not None:
            tensors["bias"] = cast(Tensor, module.bias).clone()
        for name, value in tensors.items():
            shape = getattr(conv, name).shape
            if value.shape != shape:
                raise ValueError(f"its {name} is {list(value.shape)}, a convolution with its attributes takes {list(shape)}")
            setattr(conv, name, nn.Parameter(value.to(weight.dtype).contiguous()))
    conv.train(module.training)
    return conv


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _fold_weighted(model: nn.Module, report: FoldReport, gen: torch.Generator) -> nn.Module:
    """A copy of ``model`` whose weighted layers are ordinary convolutions (the new conv if the
    model itself is a weighted layer). Each conv is built from the original layer and checked
    against it; the copy takes the conv wherever the layer sits and never copies the weights the
    conv replaces."""
    replaced: dict[int, Any] = {}  # id(weighted layer) -> its conv: deepcopy's memo
    for layer in find_weighted(model):
        if layer.problem is not None:
            report.not_folded.append(layer)
            continue
        module = model.get_submodule(layer.name)
        try:
            conv = _as_conv(layer, module)
        except (TypeError, ValueError, RuntimeError) as e:
            layer.problem = f"its attributes do not make a convolution: {e}"
            report.not_folded.append(layer)
            continue
        with torch.no_grad():
            x = _probe_input(conv, gen)
            err = relative_error(conv(x), module(x))
        tol = LAYER_TOL.get(conv.weight.dtype, 1e-6)
        if not err <= tol:
            raise MismatchError(f"folding {layer.name} changed its output: rel error {err:.2e} > {tol:.0e}")
        replaced[id(module)] = conv
        report.folded.append(layer)
        report.layer_errors[layer.name] = err
    return copy.deepcopy(model, replaced)


# --------------------------------------------------------------------------- Conv + BatchNorm


def _conv_bn_pairs(model: nn.Module, report: FoldReport) -> Iterator[tuple[str, str]]:
    """(conv, bn) module names where the BatchNorm consumes only that convolution's output.

    Found by tracing the model with torch.fx; when it cannot be traced, only pairs that sit next
    to each other inside an ``nn.Sequential`` qualify.
    """
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:
        report.bn_not_fused.append(
            ("(model)", f"not traceable by torch.fx ({type(e).__name__}); fused inside nn.Sequential only")
        )
        for seq_name, seq in model.named_modules():
            if isinstance(seq, nn.Sequential):
                names = list(seq._modules)
                for a, b in zip(names, names[1:]):
                    yield (f"{seq_name}.{a}" if seq_name else a), (f"{seq_name}.{b}" if seq_name else b)
        return
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module":
            continue
        if calls[node.target] == 1 and calls[src.target] == 1 and len(src.users) == 1:
            if uses[id(model.get_submodule(str(src.target)))] == 1 and uses[id(model.get_submodule(str(node.target)))] == 1:
                yield str(src.target), str(node.target)


def _fuse_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """A convolution computing ``bn(conv(x))`` with eval-mode statistics (arithmetic in float64)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    assert bn.running_mean is not None and bn.running_var is not None  # checked by the caller
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        fused.weight.copy_(w * scale.reshape(-1, *([1] * (w.dim() - 1))))
        fused.bias = nn.Parameter(((b - mean) * scale + beta).to(conv.weight.dtype))
    return fused


def _fold_batchnorm(model: nn.Module, report: FoldReport, gen: torch.Generator) -> None:
    for conv_name, bn_name in list(_conv_bn_pairs(model, report)):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(conv, nn.modules.conv._ConvNd) or type(conv) not in _CONV.values():
            continue
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        if type(bn) is not _BN[conv.weight.dim() - 2]:
            continue
        if bn.training or bn.running_mean is None:
            report.bn_not_fused.append((bn_name, "in training mode or without running statistics"))
            continue
        if bn.num_features != conv.out_channels:
            continue
        fused = _fuse_conv_bn(conv, bn)
        with torch.no_grad():
            x = _probe_input(conv, gen)
            err = relative_error(fused(x), bn(conv(x)))
        tol = LAYER_TOL.get(conv.weight.dtype, 1e-6) * 10
        if not err <= tol:
            raise MismatchError(f"fusing {conv_name}+{bn_name} changed its output: rel error {err:.2e} > {tol:.0e}")
        _set_submodule(model, conv_name, fused)
        _set_submodule(model, bn_name, nn.Identity().train(bn.training))  # keep the mode
        report.fused_bn.append(FusedBatchNorm(conv_name, bn_name, err))


# --------------------------------------------------------------------------- whole model


def _guess_inputs(model: nn.Module, gen: torch.Generator) -> tuple[Tensor, ...] | str:
    """One seeded input shaped for the model's first convolution, or why none could be guessed;
    float32 (what export feeds) for a half-precision model, so a model that only runs in half
    precision does not pass for one that exports."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is None:
        return "no convolution to infer an input shape from; pass example_inputs"
    dims = first.weight.dim() - 2
    side = {1: 64, 2: 32, 3: 16}[dims]
    x = torch.randn(1, first.in_channels, *([side] * dims), generator=gen, dtype=torch.float64)
    w = first.weight
    dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
    return (x.to(dtype=dtype, device=w.device),)


def _check_model(
    original: nn.Module, folded: nn.Module, inputs: Sequence[Tensor] | None, gen: torch.Generator, tol: float
) -> ModelCheck:
    guessed = inputs is None
    probe = _guess_inputs(folded, gen) if inputs is None else tuple(inputs)
    if isinstance(probe, str):
        return ModelCheck([], None, skipped=probe)
    shapes = [list(t.shape) for t in probe]
    modes = [(m, m.training) for net in (original, folded) for m in net.modules()]
    original.eval(), folded.eval()  # batch statistics and dropout would make the runs differ
    try:
        with torch.no_grad():
            try:
                expected = outputs_of(original(*probe))
            except Exception as e:
                if not guessed:
                    raise InputError(
                        f"the model rejects the example inputs {shapes}: {type(e).__name__}: {first_line(e)}"
                    ) from None
                return ModelCheck(
                    shapes,
                    None,
                    skipped=f"a guessed input {shapes} does not fit the model ({type(e).__name__}); pass example_inputs",
                )
            actual, conv_calls = _forward_counting_convs(folded, probe)
    finally:
        for m, mode in modes:  # per module: a model may mix train and eval submodules
            m.training = mode
    err = max((relative_error(a, e) for a, e in zip(actual, expected)), default=0.0)
    if len(actual) != len(expected) or not err <= tol:
        raise MismatchError(
            f"the folded model's output differs from the original's: rel error {err:.2e} > {tol:.0e} on inputs {shapes}"
        )
    return ModelCheck(shapes, err, conv_calls=conv_calls)


def _forward_counting_convs(model: nn.Module, inputs: Sequence[Tensor]) -> tuple[list[Tensor], int]:
    """The outputs of ``model(*inputs)`` and how many times it called an ``nn.Conv1d/2d/3d``."""
    calls = 0

    def hook(*_: Any) -> None:
        nonlocal calls
        calls += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in _CONV.values()]
    try:
        outputs = outputs_of(model(*inputs))
    finally:
        for h in handles:
            h.remove()
    return outputs, calls


_GRAPH_ONLY_DEFERRED = "TorchScript and torch.export (.pt2) models are folded on their exported graph at export time"


def fold(
    model: nn.Module | LoadedModel,
    *,
    fold_bn: bool = False,
    example_inputs: Sequence[Tensor] | None = None,
    seed: int = 0,
) -> FoldResult:
    """Return a copy of ``model`` with every weighted convolution replaced by ``nn.ConvNd``.

    ``fold_bn`` also fuses eval-mode Conv+BatchNorm pairs. Each replaced layer is compared with
    the original on a seeded input, then the whole model on ``example_inputs`` (or one input
    guessed from the first convolution; the report says when none fits). Raises
    :class:`MismatchError` if any output changes beyond float rounding and :class:`InputError`
    for NaN/Inf weights or a density that does not fit its kernel. TorchScript and ``.pt2``
    models are returned unchanged with ``report.deferred`` saying they fold on the exported graph.
    """
    report = FoldReport()
    if isinstance(model, LoadedModel):
        if model.graph_only:
            report.deferred = _GRAPH_ONLY_DEFERRED
            return FoldResult(model.model, report)
        model = model.model
    if isinstance(model, torch.jit.ScriptModule):
        report.deferred = _GRAPH_ONLY_DEFERRED
        return FoldResult(model, report)
    _check_finite(model)
    for layer in find_weighted(model):
        if layer.mask_shape is not None and layer.mask_shape != layer.kernel:
            raise InputError(f"{layer.name}: {layer.problem}")
    gen = torch.Generator().manual_seed(seed)
    folded = _fold_weighted(model, report, gen)
    if fold_bn:
        _fold_batchnorm(folded, report, gen)
    dtype = next((p.dtype for p in folded.parameters()), torch.float32)
    report.model_check = _check_model(model, folded, example_inputs, gen, MODEL_TOL.get(dtype, 1e-4))
    return FoldResult(folded, report)
