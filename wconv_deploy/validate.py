"""Prove an artifact computes what the original PyTorch model computes, on the runtime that runs it.

An artifact (an ONNX file or a TensorRT engine) runs on any registered runtime and is compared
with a reference: the PyTorch model (run in fp32), the golden outputs shipped beside it
(:mod:`wconv_deploy.golden`), or another artifact on its own runtime (runtime against runtime, as
``polygraphy run --onnxrt --trt``). Both run on the same inputs (seeded normal inputs at every
shape the spec asks to validate, plus any user inputs from an ``.npz`` file, a folder of images or
a Polygraphy inputs file) and every output is compared: maximum absolute error, maximum error
relative to the output's scale (``max|a-e| / max|e|``), mean absolute error and cosine similarity.

How an output passes (``--check-error-stat``, Polygraphy's names): ``elemwise`` (the default)
when every element satisfies ``|a - e| <= atol + rtol * |e|`` (NumPy's ``isclose``); ``max``,
``mean``, ``median`` or ``quantile`` (``--error-quantile``, default 0.99) when that statistic of
the absolute error is within ``atol`` or that of the elementwise relative error
``|a - e| / |e|`` is within ``rtol``, as Polygraphy decides. In every mode NaN/Inf must appear in
the same places. On a failure the report gives the smallest ``atol`` (at the given ``rtol``) and
the smallest ``rtol`` (at the given ``atol``) that would have passed.

Default tolerances come from the precision (:attr:`Precision.tolerance`, one table): the looser of
the artifact's precision and the runtime's (an fp32 ONNX file on ``openvino-bf16`` is checked at
bf16 tolerances). fp32: ``atol=1e-5``, ``rtol=1e-4``. ORT and PyTorch sum the products of a
convolution in different orders, so results differ by float32 rounding that grows with depth and
width: about 2e-7 absolute on the weighted VGG-16 and ResNet-18 benchmarks (docs/BENCHMARKS.md),
50 times below ``atol``; ``rtol`` alone could not be the test, as elements near zero differ by
1e-3 relative. Importing this module imports neither torch nor onnx (``verify`` uses it where
torch is not installed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report
from wconv_deploy.runtimes.base import Runtime
from wconv_deploy.spec import InputSpec, input_limit_bytes
from wconv_deploy.table import format_table

if TYPE_CHECKING:
    from torch import nn

    from wconv_deploy.golden import Golden
    from wconv_deploy.options import ModelSource

DEFAULT_ATOL, DEFAULT_RTOL = Precision.FP32.tolerance

#: ``--check-error-stat`` choices, Polygraphy's names; ``elemwise`` checks each element.
ERROR_STATS = ("elemwise", "max", "mean", "median", "quantile")
#: Polygraphy's default ``--error-quantile``.
DEFAULT_QUANTILE = 0.99

Cases = list[tuple[str, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Criterion:
    """When an output passes: the tolerances and the error statistic checked against them."""

    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    stat: str = "elemwise"
    quantile: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        if self.stat not in ERROR_STATS:
            raise InputError(f"--check-error-stat {self.stat!r}: choose from {', '.join(ERROR_STATS)}")
        if not 0 <= self.quantile <= 1:
            raise InputError(f"--error-quantile {self.quantile}: must be between 0 and 1")
        if not (self.atol >= 0 and self.rtol >= 0):  # NaN fails too
            raise InputError(f"tolerances must be numbers >= 0 (atol {self.atol}, rtol {self.rtol})")

    @classmethod
    def for_precision(
        cls,
        precision: Precision,
        atol: float | None = None,
        rtol: float | None = None,
        stat: str = "elemwise",
        quantile: float = DEFAULT_QUANTILE,
    ) -> Criterion:
        """The given tolerances, else ``precision``'s defaults."""
        a, r = precision.tolerance
        return cls(a if atol is None else atol, r if rtol is None else rtol, stat, quantile)

    def describe(self) -> str:
        stat = "" if self.stat == "elemwise" else f" on the {self._stat_name} error"
        return f"atol={self.atol:g} rtol={self.rtol:g}{stat}"

    @property
    def _stat_name(self) -> str:
        return f"{self.quantile:g}-quantile" if self.stat == "quantile" else self.stat


@dataclass
class OutputMetrics:
    """How one output of one input set compares with the reference. ``stat_abs``/``stat_rel``:
    the checked statistic of the absolute and relative errors (None for ``elemwise``)."""

    name: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    mismatched: int
    needed_atol: float
    needed_rtol: float
    passed: bool
    problem: str | None = None
    stat_abs: float | None = None
    stat_rel: float | None = None


@dataclass
class CaseResult:
    """One set of inputs (e.g. ``random #0`` at one shape) and its outputs' metrics."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed",)

    label: str
    shapes: dict[str, list[int]]
    outputs: list[OutputMetrics]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)


@dataclass
class ValidationReport(Report):
    """Every input set run through the artifact and the reference, and the verdict. ``outputs``
    and ``feeds`` (not in the JSON): the artifact's outputs and the inputs, per case (Polygraphy's
    ``--save-outputs`` and ``--save-inputs``, the task metric)."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed", "worst", "failed_outputs")

    artifact: str
    runtime: str
    reference: str
    atol: float
    rtol: float
    cases: list[CaseResult] = field(default_factory=list)
    error_stat: str = "elemwise"
    error_quantile: float = DEFAULT_QUANTILE
    outputs: list[list[np.ndarray]] = field(default_factory=list, repr=False)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def criterion(self) -> Criterion:
        return Criterion(self.atol, self.rtol, self.error_stat, self.error_quantile)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def failed_outputs(self) -> list[str]:
        """The names of the outputs that failed in some case, in order."""
        return list(dict.fromkeys(o.name for c in self.cases for o in c.outputs if not o.passed))

    @property
    def worst(self) -> dict[str, float]:
        """The worst value of each metric over every case and output."""
        outs = [o for c in self.cases for o in c.outputs]
        if not outs:
            return {}
        return {
            "max_abs": max(o.max_abs for o in outs),
            "max_rel": max(o.max_rel for o in outs),
            "mean_abs": max(o.mean_abs for o in outs),
            "min_cosine": min(o.cosine for o in outs),
            "needed_atol": max(o.needed_atol for o in outs),
            "needed_rtol": max(o.needed_rtol for o in outs),
        }

    def render(self) -> str:
        rows = [
            [
                c.label,
                o.name,
                "x".join(map(str, o.shape)),
                f"{o.max_abs:.2e}",
                f"{o.max_rel:.2e}",
                f"{o.mean_abs:.2e}",
                f"{o.cosine:.8f}",
                "pass" if o.passed else f"FAIL ({o.problem or f'{o.mismatched} elements'})",
            ]
            for c in self.cases
            for o in c.outputs
        ]
        head = f"validation: {self.runtime} ({self.artifact}) vs {self.reference}, {self.criterion.describe()}"
        table = format_table(["inputs", "output", "shape", "max abs", "max rel", "mean abs", "cosine", "result"], rows)
        lines = [head, table]
        w = self.worst
        if self.passed:
            lines.append(f"passed: {len(self.cases)} input set(s), worst max rel error {w['max_rel']:.2e}")
        elif any(o.problem for c in self.cases for o in c.outputs):
            lines.append(f"FAILED ({', '.join(self.failed_outputs)}): no tolerance passes (see the result column)")
        elif w:
            lines.append(
                f"FAILED ({', '.join(self.failed_outputs)}): would pass with --atol {_ceil(w['needed_atol'])} "
                f"(at rtol {self.rtol:g}) or --rtol {_ceil(w['needed_rtol'])} (at atol {self.atol:g})"
            )
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`MismatchError` (exit 1, with the table) unless every output passed."""
        if not self.passed:
            raise MismatchError(self.failure_message(), self)

    def failure_message(self) -> str:
        """One line: which outputs of which artifact disagree with what."""
        outputs = ", ".join(self.failed_outputs) or "no input set"
        return (
            f"{self.artifact} on {self.runtime} does not compute what {self.reference} computes: {outputs} (see the report above)"
        )


def _ceil(x: float) -> str:
    """A tolerance just above ``x``, in two significant digits (inf stays inf)."""
    if not np.isfinite(x):
        return "inf"
    return f"{float(f'{x * 1.01:.1e}'):.1e}" if x > 0 else "0"


def _statistic(values: np.ndarray, criterion: Criterion) -> float:
    if not values.size:
        return 0.0
    if criterion.stat == "max":
        return float(values.max())
    if criterion.stat == "mean":
        return float(values.mean())
    if criterion.stat == "median":
        return float(np.median(values))
    return float(np.quantile(values, criterion.quantile))


def compare(
    name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, *, criterion: Criterion | None = None
) -> OutputMetrics:
    """Metrics and verdict for one output (``expected`` is the reference); ``criterion`` (default:
    elementwise at ``atol``/``rtol``) says how it passes."""
    crit = criterion or Criterion(atol, rtol)
    atol, rtol = crit.atol, crit.rtol
    shape = list(expected.shape)
    if actual.shape != expected.shape:
        return OutputMetrics(
            name, shape, np.inf, np.inf, np.inf, 0.0, expected.size, np.inf, np.inf, False,
            f"shape {list(actual.shape)} != {shape}",
        )  # fmt: skip
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nan_a, nan_e = ~np.isfinite(a), ~np.isfinite(e)
    same_nonfinite = bool(np.array_equal(nan_a, nan_e) and np.array_equal(a[nan_a], e[nan_e], equal_nan=True))
    ok = nan_a | nan_e
    a, e = np.where(ok, 0.0, a), np.where(ok, 0.0, e)
    diff = np.abs(a - e)
    mag = np.abs(e)
    scale = float(mag.max()) if mag.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(e))
    cosine = float(np.dot(a.ravel(), e.ravel()) / norm) if norm > 0 else (1.0 if max_abs == 0 else 0.0)
    bad = diff > atol + rtol * mag
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel_needed = np.where(diff <= atol, 0.0, np.where(mag > 0, (diff - atol) / mag, np.inf))
        reldiff = np.where(diff == 0, 0.0, np.where(mag > 0, diff / mag, np.inf))
    needed_atol = float(np.maximum(diff - rtol * mag, 0).max()) if diff.size else 0.0
    needed_rtol = float(rel_needed.max()) if diff.size else 0.0
    stat_abs = stat_rel = None
    if crit.stat == "elemwise":
        within = not bool(bad.any())
    else:
        stat_abs, stat_rel = _statistic(diff, crit), _statistic(reldiff, crit)
        within = stat_abs <= atol or stat_rel <= rtol
        needed_atol, needed_rtol = stat_abs, stat_rel
    return OutputMetrics(
        name=name,
        shape=shape,
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        mismatched=int(bad.sum()),
        needed_atol=needed_atol,
        needed_rtol=needed_rtol,
        passed=within and same_nonfinite,
        problem=None if same_nonfinite else "NaN/Inf in different places",
        stat_abs=stat_abs,
        stat_rel=stat_rel,
    )


def compare_outputs(
    names: Sequence[str], actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], criterion: Criterion
) -> list[OutputMetrics]:
    """Every output of one case compared; an output only one side has fails as missing."""
    outs = []
    for i, name in enumerate(names):
        if i >= len(actual) or i >= len(expected):
            outs.append(OutputMetrics(name, [], np.inf, np.inf, np.inf, 0.0, 0, np.inf, np.inf, False, "output missing"))
            continue
        outs.append(
            compare(name, np.asarray(actual[i]), np.asarray(expected[i]), criterion.atol, criterion.rtol, criterion=criterion)
        )
    return outs


# --------------------------------------------------------------------------- inputs


def load_inputs(source: str | os.PathLike[str], spec: InputSpec) -> Cases:
    """User inputs as labelled feed dicts: an ``.npz`` (one key per input name, or one array
    for a single-input model), a Polygraphy inputs file (``.json``, ``polygraphy run
    --save-inputs``) or a folder of images (each becomes one batch-1 input). An
    ``.npz`` batch larger than the model's largest batch becomes one batch-1 input per sample."""
    from wconv_deploy.golden import read_npz

    path = Path(source)
    if not path.exists():
        raise InputError(f"--inputs: {path} does not exist")
    if path.is_dir():
        from wconv_deploy.preprocess import image_inputs  # the current --channels/--mean/--std/--resize/...

        return image_inputs(path, spec)
    if path.suffix.lower() == ".json":
        from wconv_deploy.golden import load_inputs_json

        return load_inputs_json(path, spec)
    arrays = read_npz(path, what="--inputs", limit=input_limit_bytes())
    if not arrays:
        raise InputError(f"--inputs: {path} holds no arrays")
    if len(spec.inputs) == 1 and len(arrays) == 1:
        arrays = {spec.names[0]: next(iter(arrays.values()))}
    feeds = {t.name: arrays[t.name].astype(np.dtype(t.dtype), copy=False) for t in spec.inputs if t.name in arrays}
    batches = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
    largest = min((t.dims[0].max for t in spec.inputs if t.dims), default=0)
    if len(batches) == 1 and len(feeds) == len(spec.inputs) and (n := batches.pop()) > largest:
        cases = [(f"{path.name}[{i}]", {k: a[i : i + 1] for k, a in feeds.items()}) for i in range(n)]
    else:
        cases = [(path.name, feeds)]
    for _, case in cases:
        spec.check_arrays(case)
    return cases


def random_inputs(spec: InputSpec, seed: int = 0) -> Cases:
    """Seeded normal inputs at each of the spec's validation shapes."""
    cases = []
    for i, shapes in enumerate(spec.validation_shapes()):
        tensors = spec.example_inputs(shapes, seed=seed + i)
        label = f"random #{i} " + ",".join("x".join(map(str, s)) for s in shapes)
        cases.append((label, {n: t.numpy() for n, t in zip(spec.names, tensors)}))
    return cases


# --------------------------------------------------------------------------- validation


def compare_runtimes(
    artifact: Runtime,
    reference: Runtime | Golden,
    cases: Cases | None = None,
    *,
    artifact_label: str,
    reference_label: str,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    criterion: Criterion | None = None,
    output_names: list[str] | None = None,
) -> ValidationReport:
    """Run every case through ``artifact`` and compare each output with ``reference``: another
    runtime (run on the same case), or a golden file (its outputs; ``cases`` default to its own).
    ``criterion`` (default: elementwise at ``atol``/``rtol``) says how an output passes."""
    from wconv_deploy.golden import Golden

    crit = criterion or Criterion(atol, rtol)
    golden = reference if isinstance(reference, Golden) else None
    if cases is None:
        if golden is None:
            raise InputError("nothing to validate on: give inputs")
        cases = golden.feeds()
    report = ValidationReport(
        artifact_label, artifact.name, reference_label, crit.atol, crit.rtol, error_stat=crit.stat, error_quantile=crit.quantile
    )
    for i, (label, feeds) in enumerate(cases):
        if golden is not None:
            expected = golden.cases[i].outputs
        else:
            assert isinstance(reference, Runtime)
            try:
                expected = reference.run(feeds)
            except Exception as e:
                shapes = {k: list(v.shape) for k, v in feeds.items()}
                raise InputError(
                    f"the reference ({reference_label}) rejects inputs {shapes} ({label}): {type(e).__name__}: "
                    f"{first_line(e)}; choose other sizes or explicit --dynamic ranges"
                ) from None
        actual = artifact.run(feeds)
        names = output_names or (golden.output_names if golden else None) or artifact.output_names
        names = names or [f"output_{i}" for i in range(max(len(actual), len(expected)))]
        report.cases.append(
            CaseResult(label, {k: list(v.shape) for k, v in feeds.items()}, compare_outputs(names, actual, expected, crit))
        )
        report.outputs.append(list(actual))
        report.feeds.append(dict(feeds))
    return report


def default_runtime(artifact: str | os.PathLike[str]) -> str:
    """The runtime an artifact runs on unless one is named: ort-cpu for ONNX, trt for engines."""
    from wconv_deploy.options import artifact_kind

    return {"onnx": "ort-cpu", "engine": "trt"}.get(artifact_kind(artifact), "ort-cpu")


def open_artifact(
    artifact: str | os.PathLike[str], runtime: str | None = None, *, spec: InputSpec | None = None, trust_code: bool = False
) -> Runtime:
    """``artifact`` (an ONNX file or a TensorRT engine) on ``runtime`` (default:
    :func:`default_runtime`), built through the runtime registry; InputError if it cannot run here."""
    from wconv_deploy.fileio import regular_file
    from wconv_deploy.options import artifact_kind
    from wconv_deploy.runtimes import create_runtime, get

    path = regular_file(artifact)
    kind = artifact_kind(path)
    if kind == "torch":
        raise InputError(f"{path}: not an ONNX file or a TensorRT engine (.onnx, .plan, .engine)")
    name = runtime or default_runtime(path)
    if get(name).kind != kind:
        raise InputError(f"runtime {name} does not run {path.name} (an {kind} artifact)")
    onnx, engine = (path, None) if kind == "onnx" else (None, path)
    return create_runtime(name, onnx_path=onnx, engine_path=engine, spec=spec, trust_code=trust_code)


def runtime_precision(rt: Runtime) -> Precision:
    """What precision ``rt`` computes at: the looser of its artifact's and its registry entry's
    (what keys the default tolerances)."""
    from wconv_deploy.runtimes import get

    own = rt.describe().precision
    try:
        entry = get(rt.name).precision
    except InputError:  # a runtime built outside the registry
        entry = own
    return max((own, entry), key=lambda p: p.tolerance)


def validate_artifact(
    artifact: str | os.PathLike[str] | Runtime,
    reference: nn.Module | Any,
    *,
    runtime: str | None = None,
    reference_runtime: str | None = None,
    spec: InputSpec | None = None,
    inputs: str | os.PathLike[str] | None = None,
    polygraphy_inputs: str | os.PathLike[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    error_stat: str = "elemwise",
    error_quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    random: bool = True,
    trust_code: bool = False,
) -> ValidationReport:
    """Validate ``artifact`` (a file, or a runtime already open on one) on ``runtime`` against
    ``reference``: an ``nn.Module``, LoadedModel or TorchReference
    (fp32 PyTorch), a :class:`~wconv_deploy.golden.Golden` (its inputs and outputs; ``inputs`` and
    random ones are not added), or the path of another artifact (run on ``reference_runtime``,
    default by its kind). Tolerances default to the looser precision of the two runtimes. The
    cases: seeded random inputs (``random``), ``inputs`` (.npz or images) and
    ``polygraphy_inputs`` (a ``polygraphy run --save-inputs`` file).

    ``spec`` defaults to the artifact's own (the export's metadata, an engine's manifest). Returns
    the report; ``report.raise_for_failure()`` turns a failure into a MismatchError.
    """
    from wconv_deploy.golden import Golden

    if isinstance(artifact, Runtime):
        rt, label = artifact, artifact.name
    else:
        rt, label = open_artifact(artifact, runtime, spec=spec, trust_code=trust_code), Path(artifact).name
    spec = spec if spec is not None else rt.spec
    if isinstance(reference, Golden):
        crit = Criterion.for_precision(runtime_precision(rt), atol, rtol, error_stat, error_quantile)
        if sorted(reference.input_names) != sorted(rt.input_names):
            raise InputError(f"{reference.path} holds inputs {reference.input_names}; {label} takes {rt.input_names}")
        return compare_runtimes(
            rt, reference, artifact_label=label, reference_label=f"golden {Path(reference.path).name}", criterion=crit
        )
    if spec is None:
        raise InputError(f"{artifact} has no wconv-deploy input spec: pass --input-shape")
    if sorted(rt.input_names) != sorted(spec.names):
        raise InputError(f"{artifact} takes inputs {rt.input_names}, the input spec names {spec.names}")
    if isinstance(reference, (str, os.PathLike)):
        ref_rt = open_artifact(reference, reference_runtime, spec=spec, trust_code=trust_code)
        ref_label = f"{ref_rt.name} ({Path(reference).name})"
        precision = max((runtime_precision(rt), runtime_precision(ref_rt)), key=lambda p: p.tolerance)
    else:
        from wconv_deploy.runtimes.torch import TorchReference

        ref_rt = TorchReference.of(reference, spec.names)
        ref_label = ref_rt.label
        precision = runtime_precision(rt)
    cases = random_inputs(spec, seed) if random else []
    if inputs is not None:
        cases += load_inputs(inputs, spec)
    if polygraphy_inputs is not None:
        from wconv_deploy.golden import load_inputs_json

        cases += load_inputs_json(polygraphy_inputs, spec)
    if not cases:
        raise InputError("nothing to validate on: give --inputs or allow random inputs")
    crit = Criterion.for_precision(precision, atol, rtol, error_stat, error_quantile)
    return compare_runtimes(
        rt, ref_rt, cases, artifact_label=label, reference_label=ref_label, criterion=crit, output_names=rt.output_names
    )


def validate(
    onnx_path: str | os.PathLike[str],
    reference: nn.Module | Any,
    spec: InputSpec | None = None,
    *,
    inputs: str | os.PathLike[str] | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    random: bool = True,
) -> ValidationReport:
    """Compare the ONNX file at ``onnx_path`` (ONNX Runtime, CPU) with ``reference`` (an
    ``nn.Module`` or :class:`~wconv_deploy.loading.LoadedModel`, run unfolded in eval mode) at
    ``atol``/``rtol``, elementwise: what export and convert check before writing a file.

    ``spec`` defaults to the one stored in the ONNX file's metadata by ``export_onnx``. Returns
    the report; call ``report.raise_for_failure()`` to turn a failure into an exception.
    """
    return validate_artifact(
        onnx_path, reference, runtime="ort-cpu", spec=spec, inputs=inputs, atol=atol, rtol=rtol, seed=seed, random=random
    )


def choose_reference(
    artifact: Path,
    other: Path | None = None,
    *,
    twice: bool = False,
    source: ModelSource | None = None,
    golden: Path | None = None,
) -> Any:
    """What ``validate`` compares ``artifact`` with, first found: ``other`` (an artifact), the
    artifact itself on a second runtime (``twice``), the PyTorch model of ``source``, the
    ``golden`` file, the golden file beside the artifact, the zoo model its metadata names."""
    from wconv_deploy.golden import golden_path, read_golden
    from wconv_deploy.options import artifact_kind

    if other is not None:
        return other
    if twice:
        return artifact
    if source is not None:
        return source.load()
    if golden is not None:
        return read_golden(golden)
    if golden_path(artifact).exists():
        return read_golden(golden_path(artifact), within=artifact.parent)
    if artifact_kind(artifact) == "onnx":
        from wconv_deploy.artifacts import OnnxInfo
        from wconv_deploy.exporters.precision import reference_from_metadata

        loaded = reference_from_metadata(OnnxInfo.read(artifact).model)
        if loaded is not None:
            return loaded
    raise InputError(f"{artifact}: nothing to compare with: give --reference MODEL, --golden FILE, OTHER or two --runtime names")
