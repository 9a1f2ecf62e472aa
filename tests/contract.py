"""What the test modules share besides fixtures (those live in conftest.py): the CLI run in this
process and its one-line error contract, the real console script for the few tests that need a
process of their own, the tiny models the session catalogue is built from, and a deadline for
readers that must not block (a FIFO)."""

from __future__ import annotations

import struct
import subprocess
import sysconfig
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from wconv_deploy.cli import cli
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d

#: The small zoo denoiser (zoo weights: the same every time); the catalogue's ONNX files come from it.
DNCNN = "zoo:dncnn?depth=3&width=8"
#: The trained zoo denoiser's input spec narrowed to the shipped photo's size: its task metric
#: (PSNR on the photo) is unchanged, and validation and calibration at the range's largest shape
#: cost 2x256x256 instead of the zoo's 8x512x512.
DENOISER_SPEC = ("input:1x1x256x256", "batch=1:2,height=128:256,width=128:256")


def tiny_cnn() -> nn.Sequential:
    """A fixed and a trainable weighted layer around BatchNorm and ReLU, 3 -> 2 channels; the
    same weights on every call (the global random state is left alone)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            WeightedConv2d(3, 4, 3, [0.7]),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            TrainableWeightedConv2d(4, 2, 5, den=[0.2, 0.9], padding=2),
        ).eval()


def invoke(*args: str | Path) -> Result:
    """``wconv-deploy ARGS`` in this process. stdout and stderr are kept apart and captured at the
    file descriptors, so what native libraries print counts, as it would in a terminal."""
    return CliRunner(capture="fd").invoke(cli, [str(a) for a in args], prog_name="wconv-deploy")


def assert_ok(result: Result) -> Result:
    """The command exited 0; otherwise fail showing its stderr and any traceback it raised."""
    if result.exit_code != 0:
        raised = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise AssertionError(f"exit {result.exit_code}\n{result.stderr}\n{raised}")
    return result


def console_script(*args: str | Path) -> list[str]:
    """The argv that runs the installed ``wconv-deploy`` console script, for tests that need a real
    process (the entry point itself, a payload that must not run, signals)."""
    return [str(Path(sysconfig.get_path("scripts")) / "wconv-deploy"), *map(str, args)]


def run_console_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``wconv-deploy ARGS`` as a real process, its output captured."""
    return subprocess.run(console_script(*args), capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: Result | subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The command exited ``code`` with exactly one ``error:`` line holding every needle, no traceback."""
    if isinstance(result, subprocess.CompletedProcess):
        status, everything = result.returncode, result.stdout + result.stderr
    else:
        status, everything = result.exit_code, result.output
        assert isinstance(result.exception, SystemExit), result.exc_info and traceback.format_exception(*result.exc_info)
    assert status == code, (status, everything)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in everything, everything
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


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def fake_local_gpu(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    """A CUDA device 0 as torch reports it (trt_plan.local_gpu asks torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
