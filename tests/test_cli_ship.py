"""`wconv-deploy package`, `serve` and `loadtest` as users run them (a real process per call)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run_cli

from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.spec import InputSpec


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ship") / "den.onnx"
    export_onnx("zoo:dncnn?depth=3&width=8", path, InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64"))
    return path


def test_package_then_check_then_a_broken_config_fails_the_check(onnx_file: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    ok = run_cli(
        "package", onnx_file, "--repo", repo, "--name", "den", "--dynamic-batching", "--preferred-batch", "4,8", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["max_batch_size"] == 8 and report["check"]["passed"] is True
    assert run_cli("package", "--check", repo).returncode == 0
    config = repo / "den" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
    bad = run_cli("package", "--check", repo)
    assert bad.returncode == 1, bad.stderr
    assert "max_batch_size" in bad.stdout + bad.stderr and "16" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_package_bad_input_is_one_line_exit_2(onnx_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(run_cli("package", onnx_file, "--repo", tmp_path / "r"), 2, "--name")
    too_big = run_cli("package", onnx_file, "--repo", tmp_path / "r", "--name", "den", "--max-batch", "64")
    assert_one_line_error(too_big, 2, "--max-batch 64")
    assert not (tmp_path / "r" / "den").exists()
    assert_one_line_error(run_cli("package", "--check", tmp_path / "nowhere"), 2, "nowhere")


def test_serve_and_loadtest_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", tmp_path / "missing.onnx"), 2, "missing.onnx")
    unreachable = run_cli("loadtest", "http://127.0.0.1:9", "--model", "den", "--duration-s", "0.1")
    assert_one_line_error(unreachable, 2, "127.0.0.1:9")
