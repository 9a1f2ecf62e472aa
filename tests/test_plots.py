"""The PNG pictures (wconv_deploy.plots): real files that decode, of the size their layout gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.contract import assert_one_line_error, invoke, png_size
from wconv_deploy.errors import InputError
from wconv_deploy.plots import Curve, latency_plot, side_by_side


def test_latency_plot_has_one_column_per_panel(tmp_path: Path) -> None:
    a = Curve("ort-cpu", [1, 8, 32], [1.0, 4.0, 15.0], [1.5, 6.0, 30.0], [1000.0, 2000.0, 2100.0])
    b = Curve("openvino", [1, 8, 32], [0.8, 3.0, 11.0], [1.0, 5.0, 20.0], [1250.0, 2600.0, 2900.0])
    one = Curve("trt", [1], [0.1], [0.2], [10000.0])
    latency_plot({"cpu": [a, b], "cuda": [one]}, "batch size", tmp_path / "p.png")
    assert png_size(tmp_path / "p.png") == (1440, 840)
    with pytest.raises(InputError, match="nothing was measured"):
        latency_plot({"cpu": []}, "batch size", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_side_by_side_shows_every_variant_and_its_error(tmp_path: Path) -> None:
    ref = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    variants = [("fp16", ref + 1e-3), ("int8", ref + np.random.default_rng(0).normal(0, 0.01, ref.shape))]
    side_by_side(("fp32 PyTorch", ref), variants, tmp_path / "s.png")
    width, height = png_size(tmp_path / "s.png")
    assert (width, height) == (1152, 792)  # 3 columns of 3.2 in, 2 rows, 120 dpi


def test_plot_folder_is_checked_before_measuring(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "p.png"
    result = invoke("loadtest", "http://127.0.0.1:9", "--model", "m", "--plot", missing)
    assert_one_line_error(result, 2, "--plot")
