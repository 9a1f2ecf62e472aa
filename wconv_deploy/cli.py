"""The ``wconv-deploy`` command: a shell over the library. Parse, call, print.

Option groups are declared once and shared: the model source (MODEL, ``--arch``,
``--checkpoint-key``, ``--trust-code``), shapes (``--input-shape``, ``--dynamic``,
``--max-input-gb``), checks (``--atol``, ``--rtol``, ``--seed``, ``--inputs``) and output
(``--json`` prints the report as JSON on stdout, ``--json-file`` writes it). Each group hands the
command one object from :mod:`wconv_deploy.options`. Only click, the errors and those light
modules are imported at start, so ``wconv-deploy --help`` imports neither torch nor onnx.

Exit status: 0 success, 1 numbers disagree (a check failed), 2 bad input or usage, 130/143
interrupted. Errors are one line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from wconv_deploy._version import __version__
from wconv_deploy.errors import DISK_FULL, InputError, Interrupted, MismatchError, WconvError
from wconv_deploy.options import (
    CheckOptions,
    ModelSource,
    ShapeOptions,
    TaskBudget,
    artifact_kind,
    int_list,
    name_list,
)
from wconv_deploy.spec import MAX_INPUT_GB

if TYPE_CHECKING:
    from wconv_deploy.calibration import CalibrationOptions
    from wconv_deploy.preprocess import ImagePreprocess

_EMIT = "wconv_deploy.emit"  # ctx.meta key: how the running command prints its report


class _Group(click.Group):
    """Turns the library's errors into one stderr line and the exit status they carry (a failed
    check's report is printed first, as a table or as JSON); SIGINT and SIGTERM stop any command
    cleanly (staging removed) with exit 130 or 143."""

    def invoke(self, ctx: click.Context) -> Any:
        from wconv_deploy.interrupts import signals_as_interrupts

        debug = bool(ctx.params.get("debug"))
        if not debug:
            warnings.simplefilter("ignore")  # library warnings would break the one-line contract
        try:
            with signals_as_interrupts():
                return super().invoke(ctx)
        except click.UsageError as e:  # click would print the usage text too; one line is the contract
            if debug:
                raise
            _fail(ctx, f"{e.format_message()} (see --help)", 2)
        except WconvError as e:
            if debug:
                raise
            if isinstance(e, MismatchError) and e.report is not None:
                ctx.meta.get(_EMIT, _Emit())(e.report)
            _fail(ctx, str(e), e.exit_code)
        except Interrupted as e:
            _fail(ctx, "interrupted" + (" (SIGTERM)" if e.signum == signal.SIGTERM else ""), e.exit_code)
        except KeyboardInterrupt:  # a Ctrl-C outside the handler's reach (another thread's library code)
            _fail(ctx, "interrupted", 130)
        except OSError as e:
            if debug or e.errno not in DISK_FULL:
                raise
            _fail(ctx, f"no space left on the device{f' writing {e.filename}' if e.filename else ''}; nothing was kept", 2)
        except MemoryError:
            if debug:
                raise
            _fail(ctx, "out of memory; try smaller --input-shape or --batch values", 2)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    ctx.exit(code)


class _Option(click.Option):
    """An option whose help shows only its short flag and first long spelling: later long ones
    are old names kept working (``--out`` for ``--output``, ``--shape`` for ``--input-shape``)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        longs = [o for o in self.opts if o.startswith("--")]
        if record is None or len(longs) <= 1:
            return record
        first, rest = record
        for old in longs[1:]:  # whole spellings only: "--out" is a prefix of "--output"
            first = re.sub(rf", {re.escape(old)}(?=[ ,]|$)", "", first)
        return first, rest


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wconv-deploy")
@click.option("--debug", is_flag=True, help="Show tracebacks and library warnings.")
def cli(debug: bool) -> None:
    """Deploy CNNs trained with the weighted convolution: load safely, fold, export, check."""


# --------------------------------------------------------------------------- option groups


def _gather(name: str, keys: tuple[str, ...], build: Callable[..., Any]) -> Callable[[Any], Any]:
    """Wrap a command so that the options ``keys`` reach it as one argument ``name`` = build(**them)."""

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = build(**{k: kwargs.pop(k) for k in keys})
            return f(*args, **kwargs)

        return wrapper

    return decorate


#: What --trust-code (alias --trust-pickle) allows, said once for every command that reads a model or engine.
TRUST_HELP = (
    "Let code inside the model files run: full unpickling, TorchScript and .pt2 programs, version-compatible "
    "TensorRT engines. Without it nothing from a file runs. Only for files you trust."
)


def _trust_option(f: Any) -> Any:
    return click.option("--trust-code", "--trust-pickle", "trust_code", is_flag=True, help=TRUST_HELP)(f)


def _model_options(where: str = "argument", *, required: bool = True) -> Callable[[Any], Any]:
    """The model source, as ``source: ModelSource`` (None for an optional --reference not given).

    ``where``: ``argument`` (MODEL), ``reference`` (``--reference MODEL``) or ``none`` (the
    loading options only; the command names the model itself, e.g. among bench's ARTIFACTs)."""

    def build(model: str | None, arch: str | None, checkpoint_key: str | None, trust_code: bool) -> ModelSource | None:
        if model is None and where != "none":
            return None
        return ModelSource(model or "", arch, checkpoint_key, trust_code)

    def decorate(f: Any) -> Any:
        f = _gather("source", ("model", "arch", "checkpoint_key", "trust_code"), build)(f)
        f = click.option(
            "--checkpoint-key",
            metavar="KEY",
            help="Entry of a checkpoint dict to use (default: ema, model_ema, model, state_dict, ...).",
        )(f)
        f = click.option(
            "--arch",
            metavar="MODULE:CALLABLE",
            help="Build the architecture with this callable and load only the file's weights.",
        )(f)
        f = _trust_option(f)
        if where == "argument":
            return click.argument("model", metavar="MODEL")(f)
        if where == "reference":
            help_text = "The fp32 PyTorch model (file or zoo:NAME) the artifact must match."
            if not required:
                help_text += " [the zoo model an export came from]"
            return click.option("--reference", "model", metavar="MODEL", required=required, help=help_text)(f)
        return _with_default(f, "model", None)

    return decorate


def _with_default(f: Any, key: str, value: Any) -> Any:
    """``f`` called with ``key=value`` added (a group's argument this command does not take)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **{key: value, **kwargs})

    return wrapper


def _shape_options(f: Any) -> Any:
    """--input-shape, --dynamic and --max-input-gb as ``shapes: ShapeOptions``; inside the command,
    specs beyond the memory limit are refused before anything is allocated."""

    def build(input_shape: str | None, dynamic: str | None, max_input_gb: float) -> ShapeOptions:
        return ShapeOptions(input_shape, dynamic, max_input_gb)

    @functools.wraps(f)
    def limited(*args: Any, shapes: ShapeOptions, **kwargs: Any) -> Any:
        from wconv_deploy.spec import input_limit

        with input_limit(shapes.max_input_gb):
            return f(*args, shapes=shapes, **kwargs)

    g = _gather("shapes", ("input_shape", "dynamic", "max_input_gb"), build)(limited)
    g = click.option(
        "--max-input-gb",
        type=float,
        default=MAX_INPUT_GB,
        show_default=True,
        metavar="GIB",
        help="Refuse input shapes whose one set of inputs would take more memory than this.",
    )(g)
    g = click.option(
        "--dynamic", metavar="AXES", help="Axes that vary: batch | batch,height,width | all | batch=1:64,height=32:512."
    )(g)
    return click.option(
        "--input-shape",
        "--shape",
        "input_shape",
        cls=_Option,
        metavar="SPEC",
        help="Input shape(s): 1x3x224x224 or x:1x3x224x224,mask:1x1x224x224 (optional :dtype).",
    )(g)


def _plot_option(f: Any) -> Any:
    """--plot PNG as ``plot_out``; its folder is checked before the command runs, not after
    minutes of measuring. The command draws with :func:`_write_plot`."""

    @functools.wraps(f)
    def checked(*args: Any, plot_out: Path | None, **kwargs: Any) -> Any:
        if plot_out is not None and not (plot_out.parent if str(plot_out.parent) else Path(".")).is_dir():
            raise InputError(f"--plot {plot_out}: folder {plot_out.parent} does not exist")
        return f(*args, plot_out=plot_out, **kwargs)

    help_text = "Also write a PNG here: p50/p99 latency and throughput."
    return click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), help=help_text)(checked)


def _write_plot(report: Any, plot_out: Path | None, emit: _Emit) -> None:
    if plot_out is not None:
        report.plot(plot_out)
        if not emit.as_json:
            click.echo(f"wrote {plot_out}")


def _budget_options(f: Any) -> Any:
    """--max-psnr-drop and --min-top1-agreement as ``budget: TaskBudget``: the task quality a
    lower precision may lose before its variant fails."""
    from wconv_deploy.options import TaskBudget

    g = _gather("budget", ("max_psnr_drop", "min_top1_agreement"), TaskBudget)(f)
    g = click.option(
        "--min-top1-agreement",
        type=float,
        metavar="F",
        help="Fail a classifier variant whose top-1 classes agree with fp32 PyTorch on less than this share (0..1).",
    )(g)
    return click.option(
        "--max-psnr-drop",
        type=float,
        metavar="DB",
        help=(
            "Fail an image-to-image variant whose PSNR on the validation image drops more than DB below fp32 PyTorch "
            "(convert --precision int8 without --keep-fp32: search for the fewest layers to keep in fp32 that meet it)."
        ),
    )(g)


def _preprocess_options(f: Any) -> Any:
    """--channels, --mean, --std, --scale, --resize and --crop as one ImagePreprocess, applied to
    every image folder the command loads (--inputs, --calibration; see wconv_deploy.preprocess)."""
    from wconv_deploy.preprocess import CHANNEL_ORDERS, CROPS, RESIZE_POLICIES, ImagePreprocess, float_list

    def build(channels: str | None, mean: str | None, std: str | None, scale: float, resize: str, crop: str) -> ImagePreprocess:
        return ImagePreprocess(channels, float_list(mean, "--mean"), float_list(std, "--std"), scale, resize, crop)

    @functools.wraps(f)
    def applied(*args: Any, preprocess: ImagePreprocess, **kwargs: Any) -> Any:
        from wconv_deploy.preprocess import using

        with using(preprocess):
            return f(*args, **kwargs)

    g = _gather("preprocess", ("channels", "mean", "std", "scale", "resize", "crop"), build)(applied)
    g = click.option(
        "--crop", type=click.Choice(CROPS), default="none", show_default=True, help="Centre-crop images to the spec's HxW."
    )(g)
    g = click.option(
        "--resize",
        type=click.Choice(RESIZE_POLICIES),
        default="auto",
        show_default=True,
        help="auto: keep sizes the model takes, stretch others to the spec's HxW; stretch: always; "
        "cover: keep the aspect ratio, cover HxW (with --crop center); none: never.",
    )(g)
    g = click.option(
        "--scale", type=float, default=1 / 255, metavar="S", help="Pixel values are multiplied by this first [1/255]."
    )(g)
    g = click.option("--std", metavar="S[,S,S]", help="Per-channel std images are divided by, after --mean [1].")(g)
    g = click.option("--mean", metavar="M[,M,M]", help="Per-channel mean subtracted from scaled images [0].")(g)
    return click.option(
        "--channels", type=click.Choice(CHANNEL_ORDERS), help="Channel order images are fed in [gray for 1 channel, rgb for 3]."
    )(g)


def _calibration_options(f: Any) -> Any:
    """--calibration-limit and --calibration-cache as ``calibration_options: CalibrationOptions``."""
    from wconv_deploy.calibration import CalibrationOptions, parse_limit

    def build(calibration_limit: str | None, calibration_cache: Path | None) -> CalibrationOptions:
        return CalibrationOptions(parse_limit(calibration_limit), calibration_cache)

    g = _gather("calibration_options", ("calibration_limit", "calibration_cache"), build)(f)
    g = click.option(
        "--calibration-cache",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Keep the int8 activation ranges here; reused while the model and calibration inputs are the same.",
    )(g)
    return click.option(
        "--calibration-limit",
        metavar="N|F",
        help="Calibrate on a reproducible random subset: N inputs, or a share F such as 0.25 [all].",
    )(g)


def _check_options(*precisions: str) -> Callable[[Any], Any]:
    """--atol, --rtol, --seed and --inputs as ``checks: CheckOptions``; the tolerances default to
    those of the artifact's precision (the help names them for ``precisions``)."""
    from wconv_deploy.precision import Precision

    typed = [Precision(p) for p in precisions or ("fp32",)]
    atols = ", ".join(f"{p.value} {p.tolerance[0]:g}" for p in typed)
    rtols = ", ".join(f"{p.value} {p.tolerance[1]:g}" for p in typed)

    def decorate(f: Any) -> Any:
        f = _gather("checks", ("atol", "rtol", "seed", "inputs"), CheckOptions)(f)
        f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random validation inputs.")(f)
        f = click.option("--rtol", type=float, metavar="R", help=f"Relative tolerance [{rtols}].")(f)
        f = click.option("--atol", type=float, metavar="A", help=f"Absolute tolerance [{atols}].")(f)
        return click.option(
            "--inputs",
            type=click.Path(path_type=Path),
            help="Also validate on these inputs: an .npz (one array per input name) or a folder of images.",
        )(f)

    return decorate


@dataclass(frozen=True)
class _ErrorStat:
    """--check-error-stat and --error-quantile as given."""

    stat: str
    quantile: float


def _error_stat_options(f: Any) -> Any:
    """--check-error-stat and --error-quantile (Polygraphy's names) as ``stats: _ErrorStat``."""

    def build(check_error_stat: str, error_quantile: float) -> _ErrorStat:
        return _ErrorStat(check_error_stat, error_quantile)

    f = _gather("stats", ("check_error_stat", "error_quantile"), build)(f)
    f = click.option(
        "--error-quantile", type=float, default=0.99, show_default=True, metavar="Q", help="For --check-error-stat quantile."
    )(f)
    return click.option(
        "--check-error-stat",
        type=click.Choice(["elemwise", "max", "mean", "median", "quantile"]),
        default="elemwise",
        show_default=True,
        help="elemwise: every element within atol + rtol*|expected|; else that statistic of the absolute error within "
        "--atol or of the relative error within --rtol (as Polygraphy checks).",
    )(f)


def _output_option(
    help_text: str, *, folder: bool = False, required: bool = False, default: Path | None = None
) -> Callable[[Any], Any]:
    """-o/--output (old name --out kept) for the file or folder a command writes."""
    return click.option(
        "-o",
        "--output",
        "--out",
        "output",
        cls=_Option,
        type=click.Path(file_okay=not folder, dir_okay=folder, path_type=Path),
        required=required,
        default=default,
        show_default=default is not None,
        help=help_text,
    )


@dataclass(frozen=True)
class _Emit:
    """How a command prints its report: a table (with progress lines), or JSON on stdout
    (``--json``, no progress), and also as JSON to a file (``--json-file``)."""

    as_json: bool = False
    json_file: Path | None = None
    started: float = 0.0

    def __call__(self, report: Any) -> None:
        from wconv_deploy.reports import dumps

        if self.json_file is not None:
            from wconv_deploy.fileio import write_text_atomic

            write_text_atomic(self.json_file, dumps(report) + "\n")
        click.echo(dumps(report) if self.as_json else report.render())
        if self.json_file is not None and not self.as_json:
            click.echo(f"wrote {self.json_file}")

    def progress(self, msg: str) -> None:
        """A progress line with the elapsed time, on stdout (stderr is kept for the one-line error)."""
        if not self.as_json:
            click.echo(f"... {msg} [{time.monotonic() - self.started:.1f} s]")


def _json_options(f: Any) -> Any:
    """--json and --json-file as ``emit: _Emit`` (kept in ctx.meta so a failed check's report is
    printed the same way)."""

    def build(as_json: bool, json_file: Path | None) -> _Emit:
        if json_file is not None and not (json_file.parent if str(json_file.parent) else Path(".")).is_dir():
            raise InputError(f"--json-file {json_file}: folder {json_file.parent} does not exist")
        emit = _Emit(as_json, json_file, time.monotonic())
        click.get_current_context().meta[_EMIT] = emit
        return emit

    f = _gather("emit", ("as_json", "json_file"), build)(f)
    f = click.option("--json-file", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON here.")(
        f
    )
    return click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (valid JSON, failures too).")(
        f
    )


def _runtime_names(*, serves: bool = False) -> list[str]:
    from wconv_deploy.runtimes import entries

    return [e.name for e in entries() if not serves or (e.serves and e.kind != "torch")]


# --------------------------------------------------------------------------- commands


@cli.command()
@_model_options()
@click.option("--no-fold-bn", is_flag=True, help="Do not try fusing Conv+BatchNorm pairs in the fold check.")
@_json_options
def inspect(source: ModelSource, no_fold_bn: bool, emit: _Emit) -> None:
    """Show MODEL's format, weighted layers, parameters and whether it folds cleanly.

    MODEL is a file saved with torch.save (whole model, state_dict with --arch, checkpoint
    dict), a TorchScript archive or a torch.export .pt2 program. For an artifact (an ONNX file, a
    TensorRT engine, read through its manifest only, or a Triton entry REPO/NAME): its I/O and
    ranges, opset, precision, Conv and Q/DQ counts, provenance, engine manifest and golden file.
    """
    if artifact_kind(source.uri) != "torch" or Path(source.uri).is_dir():
        from wconv_deploy.inspection import inspect_artifact

        emit(inspect_artifact(source.uri))
        return
    from wconv_deploy.inspection import inspect_model

    result = inspect_model(source.load(), fold_bn=not no_fold_bn)
    emit(result)
    if result.fold_error is not None:
        raise result.fold_error


@cli.command()
@_output_option("Folder for the files the demo writes.", folder=True, default=Path("demo-out"))
def demo(output: Path) -> None:
    """Run the toolkit end to end on a built-in network (no arguments, no network access)."""
    from wconv_deploy.demo import run_demo

    run_demo(output, echo=click.echo)
    click.echo(f"demo finished; files in {output}/")


@cli.command()
@_model_options()
@_shape_options
@_output_option("ONNX file to write [MODEL.onnx].")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset version.")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx exporter: torch.export-based, or the older TorchScript one (faster, deprecated by PyTorch).",
)
@click.option("--fold-bn", is_flag=True, help="Also fuse eval-mode Conv+BatchNorm pairs in PyTorch before export.")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch in ONNX Runtime.")
@_check_options()
@_preprocess_options
@_json_options
def export(
    source: ModelSource,
    shapes: ShapeOptions,
    output: Path | None,
    opset: int,
    exporter: str,
    fold_bn: bool,
    no_validate: bool,
    checks: CheckOptions,
    emit: _Emit,
) -> None:
    """Fold MODEL, export it to ONNX, check the graph and validate it against PyTorch.

    The file written holds only ordinary convolutions and passed every check; its validation
    report is written beside it as OUTPUT.report.json.
    """
    from wconv_deploy.exporters.onnx import export_onnx

    spec = shapes.resolve(source.uri)
    emit.progress(f"loading {source.uri}")
    report = export_onnx(
        source.load(),
        output,
        spec,
        opset=opset,
        exporter=exporter,
        fold_bn=fold_bn,
        validate_output=not no_validate,
        checks=checks,
        progress=emit.progress,
    )
    emit(report)


@cli.command(name="validate")
@click.argument("artifact", metavar="ARTIFACT", type=click.Path(path_type=Path))
@click.argument("other", metavar="[OTHER]", required=False, type=click.Path(path_type=Path))
@click.option(
    "--runtime",
    "runtimes",
    metavar="NAME[,NAME]",
    help="Runtime of ARTIFACT [ort-cpu for ONNX, trt for engines]; a second name: of OTHER, or of ARTIFACT again "
    "(runtime against runtime).",
)
@click.option("--golden", type=click.Path(path_type=Path), help="Compare with this golden file [ARTIFACT's, beside it].")
@_model_options("reference", required=False)
@_shape_options
@_check_options()
@_preprocess_options
@_error_stat_options
@click.option("--load-inputs", type=click.Path(path_type=Path), help="Also validate on a Polygraphy inputs file (JSON).")
@click.option("--save-inputs", type=click.Path(dir_okay=False, path_type=Path), help="Write the inputs as Polygraphy JSON.")
@click.option("--save-outputs", type=click.Path(dir_okay=False, path_type=Path), help="Write its outputs as Polygraphy JSON.")
@_json_options
def validate_cmd(
    artifact: Path,
    other: Path | None,
    runtimes: str | None,
    golden: Path | None,
    source: ModelSource | None,
    shapes: ShapeOptions,
    checks: CheckOptions,
    stats: _ErrorStat,
    load_inputs: Path | None,
    save_inputs: Path | None,
    save_outputs: Path | None,
    emit: _Emit,
) -> None:
    """Check that ARTIFACT (an ONNX file or a TensorRT engine) computes on its runtime what the
    reference computes: OTHER on its own runtime, ARTIFACT on a second --runtime, the PyTorch
    --reference MODEL, a --golden file, else the golden file beside ARTIFACT, else the zoo model
    its metadata names. Tolerances default to the precision of the artifact and runtime.

    Shapes come from the artifact (export metadata, engine manifest) unless --input-shape is given.
    """
    from wconv_deploy.validate import choose_reference, validate_artifact

    names = name_list(runtimes) if runtimes else []
    if len(names) > 2:
        raise InputError("--runtime: give at most two runtimes (ARTIFACT's, then the reference's)")
    for path in (p for p in (save_inputs, save_outputs) if p is not None):
        if not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise InputError(f"{path}: folder {path.parent} does not exist")
    reference = choose_reference(artifact, other, twice=len(names) == 2 and other is None, source=source, golden=golden)
    report = validate_artifact(
        artifact,
        reference,
        runtime=names[0] if names else None,
        reference_runtime=names[1] if len(names) == 2 else None,
        spec=shapes.given(),
        inputs=checks.inputs,
        polygraphy_inputs=load_inputs,
        atol=checks.atol,
        rtol=checks.rtol,
        error_stat=stats.stat,
        error_quantile=stats.quantile,
        seed=checks.seed,
        trust_code=bool(source and source.trust_code),
    )
    if save_inputs is not None or save_outputs is not None:
        from wconv_deploy.golden import save_inputs_json, save_outputs_json

        if save_inputs is not None:
            save_inputs_json([(c.label, f) for c, f in zip(report.cases, report.feeds)], save_inputs)
        if save_outputs is not None:
            names_out = [o.name for o in report.cases[0].outputs] if report.cases else []
            save_outputs_json([(report.runtime, report.outputs)], names_out, save_outputs)
    report.raise_for_failure()
    emit(report)


@cli.command(name="verify")
@click.argument("target", metavar="[REPO|ENTRY|ARTIFACT]", required=False, type=click.Path(path_type=Path))
@click.option("--url", help="Verify the model served by Triton here (http://HOST:PORT or grpc://HOST:PORT) instead.")
@click.option("--model", help="The model on the server (--url), or in a repository holding several.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), help="For a --url without http:// or grpc:// [http].")
@click.option("--runtime", help="What runs the model [as serve picks it: ort-cpu for ONNX, trt for engines].")
@click.option("--golden", type=click.Path(path_type=Path), help="The golden file [the one beside the model file].")
@click.option("--atol", type=float, metavar="A", help="Absolute tolerance [the golden file's].")
@click.option("--rtol", type=float, metavar="R", help="Relative tolerance [the golden file's].")
@_error_stat_options
@_budget_options
@_trust_option
@_json_options
def verify_cmd(
    target: Path | None,
    url: str | None,
    model: str | None,
    protocol: str | None,
    runtime: str | None,
    golden: Path | None,
    atol: float | None,
    rtol: float | None,
    stats: _ErrorStat,
    budget: TaskBudget,
    trust_code: bool,
    emit: _Emit,
) -> None:
    """Re-run the golden inputs shipped with a model and compare with the golden outputs and task
    metric, without PyTorch: a Triton repository or model entry from package, or an artifact with
    its .golden.npz beside it; with --url, through a live Triton server (the golden file from
    TARGET or --golden)."""
    from functools import partial

    from wconv_deploy.verify import verify, verify_url

    if url is not None:
        if model is None:
            raise InputError("--url needs --model NAME (the model on the server)")
        evidence = golden or target
        if evidence is None:
            raise InputError("--url needs the golden file: give TARGET (repository, entry or artifact) or --golden FILE")
        check = partial(verify_url, url, model, evidence, protocol=protocol)
    else:
        if target is None:
            raise InputError("give TARGET (a repository, model entry or artifact) or --url")
        check = partial(verify, target, model=model, runtime=runtime, golden=golden, trust_code=trust_code)
    report = check(atol=atol, rtol=rtol, error_stat=stats.stat, error_quantile=stats.quantile, budget=budget)
    report.raise_for_failure()
    emit(report)


@cli.command()
@click.argument("onnx_file", metavar="ONNX", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True, help="The variant to make.")
@_output_option("Variant to write [ONNX.PRECISION.onnx].")
@_model_options("reference", required=False)
@click.option("--calibration", type=click.Path(path_type=Path), help="int8 calibration inputs: an .npz or a folder of images.")
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="How int8 activation ranges are fitted to the calibration data.",
)
@click.option(
    "--keep-fp32",
    default="",
    metavar="NAME,...",
    help="ONNX nodes or PyTorch layers (as --per-layer names them) to leave in fp32.",
)
@click.option("--per-layer", is_flag=True, help="Report every Conv output's error vs fp32 PyTorch.")
@_check_options("fp16", "int8")
@_calibration_options
@_preprocess_options
@_budget_options
@_json_options
def convert(
    onnx_file: Path,
    precision: str,
    output: Path | None,
    source: ModelSource | None,
    calibration: Path | None,
    calibration_method: str,
    keep_fp32: str,
    per_layer: bool,
    checks: CheckOptions,
    calibration_options: CalibrationOptions,
    budget: TaskBudget,
    emit: _Emit,
) -> None:
    """Make an fp16 or int8 (QDQ) variant of an exported ONNX file and validate it against fp32
    PyTorch; for zoo denoisers and classifiers the task metric (PSNR, top-1 agreement) too.

    int8 with --max-psnr-drop or --min-top1-agreement and no --keep-fp32 searches for the fewest
    Conv layers to keep in fp32 that meet the budget, reports every try (layers, metric, ONNX
    Runtime CPU latency) and writes that variant; none meeting it is exit 1, nothing written."""
    from wconv_deploy.exporters.precision import convert_onnx
    from wconv_deploy.options import variant_path
    from wconv_deploy.precision import Precision

    typed = Precision.parse(precision)
    out = output or variant_path(onnx_file, typed)
    reference = source.load() if source else None
    if typed == Precision.INT8 and budget != TaskBudget() and not name_list(keep_fp32):
        from wconv_deploy.search import search_precision

        found = search_precision(
            onnx_file, out, budget, reference=reference, calibration=calibration, inputs=checks.inputs,
            calibration_method=calibration_method, calibration_options=calibration_options, seed=checks.seed,
            atol=checks.atol, rtol=checks.rtol, per_layer=per_layer, progress=emit.progress,
        )  # fmt: skip
        emit(found)
        return
    report = convert_onnx(
        onnx_file,
        out,
        typed,
        reference=reference,
        calibration=calibration,
        calibration_method=calibration_method,
        inputs=checks.inputs,
        keep_fp32=name_list(keep_fp32),
        per_layer=per_layer,
        atol=checks.atol,
        rtol=checks.rtol,
        seed=checks.seed,
        budget=budget,
        calibration_options=calibration_options,
        progress=emit.progress,
    )
    emit(report)


@cli.command()
@click.argument("onnx_file", metavar="ONNX", type=click.Path(path_type=Path))
@_output_option("Engine to write [ONNX with .plan]; manifest: OUTPUT.json.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32", "fp16", "bf16", "int8"]),
    default="fp32",
    show_default=True,
    help="fp32 keeps TF32 off. TensorRT 11 (or --strongly-typed): fp16/int8 need an ONNX from wconv-deploy convert.",
)
@click.option(
    "--min-shape",
    metavar="SPEC",
    multiple=True,
    help="Profile minimum, written like --input-shape [the export's --dynamic minimum]; repeat for more profiles.",
)
@click.option("--opt-shape", metavar="SPEC", multiple=True, help="Profile optimum [the export's --input-shape]; repeatable.")
@click.option("--max-shape", metavar="SPEC", multiple=True, help="Profile maximum [the export's --dynamic maximum]; repeatable.")
@click.option("--workspace-gb", type=float, metavar="GIB", help="Limit the builder's workspace memory [TensorRT's default].")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Read and update this timing cache (faster rebuilds)."
)
@click.option("--version-compatible", is_flag=True, help="Let later TensorRT releases of the same major version run the engine.")
@click.option(
    "--hardware-compatibility",
    type=click.Choice(["ampere+", "same-compute-capability"]),
    help="ampere+: run on any GPU of sm 8.0 or later (slower kernels); default: this GPU's compute capability.",
)
@click.option("--strongly-typed", is_flag=True, help="TensorRT 10: precision from the ONNX types, as TensorRT 11 always does.")
@_json_options
def build(
    onnx_file: Path,
    output: Path | None,
    precision: str,
    min_shape: tuple[str, ...],
    opt_shape: tuple[str, ...],
    max_shape: tuple[str, ...],
    workspace_gb: float | None,
    timing_cache: Path | None,
    version_compatible: bool,
    hardware_compatibility: str | None,
    strongly_typed: bool,
    emit: _Emit,
) -> None:
    """Build a TensorRT engine from an exported ONNX file on this machine's GPU.

    The optimisation profile spans the export's input spec (--input-shape and --dynamic) unless
    --min-shape/--opt-shape/--max-shape say otherwise; each given N times makes N profiles. The
    build goes through NVIDIA's Polygraphy loaders. The engine's manifest (OUTPUT.json) records
    the TensorRT version and GPU it was built for; the trt runtime checks it before loading.
    """
    from wconv_deploy.exporters.tensorrt import build_engine
    from wconv_deploy.options import engine_path

    manifest = build_engine(
        onnx_file,
        output or engine_path(onnx_file),
        precision,
        min_shape=min_shape,
        opt_shape=opt_shape,
        max_shape=max_shape,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        strongly_typed=strongly_typed,
        progress=emit.progress,
    )
    emit(manifest)


@cli.command()
@click.argument("artifacts", nargs=-1, metavar="ARTIFACT...", type=click.Path(path_type=Path))
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), help="Triton model repository to write into.")
@click.option("--name", metavar="NAME", help="Model name: the folder REPO/NAME (an existing one is replaced).")
@click.option("--version", type=int, default=1, show_default=True, help="Version folder to write.")
@click.option("--max-batch", type=int, help="max_batch_size [the export's or the profile's max batch; 0 without a batch axis].")
@click.option("--instances", type=int, default=1, show_default=True, help="Instances of the model (instance_group count).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), help="Where the instances run [gpu for engines, cpu for ONNX].")
@click.option("--dynamic-batching", is_flag=True, help="Let Triton combine requests into batches.")
@click.option("--preferred-batch", metavar="N,...", help="Batch sizes the dynamic batcher aims for, e.g. 4,8.")
@click.option("--max-queue-delay-us", type=int, metavar="US", help="Longest a request waits for its batch to fill.")
@click.option(
    "--accelerator",
    type=click.Choice(["tensorrt", "tensorrt-fp16"]),
    help="ONNX on --kind gpu: run it through ONNX Runtime's TensorRT accelerator, profile from the input spec.",
)
@click.option("--warmup", is_flag=True, help="Add a model_warmup request at the input spec's opt shape.")
@click.option(
    "--check",
    "check_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Check the Triton repository DIR offline instead.",
)
@_json_options
def package(
    artifacts: tuple[Path, ...],
    repo: Path | None,
    name: str | None,
    version: int,
    max_batch: int | None,
    instances: int,
    kind: str | None,
    dynamic_batching: bool,
    preferred_batch: str | None,
    max_queue_delay_us: int | None,
    accelerator: str | None,
    warmup: bool,
    check_dir: Path | None,
    emit: _Emit,
) -> None:
    """Write ARTIFACT as the Triton model REPO/NAME and check it offline: an exported ONNX file, or
    TensorRT engines (each with its manifest; one per GPU compute capability). With --check DIR,
    check every model of a Triton repository instead: configs against the files beside them.

    Dims and max_batch_size follow the export's input spec (or the engine's profile); the entry is
    written beside REPO/NAME and swapped in only once complete and checked.
    """
    if check_dir is not None:
        from wconv_deploy.ship.check import check_repository

        if artifacts or repo or name:
            raise InputError("--check DIR checks a repository: give it without ARTIFACT, --repo and --name")
        check = check_repository(check_dir)
        if not check.passed:
            raise MismatchError(f"the Triton repository {check_dir} fails its check (see the report above)", check)
        emit(check)
        return
    from wconv_deploy.ship.package import package as package_model

    if not artifacts or repo is None or name is None:
        raise InputError("give ARTIFACT..., --repo DIR and --name NAME (or --check DIR)")
    report = package_model(
        artifacts,
        repo,
        name,
        version=version,
        max_batch=max_batch,
        instances=instances,
        kind=kind,
        dynamic_batching=dynamic_batching,
        preferred_batch=int_list(preferred_batch, "--preferred-batch") if preferred_batch else (),
        max_queue_delay_us=max_queue_delay_us,
        accelerator=accelerator,
        warmup=warmup,
        progress=emit.progress,
    )
    emit(report)


@cli.command("deploy")
@_model_options()
@_shape_options
@_output_option("Folder for every artifact.", folder=True, required=True)
@click.option(
    "--precision",
    "precisions",
    default="fp32",
    show_default=True,
    metavar="LIST",
    help="Comma-separated precisions to make: fp32, fp16, int8 (fp32 is always exported).",
)
@click.option("--calibration", type=click.Path(path_type=Path), help="int8 calibration inputs: an .npz or a folder of images.")
@click.option("--name", help="Triton model name prefix [the model file's stem].")
@click.option("--bench-duration-s", type=float, default=1.0, show_default=True, help="Time spent timing each runtime.")
@click.option("--no-package", is_flag=True, help="Stop before writing the Triton model repository.")
@click.option("--no-serve-check", is_flag=True, help="Do not serve each packaged entry and verify its answers.")
@_calibration_options
@_preprocess_options
@_budget_options
@_json_options
def deploy_cmd(
    source: ModelSource,
    shapes: ShapeOptions,
    output: Path,
    precisions: str,
    calibration: Path | None,
    name: str | None,
    bench_duration_s: float,
    no_package: bool,
    no_serve_check: bool,
    calibration_options: CalibrationOptions,
    budget: TaskBudget,
    emit: _Emit,
) -> None:
    """Export, validate, convert, build (TensorRT, when here), benchmark and package MODEL for
    Triton in one go, ending with one table (also written to OUTPUT/deploy.json)."""
    from wconv_deploy.deploy import DEPLOY_PRECISIONS, deploy
    from wconv_deploy.precision import Precision

    wanted = Precision.parse_list(precisions, allowed=DEPLOY_PRECISIONS)
    spec = shapes.resolve(source.uri)
    if output.exists() and not output.is_dir():
        raise InputError(f"-o/--output {output}: exists and is not a folder")
    emit.progress(f"loading {source.uri}")
    report = deploy(
        source.load(),
        spec,
        output,
        precisions=wanted,
        calibration=calibration,
        calibration_options=calibration_options,
        name=name,
        bench_duration_s=bench_duration_s,
        package=not no_package,
        serve_check=not no_serve_check,
        budget=budget,
        progress=emit.progress,
    )
    emit(report)


@cli.command(name="serve")
@click.argument("target", metavar="DIR_OR_ARTIFACT", type=click.Path(path_type=Path))
@click.option("--port", "http_port", type=int, default=8000, show_default=True, help="HTTP port on 127.0.0.1 (0: any free port).")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC port on 127.0.0.1 (0: any free port).")
@click.option("--name", help="Model name [config.pbtxt's, else the file's stem]; in a repository, the model to serve.")
@click.option(
    "--runtime", type=click.Choice(_runtime_names(serves=True)), help="What runs the model [ort-cpu for ONNX, trt for engines]."
)
@click.option("--max-batch", type=int, help="Triton's max_batch_size [config.pbtxt's, else the model's batch maximum].")
@_trust_option
def serve_cmd(
    target: Path, http_port: int, grpc_port: int, name: str | None, runtime: str | None, max_batch: int | None, trust_code: bool
) -> None:
    """Serve an ONNX file, a TensorRT engine (.plan with its .plan.json) or a model folder from
    wconv-deploy package over Triton's HTTP and gRPC protocols on 127.0.0.1, until Ctrl-C.

    For local testing: PyTriton runs Triton Inference Server and the model runs in this process
    (needs the serve extra: pip install 'wconv-deploy[serve]')."""
    from wconv_deploy.ship.serve import serve

    serve(
        target,
        name=name,
        http_port=http_port,
        grpc_port=grpc_port,
        runtime=runtime,
        max_batch=max_batch,
        trust_code=trust_code,
        progress=_Emit(started=time.monotonic()).progress,
    )


@cli.command(name="loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Name of the model on the server.")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Concurrent clients, one level each, e.g. 1,4,16.")
@click.option("--duration-s", type=float, default=10.0, show_default=True, help="Measured seconds per level.")
@click.option("--warmup-s", type=float, default=1.0, show_default=True, help="Unmeasured seconds before each level.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size of every request (models that batch).")
@click.option(
    "--input-shape",
    "--shape",
    "input_shape",
    cls=_Option,
    metavar="SPEC",
    help="Full input shapes like input:1x1x64x64, for the model's variable axes.",
)
@click.option("--protocol", type=click.Choice(["http", "grpc"]), help="For a URL without http:// or grpc:// [http].")
@_plot_option
@_json_options
def loadtest_cmd(
    url: str,
    model: str,
    concurrency: str,
    duration_s: float,
    warmup_s: float,
    batch: int,
    input_shape: str | None,
    protocol: str | None,
    plot_out: Path | None,
    emit: _Emit,
) -> None:
    """Measure latency percentiles and throughput of a model served by Triton at URL
    (http://HOST:PORT or grpc://HOST:PORT), closed loop, at each --concurrency."""
    from wconv_deploy.ship.loadtest import loadtest, parse_shapes

    report = loadtest(
        url,
        model,
        concurrency=int_list(concurrency, "--concurrency"),
        duration_s=duration_s,
        protocol=protocol,
        batch=batch,
        shapes=parse_shapes(input_shape) if input_shape else None,
        warmup_s=warmup_s,
        progress=emit.progress,
    )
    emit(report)
    _write_plot(report, plot_out, emit)


@cli.command()
@click.pass_context
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@click.option("--runtimes", metavar="LIST", help="Comma-separated runtimes to time [every runtime but the compiling ones].")
@_shape_options
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--warmup-ms", type=float, default=200, show_default=True, help="Warm-up time per runtime and batch.")
@click.option("--iterations", type=int, default=20, show_default=True, help="Minimum timed calls.")
@click.option("--min-duration-s", type=float, default=1.0, show_default=True, help="Minimum timed duration.")
@click.option("--threads", type=int, default=0, help="CPU threads for every runtime (default: each runtime's own).")
@_plot_option
@_model_options("none")
@_json_options
def bench(
    ctx: click.Context,
    artifacts: tuple[str, ...],
    runtimes: str | None,
    shapes: ShapeOptions,
    batches: str,
    warmup_ms: float,
    iterations: int,
    min_duration_s: float,
    threads: int,
    plot_out: Path | None,
    source: ModelSource,
    emit: _Emit,
) -> None:
    """Time runtimes side by side on identical inputs: ARTIFACT is an ONNX file, a TensorRT
    engine (.plan/.engine) and/or a PyTorch model (file or zoo:NAME; it is the fp32 reference,
    and is exported if no ONNX file is given). A runtime named in --runtimes that cannot run here
    is an error; of the default list, those that cannot run are reported with the reason."""
    from dataclasses import replace

    from wconv_deploy.artifacts import OnnxInfo
    from wconv_deploy.bench import default_runtimes, run_bench
    from wconv_deploy.fileio import regular_file

    by_kind: dict[str, list[str]] = {"onnx": [], "engine": [], "torch": []}
    for a in artifacts:
        if a.lower().endswith(".json"):
            raise InputError(f"{a}: bench --json prints JSON on stdout now; write a file with --json-file {a}")
        by_kind[artifact_kind(a)].append(a)
    if any(len(v) > 1 for v in by_kind.values()):
        raise InputError("give at most one ONNX file, one TensorRT engine and one PyTorch model")
    for f in by_kind["onnx"] + by_kind["engine"]:
        regular_file(f)
    onnx_path = by_kind["onnx"][0] if by_kind["onnx"] else None
    model_uri = by_kind["torch"][0] if by_kind["torch"] else None
    model = replace(source, uri=model_uri).load().model if model_uri else None
    spec = shapes.resolve(model_uri, OnnxInfo.read(onnx_path) if onnx_path and not shapes.input_shape else None)
    report = run_bench(
        runtimes=name_list(runtimes) if runtimes else default_runtimes(),
        spec=spec,
        model=model,
        onnx_path=onnx_path,
        engine_path=by_kind["engine"][0] if by_kind["engine"] else None,
        batches=int_list(batches, "--batch"),
        warmup_ms=warmup_ms,
        iterations=iterations,
        min_duration_s=min_duration_s,
        threads=threads,
        strict=runtimes is not None,  # runtimes named on the command line must run; the default list reports what cannot
        trust_code=source.trust_code,
        progress=emit.progress,
    )
    emit(report)
    _write_plot(report, plot_out, emit)


@cli.group()
def zoo() -> None:
    """The model zoo: the paper's networks and a trained denoiser (use as MODEL: zoo:NAME?k=v&...)."""


@zoo.command(name="list")
@_json_options
def zoo_list(emit: _Emit) -> None:
    """List the zoo's models, their options and default input shapes."""
    from wconv_deploy.zoo.registry import zoo_listing

    emit(zoo_listing())


def main() -> None:
    """Console-script entry point. A finished command ends the process without Python's
    interpreter teardown: with torch, onnx and onnxruntime loaded, freeing every module and
    running the libraries' static destructors takes 0.85 s here (measured after ``export``) and
    does nothing for a command that is done. Exit handlers still run and output is flushed first;
    while another non-daemon thread is alive, Python exits as usual (it would join that thread)."""
    try:
        cli.main(args=sys.argv[1:], prog_name="wconv-deploy")
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if not isinstance(code, int):  # None: success; text: say it, as SystemExit does
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
