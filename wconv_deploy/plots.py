"""PNG pictures of results people would rather look at than read: latency percentiles and
throughput curves (bench, loadtest) and an image model's outputs side by side with their error
(convert, deploy). matplotlib comes with the ``plot`` extra; every PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.errors import InputError


@dataclass(frozen=True)
class Curve:
    """One runtime or server measured at several points (batch sizes, client counts)."""

    label: str
    x: Sequence[float]
    p50_ms: Sequence[float]
    p99_ms: Sequence[float]
    throughput: Sequence[float]  # samples per second


def _pyplot() -> Any:
    require("matplotlib", "plot").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    from wconv_deploy.fileio import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def latency_plot(panels: Mapping[str, Sequence[Curve]], x_label: str, path: str | os.PathLike[str]) -> None:
    """One column per panel (e.g. a device): p50 (solid) and p99 (dashed) latency above, throughput
    below, one colour per curve. A curve measured at one point is drawn as a marker."""
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        raise InputError("nothing was measured, so there is nothing to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 7), squeeze=False, sharex="col")
    for col, (title, curves) in enumerate(panels.items()):
        top, bottom = axes[0][col], axes[1][col]
        for i, c in enumerate(curves):
            colour = f"C{i % 10}"
            top.plot(c.x, c.p50_ms, marker="o", color=colour, label=f"{c.label} p50")
            top.plot(c.x, c.p99_ms, marker="x", linestyle="--", color=colour, label=f"{c.label} p99")
            bottom.plot(c.x, c.throughput, marker="o", color=colour, label=c.label)
        if len({x for c in curves for x in c.x}) > 1:
            bottom.set_xscale("log", base=2)
        top.set_yscale("log")
        top.set_ylabel("latency (ms)")
        top.set_title(title[:70], fontsize=9)
        top.legend(fontsize=7)
        bottom.set_ylabel("throughput (samples/s)")
        bottom.set_xlabel(x_label)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def side_by_side(
    reference: tuple[str, np.ndarray],
    variants: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    gain: float = 10.0,
) -> None:
    """The reference image, then each variant above its error map (|variant - reference| times
    ``gain``, so errors of a few grey levels show). Images are 2-D arrays in [0, 1]."""
    plt = _pyplot()
    title, ref = reference
    fig, axes = plt.subplots(2, 1 + len(variants), figsize=(3.2 * (1 + len(variants)), 6.6), squeeze=False)
    axes[0][0].imshow(np.clip(ref, 0, 1), cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title(title, fontsize=9)
    axes[1][0].axis("off")
    axes[1][0].text(0.5, 0.5, f"below: error maps\n|variant - left image| x {gain:g}", ha="center", va="center", fontsize=9)
    for col, (name, image) in enumerate(variants, start=1):
        error = np.abs(image.astype(np.float64) - ref) * gain
        axes[0][col].imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[0][col].set_title(name, fontsize=9)
        axes[1][col].imshow(np.clip(error, 0, 1), cmap="magma", vmin=0, vmax=1)
        axes[1][col].set_title(f"max error {np.abs(image - ref).max():.2g}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
