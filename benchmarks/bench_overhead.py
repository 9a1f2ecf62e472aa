"""The harness's own overhead: ort-cpu through ``wconv_deploy.bench`` against a bare
``session.run`` loop in the same process, on a small model. Goal: medians within 5%.

    .venv/bin/python benchmarks/bench_overhead.py [--rounds 5] [--seconds 2]

Alternates bare and harness measurements (``rounds`` times each) so machine drift hits both,
and compares the medians of the per-round medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wconv_deploy.bench import latency_stats, time_calls
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.runtimes import create_runtime
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model


def bare_median_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float) -> float:
    for _ in range(10):
        session.run(None, feeds)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    spec = InputSpec.parse("1x1x64x64")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(create_model("dncnn", depth=5, width=16), path, spec, validate_output=False)
        feeds = {"input": spec.example_inputs()[0].numpy()}
        rt = create_runtime("ort-cpu", onnx_path=path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        bare, harness = [], []
        for _ in range(args.rounds):
            bare.append(bare_median_ms(session, feeds, args.seconds))
            times = time_calls(lambda: rt.run(feeds), warmup_ms=200, iterations=10, min_duration_s=args.seconds)
            harness.append(latency_stats(times, 1).median_ms)
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"model: zoo dncnn depth 5 width 16, input 1x1x64x64; onnxruntime {ort.__version__}")
    print(f"bare session.run median {b:.3f} ms; harness median {h:.3f} ms; overhead {100 * (h - b) / b:+.1f}%")
    print(f"per-round bare   {', '.join(f'{v:.3f}' for v in bare)}")
    print(f"per-round harness {', '.join(f'{v:.3f}' for v in harness)}")


if __name__ == "__main__":
    main()
