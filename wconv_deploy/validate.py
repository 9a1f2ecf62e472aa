"""Prove an artifact computes what the original PyTorch model computes.

Both run on the same inputs (seeded normal inputs at every shape the spec asks to validate, plus
any user inputs from an ``.npz`` file or a folder of images) and every output is compared:
maximum absolute error, maximum error relative to the output's scale (``max|a-e| / max|e|``),
mean absolute error and cosine similarity. An output passes when every element satisfies
``|a - e| <= atol + rtol * |e|`` (NumPy's ``isclose``) and NaN/Inf appear in the same places.
On a failure the report also gives the smallest ``atol`` (at the given ``rtol``) and the smallest
``rtol`` (at the given ``atol``) that would have passed.

Default tolerances (fp32): ``atol=1e-5``, ``rtol=1e-4``. ORT and PyTorch sum the products of a
convolution in different orders, so results differ by float32 rounding that grows with depth and
width: about 2e-7 absolute on the weighted VGG-16 and ResNet-18 benchmarks (docs/BENCHMARKS.md),
50 times below ``atol``; ``rtol`` alone could not be the test, as elements near zero differ by
1e-3 relative.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
from torch import nn

from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.fileio import open_regular
from wconv_deploy.reports import Report
from wconv_deploy.runtimes.base import Runtime
from wconv_deploy.spec import InputSpec, input_limit_bytes
from wconv_deploy.table import format_table

DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class OutputMetrics:
    """How one output of one input set compares with PyTorch."""

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
    """Every input set run through the artifact and the reference, and the verdict."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed", "worst")

    artifact: str
    runtime: str
    reference: str
    atol: float
    rtol: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

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
        head = f"validation: {self.runtime} ({self.artifact}) vs {self.reference}, atol={self.atol:g} rtol={self.rtol:g}"
        table = format_table(["inputs", "output", "shape", "max abs", "max rel", "mean abs", "cosine", "result"], rows)
        lines = [head, table]
        w = self.worst
        if self.passed:
            lines.append(f"passed: {len(self.cases)} input set(s), worst max rel error {w['max_rel']:.2e}")
        elif any(o.problem for c in self.cases for o in c.outputs):
            lines.append("FAILED: no tolerance passes (see the result column)")
        elif w:
            lines.append(
                f"FAILED: would pass with --atol {_ceil(w['needed_atol'])} (at rtol {self.rtol:g}) "
                f"or --rtol {_ceil(w['needed_rtol'])} (at atol {self.atol:g})"
            )
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`MismatchError` (exit 1, with the table) unless every output passed."""
        if not self.passed:
            raise MismatchError(f"{self.artifact} does not compute what the PyTorch model computes (see the report above)", self)


def _ceil(x: float) -> str:
    """A tolerance just above ``x``, in two significant digits (inf stays inf)."""
    if not np.isfinite(x):
        return "inf"
    return f"{float(f'{x * 1.01:.1e}'):.1e}" if x > 0 else "0"


def compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> OutputMetrics:
    """Metrics and verdict for one output (``expected`` is the PyTorch reference)."""
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
    passed = not bool(bad.any()) and same_nonfinite
    return OutputMetrics(
        name=name,
        shape=shape,
        max_abs=max_abs,
        max_rel=max_abs / scale if scale > 0 else max_abs,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        mismatched=int(bad.sum()),
        needed_atol=float(np.maximum(diff - rtol * mag, 0).max()) if diff.size else 0.0,
        needed_rtol=float(rel_needed.max()) if diff.size else 0.0,
        passed=passed,
        problem=None if same_nonfinite else "NaN/Inf in different places",
    )


# --------------------------------------------------------------------------- inputs


def load_inputs(source: str | os.PathLike[str], spec: InputSpec) -> list[tuple[str, dict[str, np.ndarray]]]:
    """User inputs as labelled feed dicts: an ``.npz`` (one key per input name, or one array
    for a single-input model) or a folder of images (each becomes one batch-1 input). An
    ``.npz`` batch larger than the model's largest batch becomes one batch-1 input per sample."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"--inputs: {path} does not exist")
    if path.is_dir():
        return _image_inputs(path, spec)
    with open_regular(path, what=f"--inputs {path}") as f:
        try:
            _check_npz_size(f, path)
            with np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except InputError:
            raise
        except Exception as e:  # zipfile, ValueError, OSError: all "not a readable npz"
            raise InputError(f"--inputs: {path} is not a readable .npz file ({type(e).__name__})") from None
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


def _check_npz_size(f: BinaryIO, path: Path) -> None:
    """Refuse an .npz whose arrays would unpack to more than the input limit (a zip bomb, or a
    typo'd export of a whole data set) before any array is read."""
    with zipfile.ZipFile(f) as z:
        total = sum(i.file_size for i in z.infolist())
    f.seek(0)
    if total > input_limit_bytes():
        raise InputError(f"--inputs: {path} unpacks to {total / 2**30:.1f} GiB, more than the input limit (--max-input-gb)")


def _image_inputs(folder: Path, spec: InputSpec) -> list[tuple[str, dict[str, np.ndarray]]]:
    from PIL import Image

    if len(spec.inputs) != 1 or len(spec.inputs[0].dims) != 4:
        raise InputError("--inputs FOLDER needs a model with one NCHW image input")
    t = spec.inputs[0]
    channels = t.dims[1].opt
    if channels not in (1, 3):
        raise InputError(f"--inputs FOLDER: images give 1 or 3 channels, the model takes {channels}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--inputs: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    h, w = t.dims[2], t.dims[3]
    for f in files:
        with open_regular(f, within=folder, what=f"--inputs: {f.name}") as fh:
            try:
                opened = Image.open(fh)
                if opened.width * opened.height * channels * 4 > input_limit_bytes():  # known before decoding
                    raise InputError(f"--inputs: image {f.name} is {opened.width}x{opened.height}: beyond --max-input-gb")
                img = opened.convert("L" if channels == 1 else "RGB")
            except InputError:
                raise
            except Exception as e:  # PIL raises several types for unreadable images
                raise InputError(f"--inputs: cannot read image {f.name} ({type(e).__name__})") from None
        if not (h.min <= img.height <= h.max and w.min <= img.width <= w.max):
            img = img.resize((w.opt, h.opt), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[None, None] if channels == 1 else arr.transpose(2, 0, 1)[None]
        out.append((f.name, {t.name: np.ascontiguousarray(arr.astype(np.dtype(t.dtype)))}))
    return out


def random_inputs(spec: InputSpec, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
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
    reference: Runtime,
    cases: list[tuple[str, dict[str, np.ndarray]]],
    *,
    artifact_label: str,
    reference_label: str,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    output_names: list[str] | None = None,
) -> ValidationReport:
    """Run every case through both runtimes and compare each output."""
    report = ValidationReport(artifact_label, artifact.name, reference_label, atol, rtol)
    for label, feeds in cases:
        try:
            expected = reference.run(feeds)
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise InputError(
                f"the PyTorch model rejects inputs {shapes} ({label}): {type(e).__name__}: {first_line(e)}; "
                "choose other sizes or explicit --dynamic ranges"
            ) from None
        actual = artifact.run(feeds)
        names = output_names or [f"output_{i}" for i in range(max(len(actual), len(expected)))]
        outs = []
        for i, name in enumerate(names):
            if i >= len(actual) or i >= len(expected):
                outs.append(OutputMetrics(name, [], np.inf, np.inf, np.inf, 0.0, 0, np.inf, np.inf, False, "output missing"))
                continue
            outs.append(compare(name, actual[i], expected[i], atol, rtol))
        report.cases.append(CaseResult(label, {k: list(v.shape) for k, v in feeds.items()}, outs))
    return report


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
    ``nn.Module`` or :class:`~wconv_deploy.loading.LoadedModel`, run unfolded in eval mode).

    ``spec`` defaults to the one stored in the ONNX file's metadata by ``export_onnx``. Returns
    the report; call ``report.raise_for_failure()`` to turn a failure into an exception.
    """
    from wconv_deploy.loading import LoadedModel
    from wconv_deploy.runtimes.onnxruntime import OnnxRuntime
    from wconv_deploy.runtimes.torch import TorchRuntime

    ort_rt = OnnxRuntime(onnx_path, spec=spec)  # without a spec: the one stored in the file, read once
    if ort_rt.spec is None:
        raise InputError(f"{onnx_path} was not written by wconv-deploy export; pass --input-shape")
    spec = ort_rt.spec
    if sorted(ort_rt.input_names) != sorted(spec.names):
        raise InputError(f"{onnx_path} takes inputs {ort_rt.input_names}, the input spec names {spec.names}")
    label = "PyTorch"
    if isinstance(reference, LoadedModel):
        label = f"PyTorch ({reference.path.name})"
        reference = reference.model
    cases = random_inputs(spec, seed) if random else []
    if inputs is not None:
        cases += load_inputs(inputs, spec)
    if not cases:
        raise InputError("nothing to validate on: give --inputs or allow random inputs")
    return compare_runtimes(
        ort_rt,
        TorchRuntime(reference, spec.names),
        cases,
        artifact_label=Path(onnx_path).name,
        reference_label=label,
        atol=atol,
        rtol=rtol,
        output_names=ort_rt.output_names,
    )
