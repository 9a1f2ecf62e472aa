"""Helpers for the CLI contract, shared by the test modules: in-process invocation, the one-line
error check, and a deadline for readers that must not block (a FIFO)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from wconv_deploy.cli import cli


def invoke(*args: str | Path) -> Result:
    """``wconv-deploy ARGS`` in this process (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result: Result, code: int, *needles: str) -> str:
    """The command exited ``code`` with exactly one ``error:`` line holding every needle, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def finishes(fn: Callable[[], Any], seconds: float = 20.0) -> Any:
    """``fn()``, failing (rather than hanging the suite) if it blocks past ``seconds``: a FIFO opened."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked: a FIFO was opened"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
