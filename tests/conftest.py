"""Shared test set-up: hypothesis profiles and the reference-style module fixture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Default: thorough enough for CI (>= 300 examples per property). `HYPOTHESIS_PROFILE=slow` for more.
settings.register_profile("default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def refdir(tmp_path: Path) -> Path:
    """A folder holding reference-style ``wConv.py`` and ``wConv_Trainable.py`` (not on sys.path)."""
    import refstyle

    return refstyle.install(tmp_path / "reference")
