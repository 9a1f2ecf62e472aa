"""The latency harness: statistics on known samples, every available runtime agreeing with torch,
unavailable runtimes reported (not crashed on), wrong runtimes flagged, and the CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from tests.contract import DNCNN, assert_ok, assert_one_line_error, invoke
from wconv_deploy.bench import BenchReport, BenchRow, default_runtimes, latency_stats, percentile, run_bench, time_calls
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.precision import Precision
from wconv_deploy.runtimes import create_runtime, names, unavailable_reason
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model, get_entry

ONNX_RUNTIMES = names("onnx")


def test_statistics_on_known_samples() -> None:
    seconds = [i / 1000 for i in range(1, 101)]  # 1 ms .. 100 ms
    s = latency_stats(seconds, batch=4)
    assert (s.iterations, s.min_ms, s.max_ms) == (100, pytest.approx(1.0), pytest.approx(100.0))
    assert s.mean_ms == pytest.approx(50.5) and s.median_ms == pytest.approx(50.5)
    assert (s.p90_ms, s.p95_ms, s.p99_ms) == (pytest.approx(90.0), pytest.approx(95.0), pytest.approx(99.0))
    assert s.cv == pytest.approx(statistics.pstdev(range(1, 101)) / 50.5)
    assert s.throughput == pytest.approx(4 / 0.0505)
    flat = latency_stats([0.002] * 5, batch=1)
    assert flat.cv == 0 and flat.p99_ms == pytest.approx(2.0) and flat.throughput == pytest.approx(500.0)
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0], 0) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_time_calls_honours_iterations_and_warmup() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), warmup_ms=0, iterations=7, min_duration_s=0)
    assert len(times) == 7 and len(calls) == 8  # one warm-up call at least, then the timed ones
    assert all(t >= 0 for t in times)


def test_error_limits_follow_precision() -> None:
    assert Precision.FP32.error_limit == 1e-4 and Precision.BF16.error_limit == 5e-2 and Precision.FP16.error_limit == 5e-2
    assert BenchRow("x", "cpu", Precision.FP32, 1, max_rel_error=1e-3).wrong
    assert not BenchRow("x", "cpu", Precision.BF16, 1, max_rel_error=1e-3).wrong
    assert not BenchRow("x", "cpu", Precision.FP32, 1).wrong  # no reference: nothing to judge


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet18_cifar", "dncnn", "nafnet"])
def test_every_available_runtime_matches_torch_on_zoo_models(tmp_path: Path, name: str) -> None:
    model = create_model(name).eval()
    spec = InputSpec.parse(get_entry(name).input_shape)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, spec, exporter="torchscript", validate_output=False)  # fast; dynamo is tested elsewhere
    feeds = {"input": spec.example_inputs(seed=3)[0].numpy()}
    expected = create_runtime("torch", model=model).run(feeds)[0]
    ran = []
    for runtime in ONNX_RUNTIMES:
        if unavailable_reason(runtime):
            continue
        rt = create_runtime(runtime, onnx_path=onnx_path)
        out = rt.run(feeds)[0]
        err = float(abs(out - expected).max() / abs(expected).max())
        assert err <= rt.describe().precision.error_limit, (runtime, err)
        ran.append(runtime)
    assert {"ort-cpu", "openvino"} <= set(ran)  # installed by make test


def test_run_bench_reports_unavailable_runtimes_and_flags_wrong_ones(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("dncnn", depth=3, width=8).eval()
    other = create_model("dncnn", depth=3, width=8).eval()  # different random weights
    spec = InputSpec.parse("1x1x16x16")
    fast = {"warmup_ms": 0, "iterations": 3, "min_duration_s": 0}
    wanted = [r for r in names() if "compile" not in r]  # torch.compile takes minutes on 2 cores
    report = run_bench(runtimes=wanted, spec=spec, model=model, batches=[1, 2], **fast)
    assert len(report.rows) == 2 * len(wanted)
    for row in report.rows:
        if unavailable_reason(row.runtime):
            continue
        assert row.unavailable is None and row.stats is not None and row.stats.iterations >= 3, row
        assert not row.wrong, row
    missing = [r for r in report.rows if r.unavailable]
    assert all(unavailable_reason(r.runtime) == r.unavailable for r in missing)
    text = report.render()
    for r in missing:
        assert f"{r.runtime}: {r.unavailable}" in text
    json.dumps(report.to_dict())

    onnx_path = tmp_path / "other.onnx"
    export_onnx(other, onnx_path, spec.with_dynamic("batch"), exporter="torchscript", validate_output=False)
    wrong = run_bench(runtimes=["torch", "ort-cpu"], spec=spec, model=model, onnx_path=onnx_path, **fast)
    by_name = {r.runtime: r for r in wrong.rows}
    assert by_name["ort-cpu"].wrong and not by_name["torch"].wrong
    assert "fastest correct runtime at batch 1 on this device: torch" in wrong.render()
    assert "WRONG" in wrong.render()


def test_static_batch_artifact_fails_its_row_only(dncnn_static_onnx: Path) -> None:
    spec = InputSpec.parse("1x1x16x16")
    report = run_bench(
        runtimes=["ort-cpu"], spec=spec, onnx_path=dncnn_static_onnx, batches=[1, 3], warmup_ms=0, iterations=2, min_duration_s=0
    )
    ok, failed = report.rows
    assert ok.stats is not None and failed.unavailable is not None and "batch 3" in failed.unavailable
    assert report.reference.startswith("ONNX Runtime CPU")


def test_plot_needs_measurements(tmp_path: Path) -> None:
    report = BenchReport([BenchRow("ort-cuda", "-", "-", 1, unavailable="no GPU")], {}, {}, "nothing")
    with pytest.raises(InputError, match="nothing was measured"):
        report.plot(tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_bench_cli_table_json_and_plot(tmp_path: Path) -> None:
    from PIL import Image

    r = assert_ok(invoke(
        "bench", DNCNN, "--batch", "1,2",
        "--input-shape", "1x1x16x16", "--warmup-ms", "0", "--iterations", "3", "--min-duration-s", "0",
        "--json-file", tmp_path / "b.json", "--plot", tmp_path / "b.png",
    ))  # fmt: skip
    assert "device: " in r.stdout and "fastest correct runtime at batch 2" in r.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert {row["runtime"] for row in data["rows"]} == set(default_runtimes())
    for row in data["rows"]:  # what cannot run here is reported with its reason, not crashed on
        assert (row["stats"] is None) == (row["unavailable"] is not None), row
        if row["unavailable"]:
            assert f"{row['runtime']}: {row['unavailable']}" in r.stdout
    assert data["environment"]["versions"]["torch"] == torch.__version__
    with Image.open(tmp_path / "b.png") as png:
        assert png.size == (720, 840)  # one device: p50/p99 latency above throughput


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--runtimes", "torch,tflite"], "unknown runtime 'tflite'"),
        (["--batch", "1,x"], "--batch"),
        (["--batch", "0"], "positive"),
    ],
)
def test_bench_cli_bad_input(args: list[str], needle: str) -> None:
    r = invoke("bench", DNCNN, "--input-shape", "1x1x16x16", *args)
    assert_one_line_error(r, 2, needle)


def test_tensorrt_runtime_says_why_it_cannot_run(tmp_path: Path) -> None:
    reason = unavailable_reason("trt")
    if reason is None:
        pytest.skip("TensorRT and a GPU are present; the GPU test below covers them")
    assert "tensorrt" in reason.lower() or "cuda" in reason.lower()
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"not an engine")
    with pytest.raises(InputError, match="trt: "):
        create_runtime("trt", engine_path=engine)
    assert_one_line_error(invoke("bench", engine, "--runtimes", "trt", "--input-shape", "1x1x16x16"), 2, "trt: ")
    assert_one_line_error(invoke("bench", tmp_path / "missing.plan", "--input-shape", "1x1x16x16"), 2, "does not exist")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(unavailable_reason("trt") is not None, reason=str(unavailable_reason("trt")))
def test_tensorrt_engine_matches_torch(tmp_path: Path) -> None:  # pragma: no cover - needs TensorRT and CUDA
    import tensorrt as trt

    model = create_model("dncnn", depth=4, width=16).eval()
    spec = InputSpec.parse("1x1x32x32")
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, spec, validate_output=False)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    engine = tmp_path / "m.plan"
    engine.write_bytes(bytes(plan))
    report = run_bench(
        runtimes=["trt", "trt-graph"], spec=spec, model=model, engine_path=engine, warmup_ms=0, iterations=5, min_duration_s=0
    )
    for row in report.rows:
        assert row.stats is not None and row.device_stats is not None and not row.wrong, row


def test_a_runtime_asked_for_by_name_must_run() -> None:
    if unavailable_reason("ort-cuda") is None:
        pytest.skip("ort-cuda can run here")
    r = invoke("bench", DNCNN, "--input-shape", "1x1x16x16", "--runtimes", "ort-cpu,ort-cuda")
    assert_one_line_error(r, 2, "ort-cuda: ", str(unavailable_reason("ort-cuda")))
