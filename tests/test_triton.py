"""Triton model repositories: packaging exported ONNX files and (fabricated) TensorRT engines,
Triton's batching rules, the offline check against deliberately broken configs, and atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
from wconv_deploy.loading import load_model
from wconv_deploy.ship import check as ship_check
from wconv_deploy.ship import package as ship_package
from wconv_deploy.ship.check import check_model, check_repository
from wconv_deploy.ship.package import package
from wconv_deploy.ship.serve import resolve_target
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import create_model


@pytest.fixture(scope="module")
def mc() -> Any:
    """Triton's ModelConfig protobuf module (the tests that need it skip without the serve extra)."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'wconv-deploy[serve]'")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def batched(onnx_dir: Path) -> Path:
    """The zoo denoiser with dynamic batch (1..8), height and width."""
    path = onnx_dir / "denoiser.onnx"
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    export_onnx(load_model("zoo:denoiser"), path, spec, exporter="torchscript", validate_output=False)
    return path


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dncnn", depth=3, width=8).eval()


@pytest.fixture(scope="module")
def static(onnx_dir: Path, small: torch.nn.Module) -> Path:
    """Every axis fixed: 1x1x16x16."""
    path = onnx_dir / "static.onnx"
    export_onnx(small, path, InputSpec.parse("1x1x16x16"), exporter="torchscript", validate_output=False)
    return path


@pytest.fixture(scope="module")
def spatial(onnx_dir: Path, small: torch.nn.Module) -> Path:
    """Height and width vary, the batch is fixed at 1."""
    path = onnx_dir / "spatial.onnx"
    export_onnx(small, path, InputSpec.parse("1x1x16x16", "height,width"), exporter="torchscript", validate_output=False)
    return path


class _SumOverBatch(torch.nn.Module):
    """A model whose output's axis 0 is fixed at 1 however many samples come in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sum(0, keepdim=True)


@pytest.fixture(scope="module")
def pooled(onnx_dir: Path) -> Path:
    """Exported with --dynamic batch, but its output sums over the batch."""
    torch.manual_seed(0)
    path = onnx_dir / "pooled.onnx"
    spec = InputSpec.parse("1x1x16x16", "batch")
    export_onnx(_SumOverBatch().eval(), path, spec, exporter="torchscript", validate_output=False)
    return path


def read_config(mc: Any, folder: Path) -> Any:
    from google.protobuf import text_format

    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


def fake_engine(
    folder: Path,
    onnx_file: Path,
    cc: str,
    *,
    name: str | None = None,
    max_shape: str | None = "4x1x64x64",
    **changes: Any,
) -> Path:
    """Random bytes as the engine, with a real manifest written through the exporter's API."""
    engine = folder / (name or f"m_sm{cc.replace('.', '')}.plan")
    engine.write_bytes(os.urandom(4096))
    build = BuildConfig("fp16", profiles_from_spec(OnnxInfo.read(onnx_file).spec, max_shape=max_shape))
    m = manifest_for(
        onnx_file, build, BuildPlan(False, ("FP16",)), tensorrt_version="10.3.0", gpu_name="NVIDIA GPU", compute_capability=cc
    )
    for k, v in changes.items():
        setattr(m, k, v)
    m.write(manifest_path(engine))
    return engine


def listing(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- ONNX


def test_package_onnx_with_a_dynamic_batch(mc: Any, batched: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    said: list[str] = []
    report = package([batched], repo, "denoiser", progress=said.append)
    folder = repo / "denoiser"
    cfg = read_config(mc, folder)
    assert (cfg.name, cfg.platform, cfg.max_batch_size, cfg.default_model_filename) == (
        "denoiser", "onnxruntime_onnx", 8, "model.onnx",
    )  # fmt: skip
    [inp], [out] = cfg.input, cfg.output
    assert (inp.name, mc.DataType.Name(inp.data_type), list(inp.dims)) == ("input", "TYPE_FP32", [1, -1, -1])
    assert (out.name, mc.DataType.Name(out.data_type), list(out.dims)) == ("output", "TYPE_FP32", [1, -1, -1])
    [group] = cfg.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_CPU)
    assert not cfg.HasField("dynamic_batching") and not cfg.cc_model_filenames
    assert (folder / "1" / "model.onnx").read_bytes() == batched.read_bytes()

    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["1/model.golden.npz", "1/model.onnx", "config.pbtxt"]  # export's golden file too
    assert manifest["golden"] == "1/model.golden.npz"
    for rel, sha in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == sha
    [artifact] = manifest["artifacts"]
    assert artifact["source"] == os.fspath(batched.resolve()) and artifact["file"] == "1/model.onnx"
    assert json.loads(artifact["metadata"]["wconv_deploy.input_spec"]) == OnnxInfo.read(batched).spec.to_dict()
    assert manifest["options"]["kind"] == "cpu" and manifest["wconv_deploy_version"]

    assert report.check.passed and report.max_batch_size == 8 and not report.replaced
    assert report.files == manifest["files"] and report.config == (folder / "config.pbtxt").read_text()
    assert "batches up to 8" in report.render() and "wrote" in report.render()
    json.dumps(report.to_dict())
    assert any("checking" in s for s in said)
    assert sorted(os.listdir(repo)) == ["denoiser"]  # no staging folder left
    assert check_repository(repo).passed and check_model(folder).passed


def test_package_options_reach_the_config(mc: Any, batched: Path, tmp_path: Path) -> None:
    package(
        [batched], tmp_path, "d", version=3, max_batch=4, instances=2, kind="gpu",
        dynamic_batching=True, preferred_batch=(2, 4), max_queue_delay_us=500,
    )  # fmt: skip
    cfg = read_config(mc, tmp_path / "d")
    assert cfg.max_batch_size == 4 and (tmp_path / "d" / "3" / "model.onnx").is_file()
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    package([batched], tmp_path, "e", dynamic_batching=True)
    cfg = read_config(mc, tmp_path / "e")
    assert cfg.HasField("dynamic_batching") and not cfg.dynamic_batching.preferred_batch_size
    assert check_repository(tmp_path).passed


@pytest.mark.parametrize(("fixture", "dims"), [("static", [1, 1, 16, 16]), ("spatial", [1, 1, -1, -1])])
def test_a_model_without_a_batch_axis_gets_max_batch_size_0(
    mc: Any, request: pytest.FixtureRequest, tmp_path: Path, fixture: str, dims: list[int]
) -> None:
    report = package([request.getfixturevalue(fixture)], tmp_path, "m")
    cfg = read_config(mc, tmp_path / "m")
    assert cfg.max_batch_size == 0 and report.max_batch_size == 0
    assert list(cfg.input[0].dims) == dims and list(cfg.output[0].dims) == dims
    assert "no batching" in report.render() and report.check.passed


def test_a_model_whose_output_does_not_batch_is_not_batching_in_package_check_and_serve(
    mc: Any, pooled: Path, tmp_path: Path
) -> None:
    info = OnnxInfo.read(pooled)
    assert info.spec.max_batch == 8 and info.outputs[0].shape == (1, 1, 16, 16)  # the input batches, the output not
    report = package([pooled], tmp_path / "repo", "m")
    cfg = read_config(mc, tmp_path / "repo" / "m")
    assert cfg.max_batch_size == 0 and report.max_batch_size == 0 and report.check.passed
    assert list(cfg.input[0].dims) == [-1, 1, 16, 16] and list(cfg.output[0].dims) == [1, 1, 16, 16]
    for target in (pooled, tmp_path / "repo"):  # serve decides as package did, for the file and for the entry
        assert resolve_target(target).max_batch == 0
    for call in (lambda: package([pooled], tmp_path / "repo", "m", max_batch=2), lambda: resolve_target(pooled, max_batch=2)):
        with pytest.raises(InputError, match="--max-batch 2: the model does not batch \\(axis 0 of output 'output' is fixed"):
            call()
    platform = 'platform: "onnxruntime_onnx"'
    _edit(tmp_path / "repo" / "m" / "config.pbtxt", platform, f"{platform}\nmax_batch_size: 4")
    problems = {p.field: p.message for p in check_repository(tmp_path / "repo").problems}
    assert problems["max_batch_size"] == "config 4, model 0 (axis 0 of output 'output' is fixed: [1, 1, 16, 16])"


def test_an_onnx_with_external_data_is_packaged_with_it(batched: Path, tmp_path: Path, mc: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(os.fspath(batched))
    onnx.save(model, os.fspath(src / "big.onnx"), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    report = package([src / "big.onnx"], tmp_path / "repo", "big")
    assert sorted(report.files) == ["1/big.onnx.data", "1/model.onnx", "config.pbtxt"]
    assert (tmp_path / "repo/big/1/big.onnx.data").read_bytes() == (src / "big.onnx.data").read_bytes()
    assert check_repository(tmp_path / "repo").passed


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("artifact", "kwargs", "needles"),
    [
        ("batched", {"max_batch": 16}, ["--max-batch 16", "the input spec's max batch 8"]),
        ("batched", {"max_batch": 0}, ["--max-batch 0", "auto-complete", "1 to 8"]),
        ("batched", {"max_batch": -1}, ["--max-batch -1"]),
        ("static", {"max_batch": 4}, ["--max-batch 4", "does not batch", "axis 0 of input 'input' is not a dynamic batch"]),
        ("spatial", {"dynamic_batching": True}, ["--dynamic-batching", "does not"]),
        ("batched", {"dynamic_batching": True, "preferred_batch": (4, 16)}, ["--preferred-batch 4,16", "max_batch_size 8"]),
        ("batched", {"preferred_batch": (4,)}, ["need --dynamic-batching"]),
        ("batched", {"max_queue_delay_us": 10}, ["need --dynamic-batching"]),
        ("batched", {"kind": "tpu"}, ["--kind 'tpu'"]),
        ("batched", {"version": 0}, ["--version 0"]),
        ("batched", {"instances": 0}, ["--instances 0"]),
        ("batched", {"name": "../up"}, ["--name '../up'"]),
        ("batched", {"name": ".hidden"}, ["--name '.hidden'"]),
    ],
)
def test_bad_options_are_one_line_input_errors(
    request: pytest.FixtureRequest, tmp_path: Path, artifact: str, kwargs: dict[str, Any], needles: list[str], mc: Any
) -> None:
    kwargs = {"name": "m", **kwargs}
    with pytest.raises(InputError) as e:
        package([request.getfixturevalue(artifact)], tmp_path / "repo", **kwargs)
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert not (tmp_path / "repo").exists()  # refused before anything was written


def test_bad_artifacts_are_one_line_input_errors(batched: Path, static: Path, tmp_path: Path, mc: Any) -> None:
    engine = fake_engine(tmp_path, batched, "9.0")
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"engine")
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(os.fspath(static))
    del model.metadata_props[:]
    onnx.save(model, os.fspath(foreign))
    cases = [
        ([batched, engine], "not both"),
        ([batched, static], "one ONNX file"),
        ([tmp_path / "nope.onnx"], "does not exist"),
        ([tmp_path / "model.pt"], "not an ONNX file or a TensorRT engine"),
        ([], "nothing to package"),
        ([bare], "no manifest bare.plan.json"),
        ([foreign], "no wconv-deploy input spec"),
    ]
    for artifacts, needle in cases:
        with pytest.raises(InputError) as e:
            package(artifacts, tmp_path / "repo", "m")
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
    with pytest.raises(InputError, match="--kind cpu: TensorRT engines run only on GPUs"):
        package([engine], tmp_path / "repo", "m", kind="cpu")
    with pytest.raises(InputError, match="folder .* does not exist"):
        package([batched], tmp_path / "no" / "repo", "m")
    assert not (tmp_path / "repo").exists()


def test_missing_tritonclient_names_the_serve_extra(batched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)  # makes the import fail
    for call in (lambda: package([batched], tmp_path, "m"), lambda: check_repository(tmp_path)):
        with pytest.raises(InputError) as e:
            call()
        message = str(e.value)
        assert message.startswith("tritonclient.grpc.model_config_pb2 is not installed"), message
        assert "\n" not in message and message.endswith("pip install 'wconv-deploy[serve]'"), message
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- engines


def test_package_one_engine(mc: Any, batched: Path, tmp_path: Path) -> None:
    engine = fake_engine(tmp_path, batched, "9.0")
    report = package([engine], tmp_path / "repo", "trt")
    folder = tmp_path / "repo" / "trt"
    cfg = read_config(mc, folder)
    assert (cfg.platform, cfg.max_batch_size, cfg.default_model_filename) == ("tensorrt_plan", 4, "model.plan")
    assert list(cfg.input[0].dims) == [1, -1, -1] and mc.DataType.Name(cfg.output[0].data_type) == "TYPE_FP32"
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]  # the default for engines
    assert not cfg.cc_model_filenames and (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    [artifact] = json.loads((folder / "manifest.json").read_text())["artifacts"]
    assert BuildManifest.from_dict(artifact["build_manifest"]) == BuildManifest.read(manifest_path(engine))
    assert artifact["compute_capability"] == "9.0"
    assert BuildManifest.read(folder / "1" / "model.plan.json") == BuildManifest.read(
        manifest_path(engine)
    )  # for the trt runtime
    assert report.check.passed and any("TensorRT 10.3.0" in n for n in report.notes)
    served = resolve_target(tmp_path / "repo")  # what `wconv-deploy serve` would run (no GPU needed to resolve)
    assert (served.name, served.artifact, served.runtime, served.max_batch) == ("trt", folder / "1" / "model.plan", "trt", 4)
    with pytest.raises(InputError, match="--max-batch 8 is larger than the profile's max batch 4"):
        package([engine], tmp_path / "repo", "trt", max_batch=8)


def test_engines_for_two_gpus_map_compute_capabilities(mc: Any, batched: Path, tmp_path: Path) -> None:
    hopper = fake_engine(tmp_path, batched, "9.0")
    ampere = fake_engine(tmp_path, batched, "8.6", max_shape="2x1x64x64")
    report = package([hopper, ampere], tmp_path / "repo", "trt")
    folder = tmp_path / "repo" / "trt"
    cfg = read_config(mc, folder)
    assert dict(cfg.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.6": "model.sm86.plan"}
    assert cfg.default_model_filename == "model.sm90.plan"  # the first one given
    assert cfg.max_batch_size == 2  # the smaller profile: every engine must take it
    assert (folder / "1/model.sm90.plan").read_bytes() == hopper.read_bytes()
    assert (folder / "1/model.sm86.plan").read_bytes() == ampere.read_bytes()
    assert report.check.passed and any("sm 8.6 -> model.sm86.plan" in n for n in report.notes)


def test_engine_refusals(batched: Path, static: Path, tmp_path: Path, mc: Any) -> None:
    a = fake_engine(tmp_path, batched, "9.0", name="a.plan")
    b = fake_engine(tmp_path, batched, "9.0", name="b.engine")
    with pytest.raises(InputError, match="several engines are built for sm 9.0"):
        package([a, b], tmp_path / "repo", "trt")
    other = fake_engine(tmp_path, static, "8.6", max_shape=None)
    with pytest.raises(InputError, match="different inputs or outputs"):
        package([b, other], tmp_path / "repo", "trt")
    newer = fake_engine(tmp_path, batched, "8.9", tensorrt_version="10.7.0")
    with pytest.raises(InputError, match="TensorRT 10.3.0 and 10.7.0"):
        package([b, newer], tmp_path / "repo", "trt")
    profile = {"input": {"min": [2, 1, 16, 16], "opt": [2, 1, 32, 32], "max": [4, 1, 64, 64]}}
    from_two = fake_engine(tmp_path, batched, "8.0", profiles=[profile])
    with pytest.raises(InputError, match="profile starts at batch 2 but Triton sends batches from 1"):
        package([from_two], tmp_path / "repo", "trt")
    assert not (tmp_path / "repo").exists()


def test_an_older_engine_manifest_reads_its_onnx(mc: Any, batched: Path, tmp_path: Path) -> None:
    onnx_copy = tmp_path / "copy.onnx"
    onnx_copy.write_bytes(batched.read_bytes())
    engine = fake_engine(tmp_path, onnx_copy, "9.0")
    data = json.loads(manifest_path(engine).read_text())
    del data["io"]  # as written before the field existed
    manifest_path(engine).write_text(json.dumps(data))
    assert BuildManifest.read(manifest_path(engine)).io is None
    assert package([engine], tmp_path / "repo", "trt").check.passed
    onnx_copy.write_bytes(onnx_copy.read_bytes() + b"\n")
    with pytest.raises(InputError, match="changed since the engine was built"):
        package([engine], tmp_path / "repo", "trt")
    onnx_copy.unlink()
    with pytest.raises(InputError, match="its ONNX .* is gone: rebuild the engine"):
        package([engine], tmp_path / "repo", "trt")


# --------------------------------------------------------------------------- the offline check


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def onnx_repo(mc: Any, batched: Path, tmp_path: Path) -> Path:
    package([batched], tmp_path / "repo", "den")
    return tmp_path / "repo"


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        ("dims: [1, -1, -1]", "dims: [1, 256, 256]", "input[0].dims", "config [1, 256, 256], model [1, -1, -1]"),
        ("data_type: TYPE_FP32", "data_type: TYPE_FP16", "input[0].data_type", "config TYPE_FP16, model TYPE_FP32"),
        ("max_batch_size: 8", "max_batch_size: 16", "max_batch_size", "config 16, model 8 (the input spec's max batch)"),
        ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "platform", "config 'tensorrt_plan', model model.onnx"),
        ('name: "den"', 'name: "other"', "name", "config 'other', folder 'den'"),
        ('name: "output"', 'name: "out"', "output", "config ['out'], model ['output']"),
        ("max_batch_size: 8", "max_batch_size: 0", "max_batch_size", "config 0, model batches up to 8"),
        ("max_batch_size: 8", "max_batch_size: 8\ndynamic_batching { preferred_batch_size: [16] }",
         "dynamic_batching.preferred_batch_size", "config [16], max_batch_size 8"),
        ('default_model_filename: "model.onnx"', 'default_model_filename: "model_v2.onnx"',
         "default_model_filename", "1/model_v2.onnx is missing"),
    ],
)  # fmt: skip
def test_a_broken_config_is_rejected_naming_the_field_and_both_values(
    onnx_repo: Path, old: str, new: str, field: str, message: str
) -> None:
    config = onnx_repo / "den" / "config.pbtxt"
    _edit(config, old, new)
    report = check_repository(onnx_repo)
    assert not report.passed
    found = [p for p in report.problems if p.field == field]
    assert found and message in found[0].message, report.render()
    assert found[0].model == "den"
    # an edited config no longer has the checksum the manifest recorded
    assert any(p.field == "config.pbtxt" and "sha256 in manifest.json" in p.message for p in report.problems)
    text = report.render()
    assert field in text and message in text and "FAILED" in text
    with pytest.raises(MismatchError) as e:
        report.raise_for_failure()
    assert "\n" not in str(e.value) and e.value.report is report
    assert {"field": field, "message": found[0].message} in report.to_dict()["models"][0]["problems"]


def test_unparsable_config_is_reported_with_line_and_column(onnx_repo: Path) -> None:
    _edit(onnx_repo / "den" / "config.pbtxt", "max_batch_size: 8", "max_batch_size: eight")
    [problem] = check_repository(onnx_repo).problems
    assert problem.field == "config.pbtxt" and re.search(r"\d+:\d+", problem.message), problem.message
    assert "not a Triton ModelConfig" in problem.message


def test_missing_files_and_checksums(onnx_repo: Path) -> None:
    folder = onnx_repo / "den"
    model = onnx.load(os.fspath(folder / "1" / "model.onnx"))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "note": "edited"})
    onnx.save(model, os.fspath(folder / "1" / "model.onnx"))  # same graph, other bytes
    (folder / "1" / "extra.txt").write_text("stray")
    problems = {p.field: p.message for p in check_repository(onnx_repo).problems}
    assert problems.keys() == {"1/model.onnx", "1/extra.txt"}
    assert re.fullmatch(r"sha256 in manifest.json [0-9a-f]{12}, file [0-9a-f]{12}", problems["1/model.onnx"])
    assert "not listed in manifest.json" in problems["1/extra.txt"]

    (folder / "1" / "model.onnx").unlink()
    problems = {p.field: p.message for p in check_repository(onnx_repo).problems}
    assert problems["default_model_filename"] == "1/model.onnx is missing"
    assert problems["1/model.onnx"] == "listed in manifest.json but missing"
    (folder / "manifest.json").unlink()
    assert "manifest.json" in {p.field for p in check_repository(onnx_repo).problems}


def test_broken_engine_configs(mc: Any, batched: Path, tmp_path: Path) -> None:
    engines = [fake_engine(tmp_path, batched, "9.0"), fake_engine(tmp_path, batched, "8.6")]
    package(engines, tmp_path / "repo", "trt")
    config = tmp_path / "repo" / "trt" / "config.pbtxt"
    _edit(config, "max_batch_size: 4", "max_batch_size: 16")
    _edit(config, "kind: KIND_GPU", "kind: KIND_CPU")
    _edit(config, 'value: "model.sm86.plan"', 'value: "model.sm90.plan"')
    problems = {p.field: p.message for p in check_repository(tmp_path / "repo").problems}
    assert problems["max_batch_size"] == "config 16, model 4 (the profile's max batch)"
    assert problems["instance_group[0].kind"] == "config KIND_CPU, model tensorrt_plan runs on KIND_GPU"
    assert problems["cc_model_filenames['8.6']"] == "config model.sm90.plan, model built for sm 9.0"


def test_repository_level_problems(onnx_repo: Path, tmp_path: Path) -> None:
    (onnx_repo / "empty").mkdir()
    (onnx_repo / ".den.x1y2.tmp").mkdir()  # as an interrupted package leaves it: Triton would try to load it
    report = check_repository(onnx_repo)
    assert [m.name for m in report.models] == [".den.x1y2.tmp", "den", "empty"]
    assert [(p.model, p.field) for p in report.problems] == [(".den.x1y2.tmp", "folder"), ("empty", "config.pbtxt")]
    assert "Triton tries to load it" in report.problems[0].message and report.problems[1].message == "missing"
    (tmp_path / "none").mkdir()
    nothing = check_repository(tmp_path / "none")
    assert not nothing.passed and "no model folders" in nothing.render()
    with pytest.raises(MismatchError, match="no model folders"):
        nothing.raise_for_failure()
    with pytest.raises(InputError, match="no such folder"):
        check_repository(tmp_path / "absent")


# --------------------------------------------------------------------------- atomicity


def test_packaging_again_replaces_the_entry(mc: Any, onnx_repo: Path, batched: Path) -> None:
    report = package([batched], onnx_repo, "den", max_batch=2, version=2)
    assert report.replaced and read_config(mc, onnx_repo / "den").max_batch_size == 2
    assert sorted(os.listdir(onnx_repo)) == ["den"] and sorted(os.listdir(onnx_repo / "den")) == [
        "2", "config.pbtxt", "manifest.json",
    ]  # fmt: skip
    assert "replacing the previous entry" in report.render()


@pytest.mark.parametrize("failure", ["copy", "check"])
def test_a_failed_package_leaves_the_repository_as_it_was(
    onnx_repo: Path, batched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    before = listing(onnx_repo)
    if failure == "copy":

        def broken_copy(src: Any, dst: Any, length: int = 0) -> None:  # the bytes are copied from an open descriptor
            dst.write(b"half")
            raise OSError("disk full")

        monkeypatch.setattr(ship_package.shutil, "copyfileobj", broken_copy)
        expected: type[Exception] = OSError
    else:
        monkeypatch.setattr(ship_check, "_compare_io", lambda mc, cfg, io, check: check.add("input", "injected"))
        expected = MismatchError
    with pytest.raises(expected):
        package([batched], onnx_repo, "den", max_batch=2)
    assert listing(onnx_repo) == before and sorted(os.listdir(onnx_repo)) == ["den"]
    with pytest.raises(expected):
        package([batched], tmp_path / "fresh", "den")
    assert not (tmp_path / "fresh").exists()  # the folder this call made is gone again


def test_build_manifest_records_the_graph_inputs_and_outputs(batched: Path) -> None:
    build = BuildConfig("fp32", profiles_from_spec(OnnxInfo.read(batched).spec))
    m = manifest_for(batched, build, BuildPlan(False), tensorrt_version="10.3.0", gpu_name="G", compute_capability="9.0")
    assert m.io == {
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
    }
    assert BuildManifest.from_dict(m.to_dict()) == m
    with pytest.raises(InputError, match="io is not"):
        BuildManifest.from_dict({**m.to_dict(), "io": [1]})
