"""The file boundary and the failure contract: regular files only, nothing read from outside an
artifact's folder, limits instead of crashes, signals and failures that leave nothing behind,
ordinary file modes. Each test checks the file, the listing or the mode bits, so it can fail."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.contract import DNCNN, assert_ok, assert_one_line_error, console_script, finishes, invoke
from wconv_deploy.artifacts import OnnxInfo, external_data_files, graph_io, parse_json, read_onnx
from wconv_deploy.errors import InputError
from wconv_deploy.fileio import atomic_output, open_regular, regular_file
from wconv_deploy.spec import InputSpec, input_limit
from wconv_deploy.validate import load_inputs


def _tiny_external(folder: Path, location: str, *, in_constant: bool = False) -> Path:
    """An Add graph whose constant operand is stored as external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    value = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        value.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if in_constant:
        nodes = [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y])
    else:
        graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y], [value])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    return path


# --------------------------------------------------------------------------- regular files


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="a FIFO"):
        finishes(lambda: open_regular(fifo))
    with pytest.raises(InputError, match="a FIFO"):
        finishes(lambda: read_onnx(fifo))


def test_a_symlink_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "link").symlink_to(secret)
    (tmp_path / "art" / "inside").write_text("ok")
    (tmp_path / "art" / "link_inside").symlink_to(tmp_path / "art" / "inside")
    with pytest.raises(InputError, match="outside"):
        regular_file(tmp_path / "art" / "link", within=tmp_path / "art")
    assert regular_file(tmp_path / "art" / "link_inside", within=tmp_path / "art").name == "link_inside"


def test_a_file_swapped_for_a_symlink_out_while_opening_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wconv_deploy.fileio as fileio

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s3cret")
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"data")
    real_open = os.open

    def swap_then_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        os.unlink(folder / "w.bin")  # the race: after the checks, before the open
        (folder / "w.bin").symlink_to(secret)
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", swap_then_open)
    with pytest.raises(InputError, match="changed while being opened"):
        fileio.read_bytes(folder / "w.bin", within=folder)


@pytest.mark.parametrize("in_constant", [False, True], ids=["initializer", "constant-node"])
@pytest.mark.parametrize("how", ["symlink", "dotdot", "absolute"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, how: str, in_constant: bool) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    location = {"symlink": "w.bin", "dotdot": "../secret.bin", "absolute": os.fspath(secret)}[how]
    path = _tiny_external(folder, location, in_constant=in_constant)
    if how == "symlink":
        (folder / "w.bin").symlink_to(secret)
    with pytest.raises(InputError, match="external data|outside"):
        read_onnx(path)


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    path = _tiny_external(tmp_path / "m", "w.bin", in_constant=True)
    (tmp_path / "m" / "w.bin").write_bytes(np.full(4, 2.0, np.float32).tobytes())
    assert external_data_files(read_onnx(path), path) == ["w.bin"]
    loaded = read_onnx(path, load_external_data=True)
    assert numpy_helper.to_array(loaded.graph.node[0].attribute[0].t).tolist() == [[2.0] * 4]


def test_convert_and_validate_refuse_external_data_outside(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 16)
    path = _tiny_external(tmp_path / "m", "../secret.bin")
    assert_one_line_error(invoke("convert", path, "--precision", "fp16"), 2, "external data")
    assert_one_line_error(invoke("validate", path, "--reference", DNCNN), 2, "external data")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["m.onnx"]


def test_an_inputs_folder_with_a_fifo_or_an_escaping_symlink_is_refused(dncnn_static_onnx: Path, tmp_path: Path) -> None:
    spec = InputSpec.parse("1x1x16x16")
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "x.png")
    with pytest.raises(InputError, match="FIFO"):
        finishes(lambda: load_inputs(fifo_dir, spec))
    link_dir = tmp_path / "link"
    link_dir.mkdir()
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "elsewhere.png")
    (link_dir / "x.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(InputError, match="outside"):
        load_inputs(link_dir, spec)
    fifo_npz = tmp_path / "in.npz"
    os.mkfifo(fifo_npz)
    with pytest.raises(InputError, match="FIFO"):
        finishes(lambda: load_inputs(fifo_npz, spec))
    r = invoke("validate", dncnn_static_onnx, "--reference", DNCNN, "--inputs", fifo_dir)
    assert_one_line_error(r, 2, "FIFO")


# --------------------------------------------------------------------------- limits


def test_huge_shapes_are_refused_before_allocating() -> None:
    with pytest.raises(InputError, match="GiB"):
        InputSpec.parse("1x1x99999x99999")
    with pytest.raises(InputError, match="not a real shape"):
        InputSpec.parse(f"1x1x{2**40}x1")
    with input_limit(64):  # the limit is the user's to raise
        assert InputSpec.parse("1x1x99999x99999").names == ["input"]
    r = invoke("export", DNCNN, "--input-shape", "1x1x99999x99999")
    assert_one_line_error(r, 2, "--max-input-gb")


def _with_metadata(src: Path, dst: Path, key: str, value: str) -> Path:
    model = onnx.load(os.fspath(src))
    for p in model.metadata_props:
        if p.key == key:
            p.value = value
    dst.write_bytes(model.SerializeToString())
    return dst


@pytest.mark.parametrize(
    "value,needle",
    [
        ('{"inputs":[{"name":"input","dtype":"float32","dims":[["batch",1,1,1e400]]}]}', "out of range"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ('{"inputs":[{"name":"input","dtype":"float32","dims":[["batch",1,1,1099511627776]]}]}', "not a real shape"),
        ('{"inputs":[{"name":"input","dtype":"float32","dims":[["batch",1,1,NaN]]}]}', "not valid JSON"),
        ('{"inputs": 7}', "input spec"),
    ],
    ids=["1e400", "deep", "2^40", "nan", "wrong-type"],
)
def test_hostile_metadata_is_one_line(dncnn_static_onnx: Path, tmp_path: Path, value: str, needle: str) -> None:
    bad = _with_metadata(dncnn_static_onnx, tmp_path / "bad.onnx", "wconv_deploy.input_spec", value)
    with pytest.raises(InputError, match=needle):
        OnnxInfo.read(bad)
    assert_one_line_error(invoke("convert", bad, "--precision", "fp16"), 2)
    assert not (tmp_path / "bad.fp16.onnx").exists()


def test_bad_element_types_and_dims_are_input_errors() -> None:
    for elem, dims in [(999, [1, 4]), (TensorProto.FLOAT, [1, 2**40])]:
        x = helper.make_tensor_value_info("x", elem, dims)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
        with pytest.raises(InputError):
            graph_io(model)


def test_parse_json_limits() -> None:
    assert parse_json('{"a": [1, 2.5]}', "x") == {"a": [1, 2.5]}
    for text in ["1e400", "-Infinity", "[" * 65 + "]" * 65, "{"]:
        with pytest.raises(InputError):
            parse_json(text, "x")


# --------------------------------------------------------------------------- leftovers, modes, signals


def test_written_files_get_ordinary_modes(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
        out = tmp_path / "m.onnx"
        assert_ok(invoke("export", DNCNN, "--input-shape", "1x1x16x16", "-o", out, "--exporter", "torchscript"))
        for p in (out, out.with_name("m.onnx.report.json")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    finally:
        os.umask(old)


def test_rejected_inputs_create_no_folder(dncnn_static_onnx: Path, tmp_path: Path) -> None:
    r = invoke("deploy", tmp_path / "missing.pt", "--input-shape", "1x1x16x16", "--out", tmp_path / "a" / "b")
    assert_one_line_error(r, 2, "missing.pt")
    r = invoke(
        "deploy",
        DNCNN,
        "--input-shape",
        "1x1x16x16",
        "--out",
        tmp_path / "c",
        "--precision",
        "int8",
        "--calibration",
        tmp_path / "nope",
    )
    assert_one_line_error(r, 2, "--calibration")
    r = invoke(
        "bench", dncnn_static_onnx, "--runtimes", "ort-cpu", "--json-file", tmp_path / "d" / "x.json", "--min-duration-s", "0.01"
    )
    assert_one_line_error(r, 2, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _staging_appears(folder: Path, proc: subprocess.Popen[str], prefix: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not any(p.name.startswith(prefix) for p in folder.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never started staging"
        time.sleep(0.01)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_export_leaves_nothing(tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        console_script("export", "zoo:resnet18_cifar", "-o", out / "m.onnx"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _staging_appears(out, proc, ".wconv-export-")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines() == ["error: interrupted" + (" (SIGTERM)" if signum == signal.SIGTERM else "")], stderr
    assert list(out.iterdir()) == []


def test_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import wconv_deploy.exporters.onnx as exp

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "staged.onnx")

    monkeypatch.setattr(exp.Path, "write_bytes", full)  # the disk boundary: the model's write raising ENOSPC
    out = tmp_path / "m.onnx"
    r = invoke("export", DNCNN, "--input-shape", "1x1x16x16", "-o", out, "--exporter", "torchscript", "--no-validate")
    assert_one_line_error(r, 2, "no space left")
    assert list(tmp_path.iterdir()) == []


def test_report_json_stays_valid_after_failures(dncnn_static_onnx: Path, tmp_path: Path) -> None:
    r = invoke("validate", dncnn_static_onnx, "--reference", f"{DNCNN}&den=0.2", "--json")
    assert r.exit_code == 1
    json.loads(r.stdout)
