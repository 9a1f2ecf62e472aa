"""One command from a trained model to a served one: export, validate, convert, build, bench,
package, and one table that says what came out of each step.

Every step is the library function behind its own command (``export_onnx``, ``convert_onnx``,
``build_engine``, ``run_bench``, ``package``); ``deploy`` only chains them, keeps going past a
variant that fails (its row says why) and writes the table as JSON beside the artifacts.
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
from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report, Status, dumps
from wconv_deploy.spec import InputSpec

if TYPE_CHECKING:
    from wconv_deploy.loading import LoadedModel

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
            rows.append(
                [r.artifact, r.precision, r.runtime, r.validation.text, latency, speed, size, r.file, r.triton_model or "-"]
            )
        head = ["artifact", "precision", "runtime", "validation", "latency ms", "vs eager", "MB", "file", "triton model"]
        lines = [format_table(head, rows)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"{r.artifact} {r.runtime}: {r.note}" for r in self.rows if r.note]
        served = next((r.triton_model for r in self.rows if r.triton_model), None)
        if self.triton_repository and served:
            lines.append(
                f"Triton model repository: {self.triton_repository} (wconv-deploy serve {self.triton_repository} --name {served})"
            )
        return "\n".join(lines)


def _verdict(report: Any, task: dict[str, float] | None = None) -> Verdict:
    """'pass (max rel 1e-07)' or 'FAILED' for a ValidationReport, 'not validated' when none ran."""
    if report is None:
        return Verdict(Status.SKIPPED, "not validated")
    if not report.passed:
        return Verdict(Status.FAILED, "FAILED")
    return Verdict(Status.OK, f"pass (max rel {report.worst.get('max_rel', 0.0):.1e}){_task(task or {})}")


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
    name: str | None = None,
    bench_duration_s: float = 1.0,
    package: bool = True,
    progress: Progress | None = None,
) -> DeployReport:
    """Export ``loaded`` to ``out``, make each precision's variant, build TensorRT engines when
    TensorRT and a GPU are here, time every artifact, and package the ones that passed into a
    Triton model repository ``out/triton``. Returns the report; writes it to ``out/deploy.json``.

    Raises InputError for bad input and MismatchError when the fp32 export itself fails
    validation (nothing else can be trusted then); a lower precision that fails is reported in
    its row and not packaged.
    """
    from wconv_deploy.exporters.onnx import export_onnx
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
        exported = export_onnx(loaded, fp32, spec, progress=say)
        onnx_files: dict[Precision, tuple[Path, Verdict]] = {Precision.FP32: (fp32, _verdict(exported.validation))}

        for precision in (p for p in wanted if p != Precision.FP32):
            say(f"step 2: convert to {precision}")
            onnx_files.update(_convert(fp32, folder / f"{stem}.{precision}.onnx", precision, loaded, calibration, report, say))

        engines = _build_engines(onnx_files, folder, stem, wanted, report, say)

        say("step 4: benchmark every artifact")
        report.rows = _bench(loaded.model, spec, onnx_files, engines, bench_duration_s, report, say)

        if package:
            say("step 5: package for Triton")
            _package(report, folder / "triton", stem, say)
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
    fp32: Path, out: Path, precision: Precision, loaded: Any, calibration: Any, report: DeployReport, say: Progress
) -> dict[Precision, tuple[Path, Verdict]]:
    from wconv_deploy.exporters.precision import convert_onnx

    try:
        converted = convert_onnx(fp32, out, precision, reference=loaded, calibration=calibration, progress=say)
    except MismatchError as e:
        report.rows.append(
            DeployRow(out.name, precision, "-", Verdict(Status.FAILED, "FAILED (not written)"), note=first_line(e))
        )
        return {}
    if precision == Precision.INT8 and calibration is None:
        report.notes.append("int8 was calibrated on seeded normal inputs: pass --calibration with real inputs")
    return {precision: (out, _verdict(converted.validation, converted.task))}


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
    report: DeployReport,
    say: Progress,
) -> list[DeployRow]:
    from wconv_deploy.bench import run_bench
    from wconv_deploy.runtimes import unavailable_reason

    def median(runtimes: list[str], **artifact: Any) -> dict[str, float | str]:
        result = run_bench(runtimes=runtimes, spec=spec, model=module, min_duration_s=duration_s, iterations=10, **artifact)
        return {r.runtime: (r.stats.median_ms if r.stats else r.unavailable or "not run") for r in result.rows}

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
        say(f"timing {path.name} on {', '.join(onnx_runtimes)}")
        for runtime, value in median(onnx_runtimes, onnx_path=path).items():
            latency = value if isinstance(value, float) else None
            note = "" if latency is not None else str(value)
            rows.append(DeployRow(path.name, precision, runtime, verdict, latency, path.name, _mb(path), note=note))
    for precision, plan in engines.items():
        say(f"timing {plan.name} on trt")
        value = median(["trt"], engine_path=plan)["trt"]
        latency = value if isinstance(value, float) else None
        rows.append(DeployRow(plan.name, precision, "trt", onnx_files[precision][1], latency, plan.name, _mb(plan)))
    return rows


def _package(report: DeployReport, repo: Path, stem: str, say: Progress) -> None:
    """One Triton model per artifact that passed validation: NAME_PRECISION (ONNX Runtime) and
    NAME_trt_PRECISION (TensorRT)."""
    from wconv_deploy.ship.package import package

    reason = missing("tritonclient.grpc", "serve")
    if reason:  # the serve extra is optional: say so instead of failing the run
        report.notes.append(f"not packaged for Triton: {reason}")
        return
    done: dict[str, str] = {}
    for row in report.rows:
        if row.file in done:  # the same file timed on another runtime
            row.triton_model = done[row.file]
            continue
        if not row.file or row.validation.status != Status.OK:
            continue
        engine = row.file.endswith(".plan")
        model_name = f"{stem}_trt_{row.precision}" if engine else f"{stem}_{row.precision}"
        try:
            package([Path(report.out) / row.file], repo, model_name, kind="gpu" if engine else "cpu", progress=say)
        except InputError as e:
            report.notes.append(f"{row.file} not packaged: {first_line(e)}")
            continue
        done[row.file] = row.triton_model = model_name
    if done:
        report.triton_repository = os.fspath(repo)
