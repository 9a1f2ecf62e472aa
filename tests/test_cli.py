"""The command line, run as users run it: a real `wconv-deploy` process per call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import refstyle
import torch
from torch import nn

from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d

CLI = [sys.executable, "-m", "wconv_deploy"]


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        WeightedConv2d(3, 4, 3, [0.7]), nn.BatchNorm2d(4), nn.ReLU(), TrainableWeightedConv2d(4, 2, 5, den=[0.2, 0.9], padding=2)
    ).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    model = _small_model()
    torch.save(model, d / "model.pt")
    torch.save(model.state_dict(), d / "weights.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.txt").write_text("these are not weights\n")
    data = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    nan_model = _small_model()
    with torch.no_grad():
        nan_model[3].weight[0, 0, 0, 0] = float("nan")
    torch.save(nan_model, d / "nan.pt")
    inf_model = _small_model()
    with torch.no_grad():
        inf_model[0].weight[1, 1, 1, 1] = float("inf")
    torch.save(inf_model, d / "inf.pt")
    # A reference-style trainable 3x3 layer keeps the reference's length-3 den: it cannot fit.
    refstyle.run_with_reference(
        d / "ref",
        """
        import torch, torch.nn as nn, wConv_Trainable
        torch.save(nn.Sequential(wConv_Trainable.wConv2d(3, 4, 3)), "../badden.pt")
    """,
    )
    return {p.stem: p for p in d.iterdir() if p.is_file()}


def test_inspect_prints_layers_and_fold_verdict(files: dict[str, Path]) -> None:
    r = run_cli("inspect", files["model"])
    assert r.returncode == 0, r.stderr
    assert "whole-model pickle" in r.stdout
    assert "folds cleanly: yes, 2 weighted layer(s) folded" in r.stdout
    assert "trainable" in r.stdout and "fixed" in r.stdout


def test_inspect_json(files: dict[str, Path]) -> None:
    r = run_cli("inspect", files["model"], "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "pickle"
    assert info["folds_cleanly"] is True
    assert [ly["kind"] for ly in info["weighted_layers"]] == ["fixed", "trainable"]
    assert info["weighted_layers"][1]["den"] == pytest.approx([0.2, 0.9])
    assert info["parameters"] == sum(p.numel() for p in _small_model().parameters())
    assert len(info["fold"]["fused_bn"]) == 1


def test_state_dict_with_arch(files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "arch.py").write_text(
        "import torch.nn as nn\nfrom wconv_deploy.nn import WeightedConv2d, TrainableWeightedConv2d\n"
        "def build():\n    return nn.Sequential(WeightedConv2d(3, 4, 3, [0.1]), nn.BatchNorm2d(4), nn.ReLU(),\n"
        "        TrainableWeightedConv2d(4, 2, 5, padding=2))\n"
    )
    r = run_cli("inspect", files["weights"], "--arch", "arch:build", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
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
    assert_one_line_error(run_cli("inspect", path, *extra), 2, *needles)


def test_debug_shows_traceback(files: dict[str, Path]) -> None:
    r = run_cli("--debug", "inspect", files["empty"])
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "InputError" in r.stderr


def test_hostile_pickle_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    script = tmp_path / "make.py"
    script.write_text(
        "import os, sys, torch, torch.nn as nn\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        "m = nn.Sequential(nn.Conv2d(1, 1, 3)); m.payload = Evil()\n"
        f"torch.save(m, {str(tmp_path / 'evil.pt')!r})\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=120)
    assert not marker.exists()
    for extra in ([], ["--arch", "os:getcwd"]):
        r = run_cli("inspect", tmp_path / "evil.pt", *extra)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        assert not marker.exists(), "the pickle's payload ran"
    assert "system" in r.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    from PIL import Image

    r = run_cli("demo", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["denoised_side_by_side.png", "denoiser.onnx", "denoiser.onnx.report.json"]
    with Image.open(out / "denoised_side_by_side.png") as png:
        assert png.width > 3 * 256 and png.height > 256
    psnr = {line.split()[1]: float(line.split()[-2]) for line in r.stdout.splitlines() if line.strip().startswith("PSNR")}
    assert set(psnr) == {"noisy", "PyTorch", "ONNX"}
    assert psnr["PyTorch"] == pytest.approx(psnr["ONNX"], abs=0.01)
    assert psnr["PyTorch"] > psnr["noisy"] + 5
    assert "latency" in r.stdout and "demo finished" in r.stdout
