"""Shared test set-up: hypothesis profiles, the reference-style module folder, and the session
catalogue: tiny models and artifacts built once and shared by every module. Catalogue files are
read-only by agreement: a test that changes one copies it to its ``tmp_path`` first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests import refstyle
from tests.contract import DNCNN, tiny_cnn
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.spec import InputSpec

# Default: thorough enough for CI (>= 300 examples per property). `HYPOTHESIS_PROFILE=slow` for more.
settings.register_profile("default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def refdir(tmp_path: Path) -> Path:
    """A folder holding reference-style ``wConv.py`` and ``wConv_Trainable.py`` (not on sys.path)."""
    return refstyle.install(tmp_path / "reference")


@pytest.fixture(scope="session")
def tiny_cnn_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tests.contract.tiny_cnn` saved whole (``torch.save(model)``), as users pickle a model."""
    path = tmp_path_factory.mktemp("catalogue") / "tiny_cnn.pt"
    torch.save(tiny_cnn(), path)
    return path


def _export_dncnn(folder: Path, shape: str, dynamic: str | None) -> Path:
    """:data:`tests.contract.DNCNN` to ONNX: TorchScript exporter, no validation (both tested elsewhere; fast)."""
    path = folder / "dncnn.onnx"
    export_onnx(load_model(DNCNN), path, InputSpec.parse(shape, dynamic), exporter="torchscript", validate_output=False)
    return path


@pytest.fixture(scope="session")
def dncnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DNCNN as ONNX with dynamic batch 1..8, height and width 16..64 (optimum 1x1x32x32)."""
    return _export_dncnn(tmp_path_factory.mktemp("dncnn-dynamic"), "input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")


@pytest.fixture(scope="session")
def dncnn_static_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DNCNN as ONNX with every axis fixed: 1x1x16x16."""
    return _export_dncnn(tmp_path_factory.mktemp("dncnn-static"), "input:1x1x16x16", None)
