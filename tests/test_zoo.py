"""The model zoo: registry, architectures, export of every model, reference-compatible state, and
the bundled trained denoiser."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.loading import load_model
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d, WeightedConvNd
from wconv_deploy.reports import dumps
from wconv_deploy.spec import InputSpec
from wconv_deploy.zoo import (
    DEFAULT_DEN,
    cifar,
    cifar_nets,
    create_model,
    denoiser_nets,
    denoisers,
    get_entry,
    list_models,
    parse_zoo_uri,
    register_model,
)
from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, NOISE_SEED, add_gaussian_noise, demo_image, denoiser_record, psnr
from wconv_deploy.zoo.registry import zoo_listing

PAPER_MODELS = ["vgg16_cifar", "resnet18_cifar", "dncnn", "nafnet"]


def convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, WeightedConvNd))]


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_model_with_defaults() -> None:
    names = [e.name for e in list_models()]
    assert names == sorted(names)
    assert set(PAPER_MODELS + ["denoiser"]) <= set(names)
    for e in list_models():
        InputSpec.parse(e.input_shape, e.dynamic)  # every default input spec parses


def test_listing_the_zoo_imports_neither_torch_nor_onnx() -> None:
    """`wconv-deploy zoo list` must stay fast: the registry is a leaf and the registering modules
    import torch only when a model is built."""
    code = """
import sys
import wconv_deploy.zoo.registry
from wconv_deploy.zoo import list_models
from wconv_deploy.reports import dumps
from wconv_deploy.zoo.registry import default_spec_args, parse_zoo_uri, zoo_listing
listing = [(e.name, e.description, e.input_shape, e.dynamic, e.options()) for e in list_models()]
assert len(listing) >= 5 and default_spec_args("zoo:dncnn?depth=3") == ("1x1x64x64", "height,width")
zoo_listing().render(), dumps(zoo_listing())
assert parse_zoo_uri("zoo:nafnet?enc_blocks=1,2") == ("nafnet", {"enc_blocks": (1.0, 2.0)})
print(",".join(m for m in ("torch", "onnx") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"listing the zoo imported {r.stdout.strip()}"


def test_zoo_listing_shows_every_model_with_its_defaults() -> None:
    listing = zoo_listing()
    data = json.loads(dumps(listing))
    assert [m["name"] for m in data["models"]] == [e.name for e in list_models()]
    dncnn = next(m for m in data["models"] if m["name"] == "dncnn")
    assert dncnn["dynamic"] == "height,width" and dncnn["options"]["depth"] == "17" and dncnn["options"]["den"] == "None"
    text = listing.render()
    assert "dncnn           1x1x64x64 (height,width)" in text
    assert "  nafnet: channels=3, width=16, enc_blocks=(1, 1, 1)," in text


def test_network_classes_keep_their_old_module_paths() -> None:
    """Whole zoo models pickled before the classes moved name them in cifar/denoisers."""
    assert cifar.ResNet is cifar_nets.ResNet and denoisers.DnCNN is denoiser_nets.DnCNN
    with pytest.raises(AttributeError):
        _ = cifar.no_such_name


def test_zoo_uri_options_are_typed() -> None:
    name, kw = parse_zoo_uri("zoo:dncnn?depth=5&width=16&den=0.6&weighted=false")
    assert (name, kw) == ("dncnn", {"depth": 5, "width": 16, "den": 0.6, "weighted": False})
    assert parse_zoo_uri("zoo:nafnet?enc_blocks=1,2")[1] == {"enc_blocks": (1.0, 2.0)}
    assert parse_zoo_uri("zoo:vgg16_cifar") == ("vgg16_cifar", {})


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("zoo:resnet50", "no model named 'resnet50'"),
        ("zoo:dncnn?colour=1", "unknown option(s) colour"),
        ("zoo:dncnn?depth=1", "depth must be at least 2"),
        ("zoo:dncnn?den=", "has no value"),
        ("zoo:", "missing the model name"),
        ("zoo:dncnn?den=0.1,0.2", "den sets 5x5 kernels, but the model's weighted kernels are 3x3"),
    ],
)
def test_bad_zoo_references_are_input_errors(uri: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_model(uri)


def test_register_model_refuses_a_second_builder_under_one_name() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("dncnn", description="again", input_shape="1x1x8x8")(lambda: nn.Identity())


def test_load_model_builds_zoo_models_in_eval_mode() -> None:
    loaded = load_model("zoo:dncnn?depth=4&width=8")
    assert loaded.format == "zoo" and not loaded.model.training
    assert len(loaded.sha256) == 64 and "DnCNN" in loaded.notes[0]
    assert load_model("zoo:dncnn?depth=4&width=8").sha256 != load_model("zoo:dncnn?depth=4&width=9").sha256
    assert load_model("zoo:dncnn?depth=4&width=8").sha256 == loaded.sha256  # zoo:NAME is one fixed network


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_weighted_switch_and_density(name: str) -> None:
    weighted = create_model(name)
    plain = create_model(name, weighted=False)
    k3 = [m for m in convs(weighted) if m.kernel_size == (3, 3)]
    assert k3 and all(isinstance(m, WeightedConv2d) for m in k3)
    assert all(m.density() == pytest.approx(DEFAULT_DEN[3]) for m in k3)
    assert all(not isinstance(m, WeightedConvNd) for m in convs(weighted) if m.kernel_size != (3, 3))
    assert not any(isinstance(m, WeightedConvNd) for m in plain.modules())
    assert [tuple(m.weight.shape) for m in convs(plain)] == [tuple(m.weight.shape) for m in convs(weighted)]
    custom = create_model(name, den=0.6)
    dens = [m.density() for m in convs(custom) if isinstance(m, WeightedConvNd)]
    assert len(dens) == len(k3) and [d[0] for d in dens] == pytest.approx([0.6] * len(k3))
    trainable = create_model(name, trainable=True, den={3: [0.9]})
    assert all(isinstance(m, TrainableWeightedConv2d) for m in convs(trainable) if m.kernel_size == (3, 3))


def test_cifar_architectures() -> None:
    vgg = create_model("vgg16_cifar")
    assert len(convs(vgg)) == 13 and all(m.kernel_size == (3, 3) for m in convs(vgg))
    resnet = create_model("resnet18_cifar")
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    stages = [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    assert [len(s) for s in stages] == [2, 2, 2, 2]
    assert [s[0].conv1.out_channels for s in stages] == [64, 128, 256, 512]
    x = torch.randn(2, 3, 32, 32)
    for model in (vgg, resnet):
        assert model.eval()(x).shape == (2, 100)


def test_dncnn_predicts_noise_and_nafnet_starts_from_zero_residual_scales() -> None:
    model = create_model("dncnn", depth=5, width=8).eval()
    assert len(convs(model)) == 5
    with torch.no_grad():
        model.body[-1].weight.zero_()
    x = torch.randn(1, 1, 20, 20)
    torch.testing.assert_close(model(x), x)  # the body estimates the noise; the output is x - noise
    naf = create_model("nafnet").eval()
    assert all(float(p.abs().sum()) == 0 for n, p in naf.named_parameters() if n.endswith(("beta", "gamma")))
    depthwise = [m for m in convs(naf) if m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert naf(torch.randn(1, 3, 37, 50)).shape == (1, 3, 37, 50)  # padded to a multiple of 8 inside


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_zoo_model_exports_and_validates(tmp_path: Path, name: str) -> None:
    entry = get_entry(name)
    spec = InputSpec.parse(entry.input_shape, entry.dynamic)
    report = export_onnx(load_model(f"zoo:{name}"), tmp_path / f"{name}.onnx", spec)
    assert report.graph.passed and report.graph.conv_nodes == report.graph.expected_convs
    assert report.validation is not None and report.validation.passed
    assert report.validation.worst["max_rel"] <= 1e-5
    if entry.dynamic:  # the denoisers are validated at several image sizes
        sizes = {tuple(c.shapes["input"][2:]) for c in report.validation.cases}
        assert len(sizes) >= 2, sizes


# --------------------------------------------------------------------------- reference-compatible state


@pytest.fixture
def reference_layers(refdir: Path) -> Iterator[type]:
    sys.path.insert(0, str(refdir))
    try:
        yield importlib.import_module("wConv").wConv2d
    finally:
        sys.path.remove(str(refdir))
        sys.modules.pop("wConv", None)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_state_saved_from_reference_layers_loads(name: str, reference_layers: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same architecture written with the reference's wConv2d (as a user would have trained
    it) saves a state_dict that the zoo model loads strictly, and both compute the same."""
    monkeypatch.setattr("wconv_deploy.nn.WeightedConv2d", reference_layers)  # what ConvFactory builds
    theirs = create_model(name).eval()
    assert any(type(m) is reference_layers for m in theirs.modules())
    monkeypatch.undo()
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, *InputSpec.parse(get_entry(name).input_shape).inputs[0].shape()[1:])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the bundled denoiser


def test_bundled_denoiser_reproduces_its_recorded_psnr() -> None:
    record = denoiser_record()
    clean = demo_image()
    assert clean.shape == (256, 256) and 0 <= float(clean.min()) and float(clean.max()) <= 1
    noisy = add_gaussian_noise(clean, DENOISER_SIGMA, NOISE_SEED)
    assert psnr(noisy, clean) == pytest.approx(record["psnr_db"]["noisy"]["camera_256 (demo)"], abs=0.05)
    for weighted, key in ((True, "wconv"), (False, "plain")):
        model = create_model("denoiser", weighted=weighted)
        with torch.no_grad():
            out = model(noisy[None, None])[0, 0]
        assert psnr(out, clean) == pytest.approx(record["psnr_db"][key]["camera_256 (demo)"], abs=0.05)
        assert psnr(out, clean) > psnr(noisy, clean) + 5  # it really denoises
    size = sum(p.numel() * p.element_size() for p in create_model("denoiser").state_dict().values())
    assert 100_000 <= size <= 2_000_000
