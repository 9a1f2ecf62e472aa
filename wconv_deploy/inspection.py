"""What is in a model file: its format, its weighted layers, and whether it folds cleanly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from wconv_deploy.errors import WconvError
from wconv_deploy.fold import FoldReport, WeightedLayer, find_weighted, fold
from wconv_deploy.loading import LoadedModel
from wconv_deploy.reports import Report
from wconv_deploy.table import format_table

__all__ = ["Inspection", "inspect_model"]

_FORMAT_NAMES = {
    "pickle": "whole-model pickle (torch.save(model))",
    "state_dict": "state_dict + architecture",
    "checkpoint": "checkpoint dict",
    "torchscript": "TorchScript archive",
    "export": "torch.export program (.pt2)",
    "torchscript_weights": "TorchScript archive, weights only + architecture",
    "export_weights": "torch.export program (.pt2), weights only + architecture",
}


@dataclass
class Inspection(Report):
    """The facts ``wconv-deploy inspect`` prints, as data (``to_dict``) or a table (``render``)."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("folds_cleanly",)

    path: str
    format: str
    sha256: str
    checkpoint_key: str | None
    notes: list[str]
    parameters: int
    trainable_parameters: int
    weighted_layers: list[WeightedLayer] = field(default_factory=list)
    fold: FoldReport | None = None
    fold_error: WconvError | None = None  # why folding failed, when it did

    @property
    def folds_cleanly(self) -> bool:
        return self.fold is not None and self.fold.clean

    def render(self) -> str:
        fmt = _FORMAT_NAMES.get(self.format, self.format)
        if self.checkpoint_key:
            fmt += f", entry {self.checkpoint_key!r}"
        lines = [
            f"file        {self.path}",
            f"sha256      {self.sha256}",
            f"format      {fmt}",
            f"parameters  {self.parameters:,} ({self.trainable_parameters:,} trainable)",
        ]
        lines += [f"note        {n}" for n in self.notes]
        if self.weighted_layers:
            rows = [
                [
                    ly.name,
                    ly.kind,
                    f"{ly.dims}-D",
                    "x".join(map(str, ly.kernel)),
                    "[" + ", ".join(f"{v:.3g}" for v in ly.den) + "]",
                    _fmt(ly.stride),
                    _fmt(ly.padding),
                    _fmt(ly.dilation),
                    _fmt(ly.groups),
                    ly.cls,
                ]
                for ly in self.weighted_layers
            ]
            lines.append("")
            lines.append(
                format_table(
                    ["weighted layer", "kind", "dims", "kernel", "den", "stride", "padding", "dilation", "groups", "class"], rows
                )
            )
        else:
            lines.append("weighted layers: none found")
        lines.append("")
        if self.fold is not None:
            lines.append(self.fold.render())
        lines.append(f"folds cleanly: {_verdict(self)}")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple) and len(set(value)) == 1:
        return str(value[0])
    return "?" if value is None else str(value)


def _verdict(ins: Inspection) -> str:
    report = ins.fold
    if report is None:
        return f"no: {ins.fold_error}"
    if report.deferred:
        return "not checked here (see above)"
    if report.not_folded:
        return f"no, {len(report.not_folded)} weighted layer(s) left unfolded"
    return f"yes, {len(report.folded)} weighted layer(s) folded"


def inspect_model(loaded: LoadedModel, *, fold_bn: bool = True) -> Inspection:
    """Describe ``loaded`` and try folding it (Conv+BN fusion included, to show what deploys).

    When folding fails (non-finite weights, a density that does not fit its kernel, a folded
    output that differs) the error is kept in ``fold_error`` so the description still prints.
    """
    model = loaded.model
    params = list(model.parameters())
    try:
        report, error = fold(loaded, fold_bn=fold_bn).report, None
    except WconvError as e:
        report, error = None, e
    return Inspection(
        path=str(loaded.path),
        format=loaded.format,
        sha256=loaded.sha256,
        checkpoint_key=loaded.checkpoint_key,
        notes=list(loaded.notes),
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        weighted_layers=find_weighted(model),
        fold=report,
        fold_error=error,
    )
