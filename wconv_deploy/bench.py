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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from wconv_deploy.errors import InputError
from wconv_deploy.runtimes import RUNTIMES, Runtime, cpu_name, create_runtime, unavailable_reason
from wconv_deploy.spec import Dim, InputSpec
from wconv_deploy.table import format_table

#: Coefficient of variation above which a measurement is flagged as unstable.
CV_WARN = 0.10
#: Largest error (relative to the output's scale) a row may show against the reference before it
#: is marked wrong and left out of the ranking, by the precision it runs at.
ERROR_LIMITS = {"fp32": 1e-4, "f32": 1e-4, "16": 5e-2, "int8": 1e-1}


def error_limit(precision: str) -> float:
    """The error limit for a precision label such as ``fp32 eager``, ``f16`` or ``bf16``."""
    p = precision.lower()
    if "unknown" in p:  # an engine of unstated precision: judge it by the loosest float limit
        return ERROR_LIMITS["16"]
    if "int8" in p:
        return ERROR_LIMITS["int8"]
    return ERROR_LIMITS["16"] if "16" in p else ERROR_LIMITS["fp32"]


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

    runtime: str
    device: str
    precision: str
    batch: int
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
        return self.max_rel_error is not None and not self.max_rel_error <= error_limit(self.precision)


@dataclass
class BenchReport:
    """Every row, the environment it was measured in and the settings used."""

    rows: list[BenchRow]
    environment: dict[str, Any]
    settings: dict[str, Any]
    reference: str

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(r), "unstable": r.unstable, "wrong": r.wrong} for r in self.rows]
        return {"environment": self.environment, "settings": self.settings, "reference": self.reference, "rows": rows}

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
                lines.append(f"fastest correct runtime at batch {batch} on this device: {best.runtime} ({best.precision})")
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
        """A PNG: median latency against batch size, one line per runtime, one panel per device."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'wconv-deploy[plot]'") from None
        from wconv_deploy.fileio import atomic_output

        devices = list(dict.fromkeys(r.device for r in self.rows if r.stats is not None))
        if not devices:
            raise InputError("nothing was measured, so there is nothing to plot")
        fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4), squeeze=False)
        for ax, device in zip(axes[0], devices):
            rows = [r for r in self.rows if r.device == device and r.stats is not None]
            batches = sorted({r.batch for r in rows})
            names = list(dict.fromkeys(f"{r.runtime} ({r.precision})" for r in rows))
            if len(batches) == 1:
                values = [next(r.stats.median_ms for r in rows if f"{r.runtime} ({r.precision})" == n and r.stats) for n in names]
                ax.barh(names, values)
                ax.set_xlabel(f"median latency, batch {batches[0]} (ms)")
            else:
                for n in names:
                    pts = sorted((r.batch, r.stats.median_ms) for r in rows if f"{r.runtime} ({r.precision})" == n and r.stats)
                    ax.plot([b for b, _ in pts], [m for _, m in pts], marker="o", label=n)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("batch size")
                ax.set_ylabel("median latency (ms)")
                ax.legend(fontsize=8)
            ax.set_title(device[:60], fontsize=9)
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)


def _row_cells(r: BenchRow) -> list[str]:
    s = r.stats
    assert s is not None
    err = "-" if r.max_rel_error is None else f"{r.max_rel_error:.1e}" + (" WRONG" if r.wrong else "")
    cv = f"{s.cv:.1%}" + ("!" if r.unstable else "")
    return [
        r.runtime, r.precision, str(r.batch), f"{s.median_ms:.2f}", f"{s.mean_ms:.2f}", f"{s.p90_ms:.2f}",
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


def _spec_for_batch(spec: InputSpec, batch: int) -> InputSpec:
    inputs = tuple(
        replace(t, dims=(Dim(t.dims[0].name, batch, batch, batch), *t.dims[1:])) if t.dims[0].name == "batch" else t
        for t in spec.inputs
    )
    return InputSpec(inputs)


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
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise InputError(f"unknown runtime(s) {', '.join(unknown)} (known: {', '.join(RUNTIMES)})")
    if any(b < 1 for b in batches):
        raise InputError("--batch sizes must be positive")
    with tempfile.TemporaryDirectory(prefix="wconv-bench-") as tmp:
        if onnx_path is None and model is not None and any(RUNTIMES[r] == "onnx" for r in runtimes):
            onnx_path = _export_for_bench(model, spec, max(batches), Path(tmp) / "model.onnx", say)
        reference_rt, reference_name = _reference(model, onnx_path, spec)
        rows: list[BenchRow] = []
        for name in runtimes:
            reason = unavailable_reason(name)
            if reason is None and RUNTIMES[name] == "torch" and model is None:
                reason = "needs a PyTorch model (a model file or zoo:NAME) among the artifacts"
            if reason is None and RUNTIMES[name] == "onnx" and onnx_path is None:
                reason = "needs an ONNX file among the artifacts"
            if reason is None and RUNTIMES[name] == "engine" and engine_path is None:
                reason = "needs a TensorRT engine (.plan or .engine) among the artifacts"
            if reason is not None:
                if strict:
                    raise InputError(f"{name}: {reason}")
                rows += [BenchRow(name, "-", "-", b, unavailable=reason) for b in batches]
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
                        _spec_for_batch(spec, batch),
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
    info: Any,
    reference: Runtime | None,
    spec: InputSpec,
    batch: int,
    seed: int,
    warmup_ms: float,
    iterations: int,
    min_duration_s: float,
    say: Progress,
) -> BenchRow:
    feeds = {n: t.numpy() for n, t in zip(spec.names, spec.example_inputs(seed=seed))}
    row = BenchRow(rt.name, info.device, info.precision, batch, versions=info.versions)
    try:
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
    device_time = getattr(rt, "device_time_ms", None)
    if rt.on_gpu and device_time is not None:  # the GPU compute alone, apart from copies
        row.device_stats = latency_stats([t / 1e3 for t in device_time(feeds, max(iterations, row.stats.iterations))], batch)
    return row


def _reference(model: nn.Module | None, onnx_path: Any, spec: InputSpec) -> tuple[Runtime | None, str]:
    if model is not None:
        return create_runtime("torch", model=model, input_names=spec.names), "PyTorch fp32 eager (the unfolded model)"
    if onnx_path is not None and unavailable_reason("ort-cpu") is None:
        return create_runtime(
            "ort-cpu", onnx_path=onnx_path, input_names=spec.names
        ), "ONNX Runtime CPU fp32 (no PyTorch model given)"
    return None, "nothing (no reference runtime available)"


def _export_for_bench(model: nn.Module, spec: InputSpec, max_batch: int, out: Path, say: Progress) -> Path:
    from wconv_deploy.exporters.onnx import export_onnx

    batch = spec.inputs[0].dims[0]
    if batch.name == "batch" and not batch.dynamic:
        spec = spec.with_dynamic(f"batch=1:{max(max_batch, batch.opt, 2)}")
    say("exporting the model to ONNX for the ONNX runtimes")
    export_onnx(model, out, spec)
    return out
