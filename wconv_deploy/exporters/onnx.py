"""Export a (folded) model to ONNX, check the graph's structure, stamp its provenance, validate it.

:func:`export_onnx` is the pipeline behind ``wconv-deploy export``: load, fold (module level),
export with ``torch.onnx`` (by default the torch.export-based exporter; ``exporter="torchscript"``
picks the older TorchScript-based one, several times faster but deprecated by PyTorch, and the
only one that reads TorchScript archives), fold any remaining constant
weight arithmetic on the graph, check the structure, write metadata, and validate the result
against the original PyTorch model in ONNX Runtime. The file at ``output`` only ever holds a
model that passed every check: the work happens on a temporary file beside it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from wconv_deploy.artifacts import (
    KEY_CONV_LAYERS,
    KEY_EXPORTER,
    KEY_FOLD,
    KEY_INPUT_SPEC,
    KEY_PREPROCESS,
    KEY_SOURCE,
    KEY_SOURCE_SHA256,
    KEY_TORCH_VERSION,
    KEY_VERSION,
    set_metadata,
)
from wconv_deploy.errors import DISK_FULL, InputError, MismatchError, WconvError, first_line
from wconv_deploy.fileio import atomic_output, write_text_atomic
from wconv_deploy.fold import FoldReport, fold
from wconv_deploy.interrupts import raise_if_interrupted
from wconv_deploy.loading import LoadedModel
from wconv_deploy.options import CheckOptions
from wconv_deploy.preprocess import expected_by
from wconv_deploy.reports import Report, dumps
from wconv_deploy.runtimes.torch import TorchReference
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import ValidationReport, validate

DEFAULT_OPSET = 18
#: protobuf cannot serialise a message over 2 GiB; larger models keep weights in a side file.
PROTOBUF_LIMIT = 2**31 - 1
#: Ops that compute a tensor; any of them feeding a Conv weight means the weight is not folded.
CONV_OPS = ("Conv", "ConvTranspose")

Progress = Callable[[str], None]


@dataclass
class GraphCheck:
    """The structural checks run on every exported graph (see :func:`check_graph`)."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed",)

    ops: dict[str, int]
    conv_nodes: int
    expected_convs: int | None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class ExportReport(Report):
    """What ``export_onnx`` did: the file, the fold, the graph checks and the validation."""

    output: str
    source: str
    source_sha256: str | None
    input_spec: InputSpec
    opset: int
    exporter: str
    fold: FoldReport
    graph_folded_nodes: int
    graph: GraphCheck
    size_bytes: int = 0
    external_data: bool = False
    validation: ValidationReport | None = None
    validation_note: str | None = None  # why validation stopped short of a range's maximum

    def render(self) -> str:
        folded = len(self.fold.folded)
        how = f"{folded} weighted layer(s) folded in PyTorch"
        if self.fold.deferred:
            how = f"on the exported graph (torch.onnx's optimizer, then {self.graph_folded_nodes} node(s) by wconv-deploy)"
        if self.fold.fused_bn:
            how += f", {len(self.fold.fused_bn)} BatchNorm(s) fused"
        ops = ", ".join(f"{op} {n}" for op, n in sorted(self.graph.ops.items(), key=lambda kv: (-kv[1], kv[0])))
        lines = [
            f"source      {self.source}",
            f"inputs      {self.input_spec}",
            f"folding     {how}",
            f"graph       opset {self.opset}, {sum(self.graph.ops.values())} nodes: {ops}",
            f"checks      onnx checker, shape inference, {self.graph.conv_nodes} Conv(s) with initializer weights"
            + (f" (= {self.graph.expected_convs} conv layers)" if self.graph.expected_convs is not None else ""),
        ]
        if self.validation is not None:
            lines += ["", self.validation.render()]
            if self.validation_note:
                lines.append(f"note: {self.validation_note}")
        else:
            lines.append("validation  skipped (--no-validate)")
        size = f"{self.size_bytes / 1e6:.2f} MB" + (" + external data" if self.external_data else "")
        lines += ["", f"wrote {self.output} ({size})"]
        return "\n".join(lines)


# --------------------------------------------------------------------------- graph passes


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    inputs = {i.name for i in graph.input}
    return {t.name for t in graph.initializer if t.name not in inputs}


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    This is what turns ``Mul(weight, Phi)`` (and the ops building ``Phi`` from a trainable
    ``den``) into a plain weight when a TorchScript or ``.pt2`` model could not be folded as
    modules. Returns the number of nodes folded. Uses the ONNX reference evaluator, so any
    standard op folds.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    known = _constant_names(graph)
    stored = {t.name: t for t in graph.initializer if t.name in known}
    values: dict[str, np.ndarray] = {}  # converted when a node that folds reads them, not all up front

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = numpy_helper.to_array(stored[name])
        return values[name]

    opsets = list(model.opset_import)
    folded = 0
    keep = []
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.domain not in ("", "ai.onnx") or any(i not in known for i in ins) or node.op_type in ("If", "Loop", "Scan"):
            keep.append(node)
            continue
        sub = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [onnx.helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None) for i in dict.fromkeys(ins)],
                [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
            ),
            opset_imports=opsets,
        )
        try:
            results = ReferenceEvaluator(sub).run(None, {i: value(i) for i in ins})
        except Exception:  # an op the reference evaluator cannot run stays in the graph
            keep.append(node)
            continue
        for name, result in zip([o for o in node.output if o], results):
            values[name] = np.asarray(result)
            known.add(name)
            graph.initializer.append(numpy_helper.from_array(values[name], name))
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
    _drop_unused_initializers(graph)
    return folded


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = {t.name for t in graph.initializer} - used
    if not unused:
        return  # the (large) repeated field is not rebuilt for nothing
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    vi = [v for v in graph.value_info if v.name not in unused]
    del graph.value_info[:]
    graph.value_info.extend(vi)


def check_graph(model: onnx.ModelProto, expected_convs: int | None, serialized: bytes | None = None) -> GraphCheck:
    """The structural checks every exported graph must pass.

    The full ONNX checker (strict, type-checking shape inference included); every
    Conv/ConvTranspose weight and bias an initializer (no node computes a weight); as many Conv
    nodes as the folded model has conv layer calls (``expected_convs``; ``None`` skips that
    count). ``serialized``: the model's bytes when the caller already has them, so that the model
    is serialised once; the checker parses them in C++ and returns nothing, where a separate
    ``infer_shapes`` call would send the whole model back to Python.
    """
    problems = []
    try:
        onnx.checker.check_model(serialized if serialized is not None else model, full_check=True)
    except onnx.shape_inference.InferenceError as e:  # the checker passed; shape inference did not
        problems.append(f"shape inference: {first_line(e)}")
    except Exception as e:  # ValidationError; ValueError past protobuf's 2 GiB
        problems.append(f"onnx checker: {first_line(e)}")
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = _constant_names(graph)
    ops = Counter(n.op_type for n in graph.node)
    for node in graph.node:
        if node.op_type not in CONV_OPS:
            continue
        for role, name in zip(("weight", "bias"), node.input[1:3]):
            if not name or name in constants:
                continue
            src = producers.get(name)
            how = f"computed by a {src.op_type} node" if src is not None else "a graph input"
            problems.append(f"{node.op_type} {node.name or node.output[0]}: {role} {name!r} is {how}, not an initializer")
    conv_nodes = ops.get("Conv", 0)
    if expected_convs is not None and conv_nodes != expected_convs:
        problems.append(f"{conv_nodes} Conv node(s) in the graph but {expected_convs} conv layer call(s) in the model")
    return GraphCheck(dict(ops), conv_nodes, expected_convs, problems)


def _check_accepts(model: nn.Module, args: list[torch.Tensor]) -> None:
    try:
        with torch.no_grad():
            model(*args)
    except Exception as e:
        shapes = [list(a.shape) for a in args]
        raise InputError(f"the model rejects inputs {shapes}: {type(e).__name__}: {first_line(e)}") from None


def _count_graph_convs(loaded: LoadedModel) -> int | None:
    """Conv calls in a TorchScript or torch.export graph (None when they cannot be counted)."""
    if loaded.exported_program is not None:
        nodes = loaded.exported_program.graph.nodes
        return sum(1 for n in nodes if n.op == "call_function" and "conv" in str(n.target) and "transpose" not in str(n.target))
    if isinstance(loaded.model, torch.jit.ScriptModule):
        kinds = ("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::convolution")
        graph = loaded.model.inlined_graph
        torch._C._jit_pass_constant_propagation(graph)  # prunes branches on constants (a layer's dims)
        top = sum(1 for n in graph.nodes() if n.kind() in kinds)
        return top if top == _count_nested(graph.nodes(), kinds) else None  # a conv under control flow: unknown
    return None


def _count_nested(nodes: Any, kinds: tuple[str, ...]) -> int:
    """Conv nodes in a TorchScript graph, inside If/Loop blocks included."""
    return sum((n.kind() in kinds) + sum(_count_nested(b.nodes(), kinds) for b in n.blocks()) for n in nodes)


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.onnx's own progress prints and log lines; we report progress ourselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # torch.export logs failed guards and whole graphs as warnings
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


EXPORTERS = ("dynamo", "torchscript")


def _torch_export(model: nn.Module, spec: InputSpec, opset: int, scratch: Path, exporter: str) -> tuple[onnx.ModelProto, str]:
    """The exported graph and the exporter's name. The dynamo exporter's graph stays in memory;
    the TorchScript exporter writes ``scratch`` (and any external data beside it), read back."""
    args = tuple(spec.example_inputs(spec.export_shapes()))
    try:
        with _quiet():
            if exporter == "dynamo":
                program = torch.onnx.export(
                    model,
                    args,
                    dynamo=True,
                    input_names=spec.names,
                    dynamic_shapes=spec.torch_dynamic_shapes() if spec.dynamic_axes else None,
                    opset_version=opset,
                    verbose=False,
                )
                assert program is not None
                return program.model_proto, "torch.onnx (dynamo)"
            torch.onnx.export(
                model,
                args,
                os.fspath(scratch),
                dynamo=False,
                input_names=spec.names,
                dynamic_axes=spec.legacy_dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
            )
    except WconvError:
        raise
    except Exception as e:  # torch.export/onnxscript raise many types; all mean "this model did not export"
        raise_if_interrupted()  # unless a Ctrl-C inside torch's own handlers turned into some other error
        root: BaseException = e
        while root.__cause__ is not None:  # the exporter wraps the error that says what went wrong
            root = root.__cause__
        if isinstance(root, OSError) and root.errno in DISK_FULL:
            raise root from None  # the disk, not the model: the CLI says so in one line
        raise InputError(f"torch.onnx.export failed: {type(root).__name__}: {first_line(root)}") from None
    return onnx.load(os.fspath(scratch)), "torch.onnx (TorchScript)"


def _name_outputs(model: onnx.ModelProto) -> list[str]:
    """Rename graph outputs to ``output`` (one) or ``output_0``, ``output_1``, ...; returns the names."""
    graph = model.graph
    outs = list(graph.output)
    new = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.input}
    for vi, name in zip(outs, new):
        old = vi.name
        if old == name or name in taken - {old}:
            continue
        for node in graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        vi.name = name
    return [o.name for o in graph.output]


def conv_layers(model: onnx.ModelProto, module: nn.Module) -> dict[str, str]:
    """``{Conv node name: PyTorch module name}`` for the Conv nodes of ``model`` exported from
    ``module``: the module whose weight the node's weight initializer is named after, else the one
    the exporter's scopes name (dynamo: ``name_scopes`` metadata; TorchScript: node names such as
    ``/body/body.0/Conv``). Only convolution modules count (a fused BatchNorm's scope does not).
    Recorded at export because weights alone cannot say it once a BatchNorm is fused into them."""
    convs = {
        name
        for name, m in module.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 3  # type: ignore[union-attr]
    }
    found = {}
    for node in model.graph.node:
        if node.op_type not in CONV_OPS or len(node.input) < 2:
            continue
        candidates = [node.input[1].removesuffix(".weight")]
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        if scopes is not None:  # dynamo: ['', 'body', 'body.0', 'conv2d']: modules, then the op
            with contextlib.suppress(ValueError, SyntaxError):
                names = ast.literal_eval(scopes)
                candidates += [n for n in names[::-1] if isinstance(n, str)] if isinstance(names, list) else []
        else:  # TorchScript: "/model.8/cv2.0/cv2.0.0/conv/Conv": a scope that extends the one before replaces it
            parts: list[str] = []
            for part in node.name.split("/")[1:-1]:
                if parts and part.startswith(parts[-1] + "."):
                    parts[-1] = part
                else:
                    parts.append(part)
            candidates.append(".".join(parts))
        layer = next((c for c in candidates if c in convs), None)
        if layer is not None:
            found[node.name] = layer
    return found


def _stamp(
    model: onnx.ModelProto,
    loaded: LoadedModel | None,
    spec: InputSpec,
    fold_report: FoldReport,
    exporter: str,
    layers: dict[str, str],
    preprocess: dict[str, Any] | None,
) -> None:
    from wconv_deploy._version import __version__

    fold_summary = {
        "folded": [{"name": ly.name, "kind": ly.kind, "den": ly.den} for ly in fold_report.folded],
        "fused_bn": len(fold_report.fused_bn),
        "on_graph": bool(fold_report.deferred),
    }
    props = {
        KEY_VERSION: __version__,
        KEY_SOURCE: loaded.path.name if loaded else "(in-memory module)",
        KEY_SOURCE_SHA256: loaded.sha256 if loaded else "",
        KEY_INPUT_SPEC: spec.to_json(),
        KEY_FOLD: json.dumps(fold_summary, separators=(",", ":")),
        KEY_EXPORTER: exporter,
        KEY_TORCH_VERSION: torch.__version__,
        KEY_CONV_LAYERS: json.dumps(layers, separators=(",", ":")),
    }
    if preprocess is not None:
        props[KEY_PREPROCESS] = json.dumps(preprocess)
    set_metadata(model, props)
    model.producer_name, model.producer_version = "wconv-deploy", __version__


def default_output(model: str | os.PathLike[str]) -> Path:
    """``MODEL``'s path with the suffix ``.onnx`` (``zoo:NAME`` gives ``NAME.onnx``)."""
    text = os.fspath(model)
    if text.startswith("zoo:"):
        return Path(text[4:].split("?")[0] + ".onnx")
    return Path(text).with_suffix(".onnx")


def export_onnx(
    model: nn.Module | LoadedModel,
    output: str | os.PathLike[str] | None,
    spec: InputSpec,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    fold_bn: bool = False,
    validate_output: bool = True,
    checks: CheckOptions | None = None,
    reference: TorchReference | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Fold ``model`` (a module, or a LoadedModel from :func:`load_model`), export it to
    ``output`` as ONNX, check the graph and validate it against the original in ONNX Runtime
    with ``checks`` (fp32 tolerances unless it sets them). ``reference``: the unfolded model's
    fp32 answers when the caller checks more artifacts against them (deploy); default: a new one.

    Raises :class:`InputError` for bad input or a failed export, :class:`MismatchError` when a
    structural check or the validation fails. In both cases nothing is written at ``output``;
    the validation report is still written to ``output + ".report.json"`` on a failed validation.
    """
    say = progress or (lambda _msg: None)
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.model if loaded is not None else model
    assert isinstance(module, nn.Module)
    if reference is None:  # validation and the golden file share its runs
        reference = TorchReference.of(model, spec.names)
    checks = checks or CheckOptions()
    seed = checks.seed
    out = Path(output) if output is not None else default_output(loaded.path if loaded else "model")
    _check_writable(out)
    if not 7 <= opset <= onnx.defs.onnx_opset_version():
        raise InputError(f"--opset {opset}: this onnx supports opsets 7 to {onnx.defs.onnx_opset_version()}")

    say("folding weighted convolutions" + (" and BatchNorm" if fold_bn else ""))
    example = spec.example_inputs(seed=seed)
    folded, fold_report = fold(loaded if loaded is not None else module, fold_bn=fold_bn, example_inputs=example, seed=seed)
    if exporter not in EXPORTERS:
        raise InputError(f"--exporter {exporter!r}: choose {' or '.join(EXPORTERS)}")
    if isinstance(folded, torch.jit.ScriptModule):
        exporter = "torchscript"  # the only exporter that reads TorchScript
    elif exporter == "torchscript" and loaded is not None and loaded.exported_program is not None:
        raise InputError("--exporter torchscript cannot export a torch.export (.pt2) program; use dynamo")
    if fold_report.deferred:  # fold() did not run the model; make sure it takes these inputs
        _check_accepts(folded, example)
        expected = _count_graph_convs(loaded) if loaded is not None else None
    else:  # fold() ran the folded model on `example` and counted its conv calls
        assert fold_report.model_check is not None
        expected = fold_report.model_check.conv_calls

    with tempfile.TemporaryDirectory(prefix=".wconv-export-", dir=out.parent) as tmp:
        say(f"exporting with torch.onnx ({exporter} exporter)")
        onnx_model, exporter_used = _torch_export(folded, spec, opset, Path(tmp) / "raw.onnx", exporter)
        say("checking the graph (constant folding, onnx checker, shape inference, conv weights)")
        graph_folded = fold_constants(onnx_model)
        _name_outputs(onnx_model)
        layers = conv_layers(onnx_model, folded)
        _stamp(onnx_model, loaded, spec, fold_report, exporter_used, layers, expected_by(spec, checks.inputs))
        data = onnx_model.SerializeToString()  # once: the checks read these bytes, the file holds them
        graph = check_graph(onnx_model, expected, data)
        report = ExportReport(
            output=os.fspath(out),
            source=os.fspath(loaded.path) if loaded else type(module).__name__,
            source_sha256=loaded.sha256 if loaded else None,
            input_spec=spec,
            opset=opset,
            exporter=exporter_used,
            fold=fold_report,
            graph_folded_nodes=graph_folded,
            graph=graph,
        )
        if not graph.passed:
            raise MismatchError("the exported graph fails its structural checks: " + "; ".join(graph.problems))
        staged = Path(tmp) / out.name
        report.external_data = len(data) > PROTOBUF_LIMIT
        if report.external_data:
            onnx.save(onnx_model, os.fspath(staged), save_as_external_data=True, location=out.name + ".data")
        else:
            staged.write_bytes(data)
        if validate_output:
            say(f"validating in onnxruntime against PyTorch ({len(spec.validation_shapes())} input shape(s))")
            atol, rtol = checks.tolerance()
            report.validation = validate(staged, reference, spec, inputs=checks.inputs, atol=atol, rtol=rtol, seed=seed)
            report.validation.artifact = out.name
            report.validation_note = spec.validation_note()
            if not report.validation.passed:
                write_text_atomic(_report_path(out), dumps(report))
                report.validation.raise_for_failure()
        report.size_bytes = staged.stat().st_size
        _publish(staged, out, report.external_data)
    from wconv_deploy.golden import write_golden  # the evidence verify re-checks: fp32 PyTorch's outputs
    from wconv_deploy.precision import Precision

    say("writing the golden inputs and outputs")
    atol, rtol = checks.tolerance()
    outputs = [o.name for o in onnx_model.graph.output]
    write_golden(
        out, reference, spec, precision=Precision.FP32, atol=atol, rtol=rtol, seed=seed, inputs=checks.inputs,
        output_names=outputs,
    )  # fmt: skip
    write_text_atomic(_report_path(out), dumps(report))
    return report


def _report_path(out: Path) -> Path:
    return out.with_name(out.name + ".report.json")


def _check_writable(out: Path) -> None:
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise InputError(f"-o {out}: is a directory")
    if not parent.is_dir():
        raise InputError(f"-o {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"-o {out}: folder {parent} is not writable")


def _publish(staged: Path, out: Path, external: bool) -> None:
    """Move the finished file (and its external data) into place, each by an atomic rename."""
    if external:
        data = staged.with_name(out.name + ".data")
        with atomic_output(out.with_name(out.name + ".data")) as tmp:
            os.replace(data, tmp)
    with atomic_output(out) as tmp:
        os.replace(staged, tmp)
