"""benchmarks/gpu_check.sh, the prepared GPU check of issue 14: valid bash, its time limits add up
to less than 8 minutes, and its Python part (benchmarks/bench_gpu.py) runs end to end in its CPU
dry-run mode (the code paths, not a measurement)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_check_stays_under_eight_minutes() -> None:
    """Every python step runs under `timeout`; the limits add up to less than 480 s."""
    text = SCRIPT.read_text()
    steps = [ln for ln in text.splitlines() if '"$PY"' in ln and not ln.lstrip().startswith("#")]
    assert steps and all(re.search(r"\btimeout \d+ ", ln) for ln in steps), steps
    assert sum(int(n) for n in re.findall(r"\btimeout (\d+) ", text)) < 480
    assert "benchmarks/bench_gpu.py" in text


def test_bench_gpu_dry_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert data["dry_run"] is True and data["machine"] == "CPU (dry run)"
    assert {(r["model"], r["batch"]) for r in data["harness"]} == {("dncnn", 1), ("resnet18_cifar", 1), ("resnet18_cifar", 2)}
    assert all(r["end_to_end_ms"] > 0 and r["max_rel_error"] == 0 for r in data["harness"])
    assert all(g["skipped"] == "CUDA graphs need a CUDA device" for g in data["graphs"])
    psnr = data["denoiser_psnr_db"]
    assert psnr["fp32"] > psnr["noisy"] + 5 and abs(psnr["fp16"] - psnr["fp32"]) < 0.5  # the trained denoiser denoises
    assert "## CUDA-graph replay" in result.stdout and "| runtime | batch |" in result.stdout
