"""Serving over Triton's protocols (`wconv_deploy.ship.serve`) and load tests (`.loadtest`): real
PyTriton servers on 127.0.0.1, answered through tritonclient and checked against PyTorch, and no
server process left behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.contract import png_size
from tests.serving import SERVE_HINT, needs_pytriton, needs_tritonclient
from tests.serving import client as _client
from tests.serving import infer as _infer
from tests.serving import model as _model
from tests.serving import proc_state as _state
from tests.serving import reference as _reference
from wconv_deploy._optional import require
from wconv_deploy.artifacts import manifest_path
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
from wconv_deploy.ship.loadtest import _make_inputs, loadtest, parse_shapes
from wconv_deploy.ship.serve import Server, resolve_target, start_server
from wconv_deploy.spec import InputSpec


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    model = _model()
    export_onnx(model, d / "small.onnx", InputSpec.parse("input:1x1x64x64", "batch=1:4"), exporter="torchscript")
    export_onnx(model, d / "static.onnx", InputSpec.parse("input:1x1x16x16"), exporter="torchscript", validate_output=False)
    return d


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[Server]:
    with start_server(work / "small.onnx") as s:
        yield s
    assert s.pids() == [] and _triton_descendants() == []


def _triton_descendants() -> list[str]:
    """Command lines of this process's live descendants that are Triton or its backend stubs."""
    parent, cmd = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_bytes()
            cmd[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        after = stat[stat.rindex(b")") + 2 :].split()
        if after[0] != b"Z":
            parent[int(entry.name)] = int(after[1])
    ours, grew = {os.getpid()}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in ours} - ours
        ours |= more
        grew = bool(more)
    return [cmd[p] for p in ours if p in cmd and ("tritonserver" in cmd[p] or "triton_python_backend_stub" in cmd[p])]


# --------------------------------------------------------------------------- servers


@needs_pytriton
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_answers_like_pytorch(server: Server, protocol: str) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    assert url.startswith(f"{protocol}://127.0.0.1:")
    x = np.random.default_rng(1).standard_normal((3, 1, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(_infer(url, server.model_name, x), _reference(x), rtol=1e-5, atol=1e-5)

    mod, client = _client(url)
    extra = {"as_json": True} if protocol == "grpc" else {}
    meta = client.get_model_metadata("small", **extra)
    tensors = [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"] + meta["outputs"]]
    assert tensors == [("input", "FP32", [-1, 1, 64, 64]), ("output", "FP32", [-1, 2, 64, 64])]
    config = client.get_model_config("small", **extra)
    assert config.get("config", config)["max_batch_size"] == 4
    with pytest.raises(Exception, match="batch"):  # 5 > the model's batch range: refused, the server lives on
        _infer(url, "small", np.zeros((5, 1, 64, 64), np.float32))
    assert server.is_alive()


@needs_pytriton
def test_loadtest_reports_consistent_numbers(server: Server, tmp_path: Path) -> None:
    lines: list[str] = []
    report = loadtest(server.grpc_url, server.model_name, concurrency=(1, 2), duration_s=1.0, warmup_s=0.2, progress=lines.append)
    assert (report.protocol, report.batch, report.inputs) == ("grpc", 1, {"input": [1, 1, 64, 64]})
    assert [r.concurrency for r in report.levels] == [1, 2] and len(lines) == 4
    for r in report.levels:
        assert r.requests > 0 and r.errors == 0 and r.first_error is None
        assert r.duration_s >= 0.9 and r.infer_per_s == pytest.approx(r.requests / r.duration_s)
        assert r.samples_per_s == r.infer_per_s
        assert 0 < r.p50_ms <= r.p90_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
        assert r.max_ms < 1e3 * r.duration_s
    assert "p99 ms" in report.render() and json.loads(json.dumps(report.to_dict()))["levels"][1]["concurrency"] == 2

    batched = loadtest(server.http_url, "small", concurrency=(1,), duration_s=0.5, warmup_s=0.1, batch=2)
    assert batched.inputs == {"input": [2, 1, 64, 64]} and batched.levels[0].errors == 0
    assert batched.levels[0].samples_per_s == pytest.approx(2 * batched.levels[0].infer_per_s)
    png = tmp_path / "loadtest.png"
    report.plot(png)
    assert png_size(png) == (720, 840)  # one panel: latency over throughput


@needs_pytriton
def test_serves_a_model_repository_and_stops_on_ctrl_c(work: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "den"
    for version in (1, 3):
        (model_dir / str(version)).mkdir(parents=True)
        shutil.copy(work / "small.onnx", model_dir / str(version) / "model.onnx")
    (model_dir / "config.pbtxt").write_text(
        'name: "den"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
        'input [{ name: "input" data_type: TYPE_FP32 dims: [1, 64, 64] }]\n'
        'output [{ name: "output" data_type: TYPE_FP32 dims: [2, 64, 64] }]\n'
    )
    x = np.random.default_rng(2).standard_normal((2, 1, 64, 64)).astype(np.float32)
    before = _triton_descendants()  # the module's server, if it runs
    with pytest.raises(KeyboardInterrupt), start_server(tmp_path / "repo") as s:
        assert (s.model_name, s.model.version, s.model.max_batch) == ("den", 3, 2)
        np.testing.assert_allclose(_infer(s.http_url, "den", x), _reference(x), rtol=1e-5, atol=1e-5)
        pids = s.pids()
        assert len(pids) >= 2  # Triton and the Python backend's stub at least
        raise KeyboardInterrupt
    assert s.pids() == [] and not any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in pids)
    assert _triton_descendants() == before


def test_cli_serve_stops_cleanly_on_sigterm(work: Path, tmp_path: Path) -> None:
    """kill/systemd/docker stop send SIGTERM: Triton stops, nothing is left, exit 143 with one line."""
    import signal
    import subprocess
    import tempfile
    import time

    tmpdir = Path(tempfile.mkdtemp(prefix="wcs", dir="/tmp"))  # short: Triton's sockets live in it
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "wconv_deploy", "serve", str(work / "small.onnx"), "--port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while "Ctrl-C stops" not in (line := proc.stdout.readline()):
            assert line and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        assert list(tmpdir.glob("wconv-serve-*"))  # Triton's private workspace exists while it serves
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        assert proc.stderr is not None and proc.stderr.read().splitlines() == ["error: interrupted (SIGTERM)"]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmpdir.glob("wconv-serve-*")) == []  # workspace removed (onnxruntime leaves its own .ses)
    shutil.rmtree(tmpdir)


def test_a_too_long_tmpdir_is_a_clear_error(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_dir = tmp_path / ("x" * 80)
    long_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(long_dir))
    with pytest.raises(InputError, match="too long a path for Triton's local sockets"):
        start_server(work / "small.onnx")
    assert list(long_dir.iterdir()) == []


# --------------------------------------------------------------------------- what gets served


def test_resolve_target_reads_batching_from_the_spec(work: Path) -> None:
    served = resolve_target(work / "small.onnx")
    assert (served.name, served.runtime, served.max_batch, served.spec.names) == ("small", "ort-cpu", 4, ["input"])
    assert resolve_target(work / "small.onnx", max_batch=2, name="other").max_batch == 2
    assert resolve_target(work / "static.onnx").max_batch == 0
    for kwargs, needle in [
        ({"max_batch": 5}, "--max-batch 5 is larger than the input spec's max batch 4"),
        ({"runtime": "trt"}, "needs a TensorRT engine"),
        ({"runtime": "torch"}, "cannot serve a file"),
        ({"name": "no/slash"}, "not a valid model name"),
    ]:
        with pytest.raises(InputError, match=needle):
            resolve_target(work / "small.onnx", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not a dynamic batch"):
        resolve_target(work / "static.onnx", max_batch=2)


def test_resolve_target_in_repositories(work: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "2").mkdir(parents=True)
        shutil.copy(work / "small.onnx", tmp_path / name / "2" / "model.onnx")
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\nmax_batch_size: 3\n')
    with pytest.raises(InputError, match=r"several models; pick one with --name \(a, b\)"):
        resolve_target(tmp_path)
    served = resolve_target(tmp_path, name="b")
    assert (served.name, served.version, served.max_batch, served.artifact.name) == ("b", 2, 3, "model.onnx")
    assert resolve_target(tmp_path / "a").name == "a"
    (tmp_path / "a" / "config.pbtxt").write_text("max_batch_size: [not a number\n")
    with pytest.raises(InputError, match="config.pbtxt: not a Triton ModelConfig"):
        resolve_target(tmp_path / "a")
    with pytest.raises(InputError, match="no version folder holds model.plan"):
        resolve_target(tmp_path / "b", runtime="trt")


def test_engines_take_their_inputs_from_the_build_manifest(work: Path, tmp_path: Path) -> None:
    spec = InputSpec.parse("input:2x1x64x64", "batch=1:8")
    build = BuildConfig("fp32", profiles_from_spec(spec))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not an engine: resolving reads only the manifest")
    with pytest.raises(InputError, match="no manifest m.plan.json"):
        resolve_target(plan)
    manifest_for(
        work / "small.onnx", build, BuildPlan(False), tensorrt_version="10.3.0", gpu_name="GPU", compute_capability="9.0"
    ).write(manifest_path(plan))
    served = resolve_target(plan)
    assert (served.runtime, served.max_batch, served.spec.shapes("opt"), served.spec.shapes("max")) == (
        "trt",
        8,
        [(2, 1, 64, 64)],
        [(8, 1, 64, 64)],
    )
    with pytest.raises(InputError, match="needs an ONNX file"):
        resolve_target(plan, runtime="ort-cpu")


# --------------------------------------------------------------------------- load-test inputs and errors


def test_loadtest_inputs_from_metadata() -> None:
    meta = ([{"name": "input", "datatype": "FP32", "shape": [-1, 1, -1, -1]}], 4)
    with pytest.raises(InputError, match="variable axes .* give their sizes with --input-shape"):
        _make_inputs(meta, 1, {}, 0)
    inputs = _make_inputs(meta, 1, parse_shapes("input:3x1x32x48"), 0)
    assert inputs["input"][0].shape == (3, 1, 32, 48) and inputs["input"][0].dtype == np.float32
    assert _make_inputs(([{"name": "ids", "datatype": "INT64", "shape": [-1, 5]}], 8), 2, {}, 0)["ids"][0].shape == (2, 5)
    cases: list[tuple[dict[str, tuple[int, ...]], int, str]] = [
        ({"other": (1,)}, 1, "not inputs of the model"),
        ({"input": (1, 2, 8, 8)}, 1, "does not fit"),
        ({}, 5, "larger than the model's max_batch_size 4"),
    ]
    assert _make_inputs(([{"name": "x", "datatype": "FP16", "shape": [2, 3]}], 0), 1, {}, 0)["x"][0].shape == (2, 3)
    with pytest.raises(InputError, match="does not batch"):
        _make_inputs(([{"name": "x", "datatype": "FP16", "shape": [2, 3]}], 0), 2, {}, 0)
    for shapes, batch, needle in cases:
        with pytest.raises(InputError, match=needle):
            _make_inputs(meta, batch, shapes, 0)


@needs_tritonclient
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_loadtest_names_an_unreachable_url(scheme: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"{scheme}://127.0.0.1:{port}"
    with pytest.raises(InputError, match=f"no Triton server answers at {url}"):
        loadtest(url, "m", duration_s=0.1)
    with pytest.raises(InputError, match="protocol must be http or grpc"):
        loadtest(url, "m", protocol="grpc" if scheme == "http" else "http")
    with pytest.raises(InputError, match="is not host:port"):
        loadtest("http://127.0.0.1", "m")


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    for module in ("pytriton", "pytriton.triton", "tritonclient", "tritonclient.http"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if absent
    for call in (
        lambda: require("pytriton.triton", "serve"),
        lambda: start_server(work / "small.onnx"),
        lambda: loadtest("http://127.0.0.1:1", "m"),
    ):
        with pytest.raises(InputError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and message.endswith(SERVE_HINT), message
