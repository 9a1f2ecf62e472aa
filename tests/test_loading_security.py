"""Nothing inside a model file runs unless the user passes ``trust_pickle`` (``--trust-pickle``).

Each test builds a hostile or broken file with real torch (a TorchScript ``__setstate__`` that
writes a file, ``.pt2`` archives whose pickles, shape expressions or guards would run, FIFOs in
tar files, module state that is not a module, zip bombs, zoo options for a huge model) and
checks the marker file, the deadline or the message, so it fails when the protection is gone.
Every refusal is one InputError: through the CLI, exit 2 and one ``error:`` line.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.contract import assert_one_line_error, finishes, invoke
from wconv_deploy import InputError, load_model
from wconv_deploy.nn import TrainableWeightedConv2d, WeightedConv2d

REPO = Path(__file__).parents[1]
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        WeightedConv2d(3, 4, 3, [0.7]), nn.BatchNorm2d(4), nn.ReLU(), TrainableWeightedConv2d(4, 2, 5, den=[0.2, 0.9], padding=2)
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def same_output(model: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, x: torch.Tensor = X) -> bool:
    with torch.no_grad():
        return torch.equal(model(x), reference(x))


def refused(source: Path | str, *needles: str, **kwargs: Any) -> str:
    """load_model(source, **kwargs) must raise InputError with every needle; the message."""
    with pytest.raises(InputError) as info:
        load_model(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def cli_refuses(source: Path | str, *args: str) -> str:
    """``wconv-deploy inspect SOURCE ARGS`` exits 2 with one ``error:`` line and no traceback."""
    return assert_one_line_error(invoke("inspect", source, *args), 2)


class Payload:
    """Pickles as ``fn(*args)``: what a malicious file runs on a full unpickle."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def touch(marker: Path) -> Payload:
    return Payload(exec, (f"open({str(marker)!r}, 'w').close()",))


def rewrite_zip(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy a torch archive, letting ``edit`` change its records (names without the top folder)."""
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    top = next(iter(members)).split("/", 1)[0] + "/"
    records = {name[len(top) :]: data for name, data in members.items()}
    edit(records)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in records.items():
            z.writestr(top + name, data)
    return dst


# --------------------------------------------------------------------------- TorchScript


class WritesAFile(nn.Module):
    """Scripted, its ``__setstate__`` runs inside torch.jit.load and creates ``path`` on disk."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.buf = torch.zeros(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.buf = torch.from_file(self.path, True, 4)


@pytest.fixture
def evil_torchscript(tmp_path: Path) -> tuple[Path, Path, nn.Module]:
    marker = tmp_path / "written-by-setstate"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), WritesAFile(str(marker)))
    path = tmp_path / "evil_ts.pt"
    torch.jit.script(model).save(str(path))
    assert not marker.exists()
    return path, marker, model


def test_torchscript_is_refused_without_trust_and_runs_nothing(evil_torchscript: tuple[Path, Path, nn.Module]) -> None:
    path, marker, _ = evil_torchscript
    refused(path, "TorchScript", "runs when it is loaded", "nothing was loaded or executed", "--trust-pickle", "--arch")
    assert not marker.exists(), "torch.jit.load ran the archive's code"
    assert "--arch MODULE:CALLABLE" in cli_refuses(path)
    assert not marker.exists()
    # Trusted, it is torch.jit.load as before: the code runs (which is why it needs trust).
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "torchscript" and isinstance(loaded.model, torch.jit.ScriptModule)
    assert marker.exists()


def test_torchscript_with_arch_takes_only_the_weights(evil_torchscript: tuple[Path, Path, nn.Module]) -> None:
    path, marker, model = evil_torchscript
    loaded = load_model(path, arch=lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Identity()))
    assert not marker.exists(), "reading the weights ran the archive's code"
    assert loaded.format == "torchscript_weights" and not loaded.graph_only
    assert torch.equal(loaded.model[0].weight, model[0].weight) and torch.equal(loaded.model[0].bias, model[0].bias)
    notes = " ".join(loaded.notes)
    assert "read 2 tensors from the TorchScript archive without running anything" in notes
    assert "all 2 state_dict keys of --arch (0.weight, 0.bias)" in notes
    assert "WritesAFile keeps a custom state" in notes


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_weights_match_the_scripted_model(tmp_path: Path, how: str) -> None:
    model = small_model()
    path = tmp_path / f"{how}.pt"
    (torch.jit.script(model) if how == "script" else torch.jit.trace(model, X)).save(str(path))
    loaded = load_model(path, arch=lambda: small_model(seed=5))
    assert loaded.format == "torchscript_weights"
    assert same_output(loaded.model, model)
    assert loaded.model[0].density() == pytest.approx([0.7]) and loaded.model[3].density() == pytest.approx([0.2, 0.9])
    assert f"all {len(model.state_dict())} state_dict keys" in " ".join(loaded.notes)


def test_torchscript_weights_that_do_not_fit_the_arch(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    torch.jit.script(small_model()).save(str(path))
    refused(path, "do not fit", "unexpected", "3.weight", arch=lambda: nn.Sequential(*list(small_model())[:3]))
    refused(path, "do not fit", "missing", "4.weight", arch=lambda: nn.Sequential(*small_model(), nn.Conv2d(2, 2, 1)))


def test_torchscript_data_with_a_foreign_global_is_refused_with_arch(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.jit.script(small_model()).save(str(tmp_path / "s.pt"))

    def hostile(records: dict[str, bytes]) -> None:
        records["data.pkl"] = pickle.dumps(touch(marker), protocol=2)

    path = rewrite_zip(tmp_path / "s.pt", tmp_path / "hostile.pt", hostile)
    refused(path, "builtins.exec is not allowed", arch=small_model)
    assert not marker.exists()


# --------------------------------------------------------------------------- .pt2 programs


class PadsToEight(nn.Module):
    """Exported with dynamic height and width, its program carries shape expressions and guards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = WeightedConv2d(1, 2, 3, [0.6], padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, (-x.shape[-1]) % 8, 0, (-x.shape[-2]) % 8))
        return self.conv(x)[..., : x.shape[-2] // 2]


PT2_X = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A benign ``.pt2`` program with shape expressions and guard code (dynamic height and width)."""
    torch.manual_seed(0)
    model = PadsToEight().eval()
    path = tmp_path_factory.mktemp("pt2") / "dynamic.pt2"
    dims = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    torch.export.save(torch.export.export(model, (PT2_X,), dynamic_shapes=(dims,)), str(path))
    with zipfile.ZipFile(path) as z:
        program = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("models/model.json")))
    assert program["guards_code"], "the fixture must exercise guard code"
    return path, model


def _edit_json(records: dict[str, bytes], name: str, edit: Callable[[Any], None]) -> None:
    doc = json.loads(records[name])
    edit(doc)
    records[name] = json.dumps(doc).encode()


def _pickled_weight(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(records: dict[str, bytes]) -> None:
        def flag(cfg: Any) -> None:
            entry = cfg["config"]["conv.weight"]
            entry["use_pickle"] = True
            buf = io.BytesIO()
            torch.save(touch(marker), buf)
            records["data/weights/" + entry["path_name"]] = buf.getvalue()

        _edit_json(records, "data/weights/model_weights_config.json", flag)

    return edit


def _sample_inputs(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(records: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        torch.save(((PT2_X, touch(marker)), {}), buf)  # weights-only fails, then torch retries fully
        records["data/sample_inputs/model.pt"] = buf.getvalue()

    return edit


def _opaque_constant(marker: Path) -> Callable[[dict[str, bytes]], None]:
    def edit(records: dict[str, bytes]) -> None:
        def add(cfg: Any) -> None:
            cfg["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}

        _edit_json(records, "data/constants/model_constants_config.json", add)
        records["data/constants/opaque_obj_0"] = pickle.dumps(touch(marker))

    return edit


def _program(edit_program: Callable[[Any, Path], None]) -> Callable[[Path], Callable[[dict[str, bytes]], None]]:
    def for_marker(marker: Path) -> Callable[[dict[str, bytes]], None]:
        return lambda records: _edit_json(records, "models/model.json", lambda doc: edit_program(doc, marker))

    return for_marker


def _sympy_expression(doc: Any, marker: Path) -> None:
    code = f"open({str(marker)!r}, 'w').close()"
    for value in doc["graph_module"]["graph"]["tensor_values"].values():
        for size in value["sizes"]:
            if "as_expr" in size:
                size["as_expr"]["expr_str"] = f'exec("{code}") or ' + size["as_expr"]["expr_str"]


def _guard(doc: Any, marker: Path) -> None:
    doc["guards_code"].append(f"open({str(marker)!r}, 'w').close() is None")


def _argument_name(doc: Any, marker: Path) -> None:
    doc["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [f"x=open({str(marker)!r}, 'w')"]


def _graph_target(doc: Any, marker: Path) -> None:
    doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _carriage_return(doc: Any, marker: Path) -> None:
    node = doc["graph_module"]["graph"]["nodes"][0]
    node["metadata"]["stack_trace"] = f'File "a.py", line 1, in f\n    x\rimport os; os.system("touch {marker}")'


HOSTILE_PT2 = {
    "pickled weight": (_pickled_weight, "stored pickled"),
    "sample inputs": (_sample_inputs, "needs full unpickling"),
    "opaque constant": (_opaque_constant, "stored pickled"),
    "sympy expression": (_program(_sympy_expression), "shape expression"),
    "guard code": (_program(_guard), "a guard is not one torch writes"),
    "argument name": (_program(_argument_name), "not a Python identifier"),
    "graph target": (_program(_graph_target), "not an aten operator"),
    "carriage return": (_program(_carriage_return), "line break"),
}


@pytest.mark.parametrize("kind", HOSTILE_PT2)
def test_hostile_pt2_is_refused_and_runs_nothing(pt2: tuple[Path, nn.Module], tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    make, needle = HOSTILE_PT2[kind]
    path = rewrite_zip(pt2[0], tmp_path / "hostile.pt2", make(marker))
    assert "--trust-pickle" in refused(path, needle)
    assert needle in cli_refuses(path)
    assert not marker.exists(), "torch.export.load ran code from the archive"


@pytest.mark.parametrize("kind", [k for k in HOSTILE_PT2 if k != "pickled weight"])
def test_hostile_pt2_with_arch_gives_its_weights_and_runs_nothing(pt2: tuple[Path, nn.Module], tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = rewrite_zip(pt2[0], tmp_path / "hostile.pt2", HOSTILE_PT2[kind][0](marker))
    loaded = load_model(path, arch=PadsToEight)
    assert loaded.format == "export_weights" and loaded.exported_program is None and not loaded.graph_only
    assert same_output(loaded.model, pt2[1], PT2_X)
    assert not marker.exists(), "reading the weights ran code from the archive"


def test_pickled_pt2_weight_is_refused_with_arch_too(pt2: tuple[Path, nn.Module], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = rewrite_zip(pt2[0], tmp_path / "hostile.pt2", _pickled_weight(marker))
    refused(path, "conv.weight is stored pickled", "--trust-pickle", arch=PadsToEight)
    assert not marker.exists()


def test_benign_pt2_loads_without_flags(pt2: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, model = pt2
    loaded = load_model(path)
    assert loaded.format == "export" and loaded.graph_only
    assert same_output(loaded.model, model, PT2_X)
    assert same_output(loaded.model, model, torch.randn(1, 1, 20, 27))  # the guards run and pass
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(small_model(), (X,)), str(static))
    assert same_output(load_model(static).model, small_model())


def test_pt2_with_arch_never_calls_torch_export_load(pt2: tuple[Path, nn.Module], monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.export.load was called")

    monkeypatch.setattr(torch.export, "load", forbidden)
    loaded = load_model(pt2[0], arch=PadsToEight)
    assert same_output(loaded.model, pt2[1], PT2_X)
    assert "read 3 tensors from the torch.export program without running anything" in " ".join(loaded.notes)


def _missing_weight_record(records: dict[str, bytes]) -> None:
    def point_elsewhere(cfg: Any) -> None:
        cfg["config"]["conv.weight"]["path_name"] = "weight_99"

    _edit_json(records, "data/weights/model_weights_config.json", point_elsewhere)


def test_damaged_pt2_is_one_line_without_torchs_traceback(
    pt2: tuple[Path, nn.Module], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rewrite_zip(pt2[0], tmp_path / "damaged.pt2", _missing_weight_record)
    with caplog.at_level(logging.WARNING):
        refused(path, "cannot read the torch.export program", "weight_99")
    torch_records = [r for r in caplog.records if r.name.startswith(("torch.export", "torch._export"))]
    assert torch_records == [], "torch's log records (printed with their traceback) got out"
    # The real CLI, real stderr: exactly our line.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "wconv_deploy", "inspect", str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: "), r.stderr


# --------------------------------------------------------------------------- legacy tar files, FIFOs


_TAR_TYPES = {torch.float32: (torch.FloatStorage, torch.FloatTensor), torch.int64: (torch.LongStorage, torch.LongTensor)}


class _Ref:
    def __init__(self, key: int) -> None:
        self.key = key


class _RefPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return str(obj.key) if isinstance(obj, _Ref) else None


def old_torch_tar(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A state_dict in the tar format torch wrote before 1.0 (members sys_info, pickle, storages,
    tensors), as torch.serialization's legacy reader reads it."""
    storages, tensors, refs = io.BytesIO(), io.BytesIO(), OrderedDict()
    pickle.dump(len(state), storages, protocol=2)
    pickle.dump(len(state), tensors, protocol=2)
    for i, (name, t) in enumerate(state.items()):
        storage_type, tensor_type = _TAR_TYPES[t.dtype]
        pickle.dump((i, "cpu", storage_type), storages, protocol=2)
        storages.write(struct.pack("<q", t.numel()) + t.contiguous().numpy().tobytes())
        pickle.dump((1000 + i, i, tensor_type), tensors, protocol=2)
        dims = t.dim()
        tensors.write(struct.pack(f"<i4x{dims}q{dims}qq", dims, *t.shape, *t.contiguous().stride(), 0))
        refs[name] = _Ref(1000 + i)
    pickle.dump([], storages, protocol=2)  # no storage views
    objects = io.BytesIO()
    _RefPickler(objects, protocol=2).dump(refs)
    members = {"sys_info": pickle.dumps({"protocol_version": 1001}), "pickle": objects.getvalue()}
    members |= {"storages": storages.getvalue(), "tensors": tensors.getvalue()}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def hostile_tar(path: Path, member: tarfile.TarInfo) -> Path:
    """A tar whose first member's name starts with byte 0x80 (so it reads like a legacy pickle),
    with ``member`` as its ``storages``."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name in ("\udc80pad", "pickle", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"\x80\x02N."))
        tar.addfile(member)
    assert path.read_bytes()[:1] == b"\x80"
    return path


def test_old_tar_state_dict_still_loads(tmp_path: Path) -> None:
    model = small_model()
    path = old_torch_tar(tmp_path / "old.pt", model.state_dict())
    loaded = load_model(path, arch=lambda: small_model(seed=3))
    assert loaded.format == "state_dict"
    assert same_output(loaded.model, model)


def test_tar_with_a_fifo_member_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("storages")
    fifo.type = tarfile.FIFOTYPE
    path = hostile_tar(tmp_path / "fifo.pt", fifo)
    with pytest.raises(InputError, match="tar member 'storages' is a FIFO, not a regular file"):
        finishes(lambda: load_model(path))
    assert "a FIFO" in cli_refuses(path)


def test_tar_with_a_link_or_an_absurd_member_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("storages")
    link.type, link.linkname = tarfile.SYMTYPE, "/dev/zero"
    refused(hostile_tar(tmp_path / "link.pt", link), "tar member 'storages' is a symlink")
    huge = tarfile.TarInfo("storages")
    huge.size = 1 << 32
    path = hostile_tar(tmp_path / "huge.pt", huge)  # a header only: the data it declares is not there
    refused(path, "tar member 'storages' declares 4,294,967,296 bytes")


def test_a_fifo_as_the_model_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="a FIFO, not a regular file"):
        finishes(lambda: load_model(fifo))
    assert "a FIFO" in cli_refuses(fifo)


# --------------------------------------------------------------------------- module state


def _hooked(attr: str) -> Callable[[nn.Module], None]:
    def edit(model: nn.Module) -> None:
        getattr(model[0], attr)[0] = nn.ReLU()  # an allowlisted module, called as a hook

    return edit


def _nested_into_itself(model: nn.Module) -> None:
    model[2]._modules["again"] = model


BAD_STATE = {
    "int submodule": (lambda m: m._modules.__setitem__("x", 5), "_modules entry 'x' is int, not a module"),
    "tensor parameter": (lambda m: m[1]._parameters.__setitem__("weight", torch.ones(4)), "is Tensor, not a Parameter"),
    "string buffer": (lambda m: m[1]._buffers.__setitem__("running_mean", "zeros"), "is str, not a tensor"),
    "list of modules": (lambda m: vars(m).__setitem__("_modules", [nn.ReLU()]), "_modules is list, not a dict"),
    "forward hook": (_hooked("_forward_hooks"), "carries _forward_hooks"),
    "forward pre-hook": (_hooked("_forward_pre_hooks"), "carries _forward_pre_hooks"),
    "state_dict hook": (_hooked("_state_dict_hooks"), "carries _state_dict_hooks"),
    "load hook": (_hooked("_load_state_dict_pre_hooks"), "carries _load_state_dict_pre_hooks"),
    "method replaced": (lambda m: vars(m[2]).__setitem__("forward", nn.Identity()), "'forward' would replace the method"),
    "cycle": (_nested_into_itself, "contains itself"),
}


@pytest.mark.parametrize("kind", BAD_STATE)
def test_module_state_that_is_not_a_module_is_refused(tmp_path: Path, kind: str) -> None:
    edit, needle = BAD_STATE[kind]
    model = small_model()
    edit(model)
    path = tmp_path / "bad_state.pt"
    torch.save(model, path)
    refused(path, needle)
    refused(path, needle, arch=small_model)  # arch mode reads the module's state_dict: checked first
    assert needle in cli_refuses(path)


def _nested_sequentials(depth: int) -> bytes:
    """The data.pkl of ``depth`` nn.Sequential nested in each other, written opcode by opcode
    (pickle itself would recurse): each level is built, memoized, moved off the stack into a
    list and referenced by its parent."""
    out = [b"\x80\x02ctorch.nn.modules.container\nSequential\nq\x00]"]
    empty = [b"_parameters", b"_buffers", b"_forward_hooks", b"_forward_pre_hooks", b"_backward_hooks"]
    for level in range(depth):
        out.append(b"h\x00)\x81}(X\x08\x00\x00\x00training\x89")
        out += [b"X" + struct.pack("<I", len(k)) + k + b"}" for k in empty]
        out.append(b"X\x08\x00\x00\x00_modules}")
        if level:
            out.append(b"X\x01\x00\x00\x000j" + struct.pack("<I", level) + b"s")
        out.append(b"ubr" + struct.pack("<I", level + 1) + b"a")
    out.append(b"j" + struct.pack("<I", depth) + b".")
    return b"".join(out)


@pytest.mark.parametrize("depth", [3, 10_000])
def test_a_deeply_nested_module_tree_is_refused_without_recursion(tmp_path: Path, depth: int) -> None:
    torch.save(nn.Sequential(), tmp_path / "empty.pt")
    path = rewrite_zip(
        tmp_path / "empty.pt", tmp_path / "deep.pt", lambda r: r.__setitem__("data.pkl", _nested_sequentials(depth))
    )
    if depth == 3:  # the handmade pickle is a real module tree
        loaded = load_model(path)
        assert [name for name, _ in loaded.model.named_modules()] == ["", "0", "0.0"]
        return
    refused(path, "nested deeper than 64 levels")
    assert "nested deeper" in cli_refuses(path)


# --------------------------------------------------------------------------- zip archives


def add_bomb(src: Path, dst: Path) -> Path:
    """``src`` plus a member of 48 MiB of zeros, deflated to a few kB."""
    rewrite_zip(src, dst, lambda records: None)
    top = zipfile.ZipFile(dst).namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(dst, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{top}/extra/bomb", bytes(48 << 20))
    assert dst.stat().st_size < 1 << 20
    return dst


@pytest.mark.parametrize("container", ["torch.save", "torchscript", "pt2"])
def test_zip_bomb_members_are_refused(tmp_path: Path, container: str) -> None:
    model = small_model()
    src = tmp_path / f"model.{container}"
    if container == "torch.save":
        torch.save(model.state_dict(), src)
    elif container == "torchscript":
        torch.jit.script(model).save(str(src))
    else:
        torch.export.save(torch.export.export(model, (X,)), str(src))
    path = add_bomb(src, tmp_path / f"bomb.{container}")
    refused(path, "member", "extra/bomb", "50,331,648 bytes uncompressed", "zip bomb", arch=small_model)
    assert "zip bomb" in cli_refuses(path)


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    torch.save(small_model().state_dict(), tmp_path / "sd.pt")
    path = rewrite_zip(tmp_path / "sd.pt", tmp_path / "dup.pt", lambda records: None)
    top = zipfile.ZipFile(path).namelist()[0].split("/", 1)[0]
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as z:
        z.writestr(f"{top}/data.pkl", pickle.dumps({"weight": 1}, protocol=2))
    refused(path, "two members named", "data.pkl", arch=small_model)


# --------------------------------------------------------------------------- zoo


ZOO_CHECK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_DATA, (8 << 30, 8 << 30))  # a regression fails instead of swapping
from wconv_deploy.cli import cli
sys.argv = ["wconv-deploy", "inspect", sys.argv[1]]
cli()
"""


@pytest.mark.parametrize("uri", ["zoo:dncnn?width=100000&depth=1000", "zoo:dncnn?width=1&depth=100000000"])
def test_zoo_options_for_a_huge_model_are_refused_before_building(uri: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", ZOO_CHECK, uri], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr[-2000:]
    assert r.stderr.startswith("error: zoo:dncnn: these options build a model of more than 2,147,483,648 parameters")
