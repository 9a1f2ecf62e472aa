"""InputSpec: parsing --input-shape and --dynamic, and every shape-derived query."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from wconv_deploy.errors import InputError
from wconv_deploy.spec import AXIS_NAMES, DTYPES, VALIDATION_INPUT_BYTES, Dim, InputSpec, TensorSpec

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("shape", "names"),
    [
        ("7", ("batch",)),
        ("2x16", ("batch", "features")),
        ("1x3x100", ("batch", "channels", "length")),
        ("1x3x224x224", ("batch", "channels", "height", "width")),
        ("2x1x5x6x7", ("batch", "channels", "depth", "height", "width")),
    ],
)
def test_single_unnamed_shape_names_input_and_axes_by_rank(shape: str, names: tuple[str, ...]) -> None:
    spec = InputSpec.parse(shape)
    assert spec.names == ["input"]
    (t,) = spec.inputs
    assert tuple(d.name for d in t.dims) == names
    assert t.shape() == tuple(int(s) for s in shape.split("x"))
    assert t.dtype == "float32"
    assert all(not d.dynamic and d.min == d.opt == d.max for d in t.dims)
    assert spec.dynamic_axes == {}


def test_named_multiple_inputs_keep_order_shapes_and_dtypes() -> None:
    spec = InputSpec.parse("x:1x3x32x32,mask:1x1x32x32:uint8,tokens:4x7:int64")
    assert spec.names == ["x", "mask", "tokens"]
    assert spec.shapes() == [(1, 3, 32, 32), (1, 1, 32, 32), (4, 7)]
    assert [t.dtype for t in spec.inputs] == ["float32", "uint8", "int64"]
    assert [t.torch_dtype for t in spec.inputs] == [torch.float32, torch.uint8, torch.int64]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_dtype_suffix(dtype: str) -> None:
    spec = InputSpec.parse(f"x:1x3x8x8:{dtype}")
    assert spec.inputs[0].dtype == dtype
    assert spec.inputs[0].torch_dtype is getattr(torch, dtype)


def test_unnamed_inputs_in_a_list_are_numbered() -> None:
    assert InputSpec.parse("1x3x8x8,1x1x8x8").names == ["input_0", "input_1"]


def test_whitespace_is_tolerated() -> None:
    spaced = InputSpec.parse("  x : 1 x 3 X 8 x 8 : float16 ,  m:1x1x8x8  ", " batch , height ")
    plain = InputSpec.parse("x:1x3x8x8:float16,m:1x1x8x8", "batch,height")
    assert spaced == plain
    assert spaced.shapes() == [(1, 3, 8, 8), (1, 1, 8, 8)]
    assert spaced.inputs[0].dtype == "float16"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty item"),
        ("   ", "empty item"),
        ("1x3x8x8,", "empty item"),
        ("1x3x", "is not a shape"),
        ("axb", "is not a shape"),
        ("x:1x3x8xq", "is not a shape"),
        ("0x3x8x8", "zero-sized"),
        ("1x3x0x8", "zero-sized"),
        ("1x2x3x4x5x6", "rank 6"),
        ("x:1x3x8x8,x:1x1x8x8", "repeat"),
        ("x:1x3x8x8:float8", "unknown dtype 'float8'"),
        ("1x:1x3", "'1x' is not a valid input name"),
        ("1x3:1x3", "write name:shape"),
        ("9x:1x3x8x8", "not a valid input name"),
        ("x-y:1x3", "not a valid input name"),
        (":1x3", "not a valid input name"),
        ("x:1x3:float32:extra", "is not name:shape[:dtype]"),
    ],
)
def test_parse_errors_are_input_errors_with_a_helpful_message(text: str, needle: str) -> None:
    with pytest.raises(InputError, match="--input-shape") as info:
        InputSpec.parse(text)
    assert needle in str(info.value)


def test_unknown_dtype_message_lists_known_dtypes() -> None:
    with pytest.raises(InputError) as info:
        InputSpec.parse("x:1x3x8x8:complex64")
    for known in ("float32", "float16", "int64"):
        assert known in str(info.value)


# --------------------------------------------------------------------------- --dynamic


def test_dynamic_batch_defaults_to_1_to_max_8_2opt() -> None:
    small = InputSpec.parse("1x3x8x8", "batch")
    assert small.dynamic_axes == {"batch": Dim("batch", 1, 1, 8)}
    big = InputSpec.parse("6x3x8x8", "batch")
    assert big.dynamic_axes == {"batch": Dim("batch", 6, 1, 12)}
    # Only batch changed.
    assert [d.dynamic for d in big.inputs[0].dims] == [True, False, False, False]


def test_dynamic_spatial_defaults_to_half_to_double_opt() -> None:
    spec = InputSpec.parse("2x3x224x65", "batch,height,width")
    axes = spec.dynamic_axes
    assert axes["batch"] == Dim("batch", 2, 1, 8)
    assert axes["height"] == Dim("height", 224, 112, 448)
    assert axes["width"] == Dim("width", 65, 32, 130)
    assert not spec.inputs[0].dims[1].dynamic


def test_dynamic_size_one_non_batch_axis_spans_1_to_2() -> None:
    spec = InputSpec.parse("1x3x1x8", "height")
    assert spec.dynamic_axes == {"height": Dim("height", 1, 1, 2)}


def test_dynamic_all_excludes_channels() -> None:
    spec = InputSpec.parse("x:2x3x16x16,v:2x4x5x16x16", "all")
    assert set(spec.dynamic_axes) == {"batch", "height", "width", "depth"}
    for t in spec.inputs:
        for d in t.dims:
            assert d.dynamic == (d.name != "channels"), (t.name, d)


def test_dynamic_all_makes_features_and_length_dynamic() -> None:
    spec = InputSpec.parse("a:2x16,b:2x3x40", "all")
    assert set(spec.dynamic_axes) == {"batch", "features", "length"}
    assert spec.dynamic_axes["features"] == Dim("features", 16, 8, 32)


def test_dynamic_explicit_ranges() -> None:
    spec = InputSpec.parse("1x3x224x224", "batch=1:64,height=32:512")
    assert spec.dynamic_axes == {"batch": Dim("batch", 1, 1, 64), "height": Dim("height", 224, 32, 512)}
    assert spec.shapes("min") == [(1, 3, 32, 224)]
    assert spec.shapes("max") == [(64, 3, 512, 224)]
    assert spec.shapes("opt") == [(1, 3, 224, 224)]


def test_dynamic_explicit_range_with_spaces() -> None:
    spec = InputSpec.parse("4x3x8x8", "batch = 2 : 16")
    assert spec.dynamic_axes == {"batch": Dim("batch", 4, 2, 16)}


def test_all_then_explicit_range_overrides_default() -> None:
    spec = InputSpec.parse("1x3x8x8", "all,batch=1:64")
    assert spec.dynamic_axes["batch"] == Dim("batch", 1, 1, 64)
    assert spec.dynamic_axes["height"] == Dim("height", 8, 4, 16)


def test_with_dynamic_returns_a_copy() -> None:
    static = InputSpec.parse("1x3x8x8")
    dyn = static.with_dynamic("batch")
    assert static.dynamic_axes == {}
    assert set(dyn.dynamic_axes) == {"batch"}


def test_unknown_axis_message_lists_the_axes() -> None:
    with pytest.raises(InputError) as info:
        InputSpec.parse("x:1x3x8x8,v:1x3x4", "time")
    msg = str(info.value)
    assert "'time'" in msg
    assert "batch, channels, height, width, length" in msg


def test_unknown_axis_for_rank() -> None:
    # A 3-D input has 'length', not 'height'.
    with pytest.raises(InputError, match="height"):
        InputSpec.parse("1x3x100", "height")


@pytest.mark.parametrize(
    ("dynamic", "needle"),
    [
        ("channels", "channels cannot vary"),
        ("channels=1:8", "channels cannot vary"),
        ("batch=2:8", "does not contain the --input-shape size 1"),
        ("height=1:100", "does not contain"),  # opt 224 above max
        ("height=300:400", "does not contain"),  # opt 224 below min
        ("batch=8:2", "need 1 <= min <= max"),
        ("batch=0:8", "need 1 <= min <= max"),
        ("batch=1:1", "single size"),
        ("height=224:224", "single size"),
        ("batch=1-8", "is not a min:max range"),
        ("batch=1:", "is not a min:max range"),
        ("batch=:8", "is not a min:max range"),
        ("batch=a:b", "is not a min:max range"),
        ("batch=1:2:3", "is not a min:max range"),
        ("batch=-1:8", "is not a min:max range"),
        ("all=1:2", "'all' takes no range"),
        ("batch,,height", "empty item"),
        ("batch,", "empty item"),
        (",", "empty item"),
    ],
)
def test_dynamic_errors(dynamic: str, needle: str) -> None:
    with pytest.raises(InputError, match="--dynamic") as info:
        InputSpec.parse("1x3x224x224", dynamic)
    assert needle in str(info.value)


@pytest.mark.parametrize("dynamic", ["batch=", "all="])
def test_empty_range_after_equals_is_rejected(dynamic: str) -> None:
    with pytest.raises(InputError):
        InputSpec.parse("1x3x8x8", dynamic)


def test_explicit_range_survives_a_later_all() -> None:
    spec = InputSpec.parse("1x3x8x8", "batch=1:64,all")
    assert spec.dynamic_axes["batch"] == Dim("batch", 1, 1, 64)


# --------------------------------------------------------------------------- shared axes


def test_shared_axis_names_give_one_dynamic_axis() -> None:
    spec = InputSpec.parse("x:2x3x16x16,mask:2x1x16x16", "batch=1:32,height,width")
    axes = spec.dynamic_axes
    assert list(axes) == ["batch", "height", "width"]
    assert axes["batch"] == Dim("batch", 2, 1, 32)
    for t in spec.inputs:
        assert t.dims[0] == axes["batch"]
        assert t.dims[2] == axes["height"]


def test_shared_dynamic_axis_with_different_sizes_is_rejected() -> None:
    with pytest.raises(InputError):
        InputSpec.parse("x:1x3x8x8,y:1x3x16x16", "height")


# --------------------------------------------------------------------------- validation and export shapes


def test_validation_shapes_static_spec_is_exactly_one_set() -> None:
    spec = InputSpec.parse("x:1x3x8x8,m:1x1x8x8")
    assert spec.validation_shapes() == [[(1, 3, 8, 8), (1, 1, 8, 8)]]


def test_validation_shapes_dynamic_content() -> None:
    spec = InputSpec.parse("x:2x3x16x20,m:2x1x16x20", "batch,height,width")
    assert spec.validation_shapes() == [
        [(2, 3, 16, 20), (2, 1, 16, 20)],  # opt
        [(1, 3, 8, 10), (1, 1, 8, 10)],  # min
        [(8, 3, 32, 40), (8, 1, 32, 40)],  # every dynamic axis at its maximum
    ]
    assert spec.validation_note() is None


def test_validation_shapes_reach_the_batch_maximum_when_it_fits() -> None:
    spec = InputSpec.parse("1x3x32x32", "batch=1:64")
    assert spec.validation_shapes()[-1] == [(64, 3, 32, 32)] and spec.validation_note() is None


def test_validation_at_the_maximum_is_capped_by_memory_and_says_so() -> None:
    spec = InputSpec.parse("1x3x224x224", "batch=1:256")  # 256 x 588 KiB = 147 MiB at the maximum
    (corner,) = spec.validation_shapes()[-1]
    per_sample = 3 * 224 * 224 * 4
    assert corner == (64, 3, 224, 224) and 64 * per_sample <= VALIDATION_INPUT_BYTES < 128 * per_sample
    note = spec.validation_note()
    assert note is not None and "batch 64" in note and "maximum 256" in note and "64 MiB" in note


def test_validation_cap_never_cuts_below_opt_plus_one() -> None:
    spec = InputSpec.parse("2x3x1024x1024", "batch=1:64,height,width")  # 2048x2048 at the maximum
    assert spec.validation_shapes()[-1] == [(3, 3, 2048, 2048)]
    assert "batch 3" in (spec.validation_note() or "")


def test_validation_shapes_big_batch_capped_by_max() -> None:
    spec = InputSpec.parse("4x3x8x8", "batch=1:4")
    sets = spec.validation_shapes()
    assert sets == [[(4, 3, 8, 8)], [(1, 3, 8, 8)]]  # the maximum 4 == opt: deduplicated


def test_validation_shapes_deduplicates_when_min_equals_opt() -> None:
    spec = InputSpec.parse("1x3x8x8", "batch")
    sets = spec.validation_shapes()
    assert sets == [[(1, 3, 8, 8)], [(8, 3, 8, 8)]]
    assert len({tuple(s) for s in sets}) == len(sets)


def test_validation_shapes_are_within_ranges() -> None:
    spec = InputSpec.parse("x:3x3x16x24,m:3x1x16x24", "all")
    for shapes in spec.validation_shapes():
        spec.check_arrays({t.name: np.zeros(s) for t, s in zip(spec.inputs, shapes)})


def test_export_shapes_never_use_one_on_a_dynamic_axis() -> None:
    spec = InputSpec.parse("x:1x3x1x8,m:1x1x1x8", "batch,height")
    assert spec.export_shapes() == [(2, 3, 2, 8), (2, 1, 2, 8)]
    for t, shape in zip(spec.inputs, spec.export_shapes()):
        for d, s in zip(t.dims, shape):
            if d.dynamic:
                assert s >= 2
            assert d.min <= s <= d.max


def test_export_shapes_keep_opt_otherwise() -> None:
    assert InputSpec.parse("1x3x8x8").export_shapes() == [(1, 3, 8, 8)]  # static 1 stays 1
    assert InputSpec.parse("4x3x8x8", "batch").export_shapes() == [(4, 3, 8, 8)]


# --------------------------------------------------------------------------- example inputs


def test_example_inputs_seeded() -> None:
    spec = InputSpec.parse("x:2x3x8x8,m:2x8")
    a, b = spec.example_inputs(seed=3), spec.example_inputs(seed=3)
    c = spec.example_inputs(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert [tuple(t.shape) for t in a] == [(2, 3, 8, 8), (2, 8)]


def test_example_inputs_dtypes_and_values() -> None:
    spec = InputSpec.parse("a:2x3x4x4:float16,b:2x5:int64,c:2x5:bool,d:2x5:uint8,f:2x5:float64")
    a, b, c, d, f = spec.example_inputs()
    assert [t.dtype for t in (a, b, c, d, f)] == [torch.float16, torch.int64, torch.bool, torch.uint8, torch.float64]
    assert int(b.min()) >= 0 and int(b.max()) < 10
    assert int(d.min()) >= 0 and int(d.max()) < 10
    assert float(a.float().std()) > 0.1  # normal, not constant


def test_example_inputs_at_given_shapes() -> None:
    spec = InputSpec.parse("x:1x3x8x8", "batch,height")
    out = spec.example_inputs([(5, 3, 6, 8)])
    assert tuple(out[0].shape) == (5, 3, 6, 8)


# --------------------------------------------------------------------------- exporter arguments


def test_torch_dynamic_shapes_share_one_dim_per_name() -> None:
    spec = InputSpec.parse("x:2x3x16x16,m:2x1x16x16,s:2x3x16x16", "batch=1:32,height")
    ds = spec.torch_dynamic_shapes()
    assert len(ds) == 3
    assert all(set(d) == {0, 2} for d in ds)
    assert all(isinstance(d[0], torch.export.Dim) for d in ds)
    assert ds[0][0] is ds[1][0] is ds[2][0]
    assert ds[0][2] is ds[1][2] is ds[2][2]
    assert ds[0][0] is not ds[0][2]
    assert ds[0][0].__name__ == "batch"
    assert (ds[0][0].min, ds[0][0].max) == (1, 32)
    assert (ds[0][2].min, ds[0][2].max) == (8, 32)


def test_torch_dynamic_shapes_static_inputs_get_empty_dicts() -> None:
    assert InputSpec.parse("x:1x3x8x8,m:1x1x8x8").torch_dynamic_shapes() == ({}, {})
    ds = InputSpec.parse("x:1x3x8x8,t:4x7", "height").torch_dynamic_shapes()
    assert set(ds[0]) == {2} and ds[1] == {}


def test_legacy_dynamic_axes() -> None:
    spec = InputSpec.parse("x:1x3x8x8,t:1x7,m:1x1x8x8", "batch,width")
    assert spec.legacy_dynamic_axes() == {"x": {0: "batch", 3: "width"}, "t": {0: "batch"}, "m": {0: "batch", 3: "width"}}
    assert InputSpec.parse("1x3x8x8").legacy_dynamic_axes() == {}
    assert InputSpec.parse("x:1x3x8x8,t:4x7", "height").legacy_dynamic_axes() == {"x": {2: "height"}}


# --------------------------------------------------------------------------- check_arrays


@pytest.fixture
def dyn_spec() -> InputSpec:
    return InputSpec.parse("x:2x3x16x16,m:2x1x16x16", "batch=1:4,height")


def test_check_arrays_accepts_in_range(dyn_spec: InputSpec) -> None:
    for b, h in [(1, 8), (4, 32), (2, 16)]:
        dyn_spec.check_arrays({"x": np.zeros((b, 3, h, 16)), "m": np.zeros((b, 1, h, 16)), "extra": np.zeros(1)})


def test_check_arrays_rejects_missing_names(dyn_spec: InputSpec) -> None:
    with pytest.raises(InputError, match="inputs lack m") as info:
        dyn_spec.check_arrays({"x": np.zeros((2, 3, 16, 16))})
    assert "expected: x, m" in str(info.value)


@pytest.mark.parametrize(
    "shape",
    [(5, 3, 16, 16), (2, 3, 7, 16), (2, 3, 33, 16), (2, 4, 16, 16), (2, 3, 16, 17), (2, 3, 16), (2, 3, 16, 16, 1)],
)
def test_check_arrays_rejects_out_of_range(dyn_spec: InputSpec, shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError) as info:
        dyn_spec.check_arrays({"x": np.zeros(shape), "m": np.zeros((2, 1, 16, 16))})
    msg = str(info.value)
    assert "'x'" in msg and str(list(shape)) in msg
    assert "batch[1..4]" in msg and "height[8..32]" in msg


# --------------------------------------------------------------------------- text and JSON


def test_str() -> None:
    assert str(InputSpec.parse("1x3x8x8")) == "input:1x3x8x8:float32"
    spec = InputSpec.parse("x:2x3x16x16,m:2x1x16x16:uint8", "batch=1:32,height")
    assert str(spec) == "x:batch[1..32]x3xheight[8..32]x16:float32, m:batch[1..32]x1xheight[8..32]x16:uint8"


def test_to_dict_layout() -> None:
    spec = InputSpec.parse("x:2x3x8x8:float16", "batch")
    assert spec.to_dict() == {
        "inputs": [
            {
                "name": "x",
                "dtype": "float16",
                "dims": [["batch", 1, 2, 8], ["channels", 3, 3, 3], ["height", 8, 8, 8], ["width", 8, 8, 8]],
            }
        ]
    }
    assert json.loads(spec.to_json()) == spec.to_dict()


def test_from_dict_defaults_dtype() -> None:
    spec = InputSpec.from_dict({"inputs": [{"name": "x", "dims": [["batch", 1, 2, 8]]}]})
    assert spec.inputs[0].dtype == "float32"
    assert spec.dynamic_axes == {"batch": Dim("batch", 2, 1, 8)}


@st.composite
def specs(draw: st.DrawFn) -> InputSpec:
    n = draw(st.integers(1, 3))
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,6}", fullmatch=True), min_size=n, max_size=n, unique=True))
    rank = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 64), min_size=rank, max_size=rank))
    parts = []
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        # Shared axes must agree in size; channels may differ per input.
        own = [draw(st.integers(1, 8)) if a == "channels" else s for a, s in zip(AXIS_NAMES[rank], sizes)]
        parts.append(f"{name}:{'x'.join(map(str, own))}:{dtype}")
    axes = [a for a in AXIS_NAMES[rank] if a != "channels"]
    chosen = draw(st.lists(st.sampled_from(axes), unique=True, max_size=len(axes)))
    items = []
    for axis in chosen:
        opt = sizes[AXIS_NAMES[rank].index(axis)]
        if draw(st.booleans()):
            lo = draw(st.integers(1, opt))
            hi = draw(st.integers(max(opt, lo + 1), opt + 100))
            items.append(f"{axis}={lo}:{hi}")
        else:
            items.append(axis)
    return InputSpec.parse(",".join(parts), ",".join(items) or None)


@given(specs())
def test_to_dict_from_dict_round_trip(spec: InputSpec) -> None:
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_dict(json.loads(spec.to_json())) == spec
    again = InputSpec.from_dict(json.loads(spec.to_json()))
    assert str(again) == str(spec)
    assert again.validation_shapes() == spec.validation_shapes()


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        [],
        "inputs",
        42,
        {},
        {"inputs": None},
        {"inputs": 5},
        {"inputs": ["x"]},
        {"inputs": [{"dims": []}]},
        {"inputs": [{"name": "x"}]},
        {"inputs": [{"name": "x", "dims": None}]},
        {"inputs": [{"name": "x", "dims": [["batch", 1, 1]]}]},
        {"inputs": [{"name": "x", "dims": [["batch", 1, 1, 1, 1]]}]},
        {"inputs": [{"name": "x", "dims": [["batch", "one", 1, 1]]}]},
        {"inputs": [{"name": "x", "dims": [["batch", 1.5, [], 1]]}]},
    ],
)
def test_from_dict_garbage_is_input_error(garbage: object) -> None:
    with pytest.raises(InputError, match="not an input spec"):
        InputSpec.from_dict(garbage)  # type: ignore[arg-type]


def test_from_dict_unknown_dtype_is_input_error() -> None:
    data = {"inputs": [{"name": "x", "dtype": "complex128", "dims": [["batch", 1, 1, 1]]}]}
    try:
        spec = InputSpec.from_dict(data)
        spec.example_inputs()
    except InputError:
        return
    pytest.fail("no InputError for an unknown dtype")


def test_tensor_spec_shape_which() -> None:
    t = TensorSpec("x", (Dim("batch", 2, 1, 8), Dim("features", 5, 5, 5)))
    assert (t.shape("min"), t.shape("opt"), t.shape("max")) == ((1, 5), (2, 5), (8, 5))
