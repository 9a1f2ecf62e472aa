"""One command from a trained model to a served one: export, validate, convert, build, bench,
package, and one table that says what came out of each step.

Every step is the library function behind its own command (``export_onnx``, ``convert_onnx``,
``build_engine``, ``run_bench``, ``package``); ``deploy`` only chains them, validates every
artifact again on each runtime it is timed on (a pass in ONNX Runtime says nothing about
OpenVINO or TensorRT), keeps going past a variant that fails (its row says why), packages only
rows that passed on the runtime the package uses, and writes the table as JSON beside the artifacts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wconv_deploy._optional import missing
from wconv_deploy.errors import InputError, MismatchError, WconvError, first_line
from wconv_deploy.options import TaskBudget
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report, Status, dumps
from wconv_deploy.runtimes.torch import TorchReference
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:
    from wconv_deploy.calibration import CalibrationOptions
    from wconv_deploy.exporters.precision import TaskReference
    from wconv_deploy.loading import LoadedModel
    from wconv_deploy.runtimes.base import Runtime

Progress = Callable[[str], None]
#: What deploy makes (fp32 is always exported).
DEPLOY_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.INT8)


@dataclass
class Verdict:
    """How an artifact was validated: a typed status and the detail the table shows."""

    status: Status
    text: str


@dataclass
class DeployRow:
    """One artifact on one runtime: how it was validated, how fast it ran, where it is."""

    artifact: str
    precision: Precision
    runtime: str
    validation: Verdict
    latency_ms: float | None = None
    file: str = ""
    size_mb: float | None = None
    triton_model: str = ""
    served: Verdict | None = None  # the packaged entry, served and verified over HTTP and gRPC
    note: str = ""


@dataclass
class DeployReport(Report):
    """Every row, the input spec, the output folder and the Triton repository (if written)."""

    out: str
    input_spec: dict[str, Any]
    rows: list[DeployRow] = field(default_factory=list)
    triton_repository: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        from wconv_deploy.table import format_table

        eager = next((r.latency_ms for r in self.rows if r.runtime == "torch" and r.latency_ms), None)
        rows = []
        for r in self.rows:
            speed = f"{eager / r.latency_ms:.1f}x" if eager and r.latency_ms else "-"
            latency = f"{r.latency_ms:.2f}" if r.latency_ms is not None else "-"
            size = f"{r.size_mb:.2f}" if r.size_mb is not None else "-"
            served = r.served.text if r.served else "-"
            rows.append([r.artifact, r.precision, r.runtime, r.validation.text, latency, speed, size, r.file,
                         r.triton_model or "-", served])  # fmt: skip
        head = ["artifact", "precision", "runtime", "validation", "latency ms", "vs eager", "MB", "file",
                "triton model", "served"]  # fmt: skip
        lines = [format_table(head, rows)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"{r.artifact} {r.runtime}: {r.note}" for r in self.rows if r.note]
        entry = next((r.triton_model for r in self.rows if r.triton_model), None)
        if self.triton_repository and entry:
            lines.append(
                f"Triton model repository: {self.triton_repository} (wconv-deploy serve {self.triton_repository} --name {entry})"
            )
        return "\n".join(lines)


def _verdict(report: Any, task: dict[str, float] | None = None, budget: TaskBudget | None = None) -> Verdict:
    """'pass (max rel 1e-07, PSNR -0.002 dB)' or 'FAILED (...)' for a ValidationReport and its
    task metrics against ``budget``; 'not validated' when none ran."""
    if report is None:
        return Verdict(Status.SKIPPED, "not validated")
    detail = f"max rel {report.worst.get('max_rel', 0.0):.1e}{_task(task or {})}"
    if not report.passed:
        return Verdict(Status.FAILED, f"FAILED ({detail})")
    miss = budget.miss(task or {}) if budget is not None else None
    if miss is not None:
        return Verdict(Status.FAILED, f"FAILED ({miss})")
    return Verdict(Status.OK, f"pass ({detail})")


def _task(task: dict[str, float]) -> str:
    if "psnr_variant_db" in task:
        return f", PSNR {task['psnr_variant_db'] - task['psnr_fp32_torch_db']:+.3f} dB"
    if "top1_agreement" in task:
        return f", top-1 agreement {task['top1_agreement']:.3f}"
    return ""


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def deploy(
    loaded: LoadedModel,
    spec: InputSpec,
    out: str | os.PathLike[str],
    *,
    precisions: Sequence[str | Precision] = (Precision.FP32,),
    calibration: str | os.PathLike[str] | None = None,
    calibration_options: CalibrationOptions | None = None,
    name: str | None = None,
    bench_duration_s: float = 1.0,
    package: bool = True,
    serve_check: bool = True,
    budget: TaskBudget | None = None,
    progress: Progress | None = None,
) -> DeployReport:
    """Export ``loaded`` to ``out``, make each precision's variant, build TensorRT engines when
    TensorRT and a GPU are here, time every artifact, and package the ones that passed into a
    Triton model repository ``out/triton``. Every row is validated against fp32 PyTorch on its
    own runtime (and its task metric against ``budget``); with ``serve_check`` each packaged
    entry is then served (``serve``) and verified against its golden file over HTTP and gRPC, so
    the answers of the served model are checked, not only its files. Returns the report; writes
    it to ``out/deploy.json``.

    Raises InputError for bad input and MismatchError when the fp32 export itself fails
    validation (nothing else can be trusted then); a lower precision that fails, on any runtime,
    is reported in its row and not packaged.
    """
    from wconv_deploy.exporters.onnx import export_onnx
    from wconv_deploy.exporters.precision import TaskReference, photo_comparison
    from wconv_deploy.fileio import write_text_atomic

    say = progress or (lambda _msg: None)
    wanted = [Precision.parse(p, allowed=DEPLOY_PRECISIONS) for p in precisions]
    if not wanted:
        raise InputError(f"--precision: choose from {', '.join(DEPLOY_PRECISIONS)}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"-o/--output {folder}: exists and is not a folder")
    if calibration is not None and not Path(calibration).exists():
        raise InputError(f"--calibration {calibration}: no such file or folder")
    stem = name or _stem(loaded.path)
    with _output_folder(folder):
        report = DeployReport(os.fspath(folder), spec.to_dict())

        say("step 1: export to ONNX and validate against PyTorch")
        fp32 = folder / f"{stem}.onnx"
        reference = TorchReference.of(loaded, spec.names)  # fp32 PyTorch runs once per input for every step and row
        exported = export_onnx(loaded, fp32, spec, reference=reference, progress=say)
        task = TaskReference.of(reference, spec)
        onnx_files: dict[Precision, tuple[Path, Verdict]] = {
            Precision.FP32: (fp32, _verdict(exported.validation, task.measure(fp32)))
        }

        for precision in (p for p in wanted if p != Precision.FP32):
            say(f"step 2: convert to {precision}")
            variant = folder / f"{stem}.{precision}.onnx"
            converted = _convert(fp32, variant, precision, reference, calibration, calibration_options, budget, report, say)
            onnx_files.update(converted)

        picture = photo_comparison([(p.value, path) for p, (path, _) in onnx_files.items()], task, folder / "compare.png")
        if picture is not None:
            report.notes.append(f"side by side on the shipped photo (fp32 PyTorch | each variant | error x10): {picture}")

        engines = _build_engines(onnx_files, folder, stem, wanted, report, say)

        say("step 4: validate and time every artifact on every runtime")
        check = _RowCheck(reference, spec, Path(calibration) if calibration is not None else None, budget, task)
        report.rows = _bench(loaded.model, spec, onnx_files, engines, bench_duration_s, check, report, say)

        if package:
            say("step 5: package for Triton")
            _package(report, folder / "triton", stem, say)
            if serve_check and report.triton_repository:
                _serve_and_verify(report, folder / "triton", say)
        write_text_atomic(folder / "deploy.json", dumps(report) + "\n")
    return report


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and missing parents) for the block; if the block fails on bad input or is
    interrupted, remove what this call created, so a rejected deploy leaves no folder behind. A
    failed validation keeps it: the folder then holds the report that says what disagreed."""
    created = next((p for p in [folder, *folder.parents][::-1] if not p.exists()), None)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except MismatchError:
        raise
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _stem(path: Path) -> str:
    text = path.name[4:].split("?")[0] if path.name.startswith("zoo:") else path.stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "model"


def _convert(
    fp32: Path,
    out: Path,
    precision: Precision,
    reference: TorchReference,
    calibration: Any,
    calibration_options: CalibrationOptions | None,
    budget: TaskBudget | None,
    report: DeployReport,
    say: Progress,
) -> dict[Precision, tuple[Path, Verdict]]:
    """The variant and its ONNX Runtime (CPU) verdict; a variant that cannot be made or fails
    gets a FAILED row and the other precisions go on."""
    from wconv_deploy.exporters.precision import convert_onnx

    try:
        converted = convert_onnx(
            fp32, out, precision, reference=reference, calibration=calibration, calibration_options=calibration_options,
            budget=budget, progress=say,
        )  # fmt: skip
    except WconvError as e:  # a mismatch, or a graph the converter cannot handle: this row only
        text = "FAILED (not written)" if isinstance(e, MismatchError) else "FAILED (could not convert)"
        report.rows.append(DeployRow(out.name, precision, "-", Verdict(Status.FAILED, text), note=first_line(e)))
        return {}
    if precision == Precision.INT8 and calibration is None:
        report.notes.append("int8 was calibrated on seeded normal inputs: pass --calibration with real inputs")
    return {precision: (out, _verdict(converted.validation, converted.task))}


@dataclass
class _RowCheck:
    """Validates one artifact on one runtime against fp32 PyTorch, as convert does in ONNX
    Runtime: the same inputs, the precision's tolerances, the task metric against the budget."""

    reference: TorchReference
    spec: InputSpec
    calibration: Path | None
    budget: TaskBudget | None
    task: TaskReference | None = None  # None: measured against a fresh fp32 run
    seed: int = 0

    def __call__(self, runtime: Runtime, precision: Precision) -> Verdict:
        from wconv_deploy.exporters.precision import TaskReference, validation_inputs
        from wconv_deploy.validate import validate_artifact

        inputs, random = validation_inputs(precision, self.calibration, None)
        result = validate_artifact(runtime, self.reference, spec=self.spec, inputs=inputs, random=random, seed=self.seed)
        task = self.task or TaskReference.of(self.reference, self.spec, self.seed)
        return _verdict(result, task.measure(runtime), self.budget)


def _build_engines(
    onnx_files: dict[Precision, tuple[Path, Verdict]],
    folder: Path,
    stem: str,
    precisions: list[Precision],
    report: DeployReport,
    say: Progress,
) -> dict[Precision, Path]:
    """TensorRT engines from each variant, when TensorRT and a GPU are here (else one note)."""
    from wconv_deploy.runtimes import unavailable_reason

    reason = unavailable_reason("trt")
    if reason is not None:
        report.notes.append(f"no TensorRT engines: {reason}")
        return {}
    from wconv_deploy.exporters.tensorrt import build_engine

    engines = {}
    for precision, (onnx_path, _) in onnx_files.items():
        if precision not in precisions:
            continue
        say(f"step 3: build a {precision} TensorRT engine")
        plan = folder / f"{stem}.{precision}.plan"
        try:
            build_engine(onnx_path, plan, precision, strongly_typed=precision != Precision.FP32, progress=say)
        except InputError as e:
            report.notes.append(f"{precision} engine not built: {first_line(e)}")
            continue
        engines[precision] = plan
    return engines


def _bench(
    module: Any,
    spec: InputSpec,
    onnx_files: dict[Precision, tuple[Path, Verdict]],
    engines: dict[Precision, Path],
    duration_s: float,
    check: _RowCheck,
    report: DeployReport,
    say: Progress,
) -> list[DeployRow]:
    """One row per artifact and runtime: its own verdict on that runtime and its median latency."""
    from wconv_deploy.bench import run_bench
    from wconv_deploy.runtimes import unavailable_reason

    def median(runtimes: list[str], **artifact: Any) -> dict[str, float | str]:
        result = run_bench(runtimes=runtimes, spec=spec, model=module, min_duration_s=duration_s, iterations=10, **artifact)
        return {r.runtime: (r.stats.median_ms if r.stats else r.unavailable or "not run") for r in result.rows}

    def row(path: Path, precision: Precision, runtime: str, verdict: Verdict, value: float | str) -> DeployRow:
        latency = value if isinstance(value, float) else None
        note = "" if latency is not None else str(value)
        return DeployRow(path.name, precision, runtime, verdict, latency, path.name, _mb(path), note=note)

    rows = list(report.rows)
    eager = median(["torch"])["torch"]
    rows.insert(
        0,
        DeployRow(
            "PyTorch (training form)",
            Precision.FP32,
            "torch",
            Verdict(Status.SKIPPED, "reference"),
            eager if isinstance(eager, float) else None,
        ),
    )
    onnx_runtimes = [r for r in ("ort-cpu", "ort-cuda", "openvino") if unavailable_reason(r) is None]
    for precision, (path, verdict) in onnx_files.items():
        say(f"validating and timing {path.name} on {', '.join(onnx_runtimes)}")
        timings = median(onnx_runtimes, onnx_path=path)
        for runtime in onnx_runtimes:
            # ort-cpu is where export/convert validated it; every other runtime checks it anew
            own = verdict if runtime == "ort-cpu" else _check_on(check, runtime, precision, onnx_path=path, spec=spec)
            rows.append(row(path, precision, runtime, own, timings[runtime]))
    for precision, plan in engines.items():
        say(f"validating and timing {plan.name} on trt")
        own = _check_on(check, "trt", precision, engine_path=plan)
        rows.append(row(plan, precision, "trt", own, median(["trt"], engine_path=plan)["trt"]))
    return rows


def _check_on(check: _RowCheck, runtime: str, precision: Precision, **artifact: Any) -> Verdict:
    """``check`` on the named runtime; a runtime that cannot run the artifact fails the row."""
    from wconv_deploy.runtimes import create_runtime

    try:
        return check(create_runtime(runtime, input_names=check.spec.names, **artifact), precision)
    except WconvError as e:
        return Verdict(Status.FAILED, f"FAILED ({first_line(e)})")


#: The runtime a Triton entry runs an artifact with: its row's verdict decides the packaging.
SERVED_BY = {".onnx": "ort-cpu", ".plan": "trt"}


def _package(report: DeployReport, repo: Path, stem: str, say: Progress) -> None:
    """One Triton model per artifact that passed validation on the runtime the entry uses:
    NAME_PRECISION (ONNX Runtime, CPU) and NAME_trt_PRECISION (TensorRT)."""
    from wconv_deploy.ship.package import package

    reason = missing("tritonclient.grpc", "serve")
    if reason:  # the serve extra is optional: say so instead of failing the run
        report.notes.append(f"not packaged for Triton: {reason}")
        return
    for row in report.rows:
        if not row.file or SERVED_BY.get(Path(row.file).suffix) != row.runtime or row.validation.status != Status.OK:
            continue
        engine = row.runtime == "trt"
        model_name = f"{stem}_trt_{row.precision}" if engine else f"{stem}_{row.precision}"
        try:
            package([Path(report.out) / row.file], repo, model_name, kind="gpu" if engine else "cpu", progress=say)
        except InputError as e:
            report.notes.append(f"{row.file} not packaged: {first_line(e)}")
            continue
        row.triton_model = model_name
        report.triton_repository = os.fspath(repo)


def _serve_and_verify(report: DeployReport, repo: Path, say: Progress) -> None:
    """Serve each packaged entry on free local ports and verify its answers against the golden
    file packaged with it, through HTTP and gRPC; the row's ``served`` column says how it went."""
    from wconv_deploy.runtimes import unavailable_reason
    from wconv_deploy.ship.serve import start_server
    from wconv_deploy.verify import verify_url

    for row in (r for r in report.rows if r.triton_model):
        if unavailable_reason(row.runtime) is not None:  # e.g. an engine packaged for another GPU
            continue
        say(f"step 6: serve {row.triton_model} and verify its answers over HTTP and gRPC")
        try:
            with start_server(repo, name=row.triton_model, progress=say) as server:
                urls = {"http": server.http_url, "grpc": server.grpc_url}
                checks = {name: verify_url(url, row.triton_model, repo / row.triton_model) for name, url in urls.items()}
        except WconvError as e:
            row.served = Verdict(Status.FAILED, f"FAILED ({first_line(e)})")
            continue
        failed = [protocol for protocol, check in checks.items() if not check.passed]
        protocols = ", ".join(checks)
        row.served = (
            Verdict(Status.FAILED, f"FAILED ({', '.join(failed)})") if failed else Verdict(Status.OK, f"pass ({protocols})")
        )
