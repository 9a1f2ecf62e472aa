"""fp16 and int8 variants on this CPU: speed-up over PyTorch eager fp32 and the task-metric loss.

    .venv/bin/python benchmarks/precision_study.py [--min-duration-s 3] [--out precision-study]

1. The bundled (trained) denoiser on the shipped photo: PSNR of fp32, fp16 and int8 variants,
   int8 calibrated on seeded normals (the default) or on noisy crops of the training photos
   (minmax, entropy, percentile), and int8 with the worst layers of the per-layer report kept
   fp32; each timed on ort-cpu and openvino.
2. DnCNN-17 (the zoo default, 17 x 64, random weights: the training-time network whose eager
   speed is the baseline): every variant on every CPU runtime, against PyTorch eager fp32.
3. CIFAR ResNet-18 at batch 1: fp16 and int8, top-1 agreement with fp32.
4. The density mask and int8: an 8 x 32 DnCNN with border density 0.05 against 1.0 (plain),
   int8 weight error on the kernel's border taps, the noise-estimate error, and that error with
   middle layers kept fp32.

Prints markdown tables, writes OUT/results.json and OUT/tradeoff.png (speed-up vs PSNR loss).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wconv_deploy.bench import run_bench
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.precision import convert_onnx, layer_errors
from wconv_deploy.loading import load_model
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, add_gaussian_noise

sys.path.insert(0, str(Path(__file__).parent))
from train_denoiser import TRAIN, gray  # noqa: E402  (the training photos, from scikit-image)

PHOTO_SPEC = "input:1x1x256x256"


def calibration_set(out: Path) -> Path:
    """Noisy 256x256 centre crops of the ten training photos (never the test photo)."""
    crops = []
    for i, name in enumerate(TRAIN):
        img = torch.from_numpy(gray(name))
        h, w = img.shape
        crop = img[(h - 256) // 2 : (h - 256) // 2 + 256, (w - 256) // 2 : (w - 256) // 2 + 256]
        crops.append(add_gaussian_noise(crop, DENOISER_SIGMA, 100 + i)[None].numpy())
    path = out / "calibration.npz"
    np.savez(path, input=np.stack(crops).astype(np.float32))
    return path


def photo_feeds() -> dict[str, np.ndarray]:
    from wconv_deploy.zoo.denoisers import NOISE_SEED, demo_image

    return {"input": add_gaussian_noise(demo_image(), DENOISER_SIGMA, NOISE_SEED)[None, None].numpy()}


def noise_error(fp32: Path, path: Path, model: Any) -> float:
    """Relative error of the variant's noise estimate (the last Conv's output) against fp32
    PyTorch on the noisy photo. A DnCNN's output is input - noise estimate; with random weights
    the estimate is ~1e-5 of the output, so the output's own error says nothing about it."""
    return layer_errors(fp32, path, model, photo_feeds())[-1].rel_error


def timed(model: Any, onnx_path: Path | None, runtimes: list[str], spec: InputSpec, args: argparse.Namespace) -> dict[str, Any]:
    """{runtime: (median ms, max rel err vs fp32 PyTorch)} for the runtimes that ran."""
    report = run_bench(
        runtimes=runtimes,
        spec=spec,
        model=model,
        onnx_path=onnx_path,
        warmup_ms=500,
        iterations=args.iterations,
        min_duration_s=args.min_duration_s,
    )
    rows = {}
    for r in report.rows:
        if r.stats is not None:
            rows[r.runtime] = {"median_ms": r.stats.median_ms, "max_rel_error": r.max_rel_error, "precision": r.precision}
        else:
            rows[r.runtime] = {"unavailable": r.unavailable}
    return rows


def denoiser_study(out: Path, calib: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    ref = load_model("zoo:denoiser")
    fp32 = out / "den.onnx"
    export_onnx(ref, fp32, InputSpec.parse(PHOTO_SPEC, "batch=1:8"))
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("fp16", "fp16", {}),
        ("int8, seeded-normal calibration", "int8", {}),
        ("int8, photos, minmax", "int8", {"calibration": calib}),
        ("int8, photos, entropy", "int8", {"calibration": calib, "calibration_method": "entropy"}),
        ("int8, photos, percentile", "int8", {"calibration": calib, "calibration_method": "percentile"}),
    ]
    results = [{"variant": "fp32", **timed(ref.model, fp32, ["torch", "ort-cpu", "openvino"], InputSpec.parse(PHOTO_SPEC), args)}]
    worst: list[str] = []
    for label, precision, kw in variants:
        path = out / f"den.{label.replace(', ', '_').replace(' ', '-')}.onnx"
        rep = convert_onnx(fp32, path, precision, reference=ref, per_layer=True, atol=1.0, rtol=1.0, **kw)
        if label.startswith("int8, seeded"):
            growth = sorted(rep.layers, key=lambda ly: ly.rel_error, reverse=True)
            worst = [ly.module for ly in growth[:2]]
        row = {"variant": label, **rep.task, "noise_rel_err": noise_error(fp32, path, ref)}
        row["layers"] = [ly.to_dict() for ly in rep.layers]
        results.append({**row, **timed(ref.model, path, ["ort-cpu", "openvino"], InputSpec.parse(PHOTO_SPEC), args)})
    kept = out / "den.int8-keep.onnx"
    rep = convert_onnx(fp32, kept, "int8", reference=ref, keep_fp32=worst, atol=1.0, rtol=1.0)
    label = f"int8, seeded-normal calibration, {'+'.join(worst)} kept fp32"
    row = {"variant": label, **rep.task, "noise_rel_err": noise_error(fp32, kept, ref)}
    results.append({**row, **timed(ref.model, kept, ["ort-cpu", "openvino"], InputSpec.parse(PHOTO_SPEC), args)})
    return results


def dncnn17_study(out: Path, calib: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    ref = load_model("zoo:dncnn")
    fp32 = out / "dncnn17.onnx"
    export_onnx(ref, fp32, InputSpec.parse(PHOTO_SPEC, "batch=1:8"))
    spec = InputSpec.parse(PHOTO_SPEC)
    results = [
        {
            "variant": "fp32",
            **timed(ref.model, fp32, ["torch", "torch-folded", "ort-cpu", "openvino", "openvino-bf16"], spec, args),
        }
    ]
    for label, precision, kw in [("fp16", "fp16", {}), ("int8, photos, minmax", "int8", {"calibration": calib})]:
        path = out / f"dncnn17.{precision}.onnx"
        convert_onnx(fp32, path, precision, reference=ref, atol=1.0, rtol=1.0, **kw)
        row = {"variant": label, "noise_rel_err": noise_error(fp32, path, ref)}
        results.append({**row, **timed(ref.model, path, ["ort-cpu", "openvino"], spec, args)})
    return results


def resnet_study(out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    ref = load_model("zoo:resnet18_cifar")
    fp32 = out / "resnet18.onnx"
    spec = InputSpec.parse("input:1x3x32x32")
    export_onnx(ref, fp32, InputSpec.parse("input:1x3x32x32", "batch=1:8"))
    results = [{"variant": "fp32", **timed(ref.model, fp32, ["torch", "ort-cpu", "openvino"], spec, args)}]
    for precision in ("fp16", "int8"):
        path = out / f"resnet18.{precision}.onnx"
        rep = convert_onnx(fp32, path, precision, reference=ref, atol=1.0, rtol=1.0)
        results.append({"variant": precision, **rep.task, **timed(ref.model, path, ["ort-cpu", "openvino"], spec, args)})
    return results


def density_study(out: Path, calib: Path) -> list[dict[str, Any]]:
    """Same random network, border density 0.05 vs 1.0: how much worse int8 treats the border."""
    results = []
    for den in (0.05, 1.0):
        ref = load_model(f"zoo:dncnn?depth=8&width=32&den={den}")
        fp32, int8 = out / f"den{den}.onnx", out / f"den{den}.int8.onnx"
        export_onnx(ref, fp32, InputSpec.parse(PHOTO_SPEC, "batch=1:8"))
        rep = convert_onnx(fp32, int8, "int8", reference=ref, calibration=calib, atol=1.0, rtol=1.0)
        layers = layer_errors(fp32, int8, ref, photo_feeds())
        border = [ly.outer_qerr for ly in layers if ly.outer_qerr is not None]
        assert rep.validation is not None
        results.append(
            {
                "border_density": den,
                "mean_int8_weight_err_all_taps": float(np.mean([ly.weight_qerr for ly in layers])),
                "mean_int8_weight_err_border_taps": float(np.mean(border)),
                "noise_rel_err": layers[-1].rel_error,
                "output_max_rel_err": rep.validation.worst["max_rel"],
            }
        )
        if den < 1.0:  # the remedy: keep middle layers in fp32
            for keep in (["body.5", "body.8"], ["body.2", "body.5", "body.8", "body.11"]):
                kept = out / f"den{den}.int8-keep.onnx"
                convert_onnx(fp32, kept, "int8", reference=ref, calibration=calib, keep_fp32=keep, atol=1.0, rtol=1.0)
                err = layer_errors(fp32, kept, ref, photo_feeds())[-1].rel_error
                results.append({"border_density": den, "kept_fp32": keep, "noise_rel_err": err})
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)")
        return
    eager = results["dncnn17"][0]["torch"]["median_ms"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, row in enumerate(results["denoiser"]):
        loss = row.get("psnr_fp32_torch_db", 0.0) - row.get("psnr_variant_db", row.get("psnr_fp32_torch_db", 0.0))
        for rt, marker in (("ort-cpu", "o"), ("openvino", "s")):
            if "median_ms" in row.get(rt, {}):
                label = row["variant"] if rt == "ort-cpu" else None
                ax.scatter(eager / row[rt]["median_ms"], loss, marker=marker, color=f"C{i}", label=label, s=40)
    ax.axhline(0.1, color="red", lw=0.8, ls="--")
    ax.axvline(20, color="red", lw=0.8, ls="--")
    ax.set_xlabel("speed-up over PyTorch eager DnCNN-17 fp32 (x)")
    ax.set_ylabel("PSNR loss vs fp32 on the shipped photo (dB)")
    ax.set_title("bundled denoiser variants on this CPU (circle: ort-cpu, square: openvino)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-duration-s", type=float, default=3.0)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("precision-study"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calib = calibration_set(args.out)
    results = {
        "density": density_study(args.out, calib),
        "denoiser": denoiser_study(args.out, calib, args),
        "dncnn17": dncnn17_study(args.out, calib, args),
        "resnet18": resnet_study(args.out, args),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    eager = results["dncnn17"][0]["torch"]["median_ms"]
    for name, rows in results.items():
        print(f"## {name}")
        for row in rows:
            cells = {k: v for k, v in row.items() if k != "layers"}
            for rt in ("torch", "torch-folded", "ort-cpu", "openvino", "openvino-bf16"):
                if isinstance(cells.get(rt), dict) and "median_ms" in cells[rt]:
                    cells[rt] = dict(cells[rt], speedup_vs_dncnn17_eager=eager / cells[rt]["median_ms"])
            print(json.dumps(cells, default=str))
    plot(results, args.out / "tradeoff.png")


if __name__ == "__main__":
    main()
