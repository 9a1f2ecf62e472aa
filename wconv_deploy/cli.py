"""The ``wconv-deploy`` command: a thin click layer over the library. Parse, call, print.

Exit status: 0 success, 1 numbers disagree (a check failed), 2 bad input or usage. Errors are
one line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from wconv_deploy import __version__
from wconv_deploy.errors import MismatchError, WconvError


class _Group(click.Group):
    """Turns the library's errors into one stderr line and the exit status they carry."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        if not debug:
            warnings.simplefilter("ignore")  # library warnings would break the one-line contract
        try:
            return super().invoke(ctx)
        except WconvError as e:
            if debug:
                raise
            if isinstance(e, MismatchError) and e.report:
                click.echo(e.report)
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


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
    f = click.option(
        "--trust-pickle", is_flag=True, help="Allow full unpickling: code in the file may run. Only for files you trust."
    )(f)
    return click.argument("model", metavar="MODEL")(f)


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
    from wconv_deploy.inspection import inspect_model

    result = inspect_model(_load(model, trust_pickle, arch, checkpoint_key), fold_bn=not no_fold_bn)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.render())
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


def main() -> None:
    """Console-script entry point."""
    cli.main(args=sys.argv[1:], prog_name="wconv-deploy")
