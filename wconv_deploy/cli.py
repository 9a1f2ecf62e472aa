"""The ``wconv-deploy`` command: a thin click layer over the library. Parse, call, print.

Exit status: 0 success, 1 numbers disagree (a check failed), 2 bad input or usage. Errors are
one line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from wconv_deploy import __version__
from wconv_deploy.errors import DISK_FULL, InputError, Interrupted, MismatchError, WconvError


class _Group(click.Group):
    """Turns the library's errors into one stderr line and the exit status they carry; SIGINT and
    SIGTERM stop any command cleanly (staging removed) with exit 130 or 143."""

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
            if isinstance(e, MismatchError) and e.report:
                click.echo(e.report)
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wconv-deploy")
@click.option("--debug", is_flag=True, help="Show tracebacks and library warnings.")
def cli(debug: bool) -> None:
    """Deploy CNNs trained with the weighted convolution: load safely, fold, export, check."""


def _model_options(f: Any) -> Any:
    """The options every command that reads a MODEL takes (same names as load_model's arguments)."""
    f = click.option(
        "--checkpoint-key",
        metavar="KEY",
        help="Entry of a checkpoint dict to use (default: ema, model_ema, model, state_dict, ...).",
    )(f)
    f = click.option(
        "--arch", metavar="MODULE:CALLABLE", help="Build the architecture with this callable and load only the file's weights."
    )(f)
    f = _trust_option(f)
    return click.argument("model", metavar="MODEL")(f)


#: What --trust-pickle (alias --trust-code) allows, said once for every command that reads a model or engine.
TRUST_HELP = (
    "Let code inside the model files run: full unpickling, TorchScript and .pt2 programs, version-compatible "
    "TensorRT engines. Without it nothing from a file runs. Only for files you trust."
)


def _trust_option(f: Any) -> Any:
    return click.option("--trust-pickle", "--trust-code", "trust_pickle", is_flag=True, help=TRUST_HELP)(f)


def _load(model: str, trust_pickle: bool, arch: str | None, checkpoint_key: str | None) -> Any:
    from wconv_deploy.loading import load_model

    return load_model(model, arch=arch, trust_pickle=trust_pickle, checkpoint_key=checkpoint_key)


@cli.command()
@_model_options
@click.option("--no-fold-bn", is_flag=True, help="Do not try fusing Conv+BatchNorm pairs in the fold check.")
@click.option("--json", "as_json", is_flag=True, help="Print the inspection as JSON.")
def inspect(
    model: str, trust_pickle: bool, arch: str | None, checkpoint_key: str | None, no_fold_bn: bool, as_json: bool
) -> None:
    """Show MODEL's format, weighted layers, parameters and whether it folds cleanly.

    MODEL is a file saved with torch.save (whole model, state_dict with --arch, checkpoint
    dict), a TorchScript archive or a torch.export .pt2 program.
    """
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.inspection import inspect_model

    result = inspect_model(_load(model, trust_pickle, arch, checkpoint_key), fold_bn=not no_fold_bn)
    click.echo(report_json(result.to_dict()) if as_json else result.render())  # valid JSON even for NaN weights
    if result.fold_error is not None:
        raise result.fold_error


@cli.command()
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for the files the demo writes.",
)
def demo(out_dir: Path) -> None:
    """Run the toolkit end to end on a built-in network (no arguments, no network access)."""
    from wconv_deploy.demo import run_demo

    run_demo(out_dir, echo=click.echo)
    click.echo(f"demo finished; files in {out_dir}/")


def _spec_options(f: Any) -> Any:
    """--input-shape, --dynamic and --max-input-gb: parsed once into an InputSpec (wconv_deploy.spec),
    which refuses shapes beyond the limit before anything is allocated."""
    from wconv_deploy.spec import MAX_INPUT_GB

    @functools.wraps(f)
    def limited(*args: Any, max_input_gb: float, **kwargs: Any) -> Any:
        from wconv_deploy.spec import input_limit

        with input_limit(max_input_gb):
            return f(*args, **kwargs)

    limited = click.option(
        "--max-input-gb",
        type=float,
        default=MAX_INPUT_GB,
        show_default=True,
        metavar="GIB",
        help="Refuse input shapes whose one set of inputs would take more memory than this.",
    )(limited)
    limited = click.option(
        "--dynamic",
        metavar="AXES",
        help="Axes that vary: batch | batch,height,width | all | batch=1:64,height=32:512.",
    )(limited)
    return click.option(
        "--input-shape",
        metavar="SPEC",
        help="Input shape(s): 1x3x224x224 or x:1x3x224x224,mask:1x1x224x224 (optional :dtype).",
    )(limited)


def _tolerance_options(f: Any) -> Any:
    """Validation inputs and tolerances, shared by export and validate."""
    from wconv_deploy.validate import DEFAULT_ATOL, DEFAULT_RTOL

    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random validation inputs.")(f)
    f = click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True, help="Relative tolerance.")(f)
    f = click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True, help="Absolute tolerance.")(f)
    f = click.option(
        "--inputs",
        type=click.Path(path_type=Path),
        help="Also validate on these inputs: an .npz (one array per input name) or a folder of images.",
    )(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(f)


def _resolve_spec(model: str, input_shape: str | None, dynamic: str | None) -> Any:
    """The InputSpec from --input-shape/--dynamic; a zoo model's own defaults fill in what is missing."""
    from wconv_deploy.spec import InputSpec

    if not input_shape and model.startswith("zoo:"):
        from wconv_deploy.zoo.registry import default_spec_args

        input_shape, default_dynamic = default_spec_args(model)
        dynamic = dynamic or default_dynamic
    if not input_shape:
        raise InputError("--input-shape is required (e.g. --input-shape 1x3x224x224)")
    return InputSpec.parse(input_shape, dynamic)


def _progress(as_json: bool) -> Any:
    """Progress lines on stdout (stderr is kept for the one-line error); none with --json."""
    return None if as_json else (lambda msg: click.echo(f"... {msg}"))


@cli.command()
@_model_options
@_spec_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write [MODEL.onnx].")
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
@_tolerance_options
def export(
    model: str,
    trust_pickle: bool,
    arch: str | None,
    checkpoint_key: str | None,
    input_shape: str | None,
    dynamic: str | None,
    output: Path | None,
    opset: int,
    exporter: str,
    fold_bn: bool,
    no_validate: bool,
    inputs: Path | None,
    atol: float,
    rtol: float,
    seed: int,
    as_json: bool,
) -> None:
    """Fold MODEL, export it to ONNX, check the graph and validate it against PyTorch.

    The file written holds only ordinary convolutions and passed every check; its validation
    report is written beside it as OUTPUT.report.json.
    """
    from wconv_deploy.exporters.onnx import export_onnx, report_json

    spec = _resolve_spec(model, input_shape, dynamic)
    report = export_onnx(
        model,
        output,
        spec,
        opset=opset,
        exporter=exporter,
        fold_bn=fold_bn,
        validate_output=not no_validate,
        inputs=inputs,
        atol=atol,
        rtol=rtol,
        seed=seed,
        trust_pickle=trust_pickle,
        arch=arch,
        checkpoint_key=checkpoint_key,
        progress=_progress(as_json),
    )
    click.echo(report_json(report.to_dict()) if as_json else report.render())


@cli.command(name="validate")
@click.argument("onnx_file", metavar="ONNX", type=click.Path(path_type=Path))
@click.option("--reference", required=True, metavar="MODEL", help="The PyTorch model the ONNX file must match.")
@click.option("--checkpoint-key", metavar="KEY", help="Entry of the reference's checkpoint dict to use.")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Build the reference's architecture with this callable.")
@_trust_option
@_spec_options
@_tolerance_options
def validate_cmd(
    onnx_file: Path,
    reference: str,
    checkpoint_key: str | None,
    arch: str | None,
    trust_pickle: bool,
    input_shape: str | None,
    dynamic: str | None,
    inputs: Path | None,
    atol: float,
    rtol: float,
    seed: int,
    as_json: bool,
) -> None:
    """Check that the ONNX file computes what the PyTorch MODEL given as --reference computes.

    Shapes come from the file's wconv-deploy metadata unless --input-shape is given.
    """
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.fileio import regular_file
    from wconv_deploy.spec import InputSpec
    from wconv_deploy.validate import validate

    regular_file(onnx_file)
    spec = InputSpec.parse(input_shape, dynamic) if input_shape else None
    if dynamic and not input_shape:
        raise InputError("--dynamic needs --input-shape")
    ref = _load(reference, trust_pickle, arch, checkpoint_key)
    report = validate(onnx_file, ref, spec, inputs=inputs, atol=atol, rtol=rtol, seed=seed)
    click.echo(report_json(report.to_dict()) if as_json else report.render())
    if not report.passed:
        raise MismatchError(f"{onnx_file} does not compute what {reference} computes (see the table above)")


@cli.command()
@click.argument("onnx_file", metavar="ONNX", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), required=True, help="The variant to make.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Variant to write [ONNX.PRECISION.onnx].")
@click.option("--reference", metavar="MODEL", help="The fp32 PyTorch model (default: the zoo model an export came from).")
@click.option("--calibration", type=click.Path(path_type=Path), help="int8 calibration inputs: an .npz or a folder of images.")
@click.option(
    "--calibration-method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="How int8 activation ranges are fitted to the calibration data.",
)
@click.option("--inputs", type=click.Path(path_type=Path), help="Validation inputs (.npz or image folder) besides random ones.")
@click.option(
    "--keep-fp32",
    default="",
    metavar="NAME,...",
    help="ONNX nodes or PyTorch layers (as --per-layer names them) to leave in fp32.",
)
@click.option("--per-layer", is_flag=True, help="Report every Conv output's error vs fp32 PyTorch.")
@click.option("--atol", type=float, help="Absolute tolerance (default by precision: fp16 1e-2, int8 1e-1).")
@click.option("--rtol", type=float, help="Relative tolerance (default by precision: fp16 1e-2, int8 1e-1).")
@_trust_option
@click.option("--arch", metavar="MODULE:CALLABLE", help="Build the reference's architecture with this callable.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(
    onnx_file: Path,
    precision: str,
    output: Path | None,
    reference: str | None,
    calibration: Path | None,
    calibration_method: str,
    inputs: Path | None,
    keep_fp32: str,
    per_layer: bool,
    atol: float | None,
    rtol: float | None,
    trust_pickle: bool,
    arch: str | None,
    as_json: bool,
) -> None:
    """Make an fp16 or int8 (QDQ) variant of an exported ONNX file and validate it against fp32
    PyTorch; for zoo denoisers and classifiers the task metric (PSNR, top-1 agreement) too."""
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.exporters.precision import convert_onnx

    ref = _load(reference, trust_pickle, arch, None) if reference else None
    out = output or onnx_file.with_name(f"{onnx_file.stem}.{precision}.onnx")
    report = convert_onnx(
        onnx_file,
        out,
        precision,
        reference=ref,
        calibration=calibration,
        calibration_method=calibration_method,
        inputs=inputs,
        keep_fp32=[n.strip() for n in keep_fp32.split(",") if n.strip()],
        per_layer=per_layer,
        atol=atol,
        rtol=rtol,
        progress=_progress(as_json),
    )
    click.echo(report_json(report.to_dict()) if as_json else report.render())


@cli.command()
@click.argument("onnx_file", metavar="ONNX", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Engine to write [ONNX with .plan]; manifest: OUTPUT.json.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32", "fp16", "bf16", "int8"]),
    default="fp32",
    show_default=True,
    help="fp32 keeps TF32 off. TensorRT 11 (or --strongly-typed): fp16/int8 need an ONNX from wconv-deploy convert.",
)
@click.option("--min-shape", metavar="SPEC", help="Profile minimum, written like --input-shape [the export's --dynamic minimum].")
@click.option("--opt-shape", metavar="SPEC", help="Profile optimum [the export's --input-shape].")
@click.option("--max-shape", metavar="SPEC", help="Profile maximum [the export's --dynamic maximum].")
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
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def build(
    onnx_file: Path,
    output: Path | None,
    precision: str,
    min_shape: str | None,
    opt_shape: str | None,
    max_shape: str | None,
    workspace_gb: float | None,
    timing_cache: Path | None,
    version_compatible: bool,
    hardware_compatibility: str | None,
    strongly_typed: bool,
    as_json: bool,
) -> None:
    """Build a TensorRT engine from an exported ONNX file on this machine's GPU.

    The optimisation profile spans the export's input spec (--input-shape and --dynamic) unless
    --min-shape/--opt-shape/--max-shape say otherwise. The engine's manifest (OUTPUT.json) records
    the TensorRT version and GPU it was built for; the trt runtime checks it before loading.
    """
    from wconv_deploy.exporters.tensorrt import build_engine

    manifest = build_engine(
        onnx_file,
        output or onnx_file.with_suffix(".plan"),
        precision,
        min_shape=min_shape,
        opt_shape=opt_shape,
        max_shape=max_shape,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        strongly_typed=strongly_typed,
        progress=_progress(as_json),
    )
    click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else manifest.render())


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
    "--check",
    "check_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Check the Triton repository DIR offline instead.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
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
    check_dir: Path | None,
    as_json: bool,
) -> None:
    """Write ARTIFACT as the Triton model REPO/NAME and check it offline: an exported ONNX file, or
    TensorRT engines (each with its manifest; one per GPU compute capability). With --check DIR,
    check every model of a Triton repository instead: configs against the files beside them.

    Dims and max_batch_size follow the export's input spec (or the engine's profile); the entry is
    written beside REPO/NAME and swapped in only once complete and checked.
    """
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.ship.triton import check_repository
    from wconv_deploy.ship.triton import package as package_model

    if check_dir is not None:
        if artifacts or repo or name:
            raise InputError("--check DIR checks a repository: give it without ARTIFACT, --repo and --name")
        check = check_repository(check_dir)
        click.echo(report_json(check.to_dict()) if as_json else check.render())
        if not check.passed:
            raise MismatchError(f"the Triton repository {check_dir} fails its check (see the report above)")
        return
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
        preferred_batch=_int_list(preferred_batch, "--preferred-batch") if preferred_batch else (),
        max_queue_delay_us=max_queue_delay_us,
        progress=_progress(as_json),
    )
    click.echo(report_json(report.to_dict()) if as_json else report.render())


@cli.command("deploy")
@_model_options
@_spec_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for every artifact.")
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
@click.option("--json", "as_json", is_flag=True, help="Print the final table as JSON.")
def deploy_cmd(
    model: str,
    trust_pickle: bool,
    arch: str | None,
    checkpoint_key: str | None,
    input_shape: str | None,
    dynamic: str | None,
    out: Path,
    precisions: str,
    calibration: Path | None,
    name: str | None,
    bench_duration_s: float,
    no_package: bool,
    as_json: bool,
) -> None:
    """Export, validate, convert, build (TensorRT, when here), benchmark and package MODEL for
    Triton in one go, ending with one table (also written to OUT/deploy.json)."""
    from wconv_deploy.deploy import deploy

    report = deploy(
        model,
        _resolve_spec(model, input_shape, dynamic),
        out,
        precisions=[p.strip() for p in precisions.split(",") if p.strip()],
        calibration=calibration,
        name=name,
        trust_pickle=trust_pickle,
        arch=arch,
        checkpoint_key=checkpoint_key,
        bench_duration_s=bench_duration_s,
        package=not no_package,
        progress=_progress(as_json),
    )
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.render())


DEFAULT_BENCH_RUNTIMES = "torch,torch-folded,torch-cuda,torch-cuda-fp16,ort-cpu,ort-cuda,ort-trt,trt,openvino,openvino-bf16"


SERVE_RUNTIMES = ["ort-cpu", "ort-cuda", "ort-trt", "openvino", "openvino-bf16", "trt", "trt-graph"]


@cli.command(name="serve")
@click.argument("target", metavar="DIR_OR_ARTIFACT", type=click.Path(path_type=Path))
@click.option("--port", "http_port", type=int, default=8000, show_default=True, help="HTTP port on 127.0.0.1 (0: any free port).")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC port on 127.0.0.1 (0: any free port).")
@click.option("--name", help="Model name [config.pbtxt's, else the file's stem]; in a repository, the model to serve.")
@click.option("--runtime", type=click.Choice(SERVE_RUNTIMES), help="What runs the model [ort-cpu for ONNX, trt for engines].")
@click.option("--max-batch", type=int, help="Triton's max_batch_size [config.pbtxt's, else the model's batch maximum].")
@_trust_option
def serve_cmd(
    target: Path, http_port: int, grpc_port: int, name: str | None, runtime: str | None, max_batch: int | None, trust_pickle: bool
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
        trust_code=trust_pickle,
        progress=_progress(False),
    )


@cli.command(name="loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Name of the model on the server.")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Concurrent clients, one level each, e.g. 1,4,16.")
@click.option("--duration-s", type=float, default=10.0, show_default=True, help="Measured seconds per level.")
@click.option("--warmup-s", type=float, default=1.0, show_default=True, help="Unmeasured seconds before each level.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size of every request (models that batch).")
@click.option("--shape", metavar="SPEC", help="Full input shapes like --input-shape (input:1x1x64x64): for variable axes.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), help="For a URL without http:// or grpc:// [http].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def loadtest_cmd(
    url: str,
    model: str,
    concurrency: str,
    duration_s: float,
    warmup_s: float,
    batch: int,
    shape: str | None,
    protocol: str | None,
    as_json: bool,
) -> None:
    """Measure latency percentiles and throughput of a model served by Triton at URL
    (http://HOST:PORT or grpc://HOST:PORT), closed loop, at each --concurrency."""
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.ship.loadtest import loadtest, parse_shapes

    report = loadtest(
        url,
        model,
        concurrency=_int_list(concurrency, "--concurrency"),
        duration_s=duration_s,
        protocol=protocol,
        batch=batch,
        shapes=parse_shapes(shape) if shape else None,
        warmup_s=warmup_s,
        progress=_progress(as_json),
    )
    click.echo(report_json(report.to_dict()) if as_json else report.render())


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    return values


@cli.command()
@click.pass_context
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@click.option("--runtimes", default=DEFAULT_BENCH_RUNTIMES, show_default=True, help="Comma-separated runtimes to time.")
@_spec_options
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--warmup-ms", type=float, default=200, show_default=True, help="Warm-up time per runtime and batch.")
@click.option("--iterations", type=int, default=20, show_default=True, help="Minimum timed calls.")
@click.option("--min-duration-s", type=float, default=1.0, show_default=True, help="Minimum timed duration.")
@click.option("--threads", type=int, default=0, help="CPU threads for every runtime (default: each runtime's own).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write a PNG plot here.")
@click.option("--checkpoint-key", metavar="KEY", help="Entry of a checkpoint dict to use.")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Build the PyTorch model's architecture with this callable.")
@_trust_option
def bench(
    ctx: click.Context,
    artifacts: tuple[str, ...],
    runtimes: str,
    input_shape: str | None,
    dynamic: str | None,
    batches: str,
    warmup_ms: float,
    iterations: int,
    min_duration_s: float,
    threads: int,
    json_out: Path | None,
    plot_out: Path | None,
    checkpoint_key: str | None,
    arch: str | None,
    trust_pickle: bool,
) -> None:
    """Time runtimes side by side on identical inputs: ARTIFACT is an ONNX file, a TensorRT
    engine (.plan/.engine) and/or a PyTorch model (file or zoo:NAME; it is the fp32 reference,
    and is exported if no ONNX file is given). A runtime named in --runtimes that cannot run here
    is an error; of the default list, those that cannot run are reported with the reason."""
    from wconv_deploy.bench import run_bench
    from wconv_deploy.exporters.onnx import report_json
    from wconv_deploy.fileio import regular_file, write_text_atomic
    from wconv_deploy.spec import InputSpec
    from wconv_deploy.validate import spec_from_onnx

    onnx_files = [a for a in artifacts if a.lower().endswith(".onnx")]
    engines = [a for a in artifacts if a.lower().endswith((".plan", ".engine"))]
    models = [a for a in artifacts if a not in onnx_files + engines]
    if len(onnx_files) > 1 or len(models) > 1 or len(engines) > 1:
        raise InputError("give at most one ONNX file, one TensorRT engine and one PyTorch model")
    for f in onnx_files + engines:
        regular_file(f)
    for out in (json_out, plot_out):  # checked now, not after minutes of timing
        if out is not None and not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise InputError(f"{out}: folder {out.parent} does not exist")
    model = _load(models[0], trust_pickle, arch, checkpoint_key).model if models else None
    if input_shape:
        spec = InputSpec.parse(input_shape, dynamic)
    elif onnx_files:
        spec = spec_from_onnx(onnx_files[0])
    elif models and models[0].startswith("zoo:"):
        from wconv_deploy.zoo.registry import default_spec_args

        spec = InputSpec.parse(default_spec_args(models[0])[0], dynamic)
    else:
        raise InputError("--input-shape is required (e.g. --input-shape 1x3x224x224)")
    report = run_bench(
        runtimes=[r.strip() for r in runtimes.split(",") if r.strip()],
        spec=spec,
        model=model,
        onnx_path=onnx_files[0] if onnx_files else None,
        engine_path=engines[0] if engines else None,
        batches=_int_list(batches, "--batch"),
        warmup_ms=warmup_ms,
        iterations=iterations,
        min_duration_s=min_duration_s,
        threads=threads,
        # runtimes named on the command line must run; the default list reports what cannot
        strict=ctx.get_parameter_source("runtimes") == click.core.ParameterSource.COMMANDLINE,
        trust_code=trust_pickle,
        progress=lambda msg: click.echo(f"... {msg}"),
    )
    click.echo(report.render())
    if json_out:
        write_text_atomic(json_out, report_json(report.to_dict()))
        click.echo(f"wrote {json_out}")
    if plot_out:
        report.plot(plot_out)
        click.echo(f"wrote {plot_out}")


@cli.group()
def zoo() -> None:
    """The model zoo: the paper's networks and a trained denoiser (use as MODEL: zoo:NAME?k=v&...)."""


@zoo.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def zoo_list(as_json: bool) -> None:
    """List the zoo's models, their options and default input shapes."""
    from wconv_deploy.table import format_table
    from wconv_deploy.zoo import list_models

    entries = list_models()
    if as_json:
        data = [
            {"name": e.name, "description": e.description, "input_shape": e.input_shape, "dynamic": e.dynamic,
             "options": {k: repr(v) for k, v in e.options().items()}}
            for e in entries
        ]  # fmt: skip
        click.echo(json.dumps(data, indent=2))
        return
    rows = [[e.name, e.input_shape + (f" ({e.dynamic})" if e.dynamic else ""), e.description] for e in entries]
    click.echo(format_table(["model", "input (dynamic)", "description"], rows))
    click.echo("\noptions (zoo:NAME?option=value&...):")
    for e in entries:
        click.echo(f"  {e.name}: " + ", ".join(f"{k}={v!r}" for k, v in e.options().items()))


def main() -> None:
    """Console-script entry point."""
    cli.main(args=sys.argv[1:], prog_name="wconv-deploy")
