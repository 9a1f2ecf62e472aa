"""Lower-precision variants of an exported ONNX model, each validated before it is written.

``fp16``: weights and activations in float16, inputs and outputs kept float32 (ONNX Runtime's
converter, ``onnxruntime.transformers.float16``). ``int8``: static QDQ quantisation with
per-channel int8 weights and int8 activations calibrated on real inputs
(``onnxruntime.quantization``). ``keep_fp32`` names nodes (or PyTorch layers) left in float32. The variant is
compared with the fp32 PyTorch model like any export, at tolerances that fit its precision, and
a denoiser's or classifier's task metric is reported beside the raw errors.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wconv_deploy._optional import missing, require
from wconv_deploy.artifacts import (
    KEY_CONV_LAYERS,
    KEY_KEEP_FP32,
    KEY_PRECISION,
    KEY_PREPROCESS,
    KEY_SOURCE,
    KEY_SOURCE_SHA256,
    OnnxInfo,
    json_metadata,
    read_onnx,
    set_metadata,
    write_onnx,
)
from wconv_deploy.calibration import (
    CalibrationCache,
    CalibrationData,
    CalibrationOptions,
    CalibrationRun,
    ProgressReader,
    calibration_data,
)
from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.options import TaskBudget
from wconv_deploy.precision import Precision
from wconv_deploy.preprocess import ImagePreprocess, applies_preprocess, expected_by
from wconv_deploy.reports import Report, dumps
from wconv_deploy.runtimes.base import Runtime
from wconv_deploy.runtimes.torch import TorchReference
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import ValidationReport, load_inputs, random_inputs, validate

#: What convert makes (fp32 is what export writes).
CONVERTIBLE = (Precision.FP16, Precision.INT8)
#: int8 activation-range calibration (onnxruntime.quantization.CalibrationMethod names).
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

Progress = Callable[[str], None]


@dataclass
class ConvertReport(Report):
    """The variant written, how it was made, and how far it is from fp32 PyTorch."""

    output: str
    precision: Precision
    keep_fp32: list[str]
    calibration: str | None
    validation: ValidationReport | None = None
    task: dict[str, float] = field(default_factory=dict)
    layers: list[LayerError] = field(default_factory=list)
    calibration_run: CalibrationRun | None = None
    preprocess: dict[str, Any] | None = None
    comparison_png: str | None = None  # fp32 | variant | error map on the shipped photo (image models)

    def render(self) -> str:
        lines = [f"{self.precision} variant: {self.output}"]
        if self.keep_fp32:
            lines.append(f"kept in fp32: {', '.join(self.keep_fp32)}")
        if self.calibration_run is not None:
            lines.append(self.calibration_run.render())
        elif self.calibration:
            lines.append(f"calibrated on: {self.calibration}")
        if self.preprocess:
            lines.append(f"image preprocessing (in the metadata): {json.dumps(self.preprocess)}")
        if self.validation is not None:
            lines += ["", self.validation.render()]
        for name, value in self.task.items():
            lines.append(f"{name}: {value:.4g}")
        if self.comparison_png:
            lines.append(f"side by side with fp32 PyTorch: {self.comparison_png}")
        if self.layers:
            lines += ["", render_layers(self.layers)]
        return "\n".join(lines)


def _node_names(model: onnx.ModelProto, wanted: Sequence[str], reference: Any) -> list[str]:
    """ONNX node names for ``--keep-fp32``: node names as they are, PyTorch layer names (as the
    per-layer report shows them) through the Conv that carries that layer's weights."""
    names = {n.name for n in model.graph.node}
    layer_to_node: dict[str, str] = {}
    if any(w not in names for w in wanted):
        layer_to_node = {layer: node for node, layer in conv_layer_names(model, reference).items() if layer}
    missing = [w for w in wanted if w not in names and w not in layer_to_node]
    if missing:
        convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:8]
        raise InputError(f"--keep-fp32: no node or layer named {', '.join(missing)} (Conv nodes include: {', '.join(convs)})")
    return [w if w in names else layer_to_node[w] for w in wanted]


def validation_inputs(
    precision: Precision, calibration: str | os.PathLike[str] | None, inputs: str | os.PathLike[str] | None
) -> tuple[str | os.PathLike[str] | None, bool]:
    """What a variant is validated on, as ``(inputs, random)``: ``inputs`` beside seeded random
    ones, except for int8 calibrated on real data, which clips inputs unlike that data (seeded
    normals): it is validated on ``inputs``, else on the calibration data, and no random ones."""
    if precision == Precision.INT8 and calibration is not None:
        return (inputs if inputs is not None else calibration), False
    return inputs, True


@applies_preprocess
def convert_onnx(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    precision: str | Precision,
    *,
    reference: Any = None,
    calibration: str | os.PathLike[str] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    calibration_method: str = "minmax",
    keep_fp32: Sequence[str] = (),
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    per_layer: bool = False,
    budget: TaskBudget | None = None,
    calibration_options: CalibrationOptions | None = None,
    preprocess: ImagePreprocess | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Write the ``precision`` variant of ``onnx_path`` to ``output`` and validate it against
    ``reference`` (a PyTorch model or LoadedModel; for a zoo export it defaults to the zoo model).
    ``inputs`` (.npz or image folder) are validated on beside the seeded random ones.
    ``per_layer`` adds every Conv output's error (:func:`layer_errors`) to the report; a
    ``budget`` fails the variant whose task metric (:func:`task_metrics`) loses more than it allows.
    ``calibration_options``: a subset of the calibration inputs and a calibration cache;
    ``preprocess``: how image folders (``calibration``, ``inputs``) are loaded, recorded in the
    variant's metadata.

    Raises InputError for bad input and MismatchError when validation fails (nothing written).
    """
    from wconv_deploy.fileio import atomic_output, regular_file, write_text_atomic

    say = progress or (lambda _msg: None)
    require("onnxruntime", "cpu")  # the converters and the validation are ONNX Runtime's: a missing one is one line
    if calibration_method not in CALIBRATION_METHODS:
        raise InputError(f"--calibration-method {calibration_method!r}: choose {', '.join(CALIBRATION_METHODS)}")
    precision = Precision.parse(precision, allowed=CONVERTIBLE)
    src = regular_file(onnx_path)
    model = read_onnx(src, load_external_data=True)
    spec = OnnxInfo.of(model, src).spec
    reference = reference if reference is not None else reference_from_metadata(model)
    if reference is not None:  # fp32 PyTorch runs once per input for validation, task and golden file
        reference = TorchReference.of(reference, spec.names)
    keep = _node_names(model, keep_fp32, reference)
    out = Path(output)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise InputError(f"-o {out}: folder {out.parent} does not exist")
    a, r = precision.tolerance
    atol, rtol = (a if atol is None else atol), (r if rtol is None else rtol)
    report = ConvertReport(os.fspath(out), precision, keep, None)
    report.preprocess = expected_by(spec, calibration, inputs)
    with tempfile.TemporaryDirectory(prefix=".wconv-convert-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        if precision == Precision.FP16:
            say("converting to fp16 (inputs and outputs stay fp32)")
            variant = to_float16(model, keep)
            _stamp(variant, precision, keep, report.preprocess)
            write_onnx(variant, staged)
        else:
            options = calibration_options or CalibrationOptions()
            data = calibration_data(calibration, spec, options, seed)
            cache = CalibrationCache.for_run(options.cache, src, data, calibration_method) if options.cache else None
            report.calibration = data.describe
            say(f"quantising to int8 (QDQ, per-channel weights), calibrating on {data.describe}")
            report.calibration_run = quantize_int8(src, staged, data, keep, calibration_method, cache, say)
            variant = read_onnx(staged)
            _stamp(variant, precision, keep, report.preprocess)
            write_onnx(variant, staged)
        onnx.checker.check_model(os.fspath(staged), full_check=True)
        if reference is None:
            raise InputError("pass --reference MODEL: the fp32 PyTorch model the variant must match")
        say("validating against fp32 PyTorch")
        check_on, random = validation_inputs(precision, calibration, inputs)
        report.validation = validate(staged, reference, spec, inputs=check_on, random=random, atol=atol, rtol=rtol, seed=seed)
        report.validation.artifact = out.name
        task = TaskReference.of(reference, spec, seed, inputs)
        report.task = task.measure(staged)
        if per_layer:
            say("comparing every Conv output with the fp32 graph")
            feeds = photo_feeds(spec) or random_inputs(spec, seed)[0][1]
            report.layers = layer_errors(src, staged, reference, feeds)
        if not report.validation.passed:
            write_text_atomic(out.with_name(out.name + ".report.json"), dumps(report))
            raise MismatchError(
                f"the {precision} variant is outside atol={atol:g} rtol={rtol:g} of fp32 PyTorch (see above); "
                f"{out} not written, try --per-layer and --keep-fp32",
                report,
            )
        miss = budget.miss(report.task) if budget is not None else None
        if miss is not None:
            write_text_atomic(out.with_name(out.name + ".report.json"), dumps(report))
            raise MismatchError(f"the {precision} variant misses the task budget: {miss}; {out} not written", report)
        with atomic_output(out) as final:
            os.replace(staged, final)
    picture = photo_comparison([(precision.value, out)], task, out.with_name(f"{out.stem}.compare.png"))
    report.comparison_png = os.fspath(picture) if picture else None
    from wconv_deploy.golden import write_golden  # the evidence verify re-checks, on the inputs validated here

    say("writing the golden inputs and outputs")
    names = [o.name for o in variant.graph.output]
    write_golden(
        out, reference, spec, precision=precision, atol=atol, rtol=rtol, seed=seed, inputs=check_on,
        random=random, output_names=names,
    )  # fmt: skip
    write_text_atomic(out.with_name(out.name + ".report.json"), dumps(report))
    return report


def quantize_int8(
    src: Path,
    dst: Path,
    data: CalibrationData,
    keep: Sequence[str],
    method: str = "minmax",
    cache: CalibrationCache | None = None,
    progress: Progress | None = None,
) -> CalibrationRun:
    """Write the QDQ int8 quantisation of ``src`` to ``dst`` (``keep``: nodes left in fp32),
    its activation ranges calibrated on ``data`` with ``method`` or taken from ``cache`` when
    that holds ranges measured on the same model and data. Nothing is validated here."""
    q = require("onnxruntime.quantization", "cpu")
    shape_inference = require("onnxruntime.quantization.shape_inference", "cpu")

    reader = ProgressReader(data.cases, progress)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        shape_inference.quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
        ranges = Path(tmp) / "ranges.json"  # ONNX Runtime's cache file: read if present, else written
        why = cache.restore(ranges) if cache is not None else "no cache"
        q.quantize_static(
            os.fspath(pre),
            os.fspath(dst),
            reader if why is not None else None,
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            weight_type=q.QuantType.QInt8,
            activation_type=q.QuantType.QInt8,
            nodes_to_exclude=list(keep),
            calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            **({"calibration_cache_path": os.fspath(ranges)} if cache is not None else {}),
        )
        if cache is not None and why is not None:
            cache.store(ranges)
    status = None if cache is None else ("reused" if why is None else f"rebuilt ({why})")
    return CalibrationRun(data.describe, reader.batches, status, os.fspath(cache.path) if cache else None)


def to_float16(model: onnx.ModelProto, keep: Sequence[str]) -> onnx.ModelProto:
    """``model`` in float16 (inputs and outputs float32, ``keep`` nodes in float32) by ONNX
    Runtime's converter, repaired so that the ONNX checker passes.

    The converter leaves some initializers float32 (its ``ALWAYS_FLOAT_INPUTS``, such as the
    scales of the Resize that ``nn.Upsample(scale_factor=...)`` exports to) but retypes their
    ``value_info`` entries float16, which fails type inference; those entries take their
    initializer's type here. Whatever still fails is one InputError, never a traceback."""
    float16 = require("onnxruntime.transformers.float16", "cpu")
    try:
        variant = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep) or None)
    except Exception as e:  # the converter's own shape inference or graph walk failed
        raise InputError(f"the float16 converter cannot convert this graph: {type(e).__name__}: {first_line(e)}") from None
    types = {t.name: t.data_type for t in variant.graph.initializer}
    for vi in variant.graph.value_info:
        if vi.name in types:
            vi.type.tensor_type.elem_type = types[vi.name]
    _toposort(variant.graph)
    try:
        onnx.checker.check_model(variant, full_check=True)
    except Exception as e:  # ValidationError or InferenceError
        raise InputError(f"the float16 graph fails the ONNX checker: {first_line(e)}; try --keep-fp32 NODE") from None
    return variant


def _toposort(graph: onnx.GraphProto) -> None:
    """Put the nodes in an order the ONNX checker accepts (the fp16 converter appends its Casts
    at the end; ONNX Runtime does not mind, the checker and TensorRT's parser do)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise InputError(f"the converted graph has a cycle or a missing input near node {pending[0].name!r}")
        for n in ready:
            available.update(n.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _stamp(model: onnx.ModelProto, precision: Precision, keep: list[str], preprocess: dict[str, Any] | None = None) -> None:
    props = {KEY_PRECISION: precision.value, KEY_KEEP_FP32: json.dumps(keep)}
    if preprocess is not None:
        props[KEY_PREPROCESS] = json.dumps(preprocess)
    set_metadata(model, props)


def reference_from_metadata(model: onnx.ModelProto) -> Any:
    """The zoo model an export came from (its metadata names it and its sha256), else None."""
    from wconv_deploy.artifacts import wconv_metadata

    props = wconv_metadata(model)
    source = props.get(KEY_SOURCE, "")
    if source.startswith("zoo:"):
        from wconv_deploy.loading import load_model

        loaded = load_model(source)
        if loaded.sha256 == props.get(KEY_SOURCE_SHA256):
            return loaded
    return None


def photo_feeds(spec: InputSpec) -> dict[str, np.ndarray] | None:
    """The shipped photo with the denoiser's seeded noise, for a single-channel image model whose
    spec admits 256x256 (the zoo denoisers); None for any other model."""
    t = spec.inputs[0]
    if len(spec.inputs) != 1 or len(t.dims) != 4 or t.dims[1].opt != 1:
        return None
    from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, NOISE_SEED, add_gaussian_noise, demo_image

    clean = demo_image()
    h, w = clean.shape
    if not (t.dims[2].min <= h <= t.dims[2].max and t.dims[3].min <= w <= t.dims[3].max):
        return None
    return {t.name: add_gaussian_noise(clean, DENOISER_SIGMA, NOISE_SEED)[None, None].numpy()}


@dataclass
class TaskReference:
    """fp32 PyTorch's answers on the task's inputs, computed once so that every variant and
    runtime is measured against the same run: the shipped photo for single-channel image models
    (the zoo denoisers: PSNR), the validation inputs for classifiers (2-D outputs: top-1
    agreement). ``kind`` None: the model has no task metric."""

    kind: str | None  # "psnr" | "top1" | None
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    expected: list[np.ndarray] = field(default_factory=list)  # fp32 PyTorch's first output per feed
    clean: np.ndarray | None = None  # the noise-free photo (psnr)

    @classmethod
    def of(cls, reference: Any, spec: InputSpec, seed: int = 0, inputs: str | os.PathLike[str] | None = None) -> TaskReference:
        """Run ``reference`` (an nn.Module, LoadedModel or TorchReference) on the task's inputs for ``spec``."""
        fp32 = TorchReference.of(reference, spec.names)
        photo = photo_feeds(spec)
        if photo is not None:
            from wconv_deploy.zoo.denoisers import demo_image

            return cls("psnr", [photo], [fp32.run(photo)[0]], demo_image().numpy())
        feeds_list = [feeds for _, feeds in random_inputs(spec, seed) + (load_inputs(inputs, spec) if inputs else [])]
        expected = []
        for feeds in feeds_list:
            out = fp32.run(feeds)
            if len(out) != 1 or out[0].ndim != 2:
                return cls(None)
            expected.append(out[0])
        return cls("top1", feeds_list, expected) if expected else cls(None)

    def psnr_db(self, image: np.ndarray) -> float:
        """PSNR of a photo-sized output (any leading axes of size 1) against the clean photo."""
        import torch

        from wconv_deploy.zoo.denoisers import psnr

        assert self.clean is not None
        return psnr(torch.from_numpy(image.reshape(self.clean.shape)), torch.from_numpy(self.clean))

    def measure(self, artifact: Path | Runtime) -> dict[str, float]:
        """The task metrics of ``artifact`` (an ONNX file, run in ONNX Runtime on the CPU, or the
        runtime that will run it); empty for a model without a task metric."""
        if self.kind is None:
            return {}
        from wconv_deploy.runtimes.onnxruntime import OnnxRuntime

        rt = artifact if isinstance(artifact, Runtime) else OnnxRuntime(artifact)
        actual = [rt.run(feeds)[0] for feeds in self.feeds]
        if self.kind == "psnr":
            return {"psnr_fp32_torch_db": self.psnr_db(self.expected[0]), "psnr_variant_db": self.psnr_db(actual[0])}
        agree = sum(int((e.argmax(1) == a.argmax(1)).sum()) for e, a in zip(self.expected, actual))
        return {"top1_agreement": agree / sum(e.shape[0] for e in self.expected)}


def task_metrics(
    artifact: Path | Runtime, reference: Any, spec: InputSpec, seed: int, inputs: str | os.PathLike[str] | None = None
) -> dict[str, float]:
    """PSNR on the shipped photo for single-channel image-to-image models (the zoo denoisers),
    top-1 agreement on the validation inputs (random and ``inputs``) for classifiers (2-D outputs).
    ``artifact``: an ONNX file (run in ONNX Runtime on the CPU) or the runtime that will run it.
    To measure several artifacts, build one :class:`TaskReference` and ``measure`` each."""
    return TaskReference.of(reference, spec, seed, inputs).measure(artifact)


def photo_comparison(variants: Sequence[tuple[str, Path | Runtime]], task: TaskReference, path: Path) -> Path | None:
    """For image-to-image models that take the shipped photo (``task.kind`` psnr): write a PNG
    of fp32 PyTorch's output beside each variant's and its amplified error map, titled with their
    PSNR. Returns ``path``, or None (nothing written) for other models or without matplotlib."""
    if task.kind != "psnr" or missing("matplotlib", "plot") is not None:
        return None
    from wconv_deploy.plots import side_by_side
    from wconv_deploy.runtimes.onnxruntime import OnnxRuntime

    panels = []
    for name, artifact in variants:
        rt = artifact if isinstance(artifact, Runtime) else OnnxRuntime(artifact)
        image = rt.run(task.feeds[0])[0][0, 0]
        panels.append((f"{name}: PSNR {task.psnr_db(image):.2f} dB", image))
    fp32 = task.expected[0][0, 0]
    side_by_side((f"fp32 PyTorch: PSNR {task.psnr_db(fp32):.2f} dB", fp32), panels, path)
    return path


# --------------------------------------------------------------------------- per-layer errors

#: A layer's error "jumps" when it is at least JUMP times the largest error before it and above
#: JUMP_FLOOR (relative L2 error); the first such layer is where precision is lost.
JUMP, JUMP_FLOOR = 2.0, 1e-3


@dataclass
class LayerError:
    """One Conv node of the variant against the same Conv of the fp32 graph, and its PyTorch layer."""

    node: str
    module: str
    rel_error: float
    max_abs: float
    weight_qerr: float
    outer_qerr: float | None


def _int8_weight_error(w: np.ndarray) -> tuple[float, float | None]:
    """Relative L2 error of symmetric per-output-channel int8 weights, over all taps and over the
    kernel's border taps (those a density mask below 1 shrinks), or None for 1x1 kernels."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(flat > 0, flat / 127.0, 1.0).reshape(-1, *([1] * (w.ndim - 1)))
    diff = np.clip(np.round(w / scale), -127, 127) * scale - w

    def rel(mask: np.ndarray) -> float:
        den = float(np.linalg.norm(w[mask]))
        return float(np.linalg.norm(diff[mask])) / den if den > 0 else 0.0

    inner = np.zeros(w.shape[2:], dtype=bool)
    if all(k > 2 for k in w.shape[2:]):
        inner[tuple(slice(1, k - 1) for k in w.shape[2:])] = True
    border = np.broadcast_to(~inner, w.shape)
    return rel(np.ones(w.shape, dtype=bool)), (rel(border) if inner.any() else None)


def conv_layer_names(model: onnx.ModelProto, reference: Any) -> dict[str, str]:
    """``{Conv node name: PyTorch layer name}`` of an fp32 graph: what export recorded
    (:data:`~wconv_deploy.artifacts.KEY_CONV_LAYERS`), else, for files exported before it did,
    the conv of the folded, BatchNorm-fused ``reference`` holding the same weights ("" for none)."""
    recorded = json_metadata(model, KEY_CONV_LAYERS, "the fp32 model")
    if isinstance(recorded, dict):
        return {str(k): str(v) for k, v in recorded.items()}
    if reference is None:
        return {}
    from wconv_deploy.fold import fold

    folded = fold(getattr(reference, "model", reference), fold_bn=True).model
    return {node.name: layer for node, layer in _match_convs(model, folded)}


def _match_convs(model: onnx.ModelProto, folded: Any) -> list[tuple[onnx.NodeProto, str]]:
    """Pair each Conv node of the fp32 ONNX graph with the PyTorch conv holding the same weights."""
    import torch

    inits = {t.name: t for t in model.graph.initializer}
    candidates = [
        (name, m.weight.detach().float().numpy())
        for name, m in folded.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd)
    ]
    pairs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        for i, (name, tw) in enumerate(candidates):
            if tw.shape == w.shape and np.allclose(tw, w, rtol=1e-4, atol=1e-6):
                pairs.append((node, name))
                del candidates[i]
                break
        else:
            pairs.append((node, ""))
    return pairs


def layer_errors(
    fp32_onnx: str | os.PathLike[str],
    variant_onnx: str | os.PathLike[str],
    reference: Any,
    feeds: dict[str, np.ndarray],
    ops: Sequence[str] = ("Conv",),
) -> list[LayerError]:
    """Every output of an ``ops`` node with a constant weight (Conv by default; the precision
    search adds Gemm and MatMul) of ``variant_onnx`` against the same node of the fp32 graph it
    was made from (export validated that graph against PyTorch), both exposed as extra graph
    outputs and run in ONNX Runtime on ``feeds``, in graph order; Convs are named by their
    PyTorch layer (:func:`conv_layer_names`) and get their int8 weight error.

    The fp32 graph, not PyTorch, is the per-layer reference because the exporter may have fused a
    BatchNorm into a Conv that PyTorch keeps apart (a model torch.fx cannot trace)."""
    base = read_onnx(fp32_onnx, load_external_data=True)
    layers = conv_layer_names(base, reference)
    inits = {t.name: t for t in base.graph.initializer}
    nodes = [n for n in base.graph.node if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits]
    expected = node_outputs(base, [n.output[0] for n in nodes], feeds)
    variant = read_onnx(variant_onnx)
    by_name = {n.name: n for n in variant.graph.node}
    actual = node_outputs(variant, [by_name[n.name].output[0] if n.name in by_name else n.output[0] for n in nodes], feeds)
    result = []
    for node, want, got in zip(nodes, expected, actual):
        qerr, outer = 0.0, None
        if node.op_type == "Conv":
            qerr, outer = _int8_weight_error(onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.float32))
        diff = got.astype(np.float64) - want.astype(np.float64)
        norm = float(np.linalg.norm(want))
        rel = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
        result.append(LayerError(node.name, layers.get(node.name, ""), rel, float(np.abs(diff).max()), qerr, outer))
    return result


def node_outputs(model: onnx.ModelProto, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The values of the tensors ``names`` of ``model`` on ``feeds`` (made graph outputs; ONNX Runtime, CPU)."""
    ort = require("onnxruntime", "cpu")
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.output]}
    known = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem.get(name, onnx.TensorProto.FLOAT), None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v, dtype=np.float32) for v in session.run(list(names), feeds)]


def first_jump(layers: Sequence[LayerError]) -> LayerError | None:
    """The first layer whose error is JUMP times the worst before it (and above JUMP_FLOOR)."""
    worst = 0.0
    for layer in layers:
        if layer.rel_error >= JUMP_FLOOR and layer.rel_error >= JUMP * worst:
            return layer
        worst = max(worst, layer.rel_error)
    return None


def render_layers(layers: Sequence[LayerError]) -> str:
    """The per-layer table, the first jump, and which layers to try keeping in fp32."""
    from wconv_deploy.table import format_table

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2e}"

    rows = [
        [ly.node, ly.module or "(unmatched)", num(ly.rel_error), num(ly.max_abs), num(ly.weight_qerr), num(ly.outer_qerr)]
        for ly in layers
    ]
    head = ["ONNX node", "PyTorch layer", "rel err", "max abs", "int8 w err", "border w err"]
    title = "per-layer error vs the fp32 graph, validated against PyTorch at export (rel err: relative L2 error of Conv outputs)"
    lines = [title, format_table(head, rows)]
    jump = first_jump(layers)
    if jump is None:
        lines.append("no layer's error jumps: the error grows gradually through the network")
    else:
        lines.append(f"error jumps first at {jump.node} ({jump.module or 'unmatched'}): rel err {jump.rel_error:.2e}")
    growth = sorted(
        ((ly.rel_error - (layers[i - 1].rel_error if i else 0.0), ly.node) for i, ly in enumerate(layers)), reverse=True
    )
    worst = [name for gain, name in growth[:3] if gain > 0]
    if worst:
        lines.append(f"largest error growth: {', '.join(worst)}; try --keep-fp32 {','.join(worst)}")
    return "\n".join(lines)
