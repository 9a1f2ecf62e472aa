"""Image folders as model inputs (`wconv_deploy.preprocess`): channel order, scale, mean/std,
resize and crop policies, the default kept as images were always loaded, the options shared by
the commands that read image folders, and bad options as one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.contract import DNCNN, assert_ok, assert_one_line_error, invoke
from wconv_deploy.errors import InputError
from wconv_deploy.golden import load_inputs_json
from wconv_deploy.preprocess import ImagePreprocess, current, image_inputs, using
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import load_inputs

RGB = InputSpec.parse("input:1x3x8x8", "height=4:16,width=4:16")
GRAY = InputSpec.parse("input:1x1x8x8")


def _save(folder: Path, pixels: np.ndarray, name: str = "a.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)
    return folder


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _one(cases: list[tuple[str, dict[str, np.ndarray]]]) -> np.ndarray:
    assert len(cases) == 1
    return next(iter(cases[0][1].values()))


def test_default_is_how_images_were_always_loaded(tmp_path: Path) -> None:
    pixels = _rgb(10, 12)
    folder = _save(tmp_path / "imgs", pixels)
    arr = _one(load_inputs(folder, RGB))  # 12x10 is within 4..16: kept, scaled by 1/255, RGB, NCHW
    np.testing.assert_allclose(arr, pixels.transpose(2, 0, 1)[None] / 255.0, rtol=1e-6)
    assert arr.dtype == np.float32
    big = _save(tmp_path / "big", _rgb(40, 30))
    assert _one(load_inputs(big, RGB)).shape == (1, 3, 8, 8)  # outside the range: stretched to the spec's 8x8
    gray = _save(tmp_path / "gray", _rgb(8, 8))
    expected = np.asarray(Image.fromarray(_rgb(8, 8)).convert("L"), np.float32) / 255.0
    np.testing.assert_allclose(_one(load_inputs(gray, GRAY)), expected[None, None], rtol=1e-6)


@given(
    order=st.sampled_from(["rgb", "bgr"]),
    mean=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    std=st.lists(st.floats(0.05, 4), min_size=3, max_size=3),
    scale=st.floats(1e-3, 2),
    seed=st.integers(0, 2**16),
)
def test_every_pixel_is_scaled_then_normalised_per_channel_in_the_order_asked(
    tmp_path_factory: pytest.TempPathFactory, order: str, mean: list[float], std: list[float], scale: float, seed: int
) -> None:
    pixels = _rgb(5, 6, seed)
    folder = _save(tmp_path_factory.mktemp("law"), pixels)
    pp = ImagePreprocess(order, tuple(mean), tuple(std), scale)
    arr = _one(image_inputs(folder, RGB, pp))
    chw = pixels.transpose(2, 0, 1).astype(np.float64)
    if order == "bgr":
        chw = chw[::-1]
    expected = (chw * np.float32(scale) - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    np.testing.assert_allclose(arr[0], expected, rtol=1e-4, atol=1e-4)


def test_resize_and_crop_policies_bring_images_to_the_spec(tmp_path: Path) -> None:
    folder = _save(tmp_path / "imgs", _rgb(20, 40))  # 40 wide, 20 high
    static = InputSpec.parse("input:1x3x8x8")
    assert _one(image_inputs(folder, static, ImagePreprocess(resize="stretch"))).shape == (1, 3, 8, 8)
    covered = _one(image_inputs(folder, static, ImagePreprocess(resize="cover", crop="center")))
    assert covered.shape == (1, 3, 8, 8)
    # cover keeps the aspect ratio: 16x8, whose centre 8x8 is the middle of the stretched-to-16x8 image
    middle = np.asarray(Image.fromarray(_rgb(20, 40)).resize((16, 8), Image.Resampling.BILINEAR), np.float32)[:, 4:12]
    np.testing.assert_allclose(covered[0], middle.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    with pytest.raises(InputError, match="after --resize none"):
        image_inputs(folder, static, ImagePreprocess(resize="none"))
    with pytest.raises(InputError, match="smaller than the 8x8 to crop"):
        image_inputs(_save(tmp_path / "small", _rgb(4, 4)), RGB, ImagePreprocess(resize="none", crop="center"))


def test_options_that_do_not_fit_the_model_are_input_errors(tmp_path: Path) -> None:
    folder = _save(tmp_path / "imgs", _rgb(8, 8))
    for pp, needle in [
        (ImagePreprocess(channels="gray"), "the model takes 3 channel"),
        (ImagePreprocess(mean=(0.1, 0.2)), "2 values for a 3-channel input"),
    ]:
        with pytest.raises(InputError, match=needle):
            image_inputs(folder, RGB, pp)
    bad: list[tuple[dict[str, object], str]] = [
        ({"std": (0.0,)}, "--std"),
        ({"scale": float("nan")}, "--scale"),
        ({"mean": (float("inf"),)}, "--mean"),
    ]
    for kwargs, needle in bad:
        with pytest.raises(InputError, match=needle):
            ImagePreprocess(**kwargs)  # type: ignore[arg-type]


def test_using_sets_the_preprocessing_for_the_block_only(tmp_path: Path) -> None:
    folder = _save(tmp_path / "imgs", _rgb(8, 8))
    with using(ImagePreprocess(scale=1.0)):
        assert _one(load_inputs(folder, RGB)).max() > 1  # validate's loader goes through this module
    assert current() == ImagePreprocess()
    assert _one(load_inputs(folder, RGB)).max() <= 1


def test_validate_feeds_the_images_as_the_options_say(dncnn_onnx: Path, tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    folder = _save(tmp_path / "imgs", pixels)
    saved = tmp_path / "inputs.json"
    args = ["validate", dncnn_onnx, "--reference", DNCNN, "--inputs", folder, "--save-inputs", saved]
    assert_ok(invoke(*args, "--scale", "1", "--mean", "100", "--std", "50"))
    feeds = [f for _, f in load_inputs_json(saved, InputSpec.parse("input:1x1x32x32", "batch=1:8,height=16:64,width=16:64"))]
    np.testing.assert_allclose(feeds[-1]["input"][0, 0], (pixels - 100.0) / 50.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--std", "0"], "--std"),
        (["--mean", "a,b"], "--mean: 'a,b' is not a comma-separated list of numbers"),
        (["--channels", "rgb"], "--channels rgb: the model takes 1 channel"),
    ],
)
def test_bad_preprocessing_is_one_line_and_exit_2(dncnn_onnx: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    folder = _save(tmp_path / "imgs", np.zeros((32, 32), np.uint8))
    result = invoke("validate", dncnn_onnx, "--reference", DNCNN, "--inputs", folder, *args)
    assert_one_line_error(result, 2, needle)


def test_export_records_how_images_become_inputs(tmp_path: Path) -> None:
    """What --mean/--std said reaches the fp32 export's metadata, so verify/serve users (and
    inspect) see what the model expects; a plain export records nothing."""
    import json

    from wconv_deploy.artifacts import KEY_PREPROCESS, OnnxInfo

    out = tmp_path / "m.onnx"
    assert_ok(invoke("export", DNCNN, "--input-shape", "1x1x32x32", "-o", out, "--no-validate", "--exporter", "torchscript"))
    assert KEY_PREPROCESS not in OnnxInfo.read(out).metadata
    args = ("--input-shape", "1x1x32x32", "-o", out, "--mean", "0.5", "--std", "0.25", "--exporter", "torchscript")
    assert_ok(invoke("export", DNCNN, *args))
    recorded = json.loads(OnnxInfo.read(out).metadata[KEY_PREPROCESS])
    assert (recorded["mean"], recorded["std"], recorded["channels"]) == ([0.5], [0.25], "gray")
    assert "preprocess" in assert_ok(invoke("inspect", out)).stdout
