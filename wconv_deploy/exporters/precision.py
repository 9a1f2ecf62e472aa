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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from wconv_deploy._optional import require
from wconv_deploy.artifacts import (
    KEY_KEEP_FP32,
    KEY_PRECISION,
    KEY_SOURCE,
    KEY_SOURCE_SHA256,
    OnnxInfo,
    read_onnx,
    set_metadata,
    write_onnx,
)
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report, dumps
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

    def render(self) -> str:
        lines = [f"{self.precision} variant: {self.output}"]
        if self.keep_fp32:
            lines.append(f"kept in fp32: {', '.join(self.keep_fp32)}")
        if self.calibration:
            lines.append(f"calibrated on: {self.calibration}")
        if self.validation is not None:
            lines += ["", self.validation.render()]
        for name, value in self.task.items():
            lines.append(f"{name}: {value:.4g}")
        if self.layers:
            lines += ["", render_layers(self.layers)]
        return "\n".join(lines)


def _calibration_reader(cases: list[tuple[str, dict[str, np.ndarray]]]) -> Any:
    quantization = require("onnxruntime.quantization", "cpu")

    class Reader(quantization.CalibrationDataReader):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter([feeds for _, feeds in cases])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


def _node_names(model: onnx.ModelProto, wanted: Sequence[str], reference: Any) -> list[str]:
    """ONNX node names for ``--keep-fp32``: node names as they are, PyTorch layer names (as the
    per-layer report shows them) through the Conv that carries that layer's weights."""
    names = {n.name for n in model.graph.node}
    layer_to_node: dict[str, str] = {}
    if reference is not None and any(w not in names for w in wanted):
        from wconv_deploy.fold import fold

        folded = fold(getattr(reference, "model", reference), fold_bn=True).model
        layer_to_node = {layer: node.name for node, layer, _ in _match_convs(model, folded) if layer}
    missing = [w for w in wanted if w not in names and w not in layer_to_node]
    if missing:
        convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:8]
        raise InputError(f"--keep-fp32: no node or layer named {', '.join(missing)} (Conv nodes include: {', '.join(convs)})")
    return [w if w in names else layer_to_node[w] for w in wanted]


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
    progress: Progress | None = None,
) -> ConvertReport:
    """Write the ``precision`` variant of ``onnx_path`` to ``output`` and validate it against
    ``reference`` (a PyTorch model or LoadedModel; for a zoo export it defaults to the zoo model).
    ``inputs`` (.npz or image folder) are validated on beside the seeded random ones.
    ``per_layer`` adds every Conv output's error (:func:`layer_errors`) to the report.

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
    reference = reference if reference is not None else _reference_from_metadata(model)
    keep = _node_names(model, keep_fp32, reference)
    out = Path(output)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise InputError(f"-o {out}: folder {out.parent} does not exist")
    a, r = precision.tolerance
    atol, rtol = (a if atol is None else atol), (r if rtol is None else rtol)
    report = ConvertReport(os.fspath(out), precision, keep, None)
    with tempfile.TemporaryDirectory(prefix=".wconv-convert-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        if precision == Precision.FP16:
            say("converting to fp16 (inputs and outputs stay fp32)")
            float16 = require("onnxruntime.transformers.float16", "cpu")
            variant = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep or None)
            _toposort(variant.graph)
            _stamp(variant, precision, keep)
            write_onnx(variant, staged)
        else:
            cases = load_inputs(calibration, spec) if calibration is not None else random_inputs(spec, seed)
            report.calibration = (
                os.fspath(calibration) if calibration else "seeded random inputs (pass --calibration for real data)"
            )
            say(f"quantising to int8 (QDQ, per-channel weights), calibrating on {len(cases)} input set(s)")
            _quantize(src, staged, cases, keep, calibration_method)
            variant = read_onnx(staged)
            _stamp(variant, precision, keep)
            write_onnx(variant, staged)
        onnx.checker.check_model(os.fspath(staged), full_check=True)
        if reference is None:
            raise InputError("pass --reference MODEL: the fp32 PyTorch model the variant must match")
        say("validating against fp32 PyTorch")
        # int8 calibrated on real data clips inputs unlike it (seeded normals): validate on real data
        real_only = precision == Precision.INT8 and calibration is not None
        check_on = inputs if inputs is not None or not real_only else calibration
        report.validation = validate(
            staged, reference, spec, inputs=check_on, random=not real_only, atol=atol, rtol=rtol, seed=seed
        )
        report.validation.artifact = out.name
        report.task = _task_metrics(staged, reference, spec, seed, inputs)
        if per_layer:
            say("comparing every Conv output with fp32 PyTorch")
            feeds = _photo_feeds(spec) or random_inputs(spec, seed)[0][1]
            report.layers = layer_errors(src, staged, reference, feeds)
        if not report.validation.passed:
            write_text_atomic(out.with_name(out.name + ".report.json"), dumps(report))
            raise MismatchError(
                f"the {precision} variant is outside atol={atol:g} rtol={rtol:g} of fp32 PyTorch (see above); "
                f"{out} not written, try --per-layer and --keep-fp32",
                report,
            )
        with atomic_output(out) as final:
            os.replace(staged, final)
    write_text_atomic(out.with_name(out.name + ".report.json"), dumps(report))
    return report


def _quantize(src: Path, dst: Path, cases: list[tuple[str, dict[str, np.ndarray]]], keep: list[str], method: str) -> None:
    q = require("onnxruntime.quantization", "cpu")
    shape_inference = require("onnxruntime.quantization.shape_inference", "cpu")

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        shape_inference.quant_pre_process(os.fspath(src), os.fspath(pre), skip_symbolic_shape=True)
        q.quantize_static(
            os.fspath(pre),
            os.fspath(dst),
            _calibration_reader(cases),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            weight_type=q.QuantType.QInt8,
            activation_type=q.QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


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


def _stamp(model: onnx.ModelProto, precision: Precision, keep: list[str]) -> None:
    set_metadata(model, {KEY_PRECISION: precision.value, KEY_KEEP_FP32: json.dumps(keep)})


def _reference_from_metadata(model: onnx.ModelProto) -> Any:
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


def _photo_feeds(spec: InputSpec) -> dict[str, np.ndarray] | None:
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


def _task_metrics(
    path: Path, reference: Any, spec: InputSpec, seed: int, inputs: str | os.PathLike[str] | None = None
) -> dict[str, float]:
    """PSNR on the shipped photo for single-channel image-to-image models (the zoo denoisers),
    top-1 agreement on the validation inputs (random and ``inputs``) for classifiers (2-D outputs)."""
    import torch

    from wconv_deploy.runtimes.onnxruntime import OnnxRuntime
    from wconv_deploy.zoo.denoisers import demo_image, psnr

    module = getattr(reference, "model", reference)
    rt = OnnxRuntime(path)
    photo = _photo_feeds(spec)
    if photo is not None:
        clean = demo_image()
        with torch.no_grad():
            fp32 = module(*[torch.from_numpy(v) for v in photo.values()])
        low = torch.from_numpy(rt.run(photo)[0])
        return {"psnr_fp32_torch_db": psnr(fp32[0, 0], clean), "psnr_variant_db": psnr(low[0, 0], clean)}
    feeds_list = [feeds for _, feeds in random_inputs(spec, seed) + (load_inputs(inputs, spec) if inputs else [])]
    agree, total = 0, 0
    for feeds in feeds_list:
        with torch.no_grad():
            expected = module(*[torch.from_numpy(feeds[n]) for n in spec.names])
        actual = rt.run(feeds)[0]
        if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
            return {}
        agree += int((expected.argmax(1).numpy() == actual.argmax(1)).sum())
        total += expected.shape[0]
    return {"top1_agreement": agree / total} if total else {}


# --------------------------------------------------------------------------- per-layer errors

#: A layer's error "jumps" when it is at least JUMP times the largest error before it and above
#: JUMP_FLOOR (relative L2 error); the first such layer is where precision is lost.
JUMP, JUMP_FLOOR = 2.0, 1e-3


@dataclass
class LayerError:
    """One Conv node of the variant against the same layer of the fp32 PyTorch model."""

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


def _match_convs(model: onnx.ModelProto, folded: Any) -> list[tuple[onnx.NodeProto, str, np.ndarray]]:
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
                pairs.append((node, name, w))
                del candidates[i]
                break
        else:
            pairs.append((node, "", w))
    return pairs


def layer_errors(
    fp32_onnx: str | os.PathLike[str], variant_onnx: str | os.PathLike[str], reference: Any, feeds: dict[str, np.ndarray]
) -> list[LayerError]:
    """Every Conv output of ``variant_onnx`` (exposed as an extra graph output and run in ONNX
    Runtime) against the matching conv of the fp32 PyTorch model (forward hooks), on ``feeds``.

    The PyTorch side is the reference folded and BatchNorm-fused as the export did it (``fold`` proves
    the folded model equals the trained one), so each ONNX Conv has one PyTorch conv to match.
    """
    import torch

    from wconv_deploy.fold import fold

    ort = require("onnxruntime", "cpu")

    base = read_onnx(fp32_onnx, load_external_data=True)
    module = getattr(reference, "model", reference)
    folded = fold(module, fold_bn=True).model.eval()  # the exporters fuse eval BatchNorms too
    pairs = _match_convs(base, folded)

    captured: dict[str, np.ndarray] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
            captured.setdefault(name, out.detach().clone().numpy())  # clone: an in-place ReLU follows

        return hook

    modules = dict(folded.named_modules())
    hooks = [modules[name].register_forward_hook(keep(name)) for _, name, _ in pairs if name]
    try:
        with torch.no_grad():
            folded(*[torch.from_numpy(v) for v in feeds.values()])
    finally:
        for h in hooks:
            h.remove()

    variant = read_onnx(variant_onnx)
    typed = onnx.shape_inference.infer_shapes(variant)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.output]}
    by_name = {n.name: n for n in variant.graph.node}
    outputs = [by_name[node.name].output[0] if node.name in by_name else node.output[0] for node, _, _ in pairs]
    known = {o.name for o in variant.graph.output}
    for name in outputs:
        if name not in known:
            variant.graph.output.append(onnx.helper.make_tensor_value_info(name, elem.get(name, onnx.TensorProto.FLOAT), None))
    session = ort.InferenceSession(variant.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(outputs, feeds)

    result = []
    for (node, name, w), actual in zip(pairs, values):
        qerr, outer = _int8_weight_error(w)
        expected = captured.get(name)
        if expected is None:
            rel, max_abs = float("nan"), float("nan")
        else:
            diff = actual.astype(np.float64) - expected
            norm = float(np.linalg.norm(expected))
            rel = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
            max_abs = float(np.abs(diff).max())
        result.append(LayerError(node.name, name, rel, max_abs, qerr, outer))
    return result


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
    lines = ["per-layer error vs fp32 PyTorch (rel err: relative L2 error of the Conv output)", format_table(head, rows)]
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
