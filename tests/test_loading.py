"""`wconv_deploy.load_model` on real files written by real torch, in every format users save.

Reference-style models (``wConv.wConv2d`` and friends, see ``refstyle.py``) are pickled in a
separate interpreter that can import that code, then loaded here and in a fresh interpreter that
cannot: the loader must map them onto :mod:`wconv_deploy.nn` and reproduce the reference output
bit for bit. Hostile pickles must be refused without running anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from tests import refstyle
from wconv_deploy import InputError, load_model
from wconv_deploy import nn as wnn
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d, WeightedConvNd

REPO = Path(__file__).parents[1]

#: Modules these tests write into temporary folders; forgotten after every test.
TEMP_MODULES = ("mymodels", "archmod", "flagmod", "raises_on_import")

REFERENCE_CASES = [
    "fixed1d",
    "fixed2d",
    "fixed3d",
    "trainable1d",
    "trainable2d",
    "trainable3d",
    "mixed",
    "mypkg",
    "fixed2d.legacy",
]


@pytest.fixture(autouse=True)
def _forget_temp_modules() -> Iterator[None]:
    yield
    for name in TEMP_MODULES:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


@contextlib.contextmanager
def importable(folder: Path) -> Iterator[None]:
    """``folder`` on sys.path only inside the block (to pickle objects of classes defined there)."""
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in TEMP_MODULES:
            sys.modules.pop(name, None)


def run(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def randomize_bn(bn: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so BatchNorm state must be loaded."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)


def our_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        WeightedConv2d(3, 4, 3, [0.7]),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        TrainableWeightedConv2d(4, 2, 5, den=[0.2, 0.9], padding=2, bias=True),
    )
    randomize_bn(model[1])
    return model.eval()


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(42))


def assert_same_output(loaded_model: Callable[[torch.Tensor], torch.Tensor], expected: torch.Tensor, x: torch.Tensor = X) -> None:
    y = run(loaded_model, x)
    assert y.shape == expected.shape
    assert (y - expected).abs().max().item() == 0.0


def assert_input_error(*needles: str, **kwargs: Any) -> str:
    """Call load_model(**kwargs), expect InputError containing every needle; return the message."""
    with pytest.raises(InputError) as info:
        load_model(**kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, WeightedConvNd)]


ARCHMOD = """
import torch.nn as nn
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d

NOT_CALLABLE = 3


def build(channels=4):
    # den differs from the saved model on purpose: alfa/Phi/den must come from the file.
    return nn.Sequential(WeightedConv2d(3, channels, 3, [0.1]), nn.BatchNorm2d(channels), nn.ReLU(),
                         TrainableWeightedConv2d(channels, 2, 5, padding=2, bias=True))


def wider():
    return build(5)


def deeper():
    return nn.Sequential(*build(), nn.Conv2d(2, 2, 1))


def shallower():
    return nn.Sequential(*list(build())[:3])


def not_a_module():
    return "a string"


def broken():
    raise RuntimeError("boom in the builder")
"""

MYMODELS = """
import torch
import torch.nn as nn
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = WeightedConv2d(3, 4, 3, [0.6])
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = TrainableWeightedConv2d(4, 2, 5, padding=2, den=[0.3, 0.8])

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))


def build():
    return Net()
"""

FLAGMOD = """
from pathlib import Path


def raise_flag(path):
    Path(path).write_text("ran")
    return "flag raised"


class Flag:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (raise_flag, (self.path,))
"""


@pytest.fixture
def archdir(tmp_path: Path) -> Path:
    d = tmp_path / "arch"
    d.mkdir()
    (d / "archmod.py").write_text(ARCHMOD)
    (d / "raises_on_import.py").write_text("raise ImportError('needs a GPU build of something')\n")
    return d


# --------------------------------------------------------------------------- reference-style pickles

REFERENCE_SCRIPT = """
import json, os, shutil
import torch, torch.nn as nn
import wConv, wConv_Trainable

OUT = @OUT@
torch.manual_seed(0)
manifest = {}


def set_den(layer, values):
    layer.den = nn.Parameter(torch.tensor(values))  # users set their own density
    return layer


def save(name, model, x, legacy=False):
    model.train()
    with torch.no_grad():
        for _ in range(3):  # real BatchNorm running statistics
            model(torch.randn_like(x) * 2 + 0.5)
    model.eval()
    with torch.no_grad():
        y = model(x)
    model.train()  # saved in training mode: load_model must hand it back in eval mode
    torch.save(model, f"{OUT}/{name}.pt")
    torch.save({"x": x, "y": y}, f"{OUT}/{name}.io.pt")
    if legacy:
        torch.save(model, f"{OUT}/{name}.legacy.pt", _use_new_zipfile_serialization=False)
        torch.save({"x": x, "y": y}, f"{OUT}/{name}.legacy.io.pt")
        manifest[name + ".legacy"] = None
    model.eval()
    torch.save(model.state_dict(), f"{OUT}/{name}.sd.pt")
    layers = [m for m in model.modules() if type(m).__name__ in ("wConv1d", "wConv2d", "wConv3d")]
    manifest[name] = {
        "layers": [["trainable" if "den" in m._parameters else "fixed", int(type(m).__name__[5])] for m in layers],
        "globals": sorted({f"{type(m).__module__}.{type(m).__qualname__}" for m in layers}),
    }
    if legacy:
        manifest[name + ".legacy"] = manifest[name]


save("fixed1d", nn.Sequential(wConv.wConv1d(2, 4, 3, [0.6]), nn.BatchNorm1d(4), nn.ReLU(),
                              wConv.wConv1d(4, 3, 5, [0.2, 0.8], padding=2, bias=True)), torch.randn(2, 2, 16))
save("fixed2d", nn.Sequential(wConv.wConv2d(3, 6, 3, [0.7], stride=2), nn.BatchNorm2d(6), nn.ReLU(),
                              wConv.wConv2d(6, 4, 5, [0.1, 0.5], padding=4, dilation=2, groups=2, bias=True)),
     torch.randn(2, 3, 12, 12), legacy=True)
save("fixed3d", nn.Sequential(wConv.wConv3d(2, 3, 3, [0.5]), nn.BatchNorm3d(3), nn.ReLU(),
                              wConv.wConv3d(3, 2, 1, [], padding=0)), torch.randn(1, 2, 6, 6, 6))
save("trainable1d", nn.Sequential(set_den(wConv_Trainable.wConv1d(2, 4, 7, padding=3), [0.3, 0.6, 0.9]),
                                  nn.BatchNorm1d(4), nn.ReLU()), torch.randn(2, 2, 20))
save("trainable2d", nn.Sequential(set_den(wConv_Trainable.wConv2d(3, 4, 7, padding=3, bias=True), [0.05, 0.4, 1.2]),
                                  nn.BatchNorm2d(4), nn.ReLU(), set_den(wConv_Trainable.wConv2d(4, 2, 3), [0.4])),
     torch.randn(2, 3, 10, 10))
save("trainable3d", nn.Sequential(wConv_Trainable.wConv3d(1, 2, 7, padding=3), nn.BatchNorm3d(2), nn.ReLU()),
     torch.randn(1, 1, 8, 8, 8))
save("mixed", nn.Sequential(wConv.wConv2d(3, 4, 5, [0.3, 0.9], padding=2), nn.BatchNorm2d(4), nn.ReLU(),
                            wConv_Trainable.wConv2d(4, 4, 7, padding=3, groups=2)), torch.randn(1, 3, 9, 9))

# A copy of the reference code inside the user's own package: globals mypkg.wConv.wConv2d, ...
os.makedirs("mypkg", exist_ok=True)
open("mypkg/__init__.py", "w").close()
shutil.copy("wConv.py", "mypkg/wConv.py")
shutil.copy("wConv_Trainable.py", "mypkg/wConv_Trainable.py")
import mypkg.wConv, mypkg.wConv_Trainable
save("mypkg", nn.Sequential(mypkg.wConv.wConv2d(3, 4, 3, [0.6]), nn.BatchNorm2d(4), nn.ReLU(),
                            mypkg.wConv_Trainable.wConv2d(4, 2, 7, padding=3)), torch.randn(1, 3, 8, 8))


class Net(nn.Module):  # pickled as __main__.Net
    def __init__(self):
        super().__init__()
        self.conv1 = wConv.wConv2d(3, 4, 3, [0.7])
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = set_den(wConv_Trainable.wConv2d(4, 2, 7, padding=3), [0.1, 0.3, 0.5])

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


save("main_net", Net(), torch.randn(2, 3, 8, 8))
with open(f"{OUT}/manifest.json", "w") as f:
    json.dump(manifest, f)
"""

# Builds, from wconv_deploy.nn classes, the architecture of the reference scripts' __main__.Net.
MAIN_NET_ARCH = """
import torch
import torch.nn as nn
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = WeightedConv2d(3, 4, 3, [0.5])
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = TrainableWeightedConv2d(4, 2, 7, padding=3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def build():
    return Net()
"""


@pytest.fixture(scope="module")
def ref_files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("reference_pickles")
    out = root / "files"
    out.mkdir()
    refstyle.run_with_reference(root / "refcode", REFERENCE_SCRIPT.replace("@OUT@", repr(str(out))))
    manifest = json.loads((out / "manifest.json").read_text())
    return SimpleNamespace(dir=out, manifest=manifest)


def expected_classes(spec: dict[str, Any]) -> list[type]:
    return [(wnn.TRAINABLE if kind == "trainable" else wnn.FIXED)[dims] for kind, dims in spec["layers"]]


def test_reference_manifest_covers_every_variant(ref_files: SimpleNamespace) -> None:
    seen = {(kind, dims) for name in REFERENCE_CASES for kind, dims in ref_files.manifest[name]["layers"]}
    assert seen == {(k, d) for k in ("fixed", "trainable") for d in (1, 2, 3)}
    assert ref_files.manifest["mypkg"]["globals"] == ["mypkg.wConv.wConv2d", "mypkg.wConv_Trainable.wConv2d"]


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_reference_pickle_maps_onto_our_layers_in_process(ref_files: SimpleNamespace, name: str) -> None:
    spec = ref_files.manifest[name]
    path = ref_files.dir / f"{name}.pt"
    loaded = load_model(path)
    assert loaded.format == "pickle"
    assert loaded.graph_only is False
    assert [type(m) for m in weighted_layers(loaded.model)] == expected_classes(spec)
    assert not any(m.training for m in loaded.model.modules()), "saved in training mode, must come back in eval"
    io = torch.load(ref_files.dir / f"{name}.io.pt", weights_only=True)
    assert_same_output(loaded.model, io["y"], io["x"])
    notes = " ".join(loaded.notes)
    for glob in spec["globals"]:
        assert f"mapped reference class {glob} onto wconv_deploy.nn" in notes, loaded.notes
    for mod in ("wConv", "wConv_Trainable", "mypkg", "mypkg.wConv"):
        assert mod not in sys.modules, f"loading imported {mod}"


FRESH_CHECK = """
import importlib.util, json, sys
import torch
from wconv_deploy import load_model
from wconv_deploy.nn import WeightedConvNd

for mod in ("wConv", "wConv_Trainable", "mypkg"):
    assert importlib.util.find_spec(mod) is None, f"{mod} is importable here"
folder, names = sys.argv[1], sys.argv[2:]
report = {}
for name in names:
    loaded = load_model(f"{folder}/{name}.pt")
    io = torch.load(f"{folder}/{name}.io.pt", weights_only=True)
    with torch.no_grad():
        y = loaded.model(io["x"])
    report[name] = {
        "format": loaded.format,
        "diff": (y - io["y"]).abs().max().item(),
        "shape_ok": y.shape == io["y"].shape,
        "layers": [f"{type(m).__module__}.{type(m).__qualname__}"
                   for m in loaded.model.modules() if isinstance(m, WeightedConvNd)],
        "training": any(m.training for m in loaded.model.modules()),
        "notes": loaded.notes,
    }
report["__imported__"] = sorted(m for m in sys.modules if m.split(".")[0] in ("wConv", "wConv_Trainable", "mypkg"))
print(json.dumps(report))
"""


def test_reference_pickles_load_in_fresh_process_without_reference_code(ref_files: SimpleNamespace, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_CHECK, str(ref_files.dir), *REFERENCE_CASES],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("__imported__") == []
    for name in REFERENCE_CASES:
        r = report[name]
        spec = ref_files.manifest[name]
        assert r["format"] == "pickle"
        assert r["shape_ok"] and r["diff"] == 0.0, (name, r)
        assert r["layers"] == [f"{c.__module__}.{c.__qualname__}" for c in expected_classes(spec)], (name, r)
        assert r["training"] is False
        for glob in spec["globals"]:
            assert f"mapped reference class {glob} onto wconv_deploy.nn" in r["notes"], (name, r["notes"])


def test_reference_user_class_refused_then_loaded_with_arch(ref_files: SimpleNamespace, tmp_path: Path) -> None:
    path = ref_files.dir / "main_net.pt"
    msg = assert_input_error("__main__.Net", "--trust-pickle", "--arch", source=path)
    assert "wConv" not in msg.split("allowlist:", 1)[1].split(";")[0], "reference classes are allowlisted, not offending"
    (tmp_path / "main_arch.py").write_text(MAIN_NET_ARCH)
    loaded = load_model(path, arch=f"{tmp_path / 'main_arch.py'}:build")
    io = torch.load(ref_files.dir / "main_net.io.pt", weights_only=True)
    assert_same_output(loaded.model, io["y"], io["x"])
    assert [type(m) for m in weighted_layers(loaded.model)] == [WeightedConv2d, TrainableWeightedConv2d]
    notes = " ".join(loaded.notes)
    assert "__main__.Net" in notes and "placeholder" in notes
    assert "--arch" in notes
    # The whole-model pickle's class is not importable here: trusting the file cannot help.
    assert_input_error("cannot be imported", "--arch", source=path, trust_pickle=True)


def test_reference_state_dict_loads_into_our_classes(ref_files: SimpleNamespace) -> None:
    def build() -> nn.Module:
        return nn.Sequential(
            WeightedConv2d(3, 6, 3, [0.5], stride=2),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            WeightedConv2d(6, 4, 5, [0.5, 0.5], padding=4, dilation=2, groups=2, bias=True),
        )

    path = ref_files.dir / "fixed2d.sd.pt"
    assert_input_error("state_dict", "--arch", source=path)
    loaded = load_model(path, arch=build)
    assert loaded.format == "state_dict"
    io = torch.load(ref_files.dir / "fixed2d.io.pt", weights_only=True)
    assert_same_output(loaded.model, io["y"], io["x"])
    assert loaded.model[0].density() == pytest.approx([0.7])


# --------------------------------------------------------------------------- hostile pickles


class Payload:
    """Pickles as a call of ``fn(*args)``: what a malicious file runs on a full unpickle."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def hostile_payload(kind: str, marker: Path) -> tuple[Payload, str]:
    if kind == "os.system":
        return Payload(os.system, (f"touch {marker}",)), f"{os.system.__module__}.system"
    if kind == "subprocess.Popen":
        return Payload(subprocess.Popen, (["touch", str(marker)],)), "subprocess.Popen"
    if kind == "builtins.exec":
        return Payload(exec, (f"open({str(marker)!r}, 'w').close()",)), "builtins.exec"
    raise AssertionError(kind)


def write_hostile(path: Path, payload: Payload, container: str) -> None:
    model = nn.Sequential(WeightedConv2d(1, 1, 3, [0.5]))
    if container == "checkpoint":
        torch.save({"model": model.state_dict(), "epoch": 3, "meta": payload}, path)
        return
    model.payload = payload
    torch.save(model, path, _use_new_zipfile_serialization=(container != "legacy"))


@pytest.mark.parametrize("container", ["module", "checkpoint", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "subprocess.Popen", "builtins.exec"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str, container: str) -> None:
    marker = tmp_path / "pwned"
    payload, global_name = hostile_payload(kind, marker)
    path = tmp_path / "evil.pt"
    write_hostile(path, payload, container)
    assert not marker.exists()
    assert_input_error(global_name, "--trust-pickle", "--arch", source=path)
    assert not marker.exists(), "the pickle's payload ran"
    # Naming an architecture must not turn the payload into something that runs either.
    assert_input_error(global_name, source=path, arch=lambda: nn.Sequential(WeightedConv2d(1, 1, 3, [0.5])))
    assert not marker.exists(), "the pickle's payload ran with arch given"
    assert_input_error(global_name, source=path, arch="os:getcwd")
    assert not marker.exists(), "the pickle's payload ran with arch given"


def test_raw_hostile_pickle_is_refused(tmp_path: Path) -> None:
    """A bare pickle.dumps (first byte 0x80, read like the legacy format) whose first object is the payload."""
    marker = tmp_path / "pwned"
    payload, global_name = hostile_payload("os.system", marker)
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    assert_input_error(global_name, "--trust-pickle", source=path)
    assert_input_error(global_name, source=path, arch="os:getcwd")
    assert not marker.exists()


# GLOBAL collections.Counter (on torch's default allowlist), state (None, {"wconv_gadget": OrderedDict}),
# BUILD: an ordinary unpickler would setattr on the class itself, patching it for the whole process.
_BUILD_ON_CLASS = b"\x80\x02ccollections\nCounter\nN}X\x0c\x00\x00\x00wconv_gadgetccollections\nOrderedDict\ns\x86b."


@pytest.mark.parametrize("arch", [None, "os:getcwd"])
def test_legacy_reader_refuses_build_on_a_class(tmp_path: Path, arch: str | None) -> None:
    try:
        pickle.loads(_BUILD_ON_CLASS)
        assert Counter.wconv_gadget is OrderedDict, "the gadget must work on an ordinary unpickler"
    finally:
        with contextlib.suppress(AttributeError):
            del Counter.wconv_gadget
    path = tmp_path / "gadget.pt"
    path.write_bytes(_BUILD_ON_CLASS)
    with pytest.raises(InputError):
        load_model(path, arch=arch)
    assert not hasattr(Counter, "wconv_gadget")


def test_every_offending_global_is_listed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {
            "a": hostile_payload("os.system", marker)[0],
            "b": hostile_payload("builtins.exec", marker)[0],
            "model": our_model().state_dict(),
        },
        path,
    )
    assert_input_error(f"{os.system.__module__}.system", "builtins.exec", "nothing was executed", source=path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_unknown_global_is_inert_placeholder_with_arch(tmp_path: Path, legacy: bool) -> None:
    """With arch given, a global off the allowlist (here shutil.rmtree) becomes a placeholder: the
    weights load and the call never happens."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    model = our_model()
    model.payload = Payload(shutil.rmtree, (str(victim),))
    path = tmp_path / "sneaky.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    assert_input_error("shutil.rmtree", "--arch", source=path)
    assert victim.is_dir()
    loaded = load_model(path, arch=lambda: our_model(seed=7))
    assert victim.is_dir() and (victim / "keep.txt").is_file(), "the pickle's payload ran"
    assert "shutil.rmtree" in " ".join(loaded.notes)
    assert_same_output(loaded.model, run(our_model(), X))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_trust_pickle_really_unpickles_fully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool) -> None:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "flagmod.py").write_text(FLAGMOD)
    flag = tmp_path / "flag.txt"
    with importable(d):
        flagmod = importlib.import_module("flagmod")
        model = our_model()
        model.extra = flagmod.Flag(str(flag))
        torch.save(model, d / "flagged.pt", _use_new_zipfile_serialization=not legacy)
    path = d / "flagged.pt"
    assert "flagmod" not in sys.modules
    monkeypatch.chdir(tmp_path)
    assert_input_error("flagmod.raise_flag", "--trust-pickle", source=path)
    assert not flag.exists()
    loaded = load_model(path, arch=lambda: our_model(seed=5))
    assert not flag.exists(), "arch mode must not call the file's globals"
    assert_same_output(loaded.model, run(our_model(), X))
    # Trusted: the module is imported from the working directory and its code runs.
    monkeypatch.chdir(d)
    loaded = load_model(path, trust_pickle=True)
    assert flag.read_text() == "ran"
    assert loaded.model.extra == "flag raised"
    assert_same_output(loaded.model, run(our_model(), X))
    assert str(d) not in sys.path, "the working directory must not stay on sys.path"


# --------------------------------------------------------------------------- user classes


@pytest.fixture
def mymodels(tmp_path: Path) -> SimpleNamespace:
    d = tmp_path / "proj"
    d.mkdir()
    (d / "mymodels.py").write_text(MYMODELS)
    with importable(d):
        mod = importlib.import_module("mymodels")
        torch.manual_seed(3)
        net = mod.Net()
        randomize_bn(net.bn1)
        y = run(net.eval(), X)
        net.train()
        torch.save(net, d / "net.pt")
        torch.save(net, d / "net.legacy.pt", _use_new_zipfile_serialization=False)
    assert "mymodels" not in sys.modules
    return SimpleNamespace(dir=d, path=d / "net.pt", legacy=d / "net.legacy.pt", y=y)


@pytest.mark.parametrize("which", ["path", "legacy"])
def test_user_class_refused_by_default(mymodels: SimpleNamespace, which: str) -> None:
    assert_input_error("mymodels.Net", "--trust-pickle", "--arch", "nothing was executed", source=getattr(mymodels, which))
    assert "mymodels" not in sys.modules


@pytest.mark.parametrize("which", ["path", "legacy"])
def test_user_class_with_arch_file_path(
    mymodels: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    monkeypatch.chdir(tmp_path)  # not the folder holding mymodels.py
    loaded = load_model(getattr(mymodels, which), arch=f"{mymodels.dir / 'mymodels.py'}:build")
    assert loaded.format == "pickle"
    assert type(loaded.model).__name__ == "Net"
    assert [type(m) for m in weighted_layers(loaded.model)] == [WeightedConv2d, TrainableWeightedConv2d]
    assert_same_output(loaded.model, mymodels.y)
    assert not loaded.model.training
    assert "mymodels.Net" in " ".join(loaded.notes)


def test_user_class_with_arch_module_callable(mymodels: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(mymodels.dir)
    loaded = load_model(mymodels.path, arch="mymodels:build")
    assert_same_output(loaded.model, mymodels.y)
    assert str(mymodels.dir) not in sys.path


def test_user_class_with_trust_pickle(mymodels: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_input_error("cannot be imported", "--arch", source=mymodels.path, trust_pickle=True)
    monkeypatch.chdir(mymodels.dir)
    loaded = load_model(mymodels.path, trust_pickle=True)
    assert type(loaded.model).__module__ == "mymodels" and type(loaded.model).__name__ == "Net"
    assert_same_output(loaded.model, mymodels.y)
    assert not loaded.model.training


# --------------------------------------------------------------------------- state_dicts


def test_state_dict_needs_arch(tmp_path: Path, archdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = our_model()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    assert_input_error("state_dict", "--arch", source=path)
    expected = run(model, X)

    loaded = load_model(path, arch=lambda: our_model(seed=9))
    assert loaded.format == "state_dict" and loaded.checkpoint_key is None
    assert_same_output(loaded.model, expected)

    loaded = load_model(path, arch=f"{archdir / 'archmod.py'}:build")
    assert_same_output(loaded.model, expected)
    assert loaded.model[0].density() == pytest.approx([0.7]), "density must come from the file"
    assert loaded.model[3].density() == pytest.approx([0.2, 0.9])

    monkeypatch.chdir(archdir)
    loaded = load_model(path, arch="archmod:build")
    assert_same_output(loaded.model, expected)
    assert not loaded.model.training


@pytest.mark.parametrize(
    ("wrap", "prefixes"),
    [
        (lambda m: nn.DataParallel(m), ["module."]),
        (lambda m: torch.compile(m), ["_orig_mod."]),
        (lambda m: nn.DataParallel(torch.compile(m)), ["module.", "_orig_mod."]),
    ],
    ids=["DataParallel", "compile", "both"],
)
def test_wrapper_prefixes_are_stripped(tmp_path: Path, wrap: Callable[[nn.Module], nn.Module], prefixes: list[str]) -> None:
    model = our_model()
    state = wrap(model).state_dict()
    assert all(k.startswith("".join(prefixes)) for k in state)
    path = tmp_path / "wrapped.pt"
    torch.save(state, path)
    loaded = load_model(path, arch=lambda: our_model(seed=1))
    assert_same_output(loaded.model, run(model, X))
    notes = " ".join(loaded.notes)
    for prefix in prefixes:
        assert repr(prefix) in notes and "stripped" in notes


@pytest.mark.parametrize(
    ("builder", "needles"),
    [
        ("deeper", ["missing", "4.weight", "4.bias"]),
        ("shallower", ["unexpected", "3.weight", "3.den"]),
        ("wider", ["shape mismatch", "0.weight (4, 3, 3, 3) vs (5, 3, 3, 3)", "1.running_mean (4,) vs (5,)"]),
    ],
)
def test_state_dict_that_does_not_fit(tmp_path: Path, archdir: Path, builder: str, needles: list[str]) -> None:
    path = tmp_path / "weights.pt"
    torch.save(our_model().state_dict(), path)
    assert_input_error("do not fit the architecture", *needles, source=path, arch=f"{archdir / 'archmod.py'}:{builder}")


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("no_such_module_xyz:build", ["cannot import", "no_such_module_xyz"]),
        ("raises_on_import:build", ["cannot import", "needs a GPU build"]),
        ("@/raises_on_import.py:build", ["cannot import", "needs a GPU build"]),
        ("@/no_such_file.py:build", ["no such file"]),
        ("archmod:NOT_CALLABLE", ["no callable named 'NOT_CALLABLE'"]),
        ("archmod:no_such_attr", ["no callable named 'no_such_attr'"]),
        ("@/archmod.py:not_a_module", ["str", "not a torch.nn.Module"]),
        ("archmod:broken", ["building the architecture failed", "boom in the builder"]),
        ("nocolon", ["MODULE:CALLABLE"]),
        (":build", ["MODULE:CALLABLE"]),
    ],
)
def test_bad_arch(tmp_path: Path, archdir: Path, monkeypatch: pytest.MonkeyPatch, spec: str, needles: list[str]) -> None:
    path = tmp_path / "weights.pt"
    torch.save(our_model().state_dict(), path)
    monkeypatch.chdir(archdir)
    assert_input_error(*needles, source=path, arch=spec.replace("@", str(archdir)))


def test_arch_callable_returning_non_module(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(our_model().state_dict(), path)
    assert_input_error("int", "not a torch.nn.Module", source=path, arch=lambda: 42)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_dicts(tmp_path: Path) -> None:
    main, ema = our_model(seed=0), our_model(seed=1)
    y_main, y_ema = run(main, X), run(ema, X)
    assert not torch.equal(y_main, y_ema)
    opt = torch.optim.SGD(main.parameters(), lr=0.1, momentum=0.9)
    main(X).sum().backward()
    opt.step()  # a real optimizer state in the checkpoint
    main.load_state_dict(our_model(seed=0).state_dict())
    arch = lambda: our_model(seed=5)  # noqa: E731

    cases = {
        "model": ({"model": main.state_dict(), "epoch": 7, "optimizer": opt.state_dict()}, "model", y_main),
        "state_dict": ({"state_dict": main.state_dict(), "step": 100}, "state_dict", y_main),
        "ema": ({"ema": ema.state_dict(), "model": main.state_dict(), "epoch": 7}, "ema", y_ema),
        "wrapped": ({"model": nn.DataParallel(main).state_dict(), "epoch": 1}, "model", y_main),
    }
    for name, (ckpt, key, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(ckpt, path)
        loaded = load_model(path, arch=arch)
        assert (loaded.format, loaded.checkpoint_key) == ("checkpoint", key), name
        assert_same_output(loaded.model, expected)
        assert f"{key!r} entry" in " ".join(loaded.notes)

    path = tmp_path / "ema.pt"
    loaded = load_model(path, arch=arch, checkpoint_key="model")
    assert loaded.checkpoint_key == "model"
    assert_same_output(loaded.model, y_main)
    assert_input_error("no key 'nope'", "ema", "model", "epoch", source=path, arch=arch, checkpoint_key="nope")
    # A state_dict inside a checkpoint still needs an architecture.
    assert_input_error("--arch", source=path)


def test_checkpoint_holding_a_whole_module(tmp_path: Path) -> None:
    model = our_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model, "epoch": 3}, path)
    loaded = load_model(path)
    assert (loaded.format, loaded.checkpoint_key) == ("checkpoint", "model")
    assert [type(m) for m in weighted_layers(loaded.model)] == [WeightedConv2d, TrainableWeightedConv2d]
    assert_same_output(loaded.model, run(model, X))


def test_checkpoint_without_known_key(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"weights_v2": our_model().state_dict(), "step": 3}, path)
    assert_input_error("--checkpoint-key", "weights_v2", "step", source=path)
    loaded = load_model(path, arch=our_model, checkpoint_key="weights_v2")
    assert loaded.checkpoint_key == "weights_v2"
    assert_same_output(loaded.model, run(our_model(), X))


# --------------------------------------------------------------------------- graphs


def test_torchscript_archives_detected_by_content(tmp_path: Path) -> None:
    model = our_model()
    expected = run(model, X)
    torch.jit.script(model).save(str(tmp_path / "scripted.pth"))
    torch.jit.trace(model, X).save(str(tmp_path / "traced.pt"))
    for name in ("scripted.pth", "traced.pt"):
        loaded = load_model(tmp_path / name, trust_pickle=True)  # TorchScript is code: it loads only when trusted
        assert loaded.format == "torchscript", name
        assert loaded.graph_only is True
        assert isinstance(loaded.model, torch.jit.ScriptModule)
        assert_same_output(loaded.model, expected)
        assert loaded.sha256 == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_torch_export_program(tmp_path: Path) -> None:
    model = our_model()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (X,)), str(path))
    loaded = load_model(path)
    assert loaded.format == "export" and loaded.graph_only is True
    assert isinstance(loaded.exported_program, torch.export.ExportedProgram)
    assert_same_output(loaded.model, run(model, X))
    assert_same_output(loaded.exported_program.module(), run(model, X))


def test_state_dict_named_pt2_is_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt2"
    torch.save(our_model().state_dict(), path)
    assert_input_error("state_dict", "--arch", source=path)
    loaded = load_model(path, arch=our_model)
    assert loaded.format == "state_dict" and loaded.exported_program is None and not loaded.graph_only


# --------------------------------------------------------------------------- legacy format, hashes


def test_legacy_serialization(tmp_path: Path) -> None:
    model = our_model()
    expected = run(model, X)
    torch.save(model.state_dict(), tmp_path / "sd.pt", _use_new_zipfile_serialization=False)
    torch.save(model, tmp_path / "model.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "sd.pt").read_bytes()[:1] == b"\x80"

    assert_input_error("state_dict", "--arch", source=tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt", arch=lambda: our_model(seed=4))
    assert loaded.format == "state_dict"
    assert_same_output(loaded.model, expected)

    loaded = load_model(tmp_path / "model.pt")
    assert loaded.format == "pickle"
    assert [type(m) for m in weighted_layers(loaded.model)] == [WeightedConv2d, TrainableWeightedConv2d]
    assert_same_output(loaded.model, expected)


def test_sha256_and_eval_mode(tmp_path: Path) -> None:
    model = our_model().train()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = load_model(str(path))
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path
    assert not any(m.training for m in loaded.model.modules())
    assert_same_output(loaded.model, run(our_model(), X))


# --------------------------------------------------------------------------- bad files


def _zip_with_corrupt_data_pkl(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data[: len(data) // 2]
            zout.writestr(info.filename, data)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    rng = random.Random(0)
    model = our_model()
    torch.save(model, d / "good.pt")
    torch.save(model, d / "good_legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.trace(model, X).save(str(d / "good_ts.pt"))
    files = {
        "missing": d / "does-not-exist.pt",
        "directory": d / "a_folder.pt",
        "empty": d / "empty.pt",
        "text": d / "notes.pt",
        "random": d / "random.pt",
        "random_pickle_magic": d / "random80.pt",
        "random_zip_magic": d / "randomPK.pt",
        "truncated_zip": d / "truncated.pt",
        "truncated_legacy": d / "truncated_legacy.pt",
        "truncated_torchscript": d / "truncated_ts.pt",
        "corrupt_data_pkl": d / "corrupt_data_pkl.pt",
        "foreign_zip": d / "foreign.zip",
        "list": d / "list.pt",
        "int": d / "int.pt",
        "tensor": d / "tensor.pt",
        "legacy_list": d / "legacy_list.pt",
        "dict_without_tensors": d / "config.pt",
    }
    files["directory"].mkdir()
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are not weights\n" * 20)
    files["random"].write_bytes(b"\x13" + rng.randbytes(4096))
    files["random_pickle_magic"].write_bytes(b"\x80\x02" + rng.randbytes(4096))
    files["random_zip_magic"].write_bytes(b"PK\x03\x04" + rng.randbytes(4096))
    halves = {"good.pt": "truncated_zip", "good_legacy.pt": "truncated_legacy", "good_ts.pt": "truncated_torchscript"}
    for src, dst in halves.items():
        data = (d / src).read_bytes()
        files[dst].write_bytes(data[: len(data) // 2])
    _zip_with_corrupt_data_pkl(d / "good.pt", files["corrupt_data_pkl"])
    with zipfile.ZipFile(files["foreign_zip"], "w") as z:
        z.writestr("readme.txt", "hello")
        z.writestr("weights/data.bin", b"\0" * 64)
    torch.save([1, 2, 3], files["list"])
    torch.save(7, files["int"])
    torch.save(torch.ones(3), files["tensor"])
    torch.save([1, 2, 3], files["legacy_list"], _use_new_zipfile_serialization=False)
    torch.save({"lr": 0.1, "name": "run1"}, files["dict_without_tensors"])
    return files


BAD_FILES = [
    ("missing", ["no such file"]),
    ("directory", ["a folder, not a regular file"]),
    ("empty", ["empty"]),
    ("text", ["not a PyTorch model file"]),
    ("random", ["not a PyTorch model file"]),
    ("random_pickle_magic", []),
    ("random_zip_magic", ["truncated or corrupt"]),
    ("truncated_zip", ["truncated or corrupt"]),
    ("truncated_legacy", []),
    ("truncated_torchscript", ["truncated or corrupt"]),
    ("corrupt_data_pkl", []),
    ("foreign_zip", ["not one PyTorch wrote"]),
    ("list", ["holds an object of type list", "not a model"]),
    ("int", ["holds an object of type int", "not a model"]),
    ("tensor", ["holds an object of type Tensor", "not a model"]),
    ("legacy_list", ["holds an object of type list"]),
    ("dict_without_tensors", ["--checkpoint-key", "lr", "name"]),
]


@pytest.mark.parametrize("trust", [False, True], ids=["safe", "trusted"])
@pytest.mark.parametrize(("name", "needles"), BAD_FILES, ids=[n for n, _ in BAD_FILES])
def test_bad_file_is_a_clear_input_error(bad_files: dict[str, Path], name: str, needles: list[str], trust: bool) -> None:
    path = bad_files[name]
    msg = assert_input_error(*needles, source=path, trust_pickle=trust)
    assert path.name in msg, "the message names the file"
    assert "Traceback" not in msg


def test_zoo_prefix_is_refused() -> None:
    assert_input_error("zoo", source="zoo:resnet18")


def test_our_own_layers_need_no_mapping(tmp_path: Path) -> None:
    """A file of our own layers needs neither arch nor trust, and nothing is mapped or replaced."""
    path = tmp_path / "ours.pt"
    torch.save(our_model(), path)
    loaded = load_model(path)
    assert loaded.format == "pickle" and loaded.checkpoint_key is None
    assert not any("mapped" in n or "placeholder" in n for n in loaded.notes)
