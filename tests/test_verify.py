"""`verify`: the golden inputs re-run on the target and through a live server, compared with the
golden outputs; a tampered package and a wrong served model fail naming the output; no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.contract import assert_ok, invoke
from tests.serving import needs_pytriton
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.precision import convert_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.ship.package import package
from wconv_deploy.spec import InputSpec


@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained zoo denoiser exported (a range admitting the 256x256 photo), converted to int8
    and packaged as REPO/den. (The catalogue's tiny DNCNN is untrained: its residual is so small
    that int8 tolerances cannot tell a tampered weight.)"""
    d = tmp_path_factory.mktemp("verify")
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:2,height=16:256,width=16:256")
    export_onnx(load_model("zoo:denoiser"), d / "dn.onnx", spec, exporter="torchscript", validate_output=False)
    convert_onnx(d / "dn.onnx", d / "dn.int8.onnx", "int8")
    package([d / "dn.int8.onnx"], d / "repo", "den")
    return d / "repo"


def test_export_writes_golden_and_verify_passes(dncnn_onnx: Path) -> None:
    report = json.loads(assert_ok(invoke("verify", dncnn_onnx, "--json")).stdout)
    assert report["passed"] is True and report["sha256_matches"] is True
    assert report["validation"]["runtime"] == "ort-cpu"
    assert [c["label"].split()[0] for c in report["validation"]["cases"]] == ["random"] * 3  # the spec's corners


def test_package_ships_the_golden_file_and_verify_passes(int8_repo: Path) -> None:
    manifest = json.loads((int8_repo / "den" / "manifest.json").read_text())
    assert manifest["golden"] == "1/model.golden.npz" and "1/model.golden.npz" in manifest["files"]
    for target in (int8_repo, int8_repo / "den"):
        r = assert_ok(invoke("verify", target))
        assert "verified" in r.stdout and "int8" not in r.stderr
    assert_ok(invoke("package", "--check", int8_repo))


def _scale_first_conv_weight(path: Path, factor: float) -> None:
    """Scale the first Conv's weight (its DequantizeLinear scale, in a QDQ graph) in place."""
    model = onnx.load(path)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = conv.input[1]
    if weight in producers and producers[weight].op_type == "DequantizeLinear":
        weight = producers[weight].input[1]  # the weight's scale
    t = inits[weight]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(model, path)


def test_tampered_package_fails_naming_the_output(int8_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(int8_repo, repo)
    _scale_first_conv_weight(repo / "den" / "1" / "model.onnx", 3.0)
    r = invoke("verify", repo / "den")
    assert r.exit_code == 1, r.output
    error = r.stderr.strip().splitlines()
    assert len(error) == 1 and "output" in error[0] and "sha256" in error[0], error
    assert "FAIL" in r.stdout
    report = json.loads(invoke("verify", repo / "den", "--json").stdout)
    assert report["passed"] is False and report["validation"]["failed_outputs"] == ["output"]
    assert report["sha256_matches"] is False
    assert report["task"]["psnr_variant_db"] < report["task"]["psnr_fp32_torch_db"] - 1  # the photo shows it too


def test_verify_without_golden_is_one_line(dncnn_static_onnx: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    shutil.copy(dncnn_static_onnx, bare)
    r = invoke("verify", bare)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "golden" in r.stderr and len(r.stderr.splitlines()) == 1


#: Runs the CLI with every import of torch refused and recorded; prints what was attempted.
_NO_TORCH = """
import importlib.abc, json, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
from wconv_deploy.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="wconv-deploy")
except SystemExit as e:
    code = e.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
print(json.dumps({"attempts": attempts, "loaded": loaded, "code": code}), file=sys.stderr)
"""


def test_verify_never_imports_torch(int8_repo: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "verify", int8_repo / "den"], capture_output=True, text=True, timeout=300
    )
    result = json.loads(r.stderr.strip().splitlines()[-1])
    assert result == {"attempts": [], "loaded": [], "code": 0}, r.stderr
    assert "verified" in r.stdout


@needs_pytriton
def test_verify_through_a_live_server(int8_repo: Path, tmp_path: Path) -> None:
    from wconv_deploy.ship.serve import start_server

    with start_server(int8_repo / "den") as s:
        for url in (s.http_url, s.grpc_url):
            r = assert_ok(invoke("verify", int8_repo / "den", "--url", url, "--model", "den"))
            assert "verified" in r.stdout
    impostor = tmp_path / "impostor.onnx"  # same input and output names, other weights: a different model
    shutil.copy(int8_repo.parent / "dn.onnx", impostor)
    _scale_first_conv_weight(impostor, 0.5)
    with start_server(impostor, name="den") as s:
        r = invoke("verify", int8_repo / "den", "--url", s.http_url, "--model", "den")
    assert r.exit_code == 1, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "output" in r.stderr


def test_an_engine_is_matched_to_its_golden_file_through_its_manifest(dncnn_onnx: Path, tmp_path: Path) -> None:
    """An engine's golden file is its ONNX file's: the manifest's ONNX sha256 must be the golden's."""
    from wconv_deploy.artifacts import graph_io, manifest_path, read_onnx
    from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
    from wconv_deploy.golden import golden_path, read_golden
    from wconv_deploy.verify import _sha256_matches

    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    plan = tmp_path / "dncnn.plan"
    plan.write_bytes(b"not an engine: the identity check reads only the manifest")
    golden = read_golden(golden_path(dncnn_onnx))
    assert not _sha256_matches(plan, golden)  # no manifest: nothing vouches for it
    for onnx_file, matches in ((dncnn_onnx, True), (int8_like := tmp_path / "other.onnx", False)):
        if not matches:
            shutil.copy(dncnn_onnx, int8_like)
            _scale_first_conv_weight(int8_like, 2.0)
        manifest_for(
            onnx_file, BuildConfig("fp32", profiles_from_spec(spec)), BuildPlan(False),
            tensorrt_version="10.3.0", gpu_name="GPU", compute_capability="9.0", io=graph_io(read_onnx(onnx_file)),
        ).write(manifest_path(plan))  # fmt: skip
        assert _sha256_matches(plan, golden) is matches
