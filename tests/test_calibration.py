"""int8 calibration users can drive (`wconv_deploy.calibration`): a seeded subset, a cache of the
activation ranges that is reused only for the same model and inputs (and says why otherwise),
progress with an ETA, and the image preprocessing recorded in the variant."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.contract import DNCNN, assert_ok, assert_one_line_error, invoke
from wconv_deploy.artifacts import KEY_PREPROCESS
from wconv_deploy.calibration import CalibrationOptions, ProgressReader, calibration_data, choose, parse_limit
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.precision import convert_onnx
from wconv_deploy.preprocess import ImagePreprocess
from wconv_deploy.spec import InputSpec


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 32x32 grey images (the dncnn fixture's optimum size)."""
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _convert(onnx_path: Path, out: Path, calib: Path, **options: object) -> tuple[object, list[str]]:
    lines: list[str] = []
    report = convert_onnx(
        onnx_path, out, "int8", calibration=calib, calibration_options=CalibrationOptions(**options), progress=lines.append
    )  # type: ignore[arg-type]
    return report, lines


def test_a_cache_hit_runs_no_calibration_and_writes_the_same_bytes(dncnn_onnx: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    first, lines1 = _convert(dncnn_onnx, tmp_path / "a.onnx", images, limit=0.5, cache=cache)
    run1 = first.calibration_run  # type: ignore[attr-defined]
    assert run1.batches == 4 and run1.cache == "rebuilt (no cache yet)"
    assert sum(bool(re.match(r"calibrating \d+/", line)) for line in lines1) == 4  # 1/4, then every 5% of 4 is every batch
    assert json.loads(cache.read_text())["format"] == "wconv-deploy calibration cache"

    second, lines2 = _convert(dncnn_onnx, tmp_path / "b.onnx", images, limit=0.5, cache=cache)
    run2 = second.calibration_run  # type: ignore[attr-defined]
    assert run2.batches == 0 and run2.cache == "reused"
    assert not any(re.match(r"calibrating \d+/", line) for line in lines2)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert "calibration cache" in second.render() and "reused" in second.render()  # type: ignore[attr-defined]


def test_the_cache_is_rebuilt_with_the_reason_when_model_data_or_file_differ(
    dncnn_onnx: Path, dncnn_static_onnx: Path, images: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "ranges.json"
    _convert(dncnn_onnx, tmp_path / "a.onnx", images, limit=2, cache=cache)

    def status(onnx_path: Path = dncnn_onnx, **options: object) -> str:
        report, _ = _convert(onnx_path, tmp_path / "x.onnx", images, cache=cache, **options)
        return report.calibration_run.cache  # type: ignore[attr-defined,no-any-return]

    assert status(limit=3).startswith("rebuilt (other calibration inputs")  # another subset
    assert status(limit=3) == "reused"
    static_images = tmp_path / "static"
    static_images.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(static_images / "z.png")
    report, _ = _convert(dncnn_static_onnx, tmp_path / "s.onnx", static_images, cache=cache)
    assert report.calibration_run.cache.startswith("rebuilt (another model")  # type: ignore[attr-defined]
    for text, reason in [
        ("not json {", "unreadable"),
        ('{"format": "something else"}', "not a wconv-deploy calibration cache"),
        ('{"format": "wconv-deploy calibration cache", "version": 0}', "cache version 0"),
        ('{"format": "wconv-deploy calibration cache", "version": 1, "key": {}}', "another model"),
    ]:
        cache.write_text(text)
        assert status().startswith(f"rebuilt ({reason}"), text
    doc = json.loads(cache.read_text())
    doc["tensors"]["data"] = {"t": {"lowest": "x"}}
    cache.write_text(json.dumps(doc))
    assert status().startswith("rebuilt (malformed ranges")


def test_image_preprocessing_changes_the_data_key_and_is_recorded(dncnn_onnx: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    _convert(dncnn_onnx, tmp_path / "a.onnx", images, cache=cache)
    out = tmp_path / "b.onnx"
    report = convert_onnx(
        dncnn_onnx, out, "int8", calibration=images, calibration_options=CalibrationOptions(cache=cache),
        preprocess=ImagePreprocess(mean=(0.5,), std=(0.25,)),
    )  # fmt: skip
    assert report.calibration_run is not None and report.calibration_run.cache is not None
    assert report.calibration_run.cache.startswith("rebuilt (other calibration inputs")
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    recorded = json.loads(props[KEY_PREPROCESS])
    assert recorded["mean"] == [0.5] and recorded["std"] == [0.25] and recorded["channels"] == "gray"
    assert recorded["scale"] == pytest.approx(1 / 255) and recorded["size"] == [32, 32]


def test_cli_convert_reuses_the_cache_and_says_so(dncnn_onnx: Path, images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    common = ["convert", dncnn_onnx, "--precision", "int8", "--calibration", images, "--calibration-cache", cache]
    first = assert_ok(invoke(*common, "-o", tmp_path / "a.onnx", "--calibration-limit", "3"))
    assert "rebuilt (no cache yet)" in first.stdout
    assert re.search(r"calibrating 3/3 \(100%\), \d+\.\d s elapsed, ETA 0\.0 s", first.stdout), first.stdout
    again = assert_ok(invoke(*common, "-o", tmp_path / "b.onnx", "--calibration-limit", "3", "--json"))
    run = json.loads(again.stdout)["calibration_run"]
    assert run["cache"] == "reused" and run["batches"] == 0 and run["data"].endswith("(3 of 8 input set(s))")


def test_a_cache_path_that_is_not_a_file_is_one_line(dncnn_onnx: Path, images: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    base = ["convert", dncnn_onnx, "--precision", "int8", "--calibration", images, "-o", tmp_path / "v.onnx"]
    assert_one_line_error(invoke(*base, "--calibration-cache", fifo), 2, "a FIFO")
    assert_one_line_error(invoke(*base, "--calibration-cache", tmp_path / "no" / "c.json"), 2, "does not exist")
    assert_one_line_error(invoke(*base, "--calibration-limit", "1.5"), 2, "--calibration-limit")
    assert not (tmp_path / "v.onnx").exists()


@given(available=st.integers(1, 300), limit=st.one_of(st.integers(1, 400), st.floats(0.001, 0.999)), seed=st.integers(0, 99))
def test_the_subset_is_seeded_sorted_and_as_large_as_asked(available: int, limit: float, seed: int) -> None:
    options = CalibrationOptions(float(limit))
    picked = choose(available, options, seed)
    assert picked == choose(available, options, seed)
    assert picked == sorted(set(picked)) and all(0 <= i < available for i in picked)
    wanted = min(available, int(limit)) if limit >= 1 else max(1, min(available, int(np.ceil(limit * available))))
    assert len(picked) == wanted


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "abc", "nan", "inf"])
def test_a_bad_limit_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="--calibration-limit"):
        parse_limit(text)


def test_progress_counts_the_batches_the_calibrator_pulls_first_then_every_five_percent() -> None:
    lines: list[str] = []
    reader = ProgressReader([(str(i), {"x": np.zeros(1)}) for i in range(100)], lines.append)
    pulled = 0
    while reader.get_next() is not None:  # as ONNX Runtime's calibrators drive a reader
        pulled += 1
    assert pulled == reader.batches == 100
    assert lines[-1].startswith("calibrating 100/100 (100%)")
    done = [int(re.match(r"calibrating (\d+)/100", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert done == [1, *range(5, 101, 5)]
    assert all(re.fullmatch(r"calibrating \d+/100 \(\d+%\), \d+\.\d s elapsed, ETA \d+\.\d s", line) for line in lines)


def test_cli_deploy_passes_the_calibration_options_and_preprocessing(images: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ranges.json"
    out = tmp_path / "out"
    args = ["--input-shape", "1x1x32x32", "--precision", "int8", "-o", out, "--no-package", "--bench-duration-s", "0.05"]
    calib = ["--calibration", images, "--calibration-limit", "2", "--calibration-cache", cache, "--scale", "0.002"]
    assert_ok(invoke("deploy", DNCNN, *args, *calib))
    doc = json.loads(cache.read_text())
    assert doc["key"]["data"].endswith("(2 of 8 input set(s))")
    recorded = json.loads({p.key: p.value for p in onnx.load(out / "dncnn.int8.onnx").metadata_props}[KEY_PREPROCESS])
    assert recorded["scale"] == 0.002


def test_a_limit_counts_the_samples_of_an_npz_batch(dncnn_onnx: Path, tmp_path: Path) -> None:
    batch = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)  # one batch the model takes
    np.savez(tmp_path / "calib.npz", input=batch)
    spec = InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64")
    data = calibration_data(tmp_path / "calib.npz", spec, CalibrationOptions(2), seed=0)
    assert data.describe.endswith("(2 of 4 input set(s))")
    picked = [i for i in range(4) if any(np.array_equal(batch[i : i + 1], f["input"]) for _, f in data.cases)]
    assert len(picked) == 2 and picked == choose(4, CalibrationOptions(2), 0)
    assert len(calibration_data(tmp_path / "calib.npz", spec, CalibrationOptions(), seed=0).cases) == 1  # no limit: as given
