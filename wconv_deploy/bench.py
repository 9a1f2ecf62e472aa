"""Latency of every runtime on identical inputs, measured the way trtexec does, side by side.

For each runtime and batch size: warm up for ``warmup_ms``, then time single calls until both
``iterations`` calls and ``min_duration_s`` seconds are done, and report min, mean, median,
p90/p95/p99 (nearest rank), max, the coefficient of variation (flagged above
:data:`CV_WARN`, as trtexec does) and throughput. Each row also carries its error against the
reference output (PyTorch fp32 eager when a PyTorch model is given), so a fast but wrong runtime
cannot look good. Rows are grouped by device: a CPU row and a GPU row are never ranked together.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from wconv_deploy.errors import InputError
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report
from wconv_deploy.runtimes import Runtime, RuntimeInfo, cpu_name, create_runtime, entries, get, unavailable_reason
from wconv_deploy.runtimes.registry import KIND_NAMES
from wconv_deploy.spec import InputSpec
from wconv_deploy.table import format_table

if TYPE_CHECKING:
    from torch import nn

#: Coefficient of variation above which a measurement is flagged as unstable.
CV_WARN = 0.10
#: The order runtimes are listed in: the reference kind first.
_KIND_ORDER = {"torch": 0, "onnx": 1, "engine": 2}


def default_runtimes() -> list[str]:
    """What ``bench`` times when no ``--runtimes`` are given: every registered runtime that does
    not take minutes to compile; those that cannot run here are reported with the reason."""
    listed = sorted(entries(), key=lambda e: _KIND_ORDER[e.kind])
    return [e.name for e in listed if e.in_default_bench]


Progress = Callable[[str], None]


@dataclass
class LatencyStats:
    """Summary of per-call latencies (milliseconds) and the throughput they imply."""

    iterations: int
    min_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cv: float
    throughput: float  # items per second (batch / mean latency)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(seconds: Sequence[float], batch: int) -> LatencyStats:
    """Statistics of per-call wall times given in seconds."""
    ms = sorted(s * 1e3 for s in seconds)
    mean = statistics.fmean(ms)
    cv = statistics.pstdev(ms) / mean if mean > 0 else 0.0
    return LatencyStats(
        iterations=len(ms),
        min_ms=ms[0],
        mean_ms=mean,
        median_ms=statistics.median(ms),
        p90_ms=percentile(ms, 90),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=ms[-1],
        cv=cv,
        throughput=batch / (mean / 1e3) if mean > 0 else 0.0,
    )


def time_calls(
    call: Callable[[], Any], *, warmup_ms: float = 200, iterations: int = 20, min_duration_s: float = 1.0
) -> list[float]:
    """Per-call wall times (seconds) after a warm-up, until both limits are reached."""
    end = time.perf_counter() + warmup_ms / 1e3
    call()  # at least one warm-up call, whatever warmup_ms says (first calls compile, allocate)
    while time.perf_counter() < end:
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iterations or time.perf_counter() - start < min_duration_s:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


@dataclass
class BenchRow:
    """One runtime at one batch size: its latency, its error against the reference, or why it did not run."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("unstable", "wrong")

    runtime: str
    device: str
    precision: Precision | None  # None: it did not run
    batch: int
    detail: str = ""  # e.g. "eager", "int8 model, fp32 compute"
    stats: LatencyStats | None = None
    device_stats: LatencyStats | None = None  # GPU compute alone (CUDA events), inputs on the device
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    unavailable: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def unstable(self) -> bool:
        return self.stats is not None and self.stats.cv > CV_WARN

    @property
    def wrong(self) -> bool:
        """Its outputs disagree with the reference beyond what its precision explains."""
        if self.max_rel_error is None or self.precision is None:
            return False
        return not self.max_rel_error <= self.precision.error_limit

    @property
    def label(self) -> str:
        """Precision and detail, as the table shows them: ``fp32 (eager)``."""
        if self.precision is None:
            return "-"
        return f"{self.precision.value} ({self.detail})" if self.detail else self.precision.value


@dataclass
class BenchReport(Report):
    """Every row, the environment it was measured in and the settings used."""

    rows: list[BenchRow]
    environment: dict[str, Any]
    settings: dict[str, Any]
    reference: str

    def render(self) -> str:
        env = self.environment
        lines = [
            f"CPU: {env['cpu']}; {env['threads']} threads" + (f"; GPU: {env['gpu']}" if env.get("gpu") else "; no GPU"),
            "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
            f"errors are against {self.reference}; latency in ms per call",
        ]
        gpu_rows = [r for r in self.rows if r.device_stats is not None]
        for device in dict.fromkeys(r.device for r in self.rows if r.unavailable is None):
            rows = [r for r in self.rows if r.device == device and r.unavailable is None]
            lines += ["", f"device: {device}"]
            lines.append(
                format_table(
                    [
                        "runtime",
                        "precision",
                        "batch",
                        "median",
                        "mean",
                        "p90",
                        "p99",
                        "min",
                        "max",
                        "cv",
                        "items/s",
                        "max rel err",
                    ],
                    [_row_cells(r) for r in rows],
                )
            )
            ranked = sorted((r for r in rows if not r.wrong), key=lambda r: (r.batch, r.stats.median_ms if r.stats else math.inf))
            for batch in dict.fromkeys(r.batch for r in ranked):
                best = next(r for r in ranked if r.batch == batch)
                lines.append(f"fastest correct runtime at batch {batch} on this device: {best.runtime} ({best.label})")
        if gpu_rows:
            lines += ["", "GPU compute alone (CUDA events, inputs already on the device), median ms:"]
            lines += [f"  {r.runtime} batch {r.batch}: {r.device_stats.median_ms:.3f}" for r in gpu_rows if r.device_stats]
        missing = {r.runtime: r.unavailable for r in self.rows if r.unavailable is not None}
        if missing:
            lines += ["", "not run:"] + [f"  {name}: {why}" for name, why in missing.items()]
        if any(r.wrong for r in self.rows):
            lines.append(
                "warning: rows marked WRONG disagree with the reference beyond their precision's limit "
                "(are the ONNX file and the PyTorch model the same network?); they are not ranked"
            )
        if any(r.unstable for r in self.rows):
            lines.append(
                f"warning: rows marked '!' vary by more than {CV_WARN:.0%} between calls; measure again on a quiet machine"
            )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """A PNG: p50/p99 latency and throughput against batch size, one curve per runtime and
        precision, one panel per device."""
        from wconv_deploy.plots import Curve, latency_plot

        panels: dict[str, list[Curve]] = {}
        measured = [r for r in self.rows if r.stats is not None]
        for device in dict.fromkeys(r.device for r in measured):
            rows = [r for r in measured if r.device == device]
            curves = []
            for name in dict.fromkeys(f"{r.runtime} ({r.label})" for r in rows):
                pts = sorted(((r.batch, r.stats) for r in rows if f"{r.runtime} ({r.label})" == name), key=lambda p: p[0])
                stats = [st for _, st in pts if st is not None]
                curves.append(
                    Curve(name, [b for b, _ in pts], [st.median_ms for st in stats], [st.p99_ms for st in stats],
                          [st.throughput for st in stats])
                )  # fmt: skip
            panels[device] = curves
        latency_plot(panels, "batch size", path)


def _row_cells(r: BenchRow) -> list[str]:
    s = r.stats
    assert s is not None
    err = "-" if r.max_rel_error is None else f"{r.max_rel_error:.1e}" + (" WRONG" if r.wrong else "")
    cv = f"{s.cv:.1%}" + ("!" if r.unstable else "")
    return [
        r.runtime, r.label, str(r.batch), f"{s.median_ms:.2f}", f"{s.mean_ms:.2f}", f"{s.p90_ms:.2f}",
        f"{s.p99_ms:.2f}", f"{s.min_ms:.2f}", f"{s.max_ms:.2f}", cv, f"{s.throughput:.1f}", err,
    ]  # fmt: skip


def environment(threads: int) -> dict[str, Any]:
    """CPU model and flags, GPU name, thread counts and library versions, for the report."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for module in ("onnxruntime", "openvino", "onnx"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            continue
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "gpu": gpu,
        "versions": versions,
    }


def _errors(actual: list[np.ndarray], expected: list[np.ndarray]) -> tuple[float, float]:
    abs_err, rel_err = 0.0, 0.0
    for a, e in zip(actual, expected):
        diff = float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max())
        scale = float(np.abs(e).max())
        abs_err, rel_err = max(abs_err, diff), max(rel_err, diff / scale if scale > 0 else diff)
    if len(actual) != len(expected):
        return math.inf, math.inf
    return abs_err, rel_err


def run_bench(
    *,
    runtimes: Sequence[str],
    spec: InputSpec,
    model: nn.Module | None = None,
    onnx_path: str | os.PathLike[str] | None = None,
    engine_path: str | os.PathLike[str] | None = None,
    batches: Sequence[int] = (1,),
    warmup_ms: float = 200,
    iterations: int = 20,
    min_duration_s: float = 1.0,
    threads: int = 0,
    seed: int = 0,
    strict: bool = False,
    trust_code: bool = False,
    progress: Progress | None = None,
) -> BenchReport:
    """Time each runtime at each batch size on the same seeded inputs.

    ``model`` (PyTorch, unfolded) feeds the torch runtimes and is the fp32 reference;
    ``onnx_path`` feeds the ONNX runtimes. If ONNX runtimes are asked for and only ``model`` is
    given, it is exported (validated, batch axis dynamic) to a temporary file first. A runtime
    that cannot run is listed with the reason, or, with ``strict``, raises :class:`InputError`
    (for runtimes the user asked for by name). ``trust_code``: see :func:`create_runtime`.
    """
    say = progress or (lambda _msg: None)
    kinds = {name: get(name).kind for name in runtimes}  # InputError for an unknown name
    if any(b < 1 for b in batches):
        raise InputError("--batch sizes must be positive")
    if model is not None:  # a half-precision model is timed and compared as the fp32 model it loads as
        model = _float32(model)
    artifacts = {"torch": model, "onnx": onnx_path, "engine": engine_path}
    with tempfile.TemporaryDirectory(prefix="wconv-bench-") as tmp:
        if onnx_path is None and model is not None and "onnx" in kinds.values():
            onnx_path = artifacts["onnx"] = _export_for_bench(model, spec, max(batches), Path(tmp) / "model.onnx", say)
        reference_rt, reference_name = _reference(model, onnx_path, spec)
        rows: list[BenchRow] = []
        for name, kind in kinds.items():
            reason = unavailable_reason(name)
            if reason is None and artifacts[kind] is None:
                reason = f"needs {KIND_NAMES[kind]} among the artifacts"
            if reason is not None:
                if strict:
                    raise InputError(f"{name}: {reason}")
                rows += [BenchRow(name, "-", None, b, unavailable=reason) for b in batches]
                continue
            say(f"building {name}")
            rt = create_runtime(
                name,
                onnx_path=onnx_path,
                engine_path=engine_path,
                model=model,
                input_names=spec.names,
                threads=threads,
                trust_code=trust_code,
            )
            info = rt.describe()
            for batch in batches:
                rows.append(
                    _measure(
                        rt,
                        info,
                        reference_rt,
                        spec,
                        batch,
                        seed,
                        warmup_ms,
                        iterations,
                        min_duration_s,
                        say,
                    )
                )
    settings = {"batches": list(batches), "warmup_ms": warmup_ms, "iterations": iterations, "min_duration_s": min_duration_s}
    return BenchReport(rows, environment(threads), {**settings, "input_spec": spec.to_dict()}, reference_name)


def _measure(
    rt: Runtime,
    info: RuntimeInfo,
    reference: Runtime | None,
    spec: InputSpec,
    batch: int,
    seed: int,
    warmup_ms: float,
    iterations: int,
    min_duration_s: float,
    say: Progress,
) -> BenchRow:
    row = BenchRow(rt.name, info.device, info.precision, batch, info.detail, versions=info.versions)
    try:
        at_batch = spec.at_batch(batch)
        feeds = {n: t.numpy() for n, t in zip(at_batch.names, at_batch.example_inputs(seed=seed))}
        out = rt.run(feeds)
    except Exception as e:  # e.g. a static batch in the artifact; the row says so, the others go on
        row.unavailable = f"fails at batch {batch}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return row
    if reference is not None:
        row.max_abs_error, row.max_rel_error = _errors(out, reference.run(feeds))
    say(f"timing {rt.name} at batch {batch}")

    def call() -> None:
        rt.run(feeds)
        rt.synchronize()

    row.stats = latency_stats(time_calls(call, warmup_ms=warmup_ms, iterations=iterations, min_duration_s=min_duration_s), batch)
    if rt.on_gpu:  # the GPU compute alone, apart from copies, where the runtime can time it
        device_ms = rt.device_time_ms(feeds, max(iterations, row.stats.iterations))
        if device_ms is not None:
            row.device_stats = latency_stats([t / 1e3 for t in device_ms], batch)
    return row


def _reference(model: nn.Module | None, onnx_path: str | os.PathLike[str] | None, spec: InputSpec) -> tuple[Runtime | None, str]:
    if model is not None:  # its own copy: the runtimes timed may move or cast the model they are given
        import copy

        return create_runtime(
            "torch", model=copy.deepcopy(model), input_names=spec.names
        ), "PyTorch fp32 eager (the unfolded model)"
    if onnx_path is not None and unavailable_reason("ort-cpu") is None:
        return create_runtime(
            "ort-cpu", onnx_path=onnx_path, input_names=spec.names
        ), "ONNX Runtime CPU fp32 (no PyTorch model given)"
    return None, "nothing (no reference runtime available)"


def _float32(model: nn.Module) -> nn.Module:
    """``model``, or a float32 copy of it when it holds float16/bfloat16 weights (the caller's is left as it is)."""
    import copy

    from wconv_deploy.loading import HALF_DTYPES, as_float32

    if any(t.dtype in HALF_DTYPES for t in [*model.parameters(), *model.buffers()]):
        return as_float32(copy.deepcopy(model), [])
    return model


def _export_for_bench(model: nn.Module, spec: InputSpec, max_batch: int, out: Path, say: Progress) -> Path:
    from wconv_deploy.exporters.onnx import export_onnx

    batch = spec.inputs[0].dims[0]
    if batch.name == "batch" and not batch.dynamic:
        spec = spec.with_dynamic(f"batch=1:{max(max_batch, batch.opt, 2)}")
    say("exporting the model to ONNX for the ONNX runtimes")
    export_onnx(model, out, spec)
    return out
