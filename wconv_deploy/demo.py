"""`wconv-deploy demo`: the whole toolkit on the bundled trained denoiser and a real photograph.

No arguments and no network: take the trained weighted DnCNN shipped in the package, fold and
export it to ONNX (checked and validated against PyTorch), denoise the shipped photograph with
PyTorch and with ONNX Runtime, compare their PSNR and latency, and write the ONNX file and a
side-by-side PNG (noisy | PyTorch | ONNX Runtime) to the output folder.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wconv_deploy.errors import MismatchError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.fileio import atomic_output
from wconv_deploy.loading import load_model
from wconv_deploy.runtimes.onnxruntime import OnnxRuntime
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, NOISE_SEED, add_gaussian_noise, demo_image, denoiser_record, psnr

#: PyTorch and ONNX Runtime denoise the same image; their PSNRs may differ by float rounding only.
PSNR_AGREEMENT_DB = 0.01


def median_ms(fn: Callable[[], Any], runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def side_by_side(images: list[np.ndarray], labels: list[str], path: Path) -> None:
    """Write grayscale images in [0, 1] next to each other, each with a caption, as one PNG."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape
    bar, gap = 22, 8
    canvas = Image.new("L", (len(images) * w + (len(images) - 1) * gap, h + bar), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels)):
        x = i * (w + gap)
        canvas.paste(Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)), (x, bar))
        draw.text((x + 4, 5), label, fill=0)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")


def run_demo(out_dir: Path, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run the demo, writing into ``out_dir``; returns the PSNRs and latencies it printed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = denoiser_record()
    echo("[1/4] the bundled denoiser: weighted DnCNN (8 layers x 32 channels, grayscale), trained on")
    echo(f"      scikit-image photographs with Gaussian noise sigma {DENOISER_SIGMA:g} (benchmarks/train_denoiser.py)")
    loaded = load_model("zoo:denoiser")

    onnx_path = out_dir / "denoiser.onnx"
    echo(f"[2/4] folding, exporting and validating -> {onnx_path}")
    spec = InputSpec.parse("1x1x256x256", "batch,height,width")
    report = export_onnx(loaded, onnx_path, spec, progress=lambda msg: echo(f"      ... {msg}"))
    assert report.validation is not None
    echo(
        f"      {len(report.fold.folded)} weighted layers folded; graph: {report.graph.conv_nodes} Conv, "
        f"no weight arithmetic; ONNX Runtime vs PyTorch worst max rel error {report.validation.worst['max_rel']:.1e}"
    )

    echo("[3/4] denoising a real photograph (scikit-image 'camera', CC0, 256x256) with both runtimes")
    clean = demo_image()
    noisy = add_gaussian_noise(clean, DENOISER_SIGMA, NOISE_SEED)[None, None]
    with torch.no_grad():
        by_torch = loaded.model(noisy)
    ort = OnnxRuntime(onnx_path)
    feed = {"input": noisy.numpy()}
    by_ort = torch.from_numpy(ort.run(feed)[0])
    result = {
        "psnr_noisy": psnr(noisy[0, 0], clean),
        "psnr_torch": psnr(by_torch[0, 0], clean),
        "psnr_ort": psnr(by_ort[0, 0], clean),
    }
    echo(f"      PSNR noisy        {result['psnr_noisy']:6.2f} dB")
    echo(f"      PSNR PyTorch      {result['psnr_torch']:6.2f} dB")
    echo(f"      PSNR ONNX Runtime {result['psnr_ort']:6.2f} dB")
    plain = record["psnr_db"]["plain"].get("camera_256 (demo)")
    if plain is not None:
        echo(f"      (the same network with plain convolutions, trained identically: {plain:.2f} dB)")
    if abs(result["psnr_torch"] - result["psnr_ort"]) > PSNR_AGREEMENT_DB:
        raise MismatchError(f"PyTorch and ONNX Runtime PSNRs differ by more than {PSNR_AGREEMENT_DB} dB")

    with torch.no_grad():
        result["ms_torch"] = median_ms(lambda: loaded.model(noisy))
    result["ms_ort"] = median_ms(lambda: ort.run(feed))
    echo(
        f"      latency, 1x1x256x256, median of 20 on this CPU: PyTorch eager (unfolded) {result['ms_torch']:.1f} ms, "
        f"ONNX Runtime {result['ms_ort']:.1f} ms"
    )

    png = out_dir / "denoised_side_by_side.png"
    echo(f"[4/4] writing {png} (noisy | PyTorch | ONNX Runtime)")
    side_by_side(
        [noisy[0, 0].numpy(), by_torch[0, 0].numpy(), by_ort[0, 0].numpy()],
        [
            f"noisy, {result['psnr_noisy']:.2f} dB",
            f"PyTorch, {result['psnr_torch']:.2f} dB",
            f"ONNX Runtime, {result['psnr_ort']:.2f} dB",
        ],
        png,
    )
    return result
