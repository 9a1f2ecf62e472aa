"""Load test of the bundled denoiser served locally by Triton (docs/BENCHMARKS.md, issue 7).

    .venv/bin/python benchmarks/loadtest_denoiser.py [--duration-s 10] [--concurrency 1,4,16]

Exports zoo:denoiser (1x1x256x256, batch 1..8), packages it as a Triton model repository,
serves it on 127.0.0.1 with `start_server` (PyTriton, ONNX Runtime CPU behind it) and drives it
with `loadtest` over HTTP and gRPC, one closed-loop client per concurrent request, batch 1.
Server and clients share this machine's cores. Prints one table per protocol.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.ship.loadtest import loadtest
from wconv_deploy.ship.package import package
from wconv_deploy.ship.serve import start_server
from wconv_deploy.spec import InputSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "denoiser.onnx"
        export_onnx(load_model("zoo:denoiser"), onnx_path, InputSpec.parse("input:1x1x256x256", "batch=1:8"))
        package([onnx_path], Path(tmp) / "models", "denoiser", dynamic_batching=True)
        with start_server(Path(tmp) / "models", progress=print) as server:
            for url in (server.http_url, server.grpc_url):
                report = loadtest(url, "denoiser", concurrency=levels, duration_s=args.duration_s)
                print(f"## {url}")
                print(report.render())


if __name__ == "__main__":
    main()
