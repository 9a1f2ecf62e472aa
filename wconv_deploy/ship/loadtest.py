"""Load-test a Triton model over HTTP or gRPC: latency percentiles and throughput per concurrency.

Closed loop: at concurrency N, N worker threads, each with its own tritonclient client, send one
request, wait for the answer and send the next, for ``warmup_s`` (not counted) and then
``duration_s``. A request counts when it starts inside the measured window; throughput is the
successful requests over the time from the window's start to the last of them finishing.

Inputs are built from the server's model metadata and config: seeded random data of each
input's datatype; the batch axis (when the model batches) gets ``batch``; any other variable
axis (-1) needs its size from ``shapes`` (``--input-shape input:1x1x64x64``, the batch axis included),
since Triton's metadata does not say which size is sensible. The client's own cost is in the
numbers: with many workers on few cores, Python threads compete with the server for the CPU.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.reports import Report
from wconv_deploy.spec import InputSpec
from wconv_deploy.table import format_table

Progress = Callable[[str], None]
PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: counts, throughput and latency percentiles (ms, successful requests)."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    infer_per_s: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None = None


@dataclass(frozen=True)
class LoadtestReport(Report):
    """A load test's setting and one :class:`LevelResult` per concurrency."""

    url: str
    protocol: str
    model: str
    batch: int
    inputs: dict[str, list[int]]
    duration_s: float
    levels: list[LevelResult]

    def render(self) -> str:
        shapes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in self.inputs.items())
        head = f"loadtest {self.model} at {self.url} ({self.protocol}; {shapes}; {self.duration_s:g} s per level)"
        rows = [
            [r.concurrency, r.requests, r.errors, f"{r.infer_per_s:.1f}", f"{r.samples_per_s:.1f}",
             *(f"{v:.2f}" for v in (r.p50_ms, r.p90_ms, r.p95_ms, r.p99_ms, r.max_ms))]
            for r in self.levels
        ]  # fmt: skip
        headers = ["concurrency", "requests", "errors", "infer/s", "samples/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"]
        errors = [f"concurrency {r.concurrency}: {r.errors} errors, first: {r.first_error}" for r in self.levels if r.errors]
        return "\n".join([head, "", format_table(headers, rows), *errors])

    def plot(self, path: str | os.PathLike[str]) -> None:
        """A PNG: p50/p99 latency and throughput (samples/s) against the number of clients."""
        from wconv_deploy.plots import Curve, latency_plot

        levels = self.levels
        curve = Curve(
            self.model,
            [r.concurrency for r in levels],
            [r.p50_ms for r in levels],
            [r.p99_ms for r in levels],
            [r.samples_per_s for r in levels],
        )
        title = f"{self.model} at {self.url} ({self.protocol}, batch {self.batch})"
        latency_plot({title: [curve]}, "concurrent clients", path)


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` text (``input:1x1x64x64``) as full shapes by input name."""
    return {t.name: t.shape() for t in InputSpec.parse(text).inputs}


def loadtest(
    url: str,
    model: str,
    *,
    concurrency: Sequence[int] = (1, 4, 16),
    duration_s: float = 10.0,
    protocol: str | None = None,
    batch: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    warmup_s: float = 1.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> LoadtestReport:
    """Measure ``model`` served at ``url`` (``http://host:port`` or ``grpc://host:port``; without
    a scheme, ``protocol``, default http) at each concurrency for ``duration_s`` seconds.
    InputError (one line) if the server cannot be reached or the model is not ready."""
    say = progress or (lambda _msg: None)
    protocol, address = split_url(url, protocol)
    if not concurrency or any(c < 1 for c in concurrency):
        raise InputError(f"concurrency must be positive integers, not {list(concurrency)}")
    if duration_s <= 0 or warmup_s < 0 or batch < 1:
        raise InputError("duration_s must be positive, warmup_s not negative and batch at least 1")
    client_mod = require(f"tritonclient.{protocol}", "serve")
    client = client_mod.InferenceServerClient(address)
    try:
        try:
            ready = client.is_server_live() and client.is_model_ready(model)
        except Exception as e:  # connection refused, DNS, protocol mismatch: each client raises its own
            raise InputError(f"no Triton server answers at {url} ({first_line(e)})") from None
        if not ready:
            raise InputError(f"the server at {url} has no ready model {model!r}")
        inputs = _make_inputs(_model_inputs(client, model, protocol), batch, shapes or {}, seed)
    finally:
        client.close()

    levels = []
    for n in concurrency:
        say(f"concurrency {n}: {warmup_s:g} s warm-up, {duration_s:g} s measured")
        level = _run_level(client_mod, address, model, inputs, n, warmup_s, duration_s, batch)
        say(f"concurrency {n}: {level.requests} requests, {level.infer_per_s:.1f} infer/s, p50 {level.p50_ms:.2f} ms")
        levels.append(level)
    shapes_out = {name: list(arr.shape) for name, (arr, _) in inputs.items()}
    return LoadtestReport(url, protocol, model, batch, shapes_out, duration_s, levels)


def split_url(url: str, protocol: str | None) -> tuple[str, str]:
    """(protocol, host:port) from ``url``; the scheme wins, and must agree with ``protocol``."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    scheme = parts.scheme or protocol or "http"
    if scheme not in PROTOCOLS or (protocol and protocol != scheme):
        raise InputError(f"{url}: the protocol must be http or grpc (given: {protocol or parts.scheme})")
    if not parts.hostname or not parts.port:
        raise InputError(f"{url} is not host:port (e.g. grpc://127.0.0.1:8001)")
    return scheme, f"{parts.hostname}:{parts.port}"


def infer_inputs(client_mod: Any, arrays: Mapping[str, np.ndarray]) -> list[Any]:
    """tritonclient ``InferInput``s of ``client_mod`` (``tritonclient.http`` or ``.grpc``) that
    carry ``arrays``, each typed by its NumPy dtype."""
    np_to_triton_dtype = require("tritonclient.utils", "serve").np_to_triton_dtype
    requests = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        request = client_mod.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        request.set_data_from_numpy(array)
        requests.append(request)
    return requests


def _model_inputs(client: Any, model: str, protocol: str) -> tuple[list[dict[str, Any]], int]:
    """The model's inputs (name, datatype, shape) from its metadata, and its max_batch_size."""
    as_json = {"as_json": True} if protocol == "grpc" else {}
    meta = client.get_model_metadata(model, **as_json)
    config = client.get_model_config(model, **as_json)
    config = config.get("config", config)  # grpc wraps it in {"config": ...}
    inputs = [{"name": i["name"], "datatype": i["datatype"], "shape": [int(s) for s in i["shape"]]} for i in meta["inputs"]]
    return inputs, int(config.get("max_batch_size", 0))


def _make_inputs(
    model_inputs: tuple[list[dict[str, Any]], int], batch: int, shapes: Mapping[str, Sequence[int]], seed: int
) -> dict[str, tuple[np.ndarray, str]]:
    """Seeded arrays (and Triton datatypes) for every input; InputError for an unknown size."""
    triton_to_np_dtype = require("tritonclient.utils", "serve").triton_to_np_dtype
    inputs, max_batch = model_inputs
    unknown = set(shapes) - {i["name"] for i in inputs}
    if unknown:
        raise InputError(
            f"--input-shape names {', '.join(sorted(unknown))}, not inputs of the model ({', '.join(i['name'] for i in inputs)})"
        )
    if batch > 1 and not max_batch:
        raise InputError("the model does not batch (max_batch_size 0): leave batch at 1, and set full shapes with --input-shape")
    if batch > max_batch > 0:
        raise InputError(f"batch {batch} is larger than the model's max_batch_size {max_batch}")
    rng = np.random.default_rng(seed)
    out = {}
    for i in inputs:
        meta_shape = i["shape"]
        shape = list(shapes.get(i["name"], [batch if (max_batch and k == 0) else s for k, s in enumerate(meta_shape)]))
        if len(shape) != len(meta_shape) or any(m not in (-1, s) for m, s in zip(meta_shape, shape)):
            raise InputError(f"--input-shape {i['name']}: {shape} does not fit the model's {meta_shape}")
        if any(s < 1 for s in shape):
            raise InputError(f"input {i['name']} has variable axes {meta_shape}: give their sizes with --input-shape")
        dtype = triton_to_np_dtype(i["datatype"])
        if dtype is None or np.dtype(dtype).kind not in "fiub":
            raise InputError(f"input {i['name']}: datatype {i['datatype']} is not supported by the load test")
        if np.dtype(dtype).kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        else:
            array = rng.integers(0, 2 if np.dtype(dtype).kind == "b" else 10, shape).astype(dtype)
        out[i["name"]] = (array, i["datatype"])
    return out


def _run_level(
    client_mod: Any,
    address: str,
    model: str,
    inputs: dict[str, tuple[np.ndarray, str]],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    batch: int,
) -> LevelResult:
    """Closed-loop workers for warm-up plus duration; requests started in the window count."""
    ready, go = threading.Barrier(concurrency + 1), threading.Event()
    records: list[tuple[float, float, bool]] = []  # (start, end, ok), appended under the GIL
    errors: list[str] = []
    window: list[float] = []  # [measure from, stop at], set once every worker is ready

    def worker() -> None:
        try:
            client = client_mod.InferenceServerClient(address)
            request = infer_inputs(client_mod, {name: array for name, (array, _) in inputs.items()})
        except Exception as e:
            errors.append(first_line(e))
            ready.abort()  # the main thread's wait fails instead of hanging
            return
        try:
            ready.wait()
            go.wait()
            start_measure, end = window
            while (t0 := time.perf_counter()) < end:
                try:
                    client.infer(model, request)
                    ok = True
                except Exception as e:  # tritonclient's and the transport's errors
                    ok = False
                    errors.append(first_line(e))
                if t0 >= start_measure:
                    records.append((t0, time.perf_counter(), ok))
        except threading.BrokenBarrierError:
            pass
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join()
        raise InputError(f"could not create a client for {address}: {errors[0]}") from None
    now = time.perf_counter()
    window.extend([now + warmup_s, now + warmup_s + duration_s])
    go.set()
    for t in threads:
        t.join()

    good = np.array([(end - start) * 1e3 for start, end, ok in records if ok])
    failed = sum(1 for *_, ok in records if not ok)
    elapsed = max((end for _, end, _ in records), default=window[1]) - window[0]
    p50, p90, p95, p99 = np.percentile(good, [50, 90, 95, 99]) if good.size else [float("nan")] * 4
    rate = good.size / elapsed if elapsed > 0 else 0.0
    return LevelResult(
        concurrency=concurrency,
        requests=len(records),
        errors=failed,
        duration_s=elapsed,
        infer_per_s=rate,
        samples_per_s=rate * batch,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(good.max()) if good.size else float("nan"),
        first_error=errors[0] if errors else None,
    )
