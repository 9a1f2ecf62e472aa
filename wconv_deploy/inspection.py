"""What is in a model file (its format, its weighted layers, whether it folds cleanly) or in an
artifact (an ONNX file, a TensorRT engine's manifest, a Triton entry, with its golden file)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wconv_deploy.errors import InputError, WconvError
from wconv_deploy.fold import FoldReport, WeightedLayer, find_weighted, fold
from wconv_deploy.loading import LoadedModel
from wconv_deploy.reports import Report
from wconv_deploy.table import format_table

__all__ = ["ArtifactInspection", "Inspection", "inspect_artifact", "inspect_model"]

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
        check = self.fold.model_check if self.fold is not None else None
        return self.fold is not None and self.fold.clean and check is not None and not check.skipped

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
    check = report.model_check
    if check is None or check.skipped:  # "yes" only for a model seen to run on float32 inputs, as export feeds it
        why = check.skipped if check is not None else "no check"
        return f"unknown: {len(report.folded)} weighted layer(s) folded, but the whole model was not run ({why})"
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


# --------------------------------------------------------------------------- artifacts


@dataclass
class ArtifactInspection(Report):
    """What an ONNX file, a TensorRT engine (from its manifest only: the engine is never
    deserialised) or a Triton model entry is: I/O, ranges, precision, counts, provenance, evidence."""

    path: str
    kind: str  # onnx | engine
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    input_spec: str | None
    opset: int | None = None
    conv_nodes: int | None = None
    qdq_nodes: int | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    engine_manifest: dict[str, Any] | None = None
    golden: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None  # a Triton entry: its name, version, config and manifest.json facts

    def render(self) -> str:
        lines = []
        if self.entry is not None:
            e = self.entry
            lines.append(
                f"entry       {e['name']} version {e['version']}, max_batch_size {e['max_batch']}, runtime {e['runtime']}"
            )
        lines += [f"file        {self.path} ({self.kind})", f"precision   {self.precision}"]
        if self.opset is not None:
            lines.append(f"graph       opset {self.opset}, {self.conv_nodes} Conv, {self.qdq_nodes} Q/DQ node(s)")
        if self.input_spec:
            lines.append(f"input spec  {self.input_spec}")
        rows = [
            [side, t["name"], t["dtype"], t["shape"], t.get("range", "")]
            for side in ("input", "output")
            for t in getattr(self, side + "s")
        ]
        lines += ["", format_table(["", "name", "dtype", "shape", "range (min / opt / max)"], rows)]
        if self.engine_manifest is not None:
            m = self.engine_manifest
            lines += ["", f"engine      TensorRT {m['tensorrt_version']}, {m['gpu_name']} (sm {m['compute_capability']})"]
            lines += [
                f"profile {i}   " + ", ".join(f"{n} {s['min']} / {s['opt']} / {s['max']}" for n, s in p.items())
                for i, p in enumerate(m["profiles"])
            ]
        if self.provenance:
            lines.append("")
            lines += [f"{k:<11} {v if len(v) <= 100 else v[:97] + '...'}" for k, v in sorted(self.provenance.items())]
        lines.append("")
        if self.golden is None:
            lines.append("golden      none beside it (verify cannot check it)")
        else:
            g = self.golden
            task = f", task {g['task']['name']} {g['task']['reference']:.4g}" if g.get("task") else ""
            lines.append(
                f"golden      {g['path']}: {len(g['summary'])} case(s), {g['precision']} "
                f"atol={g['atol']:g} rtol={g['rtol']:g}{task}"
            )
        return "\n".join(lines)


def _tensor_rows(tensors: Any, spec: Any) -> list[dict[str, Any]]:
    """Each tensor's name, dtype and shape (-1: dynamic), with its spec range when the spec has it."""
    ranges = {t.name: t for t in spec.inputs} if spec is not None else {}
    rows = []
    for t in tensors:
        row: dict[str, Any] = {
            "name": t.name,
            "dtype": t.dtype,
            "shape": "x".join("?" if d < 0 else str(d) for d in t.shape or ()),
        }
        if t.name in ranges:
            row["range"] = " / ".join("x".join(map(str, ranges[t.name].shape(w))) for w in ("min", "opt", "max"))
        rows.append(row)
    return rows


def inspect_artifact(target: str | os.PathLike[str]) -> ArtifactInspection:
    """Describe an ONNX file, a TensorRT engine (``.plan``/``.engine``, through its manifest) or a
    Triton model entry or repository (``REPO/NAME``: the model file the entry serves)."""
    from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path
    from wconv_deploy.golden import ENTRY_GOLDEN, golden_path, read_golden
    from wconv_deploy.options import artifact_kind
    from wconv_deploy.ship.serve import resolve_target

    path = Path(target)
    entry = None
    folder = path.parent
    if path.is_dir():
        served = resolve_target(path)
        entry = {"name": served.name, "version": served.version, "max_batch": served.max_batch, "runtime": served.runtime}
        path, folder = served.artifact, served.artifact.parent
    kind = artifact_kind(path)
    if kind == "onnx":
        info = OnnxInfo.read(path)
        opsets = [o.version for o in info.model.opset_import if o.domain in ("", "ai.onnx")]
        result = ArtifactInspection(
            os.fspath(path), "onnx", info.precision.value,
            _tensor_rows(info.inputs, info.stored_spec), _tensor_rows(info.outputs, None),
            str(info.stored_spec) if info.stored_spec else None,
            opset=opsets[0] if opsets else None,
            conv_nodes=sum(n.op_type == "Conv" for n in info.model.graph.node),
            qdq_nodes=info.qdq_nodes,
            provenance=info.provenance,
        )  # fmt: skip
    elif kind == "engine":
        manifest = BuildManifest.read(manifest_path(path), within=folder)
        spec = manifest.spec(path.name)
        inputs, outputs = manifest.tensors(path.name)
        result = ArtifactInspection(
            os.fspath(path), "engine", manifest.precision, _tensor_rows(inputs, spec), _tensor_rows(outputs, None), str(spec),
            provenance={"onnx": f"{manifest.onnx_path} (sha256 {manifest.onnx_sha256[:12]})", "built": manifest.created},
            engine_manifest=manifest.to_dict(),
        )  # fmt: skip
    else:
        raise InputError(f"{path}: not an ONNX file, a TensorRT engine or a model folder")
    result.entry = entry
    for candidate in (golden_path(path), folder / ENTRY_GOLDEN):
        if os.path.lexists(candidate):
            result.golden = read_golden(candidate, within=folder).to_dict()
            break
    return result
