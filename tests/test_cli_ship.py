"""`wconv-deploy package`, `serve` and `loadtest` run in this process through click."""

from __future__ import annotations

import json
from pathlib import Path

from tests.contract import assert_ok, assert_one_line_error, invoke


def test_package_then_check_then_a_broken_config_fails_the_check(dncnn_onnx: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    args: list[str | Path] = ["--repo", repo, "--name", "den", "--dynamic-batching", "--preferred-batch", "4,8", "--json"]
    report = json.loads(assert_ok(invoke("package", dncnn_onnx, *args)).stdout)
    assert report["max_batch_size"] == 8 and report["check"]["passed"] is True
    assert_ok(invoke("package", "--check", repo))
    config = repo / "den" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
    bad = invoke("package", "--check", repo)
    assert bad.exit_code == 1, bad.stderr
    assert "max_batch_size" in bad.output and "16" in bad.output
    assert "Traceback" not in bad.stderr


def test_package_bad_input_is_one_line_exit_2(dncnn_onnx: Path, tmp_path: Path) -> None:
    assert_one_line_error(invoke("package", dncnn_onnx, "--repo", tmp_path / "r"), 2, "--name")
    too_big = invoke("package", dncnn_onnx, "--repo", tmp_path / "r", "--name", "den", "--max-batch", "64")
    assert_one_line_error(too_big, 2, "--max-batch 64")
    assert not (tmp_path / "r" / "den").exists()
    assert_one_line_error(invoke("package", "--check", tmp_path / "nowhere"), 2, "nowhere")


def test_serve_and_loadtest_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(invoke("serve", tmp_path / "missing.onnx"), 2, "missing.onnx")
    unreachable = invoke("loadtest", "http://127.0.0.1:9", "--model", "den", "--duration-s", "0.1")
    assert_one_line_error(unreachable, 2, "127.0.0.1:9")
