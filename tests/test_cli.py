"""The command line: `inspect`, errors and `demo` run in this process through click, plus the few
things only a real `wconv-deploy` process shows (the console script itself, a hostile pickle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests import refstyle
from tests.contract import assert_ok, assert_one_line_error, invoke, run_console_script, tiny_cnn
from wconv_deploy._version import __version__
from wconv_deploy.errors import InputError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_cnn_pt: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    torch.save(tiny_cnn().state_dict(), d / "weights.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.txt").write_text("these are not weights\n")
    data = tiny_cnn_pt.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    nan_model = tiny_cnn()
    with torch.no_grad():
        nan_model.get_parameter("3.weight")[0, 0, 0, 0] = float("nan")
    torch.save(nan_model, d / "nan.pt")
    inf_model = tiny_cnn()
    with torch.no_grad():
        inf_model.get_parameter("0.weight")[1, 1, 1, 1] = float("inf")
    torch.save(inf_model, d / "inf.pt")
    # A reference-style trainable 3x3 layer keeps the reference's length-3 den: it cannot fit.
    refstyle.run_with_reference(
        d / "ref",
        """
        import torch, torch.nn as nn, wConv_Trainable
        torch.save(nn.Sequential(wConv_Trainable.wConv2d(3, 4, 3)), "../badden.pt")
    """,
    )
    return {"model": tiny_cnn_pt} | {p.stem: p for p in d.iterdir() if p.is_file()}


def test_the_console_script_and_python_dash_m_run() -> None:
    """The installed entry point and ``python -m wconv_deploy``, as real processes."""
    r = run_console_script("--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "Usage: wconv-deploy" in r.stdout and "export" in r.stdout and "inspect" in r.stdout
    version = f"wconv-deploy, version {__version__}"
    r = run_console_script("--version")
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, version, "")
    r = subprocess.run([sys.executable, "-m", "wconv_deploy", "--version"], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, version, "")


def test_inspect_prints_layers_and_fold_verdict(files: dict[str, Path]) -> None:
    r = assert_ok(invoke("inspect", files["model"]))
    assert "whole-model pickle" in r.stdout
    assert "folds cleanly: yes, 2 weighted layer(s) folded" in r.stdout
    assert "trainable" in r.stdout and "fixed" in r.stdout


def test_inspect_json(files: dict[str, Path]) -> None:
    info = json.loads(assert_ok(invoke("inspect", files["model"], "--json")).stdout)
    assert info["format"] == "pickle"
    assert info["folds_cleanly"] is True
    assert [ly["kind"] for ly in info["weighted_layers"]] == ["fixed", "trainable"]
    assert info["weighted_layers"][1]["den"] == pytest.approx([0.2, 0.9])
    assert info["parameters"] == sum(p.numel() for p in tiny_cnn().parameters())
    assert len(info["fold"]["fused_bn"]) == 1


@pytest.fixture
def arch_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``arch.py`` in the working directory, as a user's own module; forgotten by the import system afterwards."""
    (tmp_path / "arch.py").write_text(
        "import torch.nn as nn\nfrom wconv_deploy.nn import WeightedConv2d, TrainableWeightedConv2d\n"
        "def build():\n    return nn.Sequential(WeightedConv2d(3, 4, 3, [0.1]), nn.BatchNorm2d(4), nn.ReLU(),\n"
        "        TrainableWeightedConv2d(4, 2, 5, padding=2))\n"
    )
    monkeypatch.chdir(tmp_path)
    yield "arch:build"
    sys.modules.pop("arch", None)


def test_state_dict_with_arch(files: dict[str, Path], arch_in_cwd: str) -> None:
    info = json.loads(assert_ok(invoke("inspect", files["weights"], "--arch", arch_in_cwd, "--json")).stdout)
    assert info["format"] == "state_dict"
    # The densities come from the file, not from the architecture's defaults.
    assert info["weighted_layers"][0]["den"] == pytest.approx([0.7])


@pytest.mark.parametrize(
    ("name", "extra", "needles"),
    [
        ("missing", [], ["no such file"]),
        ("empty", [], ["empty"]),
        ("notes", [], ["not a PyTorch model file"]),
        ("truncated", [], ["truncated or corrupt"]),
        ("weights", [], ["state_dict", "--arch"]),
        ("weights", ["--arch", "no_such_module_xyz:build"], ["cannot import", "no_such_module_xyz"]),
        ("weights", ["--arch", "nocolon"], ["MODULE:CALLABLE"]),
        ("badden", [], ["0:", "kernel"]),
        ("nan", [], ["3.weight", "NaN"]),
        ("inf", [], ["0.weight", "Inf"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: dict[str, Path], tmp_path: Path, name: str, extra: list[str], needles: list[str]
) -> None:
    path = files.get(name, tmp_path / "does-not-exist.pt")
    assert_one_line_error(invoke("inspect", path, *extra), 2, *needles)


def test_debug_shows_traceback(files: dict[str, Path]) -> None:
    r = invoke("--debug", "inspect", files["empty"])
    assert r.exit_code != 0
    # Not turned into an error line: the exception leaves the command, and Python prints its traceback.
    assert isinstance(r.exception, InputError) and r.exc_info is not None
    assert "InputError" in "".join(traceback.format_exception(*r.exc_info))


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile model file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_hostile_pickle_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3))
    model.payload = _Payload(marker)  # type: ignore[assignment]  # torch types module attributes as Tensor | Module
    torch.save(model, tmp_path / "evil.pt")
    assert not marker.exists()
    for extra in ([], ["--arch", "os:getcwd"]):
        line = assert_one_line_error(invoke("inspect", tmp_path / "evil.pt", *extra), 2)
        assert not marker.exists(), "the pickle's payload ran"
    assert "system" in line
    # The same file through the real console script: a fresh interpreter, nothing imported yet.
    assert_one_line_error(run_console_script("inspect", tmp_path / "evil.pt"), 2, "system")
    assert not marker.exists(), "the pickle's payload ran"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from PIL import Image

    r = assert_ok(invoke("demo", "-o", tmp_path / "out"))
    assert r.stderr == ""
    out = tmp_path / "out"
    written = ["denoised_side_by_side.png", "denoiser.golden.npz", "denoiser.onnx", "denoiser.onnx.report.json"]
    assert sorted(p.name for p in out.iterdir()) == written
    with Image.open(out / "denoised_side_by_side.png") as png:
        assert png.width > 3 * 256 and png.height > 256
    psnr = {line.split()[1]: float(line.split()[-2]) for line in r.stdout.splitlines() if line.strip().startswith("PSNR")}
    assert set(psnr) == {"noisy", "PyTorch", "ONNX"}
    assert psnr["PyTorch"] == pytest.approx(psnr["ONNX"], abs=0.01)
    assert psnr["PyTorch"] > psnr["noisy"] + 5
    assert "latency" in r.stdout and "demo finished" in r.stdout


def test_help_hides_old_spellings_but_keeps_the_current_ones() -> None:
    """``--out`` and ``--shape`` stay accepted but hidden; the names they abbreviate stay whole."""
    from wconv_deploy.cli import cli

    for name in cli.list_commands(None):  # type: ignore[arg-type]
        text = assert_ok(invoke(name, "--help")).stdout
        assert "--out," not in text and "--out " not in text and "--shape " not in text, name
        assert "-oput" not in text and "--inpu-" not in text, name
        if "--output" in text:
            assert "-o, --output" in text, name


@pytest.mark.parametrize(
    ("args", "code"), [(("zoo", "list", "--json"), 0), (("export", "missing.pt", "--input-shape", "1x1x8x8"), 2)]
)
def test_the_entry_point_skips_only_the_teardown(tmp_path: Path, args: tuple[str, ...], code: int) -> None:
    """main() ends the process with os._exit: the exit code, every byte of output and the exit
    handlers (temporary folders' finalizers are some) must survive that."""
    marker = tmp_path / "handler-ran"
    script = "import atexit, sys\nmarker = sys.argv.pop()\natexit.register(lambda: open(marker, 'w').write('ran'))\n"
    script += "from wconv_deploy.cli import main\nsys.argv[0] = 'wconv-deploy'\nmain()\n"
    r = subprocess.run([sys.executable, "-c", script, *args, str(marker)], capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert marker.read_text() == "ran"
    if code == 0:
        assert {m["name"] for m in json.loads(r.stdout)["models"]} >= {"denoiser", "dncnn"}  # the whole JSON, flushed
    else:
        assert_one_line_error(r, 2, "missing.pt")
