"""GPU truth for docs/BENCHMARKS.md (issue 14), on a machine with CUDA (e.g. a lent H200).

    python benchmarks/bench_gpu.py [--min-duration-s 1] [--out DIR]   # run by benchmarks/gpu_check.sh
    python benchmarks/bench_gpu.py --dry-run                            # CPU, tiny models: the code paths only

Measures the zoo DnCNN-17 (64 wide) at 1x1x256x256 and the CIFAR ResNet-18 at batch 1 and 32:

1. the bench harness (``wconv_deploy.bench.run_bench``) on torch-cuda fp32, fp16 and
   torch.compile: end-to-end time per call (host arrays in, host arrays out) and the CUDA-event
   compute time alone, with each runtime's error against fp32 PyTorch;
2. CUDA-graph replay of the eager fp32 and fp16 models (captured once, replayed), CUDA-event
   time per replay;
3. the harness's overhead: its torch-cuda compute and end-to-end medians against a bare loop
   of CUDA events (and of the same copies) around ``model(x)`` in the same process;
4. the PSNR of the bundled trained denoiser's fp16 output next to its fp32 output (camera
   256x256, sigma 25, the demo's noise seed).

Prints markdown tables and writes them as JSON to ``--out``/bench_gpu.json. Nothing is guessed:
a runtime that cannot run is listed with its reason. ``--dry-run`` runs the same code on the CPU
with tiny models and few calls (CUDA graphs and torch.compile skipped), to check the script, not
to measure anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wconv_deploy.bench import run_bench
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, NOISE_SEED, add_gaussian_noise, demo_image, denoiser, psnr

#: (zoo model, its options, input shape, batches); dry-run: tiny versions.
CASES = [("dncnn", {}, "1x1x256x256", [1]), ("resnet18_cifar", {}, "1x3x32x32", [1, 32])]
DRY_CASES = [("dncnn", {"depth": 3, "width": 8}, "1x1x32x32", [1]), ("resnet18_cifar", {}, "1x3x32x32", [1, 2])]
RUNTIMES = ["torch-cuda", "torch-cuda-fp16", "torch-cuda-compile"]


def median_ms(values: list[float]) -> float:
    return statistics.median(values)


def event_times_ms(fn: Callable[[], Any], device: torch.device, iterations: int, warmup: int = 10) -> list[float]:
    """Per-call device time of ``fn`` (CUDA events around each call; wall time on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def wall_times_ms(fn: Callable[[], Any], iterations: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def graph_replay_ms(model: torch.nn.Module, x: torch.Tensor, iterations: int) -> float:
    """CUDA-event median of replaying ``model(x)`` captured in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the capture (cuDNN picks its kernels)
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        model(x)
    return median_ms(event_times_ms(graph.replay, x.device, iterations))


def harness_rows(report: Any) -> list[dict[str, Any]]:
    rows = []
    for r in report.rows:
        rows.append(
            {
                "runtime": r.runtime,
                "batch": r.batch,
                "end_to_end_ms": None if r.stats is None else r.stats.median_ms,
                "compute_ms": None if r.device_stats is None else r.device_stats.median_ms,
                "max_rel_error": r.max_rel_error,
                "unavailable": r.unavailable,
            }
        )
    return rows


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-duration-s", type=float, default=1.0, help="Timed seconds per runtime and batch in the harness.")
    ap.add_argument("--iterations", type=int, default=200, help="Calls in each bare and CUDA-graph loop.")
    ap.add_argument("--out", type=Path, help="Folder for bench_gpu.json.")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, few calls: checks the code paths only.")
    args = ap.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device visible to torch (use --dry-run to check the script on a CPU)")
    device = torch.device("cpu" if dry else "cuda")
    iterations = 5 if dry else args.iterations
    cases, runtimes = (DRY_CASES, ["torch"]) if dry else (CASES, RUNTIMES)
    machine = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    result: dict[str, Any] = {
        "machine": machine,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dry_run": dry,
        "harness": [],
        "graphs": [],
        "overhead": [],
    }
    print(f"# GPU check: {machine}, torch {torch.__version__}, Python {platform.python_version()}\n")

    for name, options, shape, batches in cases:
        torch.manual_seed(0)
        model = create_model(name, **options).eval()
        spec = InputSpec.parse(shape)
        report = run_bench(
            runtimes=runtimes,
            spec=spec,
            model=model,
            batches=batches,
            warmup_ms=50 if dry else 500,
            iterations=3 if dry else 50,
            min_duration_s=0.0 if dry else args.min_duration_s,
        )
        rows = harness_rows(report)
        result["harness"] += [{"model": name, "shape": shape, **r} for r in rows]
        print(f"## {name} {shape}: the bench harness\n")
        print("| runtime | batch | end-to-end median ms | compute median ms (CUDA events) | max rel err vs fp32 |")
        print("|---|---|---|---|---|")
        for r in rows:
            if r["unavailable"]:
                print(f"| {r['runtime']} | {r['batch']} | not run: {r['unavailable']} | | |")
            else:
                times = f"{fmt(r['end_to_end_ms'])} | {fmt(r['compute_ms'])}"
                print(f"| {r['runtime']} | {r['batch']} | {times} | {fmt(r['max_rel_error'], 5)} |")
        print()

        on_device = model.to(device)
        for batch in batches:
            x_host = spec.at_batch(batch).example_inputs()[0]
            x = x_host.to(device)
            with torch.no_grad():
                bare_compute = median_ms(event_times_ms(lambda m=on_device, x=x: m(x), device, iterations))
                e2e = lambda m=on_device, h=x_host: m(h.to(device)).float().cpu().numpy()  # noqa: E731
                bare_e2e = median_ms(wall_times_ms(e2e, iterations))
            harness = next(r for r in rows if r["runtime"] == runtimes[0] and r["batch"] == batch)
            overhead = {
                "model": name,
                "batch": batch,
                "bare_compute_ms": bare_compute,
                "harness_compute_ms": harness["compute_ms"],
                "bare_end_to_end_ms": bare_e2e,
                "harness_end_to_end_ms": harness["end_to_end_ms"],
            }
            result["overhead"].append(overhead)
            graphs: dict[str, Any] = {"model": name, "batch": batch}
            if device.type == "cuda":
                graphs["fp32_replay_ms"] = graph_replay_ms(on_device, x, iterations)
                graphs["fp16_replay_ms"] = graph_replay_ms(on_device.half(), x.half(), iterations)
                on_device.float()
            else:
                graphs["skipped"] = "CUDA graphs need a CUDA device"
            result["graphs"].append(graphs)
        model.cpu()

    print("## CUDA-graph replay (eager model captured once; CUDA-event median per replay)\n")
    print("| model | batch | fp32 ms | fp16 ms |")
    print("|---|---|---|---|")
    for g in result["graphs"]:
        print(f"| {g['model']} | {g['batch']} | {fmt(g.get('fp32_replay_ms'))} | {fmt(g.get('fp16_replay_ms'))} |")
    print(f"\n## Harness overhead: {runtimes[0]} (fp32) through the harness vs a bare loop in the same process\n")
    print("| model | batch | bare compute ms | harness compute ms | bare end-to-end ms | harness end-to-end ms |")
    print("|---|---|---|---|---|---|")
    for o in result["overhead"]:
        print(
            f"| {o['model']} | {o['batch']} | {fmt(o['bare_compute_ms'])} | {fmt(o['harness_compute_ms'])} | "
            f"{fmt(o['bare_end_to_end_ms'])} | {fmt(o['harness_end_to_end_ms'])} |"
        )

    net = denoiser().eval().to(device)
    clean = demo_image()
    if dry:
        clean = clean[:64, :64]
    noisy = add_gaussian_noise(clean, DENOISER_SIGMA, NOISE_SEED)[None, None].to(device)
    with torch.no_grad():
        out32 = net(noisy).float().cpu()
        out16 = net.half()(noisy.half()).float().cpu()
    result["denoiser_psnr_db"] = {
        "noisy": psnr(noisy.float().cpu()[0, 0], clean),
        "fp32": psnr(out32[0, 0], clean),
        "fp16": psnr(out16[0, 0], clean),
        "max_abs_diff_fp16_fp32": float(np.abs((out16 - out32).numpy()).max()),
    }
    p = result["denoiser_psnr_db"]
    print(f"\n## Bundled denoiser, camera {tuple(clean.shape)}, sigma {DENOISER_SIGMA:g}\n")
    print(f"PSNR noisy {p['noisy']:.2f} dB, fp32 {p['fp32']:.2f} dB, fp16 {p['fp16']:.2f} dB ")
    print(f"(largest fp16 vs fp32 pixel difference {p['max_abs_diff_fp16_fp32']:.2e})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
