"""Precision search to a task budget (`wconv_deploy.search`): on the bundled denoiser, whose plain
int8 (seeded calibration) loses about 0.2 dB, a 0.1 dB budget either yields a variant whose PSNR,
measured here independently, is within it, or exit 1 with the table and nothing written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.contract import DENOISER_SPEC, assert_one_line_error, invoke
from wconv_deploy.errors import MismatchError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.precision import LayerError
from wconv_deploy.loading import load_model
from wconv_deploy.options import TaskBudget
from wconv_deploy.reports import dumps
from wconv_deploy.search import SearchTry, _search, ranking, search_precision
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, NOISE_SEED, add_gaussian_noise, demo_image


@pytest.fixture(scope="module")
def denoiser_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "den.onnx"
    spec = InputSpec.parse(*DENOISER_SPEC)
    export_onnx(load_model("zoo:denoiser"), path, spec, exporter="torchscript", validate_output=False)
    return path


def _psnr(image: np.ndarray, clean: np.ndarray) -> float:
    mse = float(np.mean((np.clip(image, 0, 1).astype(np.float64) - clean) ** 2))
    return 10 * np.log10(1.0 / mse)


def test_search_meets_a_tenth_of_a_db_or_writes_nothing(denoiser_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.int8.onnx"
    result = invoke("convert", denoiser_onnx, "--precision", "int8", "--max-psnr-drop", "0.1", "-o", out, "--json")
    report = json.loads(result.stdout)
    assert report["tries"][0]["keep_fp32"] == []  # plain int8 first
    clean = demo_image().numpy().astype(np.float64)
    noisy = add_gaussian_noise(demo_image(), DENOISER_SIGMA, NOISE_SEED)[None, None]
    with torch.no_grad():
        fp32 = load_model("zoo:denoiser").model(noisy).numpy()[0, 0]
    plain = report["tries"][0]["task"]
    assert plain["psnr_fp32_torch_db"] - plain["psnr_variant_db"] > 0.1  # the case the search is for
    if result.exit_code == 1:
        assert not out.exists() and report["chosen"] is None
        assert all(t["miss"] for t in report["tries"])
        return
    assert result.exit_code == 0, result.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    variant = session.run(None, {session.get_inputs()[0].name: noisy.numpy()})[0][0, 0]
    assert _psnr(fp32, clean) - _psnr(variant, clean) <= 0.1
    chosen = report["tries"][report["chosen"]]
    assert chosen["keep_fp32"] and chosen["miss"] is None
    assert report["convert"]["keep_fp32"] == chosen["keep_fp32"]
    assert all(len(t["keep_fp32"]) >= len(chosen["keep_fp32"]) for t in report["tries"] if t["miss"] is None)
    assert all(t["latency_ms"] > 0 for t in report["tries"])


def test_no_try_meeting_the_budget_is_exit_1_with_the_table_and_nothing_written(denoiser_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "den.int8.onnx"
    with pytest.raises(MismatchError, match="not written") as caught:
        search_precision(denoiser_onnx, out, TaskBudget(max_psnr_drop=0.1), max_tries=1, latency_s=0.05)
    report = caught.value.report
    assert report is not None and "precision search" in report.render()
    assert json.loads(dumps(report))["chosen"] is None
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_budget_the_model_has_no_metric_for_is_one_line(denoiser_onnx: Path, tmp_path: Path) -> None:
    result = invoke("convert", denoiser_onnx, "--precision", "int8", "--min-top1-agreement", "0.9", "-o", tmp_path / "v.onnx")
    assert_one_line_error(result, 2, "no top-1")
    assert not list(tmp_path.iterdir())


def test_ranking_puts_the_first_jump_first_then_the_largest_error_growth() -> None:
    def layer(node: str, rel: float) -> LayerError:
        return LayerError(node, "", rel, 0.0, 0.0, None)

    layers = [layer("a", 1e-4), layer("b", 3e-4), layer("c", 5e-3), layer("d", 6e-3), layer("e", 2e-2)]
    assert ranking(layers) == ["c", "e", "d", "b", "a"]  # c: first jump; then by growth 1.4e-2, 1e-3, 2e-4, 1e-4


@given(n=st.integers(1, 24), data=st.data())
def test_the_search_finds_exactly_the_layers_a_monotone_budget_needs(n: int, data: st.DataObject) -> None:
    order = [f"n{i}" for i in range(n)]
    needed = set(data.draw(st.sets(st.sampled_from(order), min_size=1)))
    tries: list[SearchTry] = []

    def attempt(keep: Sequence[str]) -> SearchTry:
        tries.append(SearchTry(list(keep), [], {}, 1.0, None if needed <= set(keep) else "misses"))
        return tries[-1]

    _search(order, attempt, lambda: True)
    best = min((t for t in tries if t.meets), key=lambda t: len(t.keep_fp32))
    assert set(best.keep_fp32) == needed
