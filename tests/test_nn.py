"""Our weighted convolution layers (``wconv_deploy.nn``) against the spec and the reference style.

The expected values are computed here from the spec's formula (outer products written as einsum),
independently of the library's own mask helpers.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wconv_deploy import nn as wnn
from wconv_deploy.nn import wConv, wConv_Trainable

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
FIXED = {1: wConv.wConv1d, 2: wConv.wConv2d, 3: wConv.wConv3d}
TRAINABLE = {1: wConv_Trainable.wConv1d, 2: wConv_Trainable.wConv2d, 3: wConv_Trainable.wConv3d}
SPATIAL = {1: 11, 2: 9, 3: 7}


def spec_alfa(den: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``den ++ [1] ++ reverse(den)``, from the spec."""
    return torch.tensor([*den, 1.0, *reversed(den)], dtype=dtype)


def spec_phi(den: list[float], dims: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The spec's mask: alfa, outer(alfa, alfa) or alfa ⊗ alfa ⊗ alfa."""
    a = spec_alfa(den, dtype)
    return torch.einsum({1: "i->i", 2: "i,j->ij", 3: "i,j,k->ijk"}[dims], *([a] * dims))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


@pytest.fixture
def ref(refdir: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The reference-style ``wConv`` and ``wConv_Trainable`` modules, imported in-process."""
    mods = {}
    for name in ("wConv", "wConv_Trainable"):
        spec = importlib.util.spec_from_file_location(name, refdir / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, mod)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return SimpleNamespace(fixed=mods["wConv"], trainable=mods["wConv_Trainable"])


# --------------------------------------------------------------------------- signatures


def _params(cls: type) -> list[tuple[str, object, inspect._ParameterKind]]:
    sig = inspect.signature(cls.__init__)
    return [(p.name, p.default, p.kind) for p in list(sig.parameters.values())[1:]]


POS = inspect.Parameter.POSITIONAL_OR_KEYWORD
EMPTY = inspect.Parameter.empty


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fixed_signature_matches_reference(dims: int, ref: SimpleNamespace) -> None:
    expected = [
        ("in_channels", EMPTY, POS),
        ("out_channels", EMPTY, POS),
        ("kernel_size", EMPTY, POS),
        ("den", EMPTY, POS),
        ("stride", 1, POS),
        ("padding", 1, POS),
        ("groups", 1, POS),
        ("dilation", 1, POS),
        ("bias", False, POS),
    ]
    assert _params(FIXED[dims]) == expected
    assert _params(FIXED[dims]) == _params(getattr(ref.fixed, f"wConv{dims}d"))
    assert FIXED[dims] is getattr(wnn, f"WeightedConv{dims}d")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_trainable_signature_matches_reference_plus_keyword_den(dims: int, ref: SimpleNamespace) -> None:
    expected = [
        ("in_channels", EMPTY, POS),
        ("out_channels", EMPTY, POS),
        ("kernel_size", EMPTY, POS),
        ("stride", 1, POS),
        ("padding", 1, POS),
        ("groups", 1, POS),
        ("dilation", 1, POS),
        ("bias", False, POS),
    ]
    ours = _params(TRAINABLE[dims])
    assert ours[:-1] == expected
    assert ours[-1] == ("den", None, inspect.Parameter.KEYWORD_ONLY)
    assert ours[:-1] == _params(getattr(ref.trainable, f"wConv{dims}d"))
    assert TRAINABLE[dims] is getattr(wnn, f"TrainableWeightedConv{dims}d")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_defaults_and_attribute_types(dims: int) -> None:
    for layer in (FIXED[dims](4, 6, 3, [0.7]), TRAINABLE[dims](4, 6, 7)):
        assert layer.stride == (1,) * dims and isinstance(layer.stride, tuple)
        assert layer.padding == (1,) * dims and isinstance(layer.padding, tuple)
        assert layer.dilation == (1,) * dims and isinstance(layer.dilation, tuple)
        assert layer.kernel_size == (layer.kernel_size[0],) * dims and isinstance(layer.kernel_size, tuple)
        assert layer.groups == 1 and type(layer.groups) is int
        assert layer.bias is None
        assert tuple(layer.weight.shape) == (6, 4, *layer.kernel_size)
        assert isinstance(layer, nn.Module) and not isinstance(layer, nn.modules.conv._ConvNd)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_positional_arguments_follow_reference_order(dims: int) -> None:
    # reference order: ..., stride, padding, groups, dilation, bias
    f = FIXED[dims](4, 6, 5, [0.2, 0.8], 2, 3, 2, 2, True)
    t = TRAINABLE[dims](4, 6, 5, 2, 3, 2, 2, True)
    for layer in (f, t):
        assert layer.stride == (2,) * dims
        assert layer.padding == (3,) * dims
        assert layer.groups == 2
        assert layer.dilation == (2,) * dims
        assert isinstance(layer.bias, nn.Parameter) and layer.bias.shape == (6,)
        assert tuple(layer.weight.shape) == (6, 2, *([5] * dims))
    tup = FIXED[dims](2, 2, (3,) * dims, [0.5], stride=(1,) * dims, padding=(0,) * dims)
    assert tup.padding == (0,) * dims and tup.kernel_size == (3,) * dims


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_state_dict_keys_in_reference_order(dims: int, bias: bool) -> None:
    b = ["bias"] if bias else []
    fixed = FIXED[dims](2, 3, 5, [0.3, 0.6], bias=bias)
    trainable = TRAINABLE[dims](2, 3, 5, bias=bias)
    assert list(fixed.state_dict()) == ["weight", *b, "alfa", "Phi"]
    assert list(trainable.state_dict()) == ["weight", *b, "den"]
    # Phi/alfa are buffers, den is the only extra parameter
    assert [n for n, _ in fixed.named_parameters()] == ["weight", *b]
    assert [n for n, _ in fixed.named_buffers()] == ["alfa", "Phi"]
    assert [n for n, _ in trainable.named_parameters()] == ["weight", *b, "den"]
    assert list(trainable.named_buffers()) == []


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fixed_buffers_follow_the_formula(dims: int) -> None:
    den = [0.1, 0.4, 0.9]
    layer = FIXED[dims](1, 1, 7, den)
    torch.testing.assert_close(layer.alfa.double(), spec_alfa(den), rtol=1e-6, atol=0)
    assert tuple(layer.Phi.shape) == (7,) * dims
    torch.testing.assert_close(layer.Phi.double(), spec_phi(den, dims), rtol=1e-6, atol=0)
    assert layer.density() == pytest.approx(den, rel=1e-6)
    # library helpers agree with the spec formula too
    torch.testing.assert_close(wnn.phi_from_den(torch.tensor(den, dtype=torch.float64), dims), spec_phi(den, dims))


# --------------------------------------------------------------------------- forward


FORWARD_CASES = [
    # (kernel, den, kwargs)
    (1, [], {}),
    (3, [0.6], {}),
    (3, [1.4], {"stride": 2, "padding": 0, "bias": True}),
    (5, [0.05, 0.9], {"padding": 2, "dilation": 2}),
    (5, [0.3, 1.2], {"groups": 2, "bias": True, "padding": "same"}),
    (7, [0.1, 0.5, 1.1], {"stride": 3, "padding": 3, "groups": 2}),
    (7, [0.27, 0.17, 0.54], {"padding": "valid", "bias": True}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kernel,den,kwargs", FORWARD_CASES)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("trainable", [False, True], ids=["fixed", "trainable"])
def test_forward_equals_conv_of_weight_times_phi(
    dims: int, trainable: bool, kernel: int, den: list[float], kwargs: dict, dtype: torch.dtype
) -> None:
    torch.manual_seed(dims * 100 + kernel)
    # float64: den given as a float64 tensor keeps full precision; float32: den as a plain list
    den_arg = torch.tensor(den, dtype=torch.float64) if dtype == torch.float64 else den
    if trainable:
        layer = TRAINABLE[dims](4, 6, kernel, den=den_arg, **kwargs)
    else:
        layer = FIXED[dims](4, 6, kernel, den_arg, **kwargs)
    layer = layer.to(dtype)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(2, 4, *([SPATIAL[dims] + 2 * kernel] * dims), dtype=torch.float64)
    padding = kwargs.get("padding", 1)
    padding = padding if isinstance(padding, str) else (padding,) * dims
    bias = None if layer.bias is None else layer.bias.double()
    expected = CONV[dims](
        x,
        layer.weight.double() * spec_phi(den, dims),
        bias,
        (kwargs.get("stride", 1),) * dims,
        padding,
        (kwargs.get("dilation", 1),) * dims,
        kwargs.get("groups", 1),
    )
    out = layer(x.to(dtype))
    assert out.shape == expected.shape and out.dtype == dtype
    # float32: accumulation over up to 4 * 7^3 taps, against an exact float64 reference
    assert rel_err(out, expected) <= (1e-12 if dtype == torch.float64 else 1e-5)
    # the layer is NOT a plain convolution unless den is all ones
    if any(d != 1.0 for d in den):
        plain = CONV[dims](x, layer.weight.double(), bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        assert rel_err(out, plain) > 1e-4


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_folded_weight_is_weight_times_phi(dims: int) -> None:
    layer = TRAINABLE[dims](2, 2, 5, den=torch.tensor([0.2, 0.7], dtype=torch.float64))
    assert layer.den.dtype == torch.float64  # a float64 den keeps its dtype
    layer = layer.double()
    torch.testing.assert_close(layer.folded_weight(), layer.weight * spec_phi([0.2, 0.7], dims), rtol=1e-15, atol=0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_torchscript_compiles_and_matches(dims: int) -> None:
    torch.manual_seed(dims)
    model = nn.Sequential(FIXED[dims](2, 4, 3, [0.6], bias=True), TRAINABLE[dims](4, 4, 7, groups=2, padding="same")).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 2, *([SPATIAL[dims]] * dims))
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- reference-style state_dicts


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "den":
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g))


REF_CASES = [
    # (kernel, den, kwargs): fixed layers get den; trainable ones use k=7 (the reference default den fits only 7)
    (3, [0.8], {}),
    (5, [0.2, 0.9], {"stride": 2, "padding": 0, "bias": True}),
    (7, [0.1, 0.4, 1.3], {"groups": 2, "dilation": 2, "padding": 3, "bias": True}),
]


@pytest.mark.parametrize("kernel,den,kwargs", REF_CASES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_reference_fixed_state_dict_loads_strict(
    dims: int, kernel: int, den: list[float], kwargs: dict, ref: SimpleNamespace
) -> None:
    torch.manual_seed(0)
    theirs = getattr(ref.fixed, f"wConv{dims}d")(4, 6, kernel, den, **kwargs)
    _randomise(theirs, 1)
    sd = theirs.state_dict()
    # built with another density: loading must replace alfa and Phi
    ours = FIXED[dims](4, 6, kernel, [1.0] * len(den), **kwargs)
    assert list(ours.state_dict()) == list(sd)
    result = ours.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert ours.density() == pytest.approx(den, rel=1e-6)
    x = torch.randn(2, 4, *([SPATIAL[dims] + kernel] * dims))
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    # and back: our state_dict loads into the reference class
    back = getattr(ref.fixed, f"wConv{dims}d")(4, 6, kernel, [1.0] * len(den), **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [{}, {"stride": 2, "bias": True}, {"groups": 2, "padding": 3, "dilation": 2, "bias": True}])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_reference_trainable_state_dict_loads_strict(dims: int, kwargs: dict, ref: SimpleNamespace) -> None:
    torch.manual_seed(0)
    theirs = getattr(ref.trainable, f"wConv{dims}d")(4, 6, 7, **kwargs)
    _randomise(theirs, 2)
    sd = theirs.state_dict()
    ours = TRAINABLE[dims](4, 6, 7, **kwargs)
    assert list(ours.state_dict()) == list(sd)
    ours.load_state_dict(sd, strict=True)
    assert isinstance(ours.den, nn.Parameter)
    torch.testing.assert_close(ours.den, theirs.den, rtol=0, atol=0)
    x = torch.randn(2, 4, *([SPATIAL[dims] + 7] * dims))
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_reference_state_dict_of_a_model_loads_into_our_model(ref: SimpleNamespace) -> None:
    torch.manual_seed(3)
    theirs = nn.Sequential(ref.fixed.wConv2d(3, 8, 3, [0.7]), nn.ReLU(), ref.trainable.wConv2d(8, 4, 7, padding=3, bias=True))
    _randomise(theirs, 4)
    ours = nn.Sequential(wConv.wConv2d(3, 8, 3, [1.0]), nn.ReLU(), wConv_Trainable.wConv2d(8, 4, 7, padding=3, bias=True))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- errors and defaults


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_den_length_must_match_kernel(dims: int) -> None:
    with pytest.raises(ValueError, match="den"):
        FIXED[dims](2, 2, 5, [0.5])
    with pytest.raises(ValueError, match="den"):
        FIXED[dims](2, 2, 3, [0.5, 0.5])
    with pytest.raises(ValueError, match="den"):
        TRAINABLE[dims](2, 2, 5, den=[0.5])
    with pytest.raises(ValueError, match="den"):
        TRAINABLE[dims](2, 2, 3, den=[0.1, 0.2, 0.3])  # the reference default, wrong for k=3
    with pytest.raises(ValueError):
        FIXED[dims](2, 2, 3, [[0.5]])  # den must be 1-D


def test_trainable_kernel_must_be_odd_and_isotropic() -> None:
    with pytest.raises(ValueError, match="odd"):
        TRAINABLE[2](2, 2, (3, 5))
    with pytest.raises(ValueError, match="odd"):
        TRAINABLE[3](2, 2, (3, 3, 5))
    with pytest.raises(ValueError, match="odd"):
        TRAINABLE[2](2, 2, 4)
    with pytest.raises(ValueError, match="odd"):
        TRAINABLE[1](2, 2, 2)
    with pytest.raises(ValueError):  # fixed: an anisotropic kernel cannot match a square Phi
        FIXED[2](2, 2, (3, 5), [0.5])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_groups_must_divide_channels(dims: int) -> None:
    for make in (lambda **k: FIXED[dims](den=[0.5], **k), lambda **k: TRAINABLE[dims](**k)):
        with pytest.raises(ValueError, match="groups"):
            make(in_channels=3, out_channels=4, kernel_size=3, groups=2)
        with pytest.raises(ValueError, match="groups"):
            make(in_channels=4, out_channels=3, kernel_size=3, groups=2)
        assert make(in_channels=4, out_channels=6, kernel_size=3, groups=2).groups == 2


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_padding_strings(dims: int) -> None:
    with pytest.raises(ValueError, match="same"):
        FIXED[dims](2, 2, 3, [0.5], stride=2, padding="same")
    with pytest.raises(ValueError, match="same"):
        TRAINABLE[dims](2, 2, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        FIXED[dims](2, 2, 3, [0.5], padding="full")
    layer = FIXED[dims](2, 2, 5, [0.3, 0.6], padding="same")
    assert layer.padding == "same"
    x = torch.randn(1, 2, *([8] * dims))
    assert layer(x).shape == x.shape


def test_trainable_default_den() -> None:
    assert wnn.REFERENCE_TRAINABLE_DEN == (0.27, 0.17, 0.54)
    for dims in (1, 2, 3):
        torch.testing.assert_close(TRAINABLE[dims](2, 2, 7).den, torch.tensor([0.27, 0.17, 0.54]))
        torch.testing.assert_close(TRAINABLE[dims](2, 2, 5).den, torch.ones(2))
        torch.testing.assert_close(TRAINABLE[dims](2, 2, 3).den, torch.ones(1))
        assert TRAINABLE[dims](2, 2, 1).den.shape == (0,)
        assert TRAINABLE[dims](2, 2, 9).den.tolist() == [1.0] * 4


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_all_ones_density_is_a_plain_convolution(dims: int) -> None:
    torch.manual_seed(5)
    for layer in (TRAINABLE[dims](2, 3, 3, bias=True), TRAINABLE[dims](2, 3, 1, padding=0), FIXED[dims](2, 3, 5, [1.0, 1.0])):
        x = torch.randn(1, 2, *([7] * dims))
        expected = CONV[dims](x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_trainable_den_replaced_with_wrong_length_fails_in_forward() -> None:
    layer = TRAINABLE[2](2, 2, 3)
    layer.den = nn.Parameter(torch.tensor([0.27, 0.17, 0.54]))
    with pytest.raises(ValueError, match="kernel_size"):
        layer(torch.randn(1, 2, 8, 8))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_gradients_flow_to_den(dims: int) -> None:
    torch.manual_seed(7)
    layer = TRAINABLE[dims](3, 4, 5, den=[0.3, 0.8], bias=True).double()
    assert isinstance(layer.den, nn.Parameter) and layer.den.requires_grad
    assert any(p is layer.den for p in layer.parameters())
    x = torch.randn(2, 3, *([8] * dims), dtype=torch.float64)
    target = torch.randn_like(layer(x))
    loss = ((layer(x) - target) ** 2).sum()
    loss.backward()
    assert layer.den.grad is not None and layer.den.grad.shape == (2,)
    assert bool((layer.den.grad.abs() > 0).all())
    assert layer.weight.grad is not None and layer.bias.grad is not None

    # the gradient equals the one of the spec's formula
    den = layer.den.detach().clone().requires_grad_(True)
    a = torch.cat([den, torch.ones(1, dtype=torch.float64), den.flip(0)])
    phi = torch.einsum({1: "i->i", 2: "i,j->ij", 3: "i,j,k->ijk"}[dims], *([a] * dims))
    out = CONV[dims](x, layer.weight.detach() * phi, layer.bias.detach(), 1, 1)
    ((out - target) ** 2).sum().backward()
    torch.testing.assert_close(layer.den.grad, den.grad, rtol=1e-10, atol=1e-12)

    # an optimiser step changes den
    before = layer.den.detach().clone()
    torch.optim.SGD(layer.parameters(), lr=1e-3).step()
    assert not torch.equal(before, layer.den.detach())


def test_fixed_density_is_not_trained() -> None:
    layer = FIXED[2](2, 2, 3, [0.5])
    layer(torch.randn(1, 2, 6, 6)).sum().backward()
    assert not layer.Phi.requires_grad and layer.Phi.grad is None
    assert layer.weight.grad is not None
