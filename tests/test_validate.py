"""validate: compare() metrics and verdicts, the report, loading user and random inputs, the fp32 reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from torch import nn

from tests.contract import DNCNN
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.loading import load_model
from wconv_deploy.precision import Precision
from wconv_deploy.reports import dumps
from wconv_deploy.runtimes.torch import TorchReference
from wconv_deploy.spec import InputSpec
from wconv_deploy.validate import CaseResult, OutputMetrics, ValidationReport, compare, load_inputs, random_inputs

ATOL, RTOL = 1e-5, 1e-4


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- compare()


def test_identical_arrays_pass_with_zero_errors() -> None:
    e = _rng().standard_normal((2, 3, 4)).astype(np.float32)
    m = compare("out", e.copy(), e, ATOL, RTOL)
    assert m.passed and m.problem is None
    assert (m.max_abs, m.max_rel, m.mean_abs, m.mismatched, m.needed_atol, m.needed_rtol) == (0, 0, 0, 0, 0, 0)
    assert m.cosine == pytest.approx(1.0, abs=1e-12)
    assert m.shape == [2, 3, 4] and m.name == "out"


def test_perturbation_within_tolerance_passes() -> None:
    e = _rng().standard_normal(1000)
    bound = ATOL + RTOL * np.abs(e)
    a = e + 0.9 * bound * np.sign(_rng().standard_normal(1000))
    m = compare("out", a, e, ATOL, RTOL)
    assert m.passed and m.mismatched == 0
    assert 0 < m.max_abs <= float(bound.max())
    assert 0 < m.needed_atol <= ATOL and 0 < m.needed_rtol <= RTOL
    assert m.max_rel == pytest.approx(m.max_abs / np.abs(e).max())


def test_one_element_outside_tolerance_fails() -> None:
    e = _rng().standard_normal((4, 5))
    a = e.copy()
    a[2, 3] += 1e-2
    m = compare("out", a, e, ATOL, RTOL)
    assert not m.passed
    assert m.mismatched == 1
    assert m.max_abs == pytest.approx(1e-2)
    assert m.mean_abs == pytest.approx(1e-2 / 20)
    assert m.problem is None


def _fails_or_only_just_passes(a: np.ndarray, e: np.ndarray, atol: float, rtol: float) -> bool:
    """``compare`` fails at these tolerances, or passes only within float64's resolution of the
    bound (a 1% smaller tolerance can round to the same bound: 1e-6 + 4e-22 == 1e-6 + 4.2e-22)."""
    if not compare("out", a, e, atol, rtol).passed:
        return True
    diff, bound = np.abs(a - e), atol + rtol * np.abs(e)
    return bool(np.any(diff > bound - 4 * np.spacing(bound)))


def _assert_needed_are_tight(a: np.ndarray, e: np.ndarray, atol: float, rtol: float) -> None:
    m = compare("out", a, e, atol, rtol)
    if m.needed_atol > 0:
        assert compare("out", a, e, m.needed_atol * 1.000001, rtol).passed
        assert _fails_or_only_just_passes(a, e, m.needed_atol * 0.99, rtol)
    if 0 < m.needed_rtol < np.inf:
        assert compare("out", a, e, atol, m.needed_rtol * 1.000001).passed
        assert _fails_or_only_just_passes(a, e, atol, m.needed_rtol * 0.99)
    slack = 1e-9
    if m.passed:
        assert m.needed_atol <= atol * (1 + slack) + 1e-300 and m.needed_rtol <= rtol * (1 + slack) + 1e-300
    else:
        assert m.needed_atol > atol * (1 - slack) and m.needed_rtol > rtol * (1 - slack)


def test_needed_tolerances_are_the_smallest_that_pass() -> None:
    rng = _rng()
    e = rng.standard_normal(500)
    a = e + rng.standard_normal(500) * 1e-3
    m = compare("out", a, e, ATOL, RTOL)
    assert m.needed_atol > 0 and 0 < m.needed_rtol < np.inf
    _assert_needed_are_tight(a, e, ATOL, RTOL)


def test_needed_rtol_is_inf_when_expected_is_zero_where_error_exceeds_atol() -> None:
    e = np.array([0.0, 1.0])
    a = np.array([1e-3, 1.0])
    m = compare("out", a, e, ATOL, RTOL)
    assert not m.passed
    assert m.needed_rtol == np.inf
    assert m.needed_atol == pytest.approx(1e-3)


# Zero or at least 1e-6 in magnitude: a needed rtol near 1e308 would overflow when re-checked.
finite = st.one_of(st.just(0.0), st.floats(1e-6, 1e3), st.floats(-1e3, -1e-6))


@given(
    hnp.arrays(np.float64, st.integers(1, 12), elements=finite),
    hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1e-1, 1e-1, allow_nan=False, allow_subnormal=False)),
    st.sampled_from([0.0, 1e-6, 1e-5, 1e-3]),
    st.sampled_from([0.0, 1e-5, 1e-4, 1e-2]),
)
@example(e=np.array([0.0, 1e-6]), noise=np.array([0.0, 1e-6]), atol=1e-6, rtol=0.0)  # needed rtol below resolution
def test_needed_tolerances_property(e: np.ndarray, noise: np.ndarray, atol: float, rtol: float) -> None:
    noise = np.resize(noise, e.shape)
    _assert_needed_are_tight(e + noise, e, atol, rtol)


def test_shape_mismatch_fails_with_problem_text() -> None:
    m = compare("out", np.zeros((2, 3)), np.zeros((3, 2)), ATOL, RTOL)
    assert not m.passed
    assert m.problem == "shape [2, 3] != [3, 2]"
    assert m.shape == [3, 2]
    assert m.mismatched == 6
    assert m.max_abs == np.inf


def test_broadcastable_shapes_are_still_a_mismatch() -> None:
    m = compare("out", np.zeros((1, 3)), np.zeros((2, 3)), ATOL, RTOL)
    assert not m.passed and "!=" in (m.problem or "")


def test_nan_and_inf_in_same_places_pass() -> None:
    e = np.array([1.0, np.nan, np.inf, -np.inf, 2.0])
    a = np.array([1.0, np.nan, np.inf, -np.inf, 2.0 + 1e-9])
    m = compare("out", a, e, ATOL, RTOL)
    assert m.passed and m.problem is None
    assert np.isfinite([m.max_abs, m.max_rel, m.mean_abs, m.cosine]).all()


@pytest.mark.parametrize(
    ("a", "e"),
    [
        ([np.nan, 1.0], [1.0, np.nan]),
        ([np.nan, 1.0], [1.0, 1.0]),
        ([1.0, 1.0], [1.0, np.nan]),
        ([np.inf, 1.0], [-np.inf, 1.0]),
        ([np.inf, 1.0], [np.nan, 1.0]),
    ],
)
def test_nonfinite_in_different_places_fails(a: list[float], e: list[float]) -> None:
    m = compare("out", np.array(a), np.array(e), ATOL, RTOL)
    assert not m.passed
    assert m.problem == "NaN/Inf in different places"


def test_cosine_is_minus_one_for_negated() -> None:
    e = _rng().standard_normal(100)
    m = compare("out", -e, e, ATOL, RTOL)
    assert m.cosine == pytest.approx(-1.0, abs=1e-12)
    assert not m.passed and m.mismatched == 100
    assert m.max_rel == pytest.approx(2.0)


@pytest.mark.filterwarnings("error")
def test_all_zero_expected_has_no_division_warnings() -> None:
    zero = np.zeros((3, 3), dtype=np.float32)
    with np.errstate(all="raise"):
        same = compare("out", zero.copy(), zero, ATOL, RTOL)
        off = compare("out", np.full((3, 3), 0.5, np.float32), zero, ATOL, RTOL)
    assert same.passed and same.cosine == 1.0 and same.max_rel == 0.0 and same.needed_rtol == 0.0
    assert not off.passed
    assert off.cosine == 0.0
    assert off.max_rel == 0.5  # no scale: the absolute error
    assert off.needed_rtol == np.inf
    assert off.needed_atol == pytest.approx(0.5)
    assert off.mismatched == 9


@pytest.mark.filterwarnings("error")
def test_empty_and_integer_outputs() -> None:
    m = compare("out", np.zeros((0, 4)), np.zeros((0, 4)), ATOL, RTOL)
    assert m.passed and m.max_abs == 0.0 and m.shape == [0, 4]
    ints = compare("out", np.array([1, 2, 3]), np.array([1, 2, 4]), ATOL, RTOL)
    assert not ints.passed and ints.mismatched == 1 and ints.max_abs == 1.0


# --------------------------------------------------------------------------- ValidationReport


def _metrics(passed: bool, **kw: float) -> OutputMetrics:
    values = dict(max_abs=1e-7, max_rel=1e-6, mean_abs=1e-8, cosine=1.0, mismatched=0, needed_atol=0.0, needed_rtol=0.0)
    values.update(kw)
    return OutputMetrics("output_0", [1, 4], passed=passed, **values)  # type: ignore[arg-type]


def _report(*cases: CaseResult) -> ValidationReport:
    return ValidationReport("model.onnx", "onnxruntime", "PyTorch", ATOL, RTOL, list(cases))


def _failing_report() -> ValidationReport:
    e = np.linspace(-1, 1, 8)
    bad = compare("output_0", e + 3e-3, e, ATOL, RTOL)
    good = compare("output_0", e, e, ATOL, RTOL)
    return _report(CaseResult("random #0 1x8", {"x": [1, 8]}, [good]), CaseResult("random #1 2x8", {"x": [2, 8]}, [bad]))


def test_report_without_cases_does_not_pass() -> None:
    r = _report()
    assert not r.passed
    assert r.worst == {}
    with pytest.raises(MismatchError):
        r.raise_for_failure()


def test_passing_report() -> None:
    r = _report(CaseResult("random #0", {"x": [1, 4]}, [_metrics(True, max_rel=3e-6)]))
    assert r.passed
    text = r.render()
    assert "FAILED" not in text
    assert "passed: 1 input set(s), worst max rel error 3.00e-06" in text
    r.raise_for_failure()  # no exception
    assert r.to_dict()["passed"] is True


def test_render_on_failure() -> None:
    r = _failing_report()
    assert not r.passed
    text = r.render()
    assert text.startswith("validation: onnxruntime (model.onnx) vs PyTorch, atol=1e-05 rtol=0.0001")
    assert "FAILED (output_0): would pass with --atol" in text
    assert "FAIL (8 elements)" in text
    assert "random #1 2x8" in text and "pass" in text
    # The suggested tolerances do make it pass.
    w = r.worst
    line = text.splitlines()[-1]
    suggested_atol = float(line.split("--atol ")[1].split()[0])
    suggested_rtol = float(line.split("--rtol ")[1].split()[0])
    assert suggested_atol >= w["needed_atol"]
    assert suggested_rtol >= w["needed_rtol"]
    e = np.linspace(-1, 1, 8)
    assert compare("o", e + 3e-3, e, suggested_atol, RTOL).passed
    assert compare("o", e + 3e-3, e, ATOL, suggested_rtol).passed


def test_worst_takes_max_errors_and_min_cosine() -> None:
    r = _report(
        CaseResult("a", {}, [_metrics(True, max_abs=1.0, cosine=0.5, needed_atol=0.0), _metrics(True, max_rel=7.0)]),
        CaseResult("b", {}, [_metrics(True, mean_abs=3.0, cosine=0.9, needed_atol=2.0, needed_rtol=4.0)]),
    )
    assert r.worst == {
        "max_abs": 1.0,
        "max_rel": 7.0,
        "mean_abs": 3.0,
        "min_cosine": 0.5,
        "needed_atol": 2.0,
        "needed_rtol": 4.0,
    }


def test_shape_mismatch_renders_problem_and_inf() -> None:
    m = compare("output_0", np.zeros(3), np.zeros(4), ATOL, RTOL)
    text = _report(CaseResult("c", {}, [m])).render()
    assert "FAIL (shape [3] != [4])" in text
    assert "no tolerance passes" in text


def test_nonfinite_failure_does_not_suggest_a_tolerance() -> None:
    m = compare("output_0", np.array([np.nan, 1.0]), np.array([1.0, np.nan]), ATOL, RTOL)
    text = _report(CaseResult("c", {}, [m])).render()
    assert "FAILED" in text
    assert "would pass with --atol 0 " not in text


def test_to_dict_is_json_serialisable_with_inf() -> None:
    r = _failing_report()
    r.cases.append(CaseResult("shape", {"x": [1, 8]}, [compare("output_0", np.zeros(3), np.zeros(4), ATOL, RTOL)]))
    d = r.to_dict()
    assert d["passed"] is False
    assert [c["passed"] for c in d["cases"]] == [True, False, False]
    assert d["worst"]["max_abs"] is None  # infinite: JSON has no token for it, so null
    data = json.loads(dumps(r))
    assert data["worst"]["max_abs"] is None
    assert data["cases"][2]["outputs"][0]["problem"] == "shape [3] != [4]"
    assert data["cases"][1]["outputs"][0]["mismatched"] == 8
    assert data["atol"] == ATOL and data["artifact"] == "model.onnx"


def test_raise_for_failure_carries_the_table() -> None:
    r = _failing_report()
    with pytest.raises(MismatchError) as info:
        r.raise_for_failure()
    err = info.value
    assert err.exit_code == 1
    assert "model.onnx" in str(err)
    assert err.report is r
    text = err.report.render()
    assert "max abs" in text and "random #1 2x8" in text and "FAILED" in text


# --------------------------------------------------------------------------- load_inputs: .npz


@pytest.fixture
def spec2() -> InputSpec:
    return InputSpec.parse("x:1x3x8x8,m:1x1x8x8", "batch")


def test_npz_by_name(tmp_path: Path, spec2: InputSpec) -> None:
    x = np.arange(2 * 3 * 64, dtype=np.float64).reshape(2, 3, 8, 8)
    m = np.ones((2, 1, 8, 8), np.float32)
    np.savez(tmp_path / "in.npz", x=x, m=m, unused=np.zeros(3))
    ((label, feeds),) = load_inputs(tmp_path / "in.npz", spec2)
    assert label == "in.npz"
    assert set(feeds) == {"x", "m"}
    assert feeds["x"].dtype == np.float32  # cast to the spec's dtype
    np.testing.assert_array_equal(feeds["x"], x.astype(np.float32))
    np.testing.assert_array_equal(feeds["m"], m)


def test_npz_single_arbitrary_key_for_single_input(tmp_path: Path) -> None:
    spec = InputSpec.parse("image:1x3x8x8:float16")
    arr = _rng().standard_normal((1, 3, 8, 8))
    np.savez(tmp_path / "one.npz", whatever=arr)
    ((_, feeds),) = load_inputs(str(tmp_path / "one.npz"), spec)
    assert list(feeds) == ["image"]
    assert feeds["image"].dtype == np.float16
    np.testing.assert_array_equal(feeds["image"], arr.astype(np.float16))


def test_npz_missing_required_name(tmp_path: Path, spec2: InputSpec) -> None:
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 8, 8)), other=np.zeros((1, 1, 8, 8)))
    with pytest.raises(InputError, match="lack m"):
        load_inputs(tmp_path / "in.npz", spec2)


def test_npz_wrong_shape(tmp_path: Path, spec2: InputSpec) -> None:
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 9, 8)), m=np.zeros((1, 1, 8, 8)))
    with pytest.raises(InputError, match=r"'x' has shape \[1, 3, 9, 8\]"):
        load_inputs(tmp_path / "in.npz", spec2)


def test_npz_batch_above_the_largest_becomes_one_input_per_sample(tmp_path: Path, spec2: InputSpec) -> None:
    x, m = np.random.default_rng(0).normal(size=(9, 3, 8, 8)), np.zeros((9, 1, 8, 8))
    np.savez(tmp_path / "in.npz", x=x, m=m)
    cases = load_inputs(tmp_path / "in.npz", spec2)
    assert [label for label, _ in cases] == [f"in.npz[{i}]" for i in range(9)]
    assert all(f["x"].shape == (1, 3, 8, 8) for _, f in cases)
    np.testing.assert_array_equal(cases[4][1]["x"][0], x[4].astype(np.float32))


def test_npz_other_axis_outside_range(tmp_path: Path, spec2: InputSpec) -> None:
    np.savez(tmp_path / "in.npz", x=np.zeros((9, 3, 9, 8)), m=np.zeros((9, 1, 8, 8)))
    with pytest.raises(InputError, match="outside"):
        load_inputs(tmp_path / "in.npz", spec2)


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04truncated", b""])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "junk.npz").write_bytes(content)
    with pytest.raises(InputError, match="not a readable .npz"):
        load_inputs(tmp_path / "junk.npz", InputSpec.parse("1x3x8x8"))


def test_plain_npy_file_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 8, 8)))
    with pytest.raises(InputError):
        load_inputs(tmp_path / "a.npy", InputSpec.parse("1x3x8x8"))


def test_npz_with_pickled_object_array_is_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable"):
        load_inputs(tmp_path / "obj.npz", InputSpec.parse("1x3x8x8"))


def test_empty_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(InputError, match="holds no arrays"):
        load_inputs(tmp_path / "empty.npz", InputSpec.parse("1x3x8x8"))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_inputs(tmp_path / "nope.npz", InputSpec.parse("1x3x8x8"))


# --------------------------------------------------------------------------- load_inputs: image folders


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", color: object = (255, 0, 128)) -> None:
    Image.new(mode, size, color).save(path)  # type: ignore[arg-type]


def test_image_folder_rgb(tmp_path: Path) -> None:
    _png(tmp_path / "b.png", (10, 6), color=(255, 0, 51))
    _png(tmp_path / "a.PNG", (10, 6), color=(0, 255, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    spec = InputSpec.parse("img:1x3x6x10")
    cases = load_inputs(tmp_path, spec)
    assert [label for label, _ in cases] == ["a.PNG", "b.png"]
    arr = cases[1][1]["img"]
    assert arr.dtype == np.float32 and arr.shape == (1, 3, 6, 10)
    assert arr.flags.c_contiguous
    assert 0.0 <= arr.min() and arr.max() <= 1.0
    np.testing.assert_allclose(arr[0, :, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)  # channel-first, scaled to [0, 1]
    np.testing.assert_allclose(cases[0][1]["img"][0, :, 3, 7], [0.0, 1.0, 0.0])


def test_image_outside_range_is_resized_to_opt(tmp_path: Path) -> None:
    _png(tmp_path / "big.png", (40, 30))  # width 40, height 30
    spec = InputSpec.parse("1x3x6x10")  # height 6, width 10: non-square, catches a swapped resize
    ((_, feeds),) = load_inputs(tmp_path, spec)
    assert feeds["input"].shape == (1, 3, 6, 10)


def test_image_inside_dynamic_range_keeps_its_size(tmp_path: Path) -> None:
    _png(tmp_path / "in.png", (12, 9))  # width 12 in 8..32, height 9 in 8..32
    _png(tmp_path / "out.png", (40, 9))  # width 40 above 32
    spec = InputSpec.parse("1x3x16x16", "height,width")
    cases = dict(load_inputs(tmp_path, spec))
    assert cases["in.png"]["input"].shape == (1, 3, 9, 12)
    assert cases["out.png"]["input"].shape == (1, 3, 16, 16)


def test_grayscale_for_one_channel_spec(tmp_path: Path) -> None:
    _png(tmp_path / "rgb.png", (8, 8), color=(255, 255, 255))
    _png(tmp_path / "gray.png", (8, 8), mode="L", color=51)
    spec = InputSpec.parse("1x1x8x8")
    cases = dict(load_inputs(tmp_path, spec))
    for arr in (cases["rgb.png"]["input"], cases["gray.png"]["input"]):
        assert arr.shape == (1, 1, 8, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(cases["rgb.png"]["input"], 1.0)
    np.testing.assert_allclose(cases["gray.png"]["input"], 0.2, atol=1e-6)


def test_grayscale_image_for_rgb_spec_gets_three_channels(tmp_path: Path) -> None:
    _png(tmp_path / "gray.png", (8, 8), mode="L", color=102)
    ((_, feeds),) = load_inputs(tmp_path, InputSpec.parse("1x3x8x8"))
    assert feeds["input"].shape == (1, 3, 8, 8)
    np.testing.assert_allclose(feeds["input"], 0.4, atol=1e-6)


def test_image_folder_float16_spec(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (8, 8))
    ((_, feeds),) = load_inputs(tmp_path, InputSpec.parse("image:1x3x8x8:float16"))
    assert feeds["image"].dtype == np.float16


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="holds no images"):
        load_inputs(tmp_path, InputSpec.parse("1x3x8x8"))


def test_corrupt_image(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (8, 8))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(InputError, match="cannot read image b.png"):
        load_inputs(tmp_path, InputSpec.parse("1x3x8x8"))


@pytest.mark.parametrize("shape", ["x:1x3x8x8,m:1x1x8x8", "1x3x8", "1x2x8x8", "1x3x4x8x8"])
def test_folder_needs_one_nchw_image_input(tmp_path: Path, shape: str) -> None:
    _png(tmp_path / "a.png", (8, 8))
    with pytest.raises(InputError, match="--inputs FOLDER|image folders"):
        load_inputs(tmp_path, InputSpec.parse(shape))


# --------------------------------------------------------------------------- random_inputs


def test_random_inputs_one_case_per_validation_shape() -> None:
    spec = InputSpec.parse("x:2x3x8x8,m:2x1x8x8", "batch,height")
    cases = random_inputs(spec)
    shapes = spec.validation_shapes()
    assert len(cases) == len(shapes) == 3
    for i, ((label, feeds), expected) in enumerate(zip(cases, shapes)):
        assert label.startswith(f"random #{i} ")
        for shape in expected:
            assert "x".join(map(str, shape)) in label
        assert [feeds[n].shape for n in spec.names] == list(expected)
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in feeds.values())
        spec.check_arrays(feeds)


def test_random_inputs_static_spec_is_one_case() -> None:
    ((label, feeds),) = random_inputs(InputSpec.parse("1x3x8x8"))
    assert label == "random #0 1x3x8x8"
    assert feeds["input"].shape == (1, 3, 8, 8)


def test_random_inputs_seeded() -> None:
    spec = InputSpec.parse("1x3x8x8", "batch")
    a, b, c = random_inputs(spec, seed=5), random_inputs(spec, seed=5), random_inputs(spec, seed=6)
    for (la, fa), (lb, fb) in zip(a, b):
        assert la == lb
        np.testing.assert_array_equal(fa["input"], fb["input"])
    assert not np.array_equal(a[0][1]["input"], c[0][1]["input"])
    # Each case gets its own seed: the two sets are not prefixes of one another's data.
    assert not np.array_equal(a[0][1]["input"][0], a[1][1]["input"][0])


def test_random_inputs_integer_dtype() -> None:
    ((_, feeds),) = random_inputs(InputSpec.parse("t:2x7:int64"))
    assert feeds["t"].dtype == np.int64 and feeds["t"].min() >= 0 and feeds["t"].max() < 10


def test_bfloat16_is_not_an_input_dtype() -> None:  # NumPy, and so every runtime's feed, has no bfloat16
    with pytest.raises(InputError, match="unknown dtype 'bfloat16'"):
        random_inputs(InputSpec.parse("x:1x3x8x8:bfloat16"))


# --------------------------------------------------------------------------- error statistics


_values = hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(0.125, 10, width=32))
_signs = hnp.arrays(np.int8, st.integers(1, 40), elements=st.sampled_from([-1, 1]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@given(
    e=_values,
    noise=hnp.arrays(np.float32, 40, elements=st.floats(-0.5, 0.5, width=32)),
    signs=_signs,
    stat=st.sampled_from(["max", "mean", "median", "quantile"]),
    quantile=st.floats(0, 1),
    tol=st.sampled_from([1e-3, 1e-2, 1e-1]),
)
def test_error_statistics_decide_as_polygraphy_does(
    e: np.ndarray, noise: np.ndarray, signs: np.ndarray, stat: str, quantile: float, tol: float
) -> None:
    """The law: for every statistic our verdict is Polygraphy's (``SimpleCompareFunc``) on the same outputs."""
    from polygraphy.comparator import CompareFunc, IterationResult
    from polygraphy.logger import G_LOGGER

    from wconv_deploy.validate import Criterion

    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    expected = e * np.resize(signs, e.shape)
    actual = (expected + noise[: e.size] * np.float32(tol * 4)).astype(np.float32)
    ours = compare("o", actual, expected, tol, tol, criterion=Criterion(tol, tol, stat, quantile)).passed
    check = CompareFunc.simple(check_error_stat=stat, atol=tol, rtol=tol, error_quantile=quantile)
    theirs = bool(check(IterationResult({"o": actual}, runner_name="a"), IterationResult({"o": expected}, runner_name="b"))["o"])
    assert ours == theirs


@given(e=_values, noise=hnp.arrays(np.float32, 40, elements=st.floats(-1, 1, width=32)), tol=st.floats(1e-4, 1))
def test_passing_the_max_statistic_implies_passing_elementwise(e: np.ndarray, noise: np.ndarray, tol: float) -> None:
    from wconv_deploy.validate import Criterion

    actual = e + noise[: e.size]
    by_max = compare("o", actual, e, tol, tol, criterion=Criterion(tol, tol, "max"))
    assert not by_max.passed or compare("o", actual, e, tol, tol).passed
    assert by_max.stat_abs == pytest.approx(float(np.abs(actual.astype(np.float64) - e).max()))


def test_criterion_refuses_unknown_statistics_and_quantiles() -> None:
    from wconv_deploy.validate import Criterion

    for bad in ({"stat": "p99"}, {"quantile": 1.5}, {"atol": float("nan")}):
        with pytest.raises(InputError):
            Criterion(**bad)  # type: ignore[arg-type]
    assert Criterion.for_precision(Precision.INT8) == Criterion(*Precision.INT8.tolerance)
    assert Criterion.for_precision(Precision.FP16, atol=0.5).atol == 0.5


# --------------------------------------------------------------------------- the validate command


def test_validate_against_the_golden_file_runtime_and_other_artifact(dncnn_onnx: Path, tmp_path: Path) -> None:
    from tests.contract import assert_ok, invoke

    by_golden = json.loads(assert_ok(invoke("validate", dncnn_onnx, "--json")).stdout)  # the golden file beside it
    assert by_golden["reference"] == "golden dncnn.golden.npz" and by_golden["passed"] is True
    on_two = json.loads(assert_ok(invoke("validate", dncnn_onnx, "--runtime", "openvino,ort-cpu", "--json")).stdout)
    assert (on_two["runtime"], on_two["reference"]) == ("openvino", f"ort-cpu ({dncnn_onnx.name})")
    saved = tmp_path / "inputs.json"
    outputs = tmp_path / "outputs.json"
    r = assert_ok(
        invoke("validate", dncnn_onnx, dncnn_onnx, "--check-error-stat", "quantile", "--error-quantile", "0.5",
               "--save-inputs", saved, "--save-outputs", outputs, "--json")
    )  # fmt: skip
    report = json.loads(r.stdout)
    assert (report["error_stat"], report["error_quantile"]) == ("quantile", 0.5)
    assert report["worst"]["max_abs"] == 0.0  # one file on one runtime: identical outputs
    assert saved.exists() and outputs.exists()
    again = json.loads(
        assert_ok(
            invoke("validate", dncnn_onnx, "--load-inputs", saved, "--runtime", "ort-cpu,openvino", dncnn_onnx, "--json")
        ).stdout
    )
    assert [c["label"] for c in again["cases"]][-3:] == [f"inputs.json[{i}]" for i in range(3)]


def test_validate_fails_naming_the_output_and_refuses_bad_options(dncnn_onnx: Path, tmp_path: Path) -> None:
    from tests.contract import assert_one_line_error, invoke
    from wconv_deploy.golden import golden_path, read_golden, save_golden

    g = read_golden(golden_path(dncnn_onnx))
    for case in g.cases:
        case.outputs[0] = case.outputs[0] + 1.0
    wrong = tmp_path / "wrong.golden.npz"
    save_golden(g, wrong)
    r = invoke("validate", dncnn_onnx, "--golden", wrong)
    assert_one_line_error(r, 1, "does not compute what", "output")
    assert "FAIL" in r.stdout
    assert_one_line_error(invoke("validate", dncnn_onnx, "--runtime", "ort-cpu,openvino,ort-cpu"), 2, "at most two")
    assert_one_line_error(invoke("validate", dncnn_onnx, "--check-error-stat", "p99"), 2)
    assert_one_line_error(invoke("validate", dncnn_onnx, "--runtime", "nope"), 2, "unknown runtime")


def test_torch_reference_runs_the_model_once_per_distinct_input_and_hands_out_copies() -> None:
    """Export, convert, deploy and the search check against one fp32 run per input: validation,
    the task metric and the golden file ask the same reference for the same arrays."""
    calls = []
    model = nn.Conv2d(1, 2, 3)
    model.register_forward_hook(lambda *_: calls.append(1))
    loaded = load_model(DNCNN)
    assert TorchReference.of(loaded, ["input"]).label == "PyTorch (zoo:dncnn?depth=3&width=8)"
    ref = TorchReference.of(model, ["input"])
    assert TorchReference.of(ref, ["input"]) is ref and ref.label == "PyTorch"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    first = ref.run({"input": x})
    first[0][:] = 0  # a caller writing to its answer changes nobody else's
    again = ref.run({"input": x.copy()})  # equal content, another array: remembered
    assert len(calls) == 1 and np.abs(again[0]).max() > 0
    with torch.no_grad():
        np.testing.assert_array_equal(again[0], nn.functional.conv2d(torch.from_numpy(x), model.weight, model.bias).numpy())
    ref.run({"input": x + 1})  # other content: run
    ref.run({"input": x[..., :6]})  # other shape: run
    assert len(calls) == 3
