"""Golden files (`wconv_deploy.golden`): what export writes beside the model, the safe reader, and
Polygraphy's JSON for inputs and outputs."""

from __future__ import annotations

import base64
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wconv_deploy.errors import InputError
from wconv_deploy.fileio import file_sha256
from wconv_deploy.golden import (
    golden_path,
    load_inputs_json,
    read_golden,
    save_golden,
    save_inputs_json,
    save_outputs_json,
)
from wconv_deploy.precision import Precision
from wconv_deploy.spec import InputSpec, input_limit


def test_export_writes_the_golden_file(dncnn_onnx: Path) -> None:
    g = read_golden(golden_path(dncnn_onnx))
    assert golden_path(dncnn_onnx).name == "dncnn.golden.npz"
    assert g.artifact == dncnn_onnx.name and g.artifact_sha256 == file_sha256(dncnn_onnx)
    assert (g.precision, g.atol, g.rtol) == (Precision.FP32, *Precision.FP32.tolerance)
    assert g.input_names == ["input"] and g.output_names == ["output"]
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    assert [list(c.inputs["input"].shape) for c in g.cases] == [list(s[0]) for s in spec.validation_shapes()]
    assert all(c.outputs[0].shape == c.inputs["input"].shape for c in g.cases)  # a denoiser: image in, image out
    assert g.task is None  # the photo (256x256) is outside this spec's range


def _rewrite(src: Path, dst: Path, **changes: np.ndarray | None) -> None:
    """``src``'s arrays with ``changes`` (None: removed), written as ``dst``."""
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(dst, **arrays)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"meta": None}, "no metadata"),
        ({"meta": np.frombuffer(b'{"format": "other"}', np.uint8)}, "not a golden file"),
        ({"meta": np.frombuffer(b"[" * 100, np.uint8)}, "nested deeper"),
        ({"input.0.0": None}, "lacks the array input.0.0"),
        ({"input.0.0": np.full((1, 1, 32, 32), np.nan, np.float32)}, "NaN"),
        ({"stray": np.zeros(3)}, "does not name"),
    ],
)
def test_broken_golden_files_are_one_input_error(dncnn_onnx: Path, tmp_path: Path, change: dict, needle: str) -> None:
    bad = tmp_path / "bad.golden.npz"
    _rewrite(golden_path(dncnn_onnx), bad, **change)
    with pytest.raises(InputError, match=needle):
        read_golden(bad)


def test_golden_reader_refuses_pickles_garbage_bombs_fifos_and_links(dncnn_onnx: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "p.golden.npz"
    np.savez(pickled, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        read_golden(pickled)
    garbage = tmp_path / "g.golden.npz"
    garbage.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="not a readable"):
        read_golden(garbage)
    bomb = tmp_path / "b.golden.npz"  # 64 MB of zeros compressed to a few kB
    buf = io.BytesIO()
    np.save(buf, np.zeros(16 << 20, np.float32))
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.npy", buf.getvalue())
    with input_limit(0.01), pytest.raises(InputError, match="unpacks to"):
        read_golden(bomb)
    fifo = tmp_path / "f.golden.npz"
    os.mkfifo(fifo)
    with pytest.raises(InputError):
        read_golden(fifo)
    inside = tmp_path / "entry"
    inside.mkdir()
    (inside / "model.golden.npz").symlink_to(golden_path(dncnn_onnx))
    with pytest.raises(InputError):
        read_golden(inside / "model.golden.npz", within=inside)


def test_save_and_read_round_trip(dncnn_onnx: Path, tmp_path: Path) -> None:
    g = read_golden(golden_path(dncnn_onnx))
    copy = tmp_path / "copy.golden.npz"
    save_golden(g, copy)
    again = read_golden(copy)
    assert again.to_dict() | {"path": ""} == g.to_dict() | {"path": ""}
    for a, b in zip(again.cases, g.cases):
        np.testing.assert_array_equal(a.inputs["input"], b.inputs["input"])
        np.testing.assert_array_equal(a.outputs[0], b.outputs[0])


def test_polygraphy_reads_and_writes_our_inputs_and_outputs(dncnn_onnx: Path, tmp_path: Path) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json, save_json

    g = read_golden(golden_path(dncnn_onnx))
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    ours = tmp_path / "inputs.json"
    save_inputs_json(g.feeds(), ours)
    theirs = load_json(os.fspath(ours))
    assert isinstance(theirs, list) and len(theirs) == len(g.cases)
    np.testing.assert_array_equal(theirs[1]["input"], g.cases[1].inputs["input"])

    written = tmp_path / "poly.json"
    save_json(theirs, os.fspath(written))
    back = load_inputs_json(written, spec)
    assert [label for label, _ in back] == [f"poly.json[{i}]" for i in range(len(g.cases))]
    np.testing.assert_array_equal(back[2][1]["input"], g.cases[2].inputs["input"])

    outputs = tmp_path / "outputs.json"
    save_outputs_json([("ort-cpu", [c.outputs for c in g.cases])], g.output_names, outputs)
    results = RunResults.load(os.fspath(outputs))
    ((runner, iterations),) = results.items()
    assert runner == "ort-cpu" and len(iterations) == len(g.cases)
    np.testing.assert_array_equal(iterations[0]["output"], g.cases[0].outputs[0])


def test_polygraphy_inputs_beyond_arrays_are_refused(tmp_path: Path) -> None:
    spec = InputSpec.parse("input:1x1x8x8")
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((1, 1, 8, 8), np.float32))
    archive = tmp_path / "npz.json"
    payload = base64.b64encode(npz.getvalue()).decode()
    archive.write_text(f'[{{"input": {{"array": "{payload}", "polygraphy_class": "ndarray"}}}}]')
    with pytest.raises(InputError, match="not an .npy payload"):
        load_inputs_json(archive, spec)
    tensor = tmp_path / "tensor.json"
    tensor.write_text('[{"input": {"tensor": "AAAA", "polygraphy_class": "Tensor"}}]')
    with pytest.raises(InputError, match="only arrays"):
        load_inputs_json(tensor, spec)
    wrong = tmp_path / "wrong.json"
    save_inputs_json([("x", {"input": np.zeros((1, 1, 9, 9), np.float32)})], wrong)
    with pytest.raises(InputError):
        load_inputs_json(wrong, spec)
