"""Folding (``wconv_deploy.fold``): every weighted convolution becomes an exact ``nn.ConvNd``."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tests import refstyle
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.fold import fold
from wconv_deploy.nn import FIXED, TRAINABLE, WeightedConv2d, WeightedConvNd
from wconv_deploy.nn import wConv_Trainable as ours_trainable

CONV_CLS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}

#: The reference's suggested density ranges, outermost value first (spec).
DEN_RANGES = {
    1: [],
    3: [(0.5, 1.5)],
    5: [(0.05, 1.0), (0.5, 1.5)],
    7: [(0.05, 0.5), (0.15, 1.0), (0.25, 1.5)],
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``."""
    a, b = a.detach().double(), b.detach().double()
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


def spec_phi(den: list[float], dims: int) -> torch.Tensor:
    a = torch.tensor([*den, 1.0, *reversed(den)], dtype=torch.float64)
    return torch.einsum({1: "i->i", 2: "i,j->ij", 3: "i,j,k->ijk"}[dims], *([a] * dims))


def weighted_left(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, WeightedConvNd) or hasattr(m, "Phi") or hasattr(m, "den")]


def randomise_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


def load_reference(folder: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    mods = {}
    for name in ("wConv", "wConv_Trainable"):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, mod)
        spec.loader.exec_module(mod)
        mods[name] = mod
    return SimpleNamespace(fixed=mods["wConv"], trainable=mods["wConv_Trainable"])


@pytest.fixture
def ref(refdir: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The reference-style ``wConv`` and ``wConv_Trainable`` modules, imported in-process."""
    return load_reference(refdir, monkeypatch)


# --------------------------------------------------------------------------- property test


@st.composite
def layer_configs(draw: st.DrawFn) -> dict:
    dims = draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    den = [draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False)) for lo, hi in DEN_RANGES[k]]
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    pad_choices = ["int", "tuple"] + (["same"] if stride == 1 else [])
    pad_kind = draw(st.sampled_from(pad_choices))
    if pad_kind == "int":
        padding: int | tuple[int, ...] | str = draw(st.integers(0, 3))
    elif pad_kind == "tuple":
        padding = tuple(draw(st.lists(st.integers(0, 3), min_size=dims, max_size=dims)))
    else:
        padding = "same"
    groups = draw(st.sampled_from([1, 2]))
    channels = st.sampled_from([2, 4]) if groups == 2 else st.integers(2, 4)
    extent = dilation * (k - 1) + 1
    return {
        "dims": dims,
        "k": k,
        "den": den,
        "trainable": draw(st.booleans()),
        # our classes, or the reference-style ones (which take padding as numbers only)
        "reference": padding != "same" and draw(st.booleans()),
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "in_ch": draw(channels),
        "out_ch": draw(channels),
        "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "size": [extent + draw(st.integers(0, 2)) for _ in range(dims)],
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_layer(c: dict, ref: SimpleNamespace) -> nn.Module:
    common = {"stride": c["stride"], "padding": c["padding"], "groups": c["groups"], "dilation": c["dilation"], "bias": c["bias"]}
    den64 = torch.tensor(c["den"], dtype=torch.float64)
    dims, dtype = c["dims"], c["dtype"]
    if c["reference"]:
        if c["trainable"]:
            layer = getattr(ref.trainable, f"wConv{dims}d")(c["in_ch"], c["out_ch"], c["k"], **common).to(dtype)
            layer.den = nn.Parameter(den64.to(dtype))  # the shipped 3-value den fits k=7 only
        else:
            cls = getattr(ref.fixed, f"wConv{dims}d")
            layer = cls(c["in_ch"], c["out_ch"], c["k"], [0.5] * len(c["den"]), **common).to(dtype)
            # the density at full precision; in 1-D the reference-style Phi is the alfa tensor itself
            layer.alfa = torch.tensor([*c["den"], 1.0, *reversed(c["den"])], dtype=torch.float64).to(dtype)
            layer.Phi = layer.alfa if dims == 1 else spec_phi(c["den"], dims).to(dtype)
    elif c["trainable"]:
        layer = TRAINABLE[dims](c["in_ch"], c["out_ch"], c["k"], **common, den=den64).to(dtype)
    else:
        layer = FIXED[dims](c["in_ch"], c["out_ch"], c["k"], den64, **common).to(dtype)
    g = torch.Generator().manual_seed(c["seed"])
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=torch.float64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=torch.float64))
    return layer


@pytest.fixture(scope="module")
def ref_modules(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The reference-style modules for the property test (module scope: hypothesis reruns the test body)."""
    with pytest.MonkeyPatch.context() as mp:
        return load_reference(refstyle.install(tmp_path_factory.mktemp("reference")), mp)


@given(c=layer_configs())
def test_fold_property(c: dict, ref_modules: SimpleNamespace) -> None:
    dims, dtype = c["dims"], c["dtype"]
    layer = build_layer(c, ref_modules)
    model = nn.Sequential(layer)
    folded, report = fold(model)

    assert weighted_left(folded) == []
    conv = folded[0]
    assert type(conv) is CONV_CLS[dims]
    assert conv.stride == layer.stride == (c["stride"],) * dims
    expected_padding = c["padding"] if isinstance(c["padding"], (str, tuple)) else (c["padding"],) * dims
    assert conv.padding == layer.padding == expected_padding
    assert conv.dilation == (c["dilation"],) * dims
    assert conv.groups == c["groups"]
    assert conv.kernel_size == (c["k"],) * dims
    assert conv.in_channels == c["in_ch"] and conv.out_channels == c["out_ch"]
    assert (conv.bias is not None) == c["bias"]
    assert conv.weight.dtype == dtype and (conv.bias is None or conv.bias.dtype == dtype)
    # the folded weight is weight * Phi, Phi from the spec formula
    expected_w = layer.weight.double() * spec_phi(c["den"], dims)
    assert rel_err(conv.weight, expected_w) <= TOL[dtype]

    assert [ly.name for ly in report.folded] == ["0"]
    assert report.folded[0].kind == ("trainable" if c["trainable"] else "fixed")
    assert report.not_folded == [] and report.clean
    assert report.model_check is not None and report.model_check.skipped is None

    g = torch.Generator().manual_seed(c["seed"] + 1)
    x = torch.randn(2, c["in_ch"], *c["size"], generator=g, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert actual.shape == expected.shape and actual.dtype == dtype
    assert rel_err(actual, expected) <= TOL[dtype]
    assert model[0] is layer and (hasattr(layer, "Phi") or hasattr(layer, "den"))  # the original is left alone


# --------------------------------------------------------------------------- fold basics


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=FIXED[2](3, 4, 3, [0.5]),
            act=nn.ReLU(),
            body=TRAINABLE[2](4, 4, 7, padding=3, bias=True),
            tail=nn.Sequential(FIXED[2](4, 2, 5, [0.2, 0.8], stride=2, groups=2)),
        )
    )


def test_original_model_is_not_modified() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]
    folded, report = fold(model)
    assert folded is not model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == types_before
    assert weighted_left(model) == ["stem", "body", "tail.0"]
    assert weighted_left(folded) == []
    # the folded model does not share storage with the original
    with torch.no_grad():
        folded.body.weight.zero_()
    assert torch.equal(model.body.weight, before["body.weight"])


@pytest.mark.parametrize("training", [True, False])
def test_train_eval_mode_is_kept(training: bool) -> None:
    model = nn.Sequential(FIXED[2](3, 4, 3, [0.5]), nn.BatchNorm2d(4), nn.Dropout(0.5), TRAINABLE[2](4, 4, 3))
    model.train(training)
    folded, _ = fold(model)
    assert [m.training for m in model.modules()] == [training] * 5
    assert [m.training for m in folded.modules()] == [training] * 5


def test_mixed_train_eval_modes_are_kept() -> None:
    model = nn.Sequential(FIXED[2](3, 4, 3, [0.5]), nn.BatchNorm2d(4), TRAINABLE[2](4, 4, 3), nn.BatchNorm2d(4))
    model.eval()
    model[1].train()  # e.g. a BN left in training mode by mistake
    modes = [m.training for m in model.modules()]
    folded, _ = fold(model, fold_bn=True)
    assert [m.training for m in model.modules()] == modes
    assert [m.training for m in folded.modules()] == modes


def test_report_lists_folded_layers() -> None:
    model = nn.Sequential(
        OrderedDict(
            a=FIXED[2](3, 4, 3, [0.5]),
            b=TRAINABLE[2](4, 4, 7),
            c=nn.Identity(),
            d=TRAINABLE[2](4, 2, 5, den=[0.3, 0.6], padding=2),
        )
    )
    folded, report = fold(model)
    assert [ly.name for ly in report.folded] == ["a", "b", "d"]
    a, b, d = report.folded
    assert (a.kind, b.kind, d.kind) == ("fixed", "trainable", "trainable")
    assert (a.kernel, b.kernel, d.kernel) == ((3, 3), (7, 7), (5, 5))
    assert a.den == pytest.approx([0.5]) and b.den == pytest.approx([0.27, 0.17, 0.54]) and d.den == pytest.approx([0.3, 0.6])
    assert (a.phi_min, a.phi_max) == pytest.approx((0.25, 1.0))
    assert (b.phi_min, b.phi_max) == pytest.approx((0.17**2, 1.0))
    assert (d.phi_min, d.phi_max) == pytest.approx((0.09, 1.0))
    assert (a.in_channels, a.out_channels, a.bias, a.groups) == (3, 4, False, 1)
    assert set(report.layer_errors) == {"a", "b", "d"}
    assert all(e <= 1e-6 for e in report.layer_errors.values())
    assert report.clean and report.not_folded == []
    assert report.model_check is not None and report.model_check.inputs == [[1, 3, 32, 32]]
    assert report.model_check.rel_error is not None and report.model_check.rel_error <= 1e-6
    text = report.render()
    for needle in ("a", "b", "d", "fixed", "trainable", "7x7", "0.27", "0.25..1"):
        assert needle in text, needle
    d_ = report.to_dict()
    assert d_["clean"] is True and [ly["name"] for ly in d_["folded"]] == ["a", "b", "d"]


def test_1d_and_3d_report_phi_range() -> None:
    model = nn.Sequential(FIXED[1](2, 2, 5, [0.2, 0.8]), nn.Unflatten(2, (1, 1, -1)), FIXED[3](2, 2, 3, [0.4], padding=(1, 1, 0)))
    folded, report = fold(model, example_inputs=(torch.randn(1, 2, 9),))
    assert [type(m) for m in folded] == [nn.Conv1d, nn.Unflatten, nn.Conv3d]
    assert (report.folded[0].phi_min, report.folded[0].phi_max) == pytest.approx((0.2, 1.0))
    assert (report.folded[1].phi_min, report.folded[1].phi_max) == pytest.approx((0.4**3, 1.0))
    assert report.folded[1].den == pytest.approx([0.4])


def test_bare_weighted_layer_as_the_model() -> None:
    layer = TRAINABLE[2](3, 4, 5, den=[0.3, 0.9], bias=True)
    folded, report = fold(layer)
    assert type(folded) is nn.Conv2d
    assert [ly.name for ly in report.folded] == [""]
    x = torch.randn(1, 3, 9, 9)
    assert rel_err(folded(x), layer(x)) <= 1e-6


def test_shared_layer_is_replaced_everywhere() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = FIXED[2](2, 2, 3, [0.6])
            self.b = self.a

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    model = Tied()
    folded, report = fold(model)
    assert type(folded.a) is nn.Conv2d and folded.b is folded.a
    assert weighted_left(folded) == []
    x = torch.randn(1, 2, 8, 8)
    assert rel_err(folded(x), model(x)) <= 1e-6


# --------------------------------------------------------------------------- reference-style and look-alikes


def test_reference_style_classes_are_folded(ref: SimpleNamespace) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        ref.fixed.wConv2d(3, 4, 3, [0.7], bias=True),
        nn.ReLU(),
        ref.trainable.wConv2d(4, 4, 7, padding=3),
        ref.fixed.wConv2d(4, 4, 5, [0.1, 0.9], stride=2, groups=2, dilation=2, padding=4),
    )
    with torch.no_grad():
        model[2].den.copy_(torch.tensor([0.1, 0.5, 1.2]))
    folded, report = fold(model)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Conv2d]
    assert [(ly.name, ly.kind) for ly in report.folded] == [("0", "fixed"), ("2", "trainable"), ("3", "fixed")]
    assert report.folded[0].cls == "wConv.wConv2d" and report.folded[1].cls == "wConv_Trainable.wConv2d"
    assert report.folded[1].den == pytest.approx([0.1, 0.5, 1.2])
    assert folded[3].stride == (2, 2) and folded[3].dilation == (2, 2) and folded[3].groups == 2 and folded[3].padding == (4, 4)
    x = torch.randn(2, 3, 16, 16)
    assert rel_err(folded(x), model(x)) <= 1e-6


@pytest.mark.parametrize("dims", [1, 3])
def test_reference_style_1d_3d_are_folded(dims: int, ref: SimpleNamespace) -> None:
    model = nn.Sequential(
        getattr(ref.fixed, f"wConv{dims}d")(2, 3, 5, [0.3, 0.6]),  # in 1-D its Phi is the alfa tensor itself
        getattr(ref.trainable, f"wConv{dims}d")(3, 2, 7, padding=2),
    )
    folded, report = fold(model)
    assert [type(m) for m in folded] == [CONV_CLS[dims]] * 2
    x = torch.randn(1, 2, *([10] * dims))
    assert rel_err(folded(x), model(x)) <= 1e-6


class LookAlikePhi(nn.Module):
    """Someone's own weighted convolution: a weight and a Phi buffer, nothing from us."""

    def __init__(self, cin: int, cout: int, den: list[float], stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        a = torch.tensor([*den, 1.0, *reversed(den)])
        k = a.numel()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.randn(cout)) if bias else None
        self.register_buffer("Phi", a[:, None] * a[None, :])
        self.stride, self.padding, self.dilation, self.groups = (stride, stride), (k // 2, k // 2), (1, 1), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.Phi, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LookAlikeDen(nn.Module):
    """A look-alike with a learned ``den`` parameter, mask rebuilt in forward."""

    def __init__(self, cin: int, cout: int, den: list[float]) -> None:
        super().__init__()
        k = 2 * len(den) + 1
        self.weight = nn.Parameter(torch.randn(cout, cin, k))
        self.den = nn.Parameter(torch.tensor(den))
        self.stride, self.padding, self.dilation, self.groups = 1, "same", 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.cat([self.den, torch.ones(1), self.den.flip(0)])
        return F.conv1d(x, self.weight * a, None, self.stride, self.padding, self.dilation, self.groups)


class LookAlikeNoStride(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2, 3, 3))
        self.register_buffer("Phi", torch.full((3, 3), 0.5))
        self.padding, self.dilation, self.groups = 1, 1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.Phi, padding=1)


class BrokenLookAlike(LookAlikePhi):
    """Has a Phi buffer but forgets to use it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_look_alikes_are_folded() -> None:
    torch.manual_seed(2)
    model2d = nn.Sequential(LookAlikePhi(3, 4, [0.4, 0.9], stride=2, bias=True), nn.ReLU(), LookAlikePhi(4, 2, [0.6]))
    folded, report = fold(model2d)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert [ly.kind for ly in report.folded] == ["fixed", "fixed"]
    assert report.folded[0].cls.endswith("LookAlikePhi")
    x = torch.randn(1, 3, 12, 12)
    assert rel_err(folded(x), model2d(x)) <= 1e-6

    model1d = nn.Sequential(LookAlikeDen(2, 3, [0.1, 0.5, 1.1]))
    folded, report = fold(model1d)
    assert type(folded[0]) is nn.Conv1d and folded[0].padding == "same"
    assert report.folded[0].kind == "trainable" and report.folded[0].den == pytest.approx([0.1, 0.5, 1.1])
    x = torch.randn(1, 2, 20)
    assert rel_err(folded(x), model1d(x)) <= 1e-6


def test_look_alike_without_stride_is_reported_and_left_in_place() -> None:
    model = nn.Sequential(FIXED[2](2, 2, 3, [0.5]), LookAlikeNoStride())
    folded, report = fold(model)
    assert type(folded[0]) is nn.Conv2d
    assert type(folded[1]) is LookAlikeNoStride and folded[1] is not model[1]
    assert [ly.name for ly in report.not_folded] == ["1"]
    assert "stride" in (report.not_folded[0].problem or "")
    assert not report.clean
    assert "not folded: 1" in report.render()
    x = torch.randn(1, 2, 8, 8)
    assert rel_err(folded(x), model(x)) <= 1e-6


def test_broken_look_alike_raises_mismatch() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(BrokenLookAlike(2, 2, [0.5]))
    with pytest.raises(MismatchError, match="0"):
        fold(model)


# --------------------------------------------------------------------------- Conv + BatchNorm


def test_fold_bn_in_sequential() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        FIXED[2](3, 4, 3, [0.6]),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        TRAINABLE[2](4, 4, 5, den=[0.2, 0.8], padding=2, bias=True),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 2, 1),
        nn.BatchNorm2d(2, affine=False),
    )
    for i, m in enumerate(model):
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            randomise_bn(m, i)
    model.eval()
    folded, report = fold(model, fold_bn=True)
    assert [type(m) for m in folded] == [nn.Conv2d, nn.Identity, nn.ReLU, nn.Conv2d, nn.Identity, nn.Conv2d, nn.Identity]
    assert [(f.conv, f.bn) for f in report.fused_bn] == [("0", "1"), ("3", "4"), ("5", "6")]
    assert all(f.rel_error <= 1e-5 for f in report.fused_bn)
    assert report.bn_not_fused == []
    assert all(isinstance(m, nn.BatchNorm2d) for m in (model[1], model[4], model[6]))  # original untouched
    x = torch.randn(2, 3, 14, 14)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5
    # without fold_bn the BatchNorms stay
    plain, plain_report = fold(model)
    assert isinstance(plain[1], nn.BatchNorm2d) and plain_report.fused_bn == []


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(FIXED[2](3, 4, 3, [0.7]), nn.BatchNorm2d(4))
        self.block = nn.Sequential(TRAINABLE[2](4, 4, 3, den=[0.6]), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = FIXED[2](4, 4, 5, [0.3, 0.9], padding=2)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        return x + self.bn(self.conv(x))


def test_fold_bn_with_residual_connections() -> None:
    torch.manual_seed(5)
    model = Residual()
    for i, bn in enumerate((model.stem[1], model.block[1], model.bn)):
        randomise_bn(bn, i)
    model.eval()
    folded, report = fold(model, fold_bn=True)
    assert {(f.conv, f.bn) for f in report.fused_bn} == {("stem.0", "stem.1"), ("block.0", "block.1"), ("conv", "bn")}
    assert all(isinstance(m, nn.Identity) for m in (folded.stem[1], folded.block[1], folded.bn))
    assert weighted_left(folded) == [] and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(FIXED[2](3, 4, 3, [0.7]), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = TRAINABLE[2](4, 4, 3, den=[0.5])
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.seq(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 2
        return self.bn(self.conv(x))


def test_fold_bn_untraceable_model_fuses_only_inside_sequential() -> None:
    torch.manual_seed(6)
    model = Untraceable()
    randomise_bn(model.seq[1], 0)
    randomise_bn(model.bn, 1)
    model.eval()
    folded, report = fold(model, fold_bn=True)
    assert [(f.conv, f.bn) for f in report.fused_bn] == [("seq.0", "seq.1")]
    assert isinstance(folded.seq[1], nn.Identity)
    assert isinstance(folded.bn, nn.BatchNorm2d) and type(folded.conv) is nn.Conv2d
    reasons = dict(report.bn_not_fused)
    assert "fx" in reasons.get("(model)", "")
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


def test_bn_in_training_mode_is_not_fused() -> None:
    model = nn.Sequential(FIXED[2](3, 4, 3, [0.7]), nn.BatchNorm2d(4), TRAINABLE[2](4, 4, 3), nn.BatchNorm2d(4))
    randomise_bn(model[1], 0)
    randomise_bn(model[3], 1)
    model.eval()
    model[3].train()
    folded, report = fold(model, fold_bn=True)
    assert [(f.conv, f.bn) for f in report.fused_bn] == [("0", "1")]
    assert isinstance(folded[3], nn.BatchNorm2d) and folded[3].training
    assert [bn for bn, _ in report.bn_not_fused] == ["3"]
    assert "training" in report.bn_not_fused[0][1]
    # a model entirely in training mode fuses nothing
    _, train_report = fold(model.train(), fold_bn=True)
    assert train_report.fused_bn == [] and {bn for bn, _ in train_report.bn_not_fused} == {"1", "3"}


class ConvFeedsTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = FIXED[2](3, 4, 3, [0.7])
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y  # the conv output also skips past the BN
        return self.bn2(self.conv2(z))


def test_conv_with_other_consumers_is_not_fused() -> None:
    torch.manual_seed(7)
    model = ConvFeedsTwo()
    randomise_bn(model.bn, 0)
    randomise_bn(model.bn2, 1)
    model.eval()
    folded, report = fold(model, fold_bn=True)
    assert [(f.conv, f.bn) for f in report.fused_bn] == [("conv2", "bn2")]
    assert isinstance(folded.bn, nn.BatchNorm2d) and type(folded.conv) is nn.Conv2d
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert rel_err(folded(x), model(x)) <= 1e-5


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_non_finite_weights_raise_input_error(value: float, word: str) -> None:
    model = nn.Sequential(OrderedDict(first=FIXED[2](2, 2, 3, [0.5]), second=TRAINABLE[2](2, 2, 3, bias=True)))
    with torch.no_grad():
        model.second.weight[1, 0, 2, 2] = value
    with pytest.raises(InputError, match=word) as e:
        fold(model)
    assert "second.weight" in str(e.value)
    assert not isinstance(e.value, MismatchError)


def test_non_finite_den_raises_input_error() -> None:
    model = nn.Sequential(TRAINABLE[1](2, 2, 5, den=[0.5, 0.5]))
    with torch.no_grad():
        model[0].den[0] = float("nan")
    with pytest.raises(InputError, match=r"0\.den"):
        fold(model)


def test_reference_trainable_with_wrong_default_den_raises(ref: SimpleNamespace) -> None:
    # the reference's trainable layer starts from a 3-value den: right for k=7 only
    model = nn.Sequential(OrderedDict(stem=ref.fixed.wConv2d(3, 4, 3, [0.5]), mid=ref.trainable.wConv2d(4, 4, 3)))
    with pytest.raises(InputError, match="mid") as e:
        fold(model)
    assert "(3, 3)" in str(e.value) and "stem" not in str(e.value)


def test_reference_fixed_with_mismatched_phi_raises(ref: SimpleNamespace) -> None:
    layer = ref.fixed.wConv2d(2, 2, 3, [0.5])
    layer.Phi = torch.ones(5, 5)  # e.g. a buffer edited or loaded from another layer
    model = nn.Sequential(OrderedDict(head=layer))
    with pytest.raises(InputError, match="head"):
        fold(model)


def test_our_trainable_with_replaced_den_raises() -> None:
    layer = TRAINABLE[3](2, 2, 3)
    layer.den = nn.Parameter(torch.tensor([0.5, 0.5]))
    with pytest.raises(InputError, match="block"):
        fold(nn.Sequential(OrderedDict(block=layer)))


# --------------------------------------------------------------------------- whole-model check


def test_example_inputs_are_used_for_model_check() -> None:
    model = small_model()
    x = torch.randn(3, 3, 10, 14)
    _, report = fold(model, example_inputs=(x,))
    mc = report.model_check
    assert mc is not None and mc.skipped is None
    assert mc.inputs == [[3, 3, 10, 14]]
    assert mc.rel_error is not None and mc.rel_error <= 1e-6
    assert "[[3, 3, 10, 14]]" in report.render()


def test_example_inputs_that_do_not_fit_raise_input_error() -> None:
    with pytest.raises(InputError, match="example inputs"):
        fold(small_model(), example_inputs=(torch.randn(1, 5, 10, 10),))


def test_linear_model_check_is_skipped() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    folded, report = fold(model)
    assert report.model_check is not None
    assert report.model_check.rel_error is None and report.model_check.skipped
    assert "example_inputs" in report.model_check.skipped
    assert "skipped" in report.render()
    assert type(folded[1]) is nn.Linear


class LinearThenConv(nn.Module):
    """The first conv's input shape is not the model's input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2 * 6 * 6)
        self.conv = FIXED[2](2, 3, 3, [0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.fc(x).view(-1, 2, 6, 6))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = FIXED[2](3, 4, 3, [0.5])
        self.b = TRAINABLE[2](3, 4, 3, den=[0.8])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


@pytest.mark.parametrize("make", [LinearThenConv, TwoInputs])
def test_model_check_skipped_when_input_cannot_be_guessed(make: type[nn.Module]) -> None:
    torch.manual_seed(8)
    model = make()
    folded, report = fold(model)
    assert weighted_left(folded) == [] and len(report.folded) >= 1
    mc = report.model_check
    assert mc is not None and mc.rel_error is None
    assert mc.skipped and "example_inputs" in mc.skipped


def test_two_input_model_checked_with_example_inputs() -> None:
    torch.manual_seed(9)
    model = TwoInputs()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    folded, report = fold(model, example_inputs=(x, y))
    assert report.model_check is not None and report.model_check.inputs == [[1, 3, 8, 8], [1, 3, 8, 8]]
    assert report.model_check.rel_error is not None and report.model_check.rel_error <= 1e-6
    assert rel_err(folded(x, y), model(x, y)) <= 1e-6


# --------------------------------------------------------------------------- TorchScript


def test_torchscript_is_deferred_unchanged() -> None:
    model = small_model().eval()
    scripted = torch.jit.script(model)
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    result, report = fold(scripted, fold_bn=True)
    assert result is scripted
    assert isinstance(report.deferred, str) and "TorchScript" in report.deferred
    assert report.folded == [] and report.fused_bn == [] and not report.clean
    assert report.model_check is None
    assert all(torch.equal(before[k], v) for k, v in scripted.state_dict().items())
    assert "deferred" in report.render()
    x = torch.randn(1, 3, 12, 12)
    assert rel_err(result(x), model(x)) <= 1e-6


def test_float64_model_folds_exactly() -> None:
    model = small_model().double()
    folded, report = fold(model)
    assert all(p.dtype == torch.float64 for p in folded.parameters())
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    assert rel_err(folded(x), model(x)) <= 1e-12
    assert report.model_check is not None and report.model_check.rel_error <= 1e-12


def test_reference_style_round_trip_through_our_classes(ref: SimpleNamespace) -> None:
    # a reference model's weights in our classes fold to the same convs as the reference model itself
    torch.manual_seed(10)
    theirs = nn.Sequential(ref.fixed.wConv2d(3, 4, 3, [0.7]), ref.trainable.wConv2d(4, 4, 7, padding=3))
    ours = nn.Sequential(WeightedConv2d(3, 4, 3, [1.0]), ours_trainable.wConv2d(4, 4, 7, padding=3))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    f_theirs, _ = fold(theirs)
    f_ours, _ = fold(ours)
    for a, b in zip(f_theirs, f_ours):
        assert type(a) is type(b) is nn.Conv2d
        assert rel_err(a.weight, b.weight) <= 1e-6
    conv = f_ours[1]
    assert conv.padding == (3, 3) and conv.bias is None
    expected = ours[1].weight.double() * spec_phi(ours[1].den.tolist(), 2)
    torch.testing.assert_close(conv.weight.double(), expected, rtol=1e-6, atol=0)
