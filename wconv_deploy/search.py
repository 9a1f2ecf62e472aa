"""Precision search to a task budget: the fewest layers (Conv, and Gemm/MatMul with weights) to
keep in fp32 so that the int8 variant still meets ``--max-psnr-drop`` or ``--min-top1-agreement``.

Polygraphy's ``debug precision`` bisects over layers by raw output error; this search ranks the
layers by how much int8 error each adds (:func:`~wconv_deploy.exporters.precision.layer_errors`
on plain int8: the growth of each layer output's relative error over the one before, the first
jump first) and judges each try by the task metric (:class:`~wconv_deploy.exporters.precision.TaskReference`):

1. plain int8 (no layer kept); if it meets the budget, that is the answer;
2. keep the 1, 2, 4, ... best-ranked layers until a try meets the budget (all of them last);
3. bisect between the last prefix that missed and the first that met;
4. drop the kept layers the budget does not need: runs of half of them first, then of a
   quarter, ..., then single layers.

Every try is quantised from the same activation ranges (the calibration cache: calibrated once),
run on the chosen runtime for its metric and latency, and reported. The smallest set that met
the budget is then written by ``convert_onnx`` (validated, golden file, report); if none met it,
MismatchError (exit 1) with the table and nothing written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from wconv_deploy.calibration import CalibrationCache, CalibrationOptions, calibration_data, supports_cache
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.exporters.precision import (
    ConvertReport,
    LayerError,
    TaskReference,
    convert_onnx,
    first_jump,
    layer_errors,
    photo_feeds,
    quantize_int8,
    reference_from_metadata,
)
from wconv_deploy.options import TaskBudget
from wconv_deploy.precision import Precision
from wconv_deploy.preprocess import ImagePreprocess, applies_preprocess
from wconv_deploy.reports import Report
from wconv_deploy.runtimes.torch import TorchReference

Progress = Callable[[str], None]

#: Tries before the search gives up (plain int8 and the doubling prefixes come first).
MAX_TRIES = 24
#: The nodes with weights that int8 quantises and the search may keep in fp32: Conv and
#: Gemm/MatMul (a classifier's last Linear is a Gemm: its int8 error decides the top-1 class directly).
RANKED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class SearchTry:
    """One variant tried: the Conv nodes kept in fp32 (and their PyTorch layers), its task
    metric, its median latency on the runtime, and whether it meets the budget (else why not)."""

    keep_fp32: list[str]
    layers: list[str]
    task: dict[str, float]
    latency_ms: float
    miss: str | None

    @property
    def meets(self) -> bool:
        return self.miss is None


@dataclass
class SearchReport(Report):
    """Every try of the search, fp32 on the same runtime for comparison, and what was written."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("chosen",)

    budget: TaskBudget
    runtime: str
    fp32_task: dict[str, float]
    fp32_latency_ms: float
    ranking: list[str]
    tries: list[SearchTry] = field(default_factory=list)
    convert: ConvertReport | None = None

    @property
    def chosen(self) -> int | None:
        """The index of the try written: the one keeping the fewest layers that met the budget."""
        met = [i for i, t in enumerate(self.tries) if t.meets]
        return min(met, key=lambda i: (len(self.tries[i].keep_fp32), i)) if met else None

    def render(self) -> str:
        from wconv_deploy.table import format_table

        rows = [["fp32", "(all)", _metric(self.fp32_task), f"{self.fp32_latency_ms:.2f}", "-"]]
        for i, t in enumerate(self.tries):
            kept = ", ".join(f"{layer or '-'} ({node})" for node, layer in zip(t.keep_fp32, t.layers)) or "(none)"
            mark = "yes <- written" if i == self.chosen else ("yes" if t.meets else "no")
            rows.append([f"int8 #{i}", kept, _metric(t.task), f"{t.latency_ms:.2f}", mark])
        head = ["variant", "kept in fp32: PyTorch layer (ONNX node)", "task metric", f"{self.runtime} median ms", "meets"]
        lines = [f"precision search: int8 within {_describe(self.budget)}", format_table(head, rows)]
        if self.convert is not None:
            lines += ["", self.convert.render()]
        return "\n".join(lines)


def _describe(budget: TaskBudget) -> str:
    parts = []
    if budget.max_psnr_drop is not None:
        parts.append(f"a PSNR drop of {budget.max_psnr_drop:g} dB")
    if budget.min_top1_agreement is not None:
        parts.append(f"a top-1 agreement of at least {budget.min_top1_agreement:g}")
    return " and ".join(parts)


def _metric(task: dict[str, float]) -> str:
    if "psnr_variant_db" in task:
        drop = task["psnr_fp32_torch_db"] - task["psnr_variant_db"]
        return f"PSNR {task['psnr_variant_db']:.4f} dB (drop {drop:.4f})"
    if "top1_agreement" in task:
        return f"top-1 agreement {task['top1_agreement']:.4f}"
    return "-"


def ranking(layers: Sequence[LayerError]) -> list[str]:
    """Conv nodes, the one adding the most int8 error first: the first jump, then by how much
    each layer's relative error grows over the layer before it."""
    growth = {ly.node: ly.rel_error - (layers[i - 1].rel_error if i else 0.0) for i, ly in enumerate(layers)}
    order = sorted(growth, key=lambda n: -growth[n])
    jump = first_jump(layers)
    return ([jump.node] if jump else []) + [n for n in order if not jump or n != jump.node]


@applies_preprocess
def search_precision(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    budget: TaskBudget,
    *,
    reference: Any = None,
    calibration: str | os.PathLike[str] | None = None,
    inputs: str | os.PathLike[str] | None = None,
    calibration_method: str = "minmax",
    calibration_options: CalibrationOptions | None = None,
    preprocess: ImagePreprocess | None = None,
    runtime: str = "ort-cpu",
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    per_layer: bool = False,
    max_tries: int = MAX_TRIES,
    latency_s: float = 0.5,
    progress: Progress | None = None,
) -> SearchReport:
    """Find the fewest Conv layers of ``onnx_path`` to keep in fp32 for an int8 variant within
    ``budget`` (see the module docstring), judged and timed on ``runtime``, and write that variant
    to ``output`` with :func:`convert_onnx` (the other arguments are its own).

    Raises InputError for bad input (a budget the model has no metric for) and MismatchError
    with the report when no try meets the budget within ``max_tries`` (nothing written).
    """
    from wconv_deploy.artifacts import OnnxInfo, read_onnx
    from wconv_deploy.exporters.precision import conv_layer_names
    from wconv_deploy.fileio import regular_file
    from wconv_deploy.validate import open_artifact, random_inputs

    say = progress or (lambda _msg: None)
    if budget.max_psnr_drop is None and budget.min_top1_agreement is None:
        raise InputError("the precision search needs a budget: --max-psnr-drop or --min-top1-agreement")
    if max_tries < 1:
        raise InputError(f"max_tries {max_tries}: must be at least 1")
    src = regular_file(onnx_path)
    model = read_onnx(src, load_external_data=True)
    spec = OnnxInfo.of(model, src).spec
    reference = reference if reference is not None else reference_from_metadata(model)
    if reference is None:
        raise InputError("pass --reference MODEL: the fp32 PyTorch model the variant must match")
    reference = TorchReference.of(reference, spec.names)  # fp32 PyTorch runs once per input, for every try
    names = conv_layer_names(model, reference)
    out = Path(output)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise InputError(f"-o {out}: folder {out.parent} does not exist")
    options = calibration_options or CalibrationOptions()
    feeds = random_inputs(spec, seed)[0][1]  # the optimum shape: what latency is measured at

    task = TaskReference.of(reference, spec, seed, inputs)

    def measure(path: Path) -> tuple[dict[str, float], float]:
        rt = open_artifact(path, runtime, spec=spec)
        return task.measure(rt), _median_ms(lambda: rt.run(feeds), latency_s)

    fp32_task, fp32_ms = measure(src)
    miss = budget.miss(fp32_task)  # a metric the model has not, or a budget fp32 itself misses
    if miss is not None:
        raise InputError(f"the fp32 model itself misses the budget ({miss}): no int8 variant can meet it")
    report = SearchReport(budget, runtime, fp32_task, fp32_ms, [])
    with tempfile.TemporaryDirectory(prefix=".wconv-search-", dir=out.parent) as tmp:
        data = calibration_data(calibration, spec, options, seed)
        cache_file = options.cache or (Path(tmp) / "ranges.json" if supports_cache() else None)
        cache = CalibrationCache.for_run(cache_file, src, data, calibration_method) if cache_file else None
        tried: dict[tuple[str, ...], SearchTry] = {}

        def attempt(keep: Sequence[str]) -> SearchTry:
            key = tuple(sorted(keep))
            if key not in tried:
                staged = Path(tmp) / f"try{len(report.tries)}.onnx"
                quantize_int8(src, staged, data, list(keep), calibration_method, cache, say if not report.tries else None)
                task, ms = measure(staged)
                tried[key] = SearchTry(list(keep), [names.get(n, "") for n in keep], task, ms, budget.miss(task))
                report.tries.append(tried[key])
                t = tried[key]
                say(f"try {len(report.tries)}: {len(keep)} layer(s) in fp32, {_metric(task)}, {ms:.2f} ms: {t.miss or 'meets'}")
            return tried[key]

        plain = attempt([])
        if not plain.meets and max_tries > 1:
            say("ranking the layers by the int8 error each adds")
            staged = Path(tmp) / "try0.onnx"
            report.ranking = ranking(layer_errors(src, staged, reference, photo_feeds(spec) or feeds, RANKED_OPS))
            _search(report.ranking, attempt, lambda: len(report.tries) < max_tries)
        if report.chosen is None:
            raise MismatchError(
                f"no int8 variant within {len(report.tries)} tries meets {_describe(budget)}; {out} not written", report
            )
        best = report.tries[report.chosen]
        say(f"writing the int8 variant keeping {len(best.keep_fp32)} layer(s) in fp32")
        ranges = replace(options, cache=cache_file)  # the variant is quantised from the ranges every try used
        try:
            report.convert = convert_onnx(
                src, out, Precision.INT8, reference=reference, calibration=calibration, inputs=inputs,
                calibration_method=calibration_method, keep_fp32=best.keep_fp32, atol=atol, rtol=rtol, seed=seed,
                per_layer=per_layer, budget=budget, calibration_options=ranges, progress=say,
            )  # fmt: skip
        except MismatchError as e:
            report.convert = e.report if isinstance(e.report, ConvertReport) else None
            raise MismatchError(str(e), report) from None
        run = report.convert.calibration_run
        if options.cache is None and run is not None and run.cache is not None:  # the search's own, now deleted
            run.cache, run.cache_file = "measured once, by the search's first try", None
    return report


def _search(order: list[str], attempt: Callable[[Sequence[str]], SearchTry], more: Callable[[], bool]) -> None:
    """Steps 2-4 of the module docstring over the ranked nodes ``order``, while ``more()``."""
    k, missed = 1, 0
    met = None
    while more():
        k = min(k, len(order))
        if attempt(order[:k]).meets:
            met = k
            break
        missed = k
        if k == len(order):
            return
        k *= 2
    if met is None:
        return
    lo, hi = missed, met  # order[:lo] misses, order[:hi] meets
    while hi - lo > 1 and more():
        mid = (lo + hi) // 2
        if attempt(order[:mid]).meets:
            hi = mid
        else:
            lo = mid
    keep, chunk = order[:hi], hi // 2
    while chunk >= 1 and more():  # drop what the budget does not need: halves first, then smaller runs
        i = 0
        while i < len(keep) and more():
            fewer = keep[:i] + keep[i + chunk :]
            if fewer and attempt(fewer).meets:
                keep = fewer
            else:
                i += chunk
        chunk //= 2


def _median_ms(call: Callable[[], Any], seconds: float) -> float:
    """The median wall time of ``call`` in ms, timed for about ``seconds`` after a warm-up."""
    from wconv_deploy.bench import latency_stats, time_calls

    times = time_calls(call, warmup_ms=min(200.0, seconds * 200), iterations=5, min_duration_s=seconds)
    return latency_stats(times, 1).median_ms
