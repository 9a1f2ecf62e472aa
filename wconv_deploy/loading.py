"""Load a trained model from any format users save, without running code hidden in the file.

Formats (detected from the file's content, not its name):

- ``pickle``: ``torch.save(model)``, a whole module;
- ``state_dict``: ``torch.save(model.state_dict())``; needs ``arch`` to build the architecture;
- ``checkpoint``: a dict holding a module or a state_dict under a key such as ``model`` or ``ema``;
- ``torchscript``: ``torch.jit.save`` archives;
- ``export``: ``torch.export.save`` programs (``.pt2``).

Safety: files written by ``torch.save`` are read with PyTorch's weights-only unpickler and an
allowlist of torch.nn layers, our layers and the reference implementation's class names (mapped
onto :mod:`wconv_deploy.nn`, so the reference code need not be installed). A file that asks for
any other global is refused with the list of what it asks for, unless the user either vouches
for it (``trust_pickle=True``: full unpickling) or names the architecture (``arch``): then the
unknown globals become inert placeholders and only the weights are taken from the file.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import importlib
import importlib.util
import os
import pickle
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from wconv_deploy import nn as wnn
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import file_sha256

__all__ = ["CHECKPOINT_KEYS", "LoadedModel", "load_model", "resolve_arch"]

#: Keys tried, in order, when a checkpoint dict holds the model. EMA weights come first because
#: they are what training scripts (timm, Ultralytics) evaluate and deploy.
CHECKPOINT_KEYS = ("ema", "model_ema", "state_dict_ema", "model", "state_dict", "model_state_dict", "net", "network", "module")

#: Prefixes that wrappers add to every state_dict key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_REFERENCE_CLASS_NAMES = {"wConv1d": 1, "wConv2d": 2, "wConv3d": 3}

#: Modules whose globals in a pickle mean an attack, not a model: refused even with ``arch``.
_HOSTILE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins")


@dataclass
class LoadedModel:
    """A model read from disk, with what was learned about the file on the way."""

    model: nn.Module
    format: str
    path: Path
    sha256: str
    checkpoint_key: str | None = None
    notes: list[str] = field(default_factory=list)
    exported_program: Any = None  # torch.export.ExportedProgram for ``.pt2`` files

    @property
    def graph_only(self) -> bool:
        """True when the model is a compiled graph (TorchScript, ``.pt2``) that cannot be rewritten module by module."""
        return self.format in ("torchscript", "export")


# --------------------------------------------------------------------------- allowlist


def _torch_nn_classes() -> list[type]:
    """Every public ``nn.Module`` subclass that torch.nn defines: safe to create and fill with state."""
    found: set[type] = set()
    for sub in vars(torch.nn.modules).values():
        if isinstance(sub, types.ModuleType):
            for name, obj in vars(sub).items():
                if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.startswith("_"):
                    if obj.__module__.startswith("torch.nn."):
                        found.add(obj)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _our_classes() -> list[type]:
    return [*wnn.FIXED.values(), *wnn.TRAINABLE.values()]


def _reference_mapper(dims: int) -> type[nn.Module]:
    """A class that unpickles a reference ``wConvNd`` and becomes our fixed or trainable layer.

    Which one is decided by the saved state (a ``den`` parameter or a ``Phi`` buffer), so the
    mapping holds whatever module path the user's copy of the reference code lived at.
    """

    class ReferenceWConv(nn.Module):
        def __setstate__(self, state: dict[str, Any]) -> None:
            super().__setstate__(state)
            if "den" in self._parameters:
                self.__class__ = wnn.TRAINABLE[dims]  # type: ignore[assignment]
            elif "Phi" in self._buffers:
                self.__class__ = wnn.FIXED[dims]  # type: ignore[assignment]
            else:
                raise pickle.UnpicklingError(
                    f"a reference wConv{dims}d without a `den` parameter or `Phi` buffer cannot be mapped"
                )

    ReferenceWConv.__name__ = ReferenceWConv.__qualname__ = f"ReferenceWConv{dims}d"
    return ReferenceWConv


class _Placeholder(nn.Module):
    """Stands for a global the file names but we refuse to import: keeps state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("placeholder for a class that was not loaded; build the model with --arch")


def _placeholder(full_name: str) -> type[nn.Module]:
    module, _, name = full_name.rpartition(".")
    return type(name, (_Placeholder,), {"__module__": module})


def _python_name(full_name: str) -> str:
    """The global an ordinary unpickler would import for a name a protocol-2 pickle wrote in its
    Python 2 spelling (``commands.Popen`` is ``subprocess.Popen``)."""
    module, _, name = full_name.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _is_reference_name(full_name: str) -> bool:
    return full_name.rpartition(".")[2] in _REFERENCE_CLASS_NAMES


# --------------------------------------------------------------------------- file sniffing


def _sniff(path: Path) -> str:
    """``torchscript``, ``export``, ``torch.save`` (zip) or ``legacy`` (pre-1.6 torch.save)."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path} is a truncated or corrupt archive ({e})") from None
        if any(n.endswith("/archive_format") or n.endswith("serialized_exported_program.json") for n in names):
            return "export"
        if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch.save"
        raise InputError(f"{path} is a zip archive but not one PyTorch wrote (no data.pkl, code/ or archive_format)")
    if head[:1] == b"\x80":
        return "legacy"
    raise InputError(f"{path} is not a PyTorch model file (neither a torch.save/TorchScript/torch.export archive nor a pickle)")


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Make modules in the working directory importable, as ``python -c`` would."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def resolve_arch(spec: str) -> Callable[[], nn.Module]:
    """Turn ``module:callable`` or ``path/to/file.py:callable`` into the callable it names."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"--arch {spec!r}: expected MODULE:CALLABLE, e.g. mymodels:resnet18")
    try:
        with _cwd_on_path():
            if mod_name.endswith(".py"):
                file = Path(mod_name)
                if not file.is_file():
                    raise InputError(f"--arch {spec!r}: no such file {file}")
                loader_spec = importlib.util.spec_from_file_location(file.stem, file)
                assert loader_spec is not None and loader_spec.loader is not None
                module = importlib.util.module_from_spec(loader_spec)
                sys.path.insert(0, str(file.resolve().parent))  # its sibling modules import, as with `python file.py`
                try:
                    loader_spec.loader.exec_module(module)
                finally:
                    sys.path.remove(str(file.resolve().parent))
            else:
                module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:  # an import runs arbitrary user code; any failure is the user's input
        raise InputError(f"--arch {spec!r}: cannot import {mod_name!r}: {type(e).__name__}: {first_line(e)}") from None
    target = getattr(module, attr, None)
    if not callable(target):
        raise InputError(f"--arch {spec!r}: {mod_name!r} has no callable named {attr!r}")
    return target


def _build_arch(arch: str | Callable[[], nn.Module]) -> nn.Module:
    builder = resolve_arch(arch) if isinstance(arch, str) else arch
    try:
        model = builder()
    except Exception as e:
        raise InputError(f"--arch: building the architecture failed: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch: the callable returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _unsafe_globals_message(path: Path, names: list[str]) -> str:
    return (
        f"{path} needs code that is not on the allowlist: {', '.join(sorted(names))}; nothing was "
        "executed. If you trust this file pass --trust-pickle (full unpickling), or pass "
        "--arch MODULE:CALLABLE to build the architecture and load only its weights"
    )


def _torch_load_safe(path: Path, kind: str, arch_given: bool, notes: list[str]) -> Any:
    """Weights-only load with our allowlist; placeholders for unknown globals when ``arch_given``."""
    allow: list[Any] = [*_torch_nn_classes(), *_our_classes()]
    if kind == "torch.save":
        with torch.serialization.safe_globals(allow):
            try:
                unknown = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except Exception as e:
                raise InputError(f"{path} is a truncated or corrupt torch.save archive ({first_line(e)})") from None
    else:
        unknown = []  # the legacy format cannot be scanned up front; the unpickler reports the first one
    # Reference classes under the names found, and always under the reference's own module names.
    canonical = [f"{m}.{n}" for n in _REFERENCE_CLASS_NAMES for m in ("wConv", "wConv_Trainable")]
    for name in dict.fromkeys([*filter(_is_reference_name, unknown), *canonical]):
        allow.append((_reference_mapper(_REFERENCE_CLASS_NAMES[name.rpartition(".")[2]]), name))
        if name in unknown:
            notes.append(f"mapped reference class {name} onto wconv_deploy.nn")
    if kind == "legacy":
        return _torch_load_legacy(path, allow, arch_given, notes)
    others = [n for n in unknown if not _is_reference_name(n)]
    if others:
        if not arch_given:
            raise InputError(_unsafe_globals_message(path, [_python_name(n) for n in others]))
        blocked = [_python_name(n) for n in others if _python_name(n).split(".", 1)[0] in _HOSTILE_MODULES]
        if blocked:
            raise InputError(f"{path} calls {', '.join(blocked)} while unpickling; refusing it (looks hostile)")
        allow += [(_placeholder(n), n) for n in others]
        notes.append(f"read weights only; replaced by placeholders: {', '.join(sorted(others))}")
    with torch.serialization.safe_globals(allow):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            marker = "GLOBAL "
            if marker in msg:
                name = msg.split(marker, 1)[1].split()[0]
                raise InputError(_unsafe_globals_message(path, [name])) from None
            raise InputError(f"{path} cannot be read safely: {first_line(e)}") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise InputError(f"{path} is truncated or corrupt: {first_line(e)}") from None


class _LegacyUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pre-1.6 ``torch.save`` files hold a ``("module", cls, ...)`` persistent id per nn.Module,
    which torch's weights-only unpickler rejects. This pure-Python unpickler is as strict: globals
    only through :meth:`resolve`, calls and constructions only of allowlisted globals, BUILD only
    on instances of allowlisted types; the other object-creating opcodes are refused."""

    resolve: Callable[[str], Any]  # set per load
    allowed_ids: set[int]
    stack: list[Any]  # pickle._Unpickler's own state, which typeshed does not describe
    proto: int
    fix_imports: bool
    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        # Protocol 2 writes Python 2 names (__builtin__.set); resolve them as pickle would.
        return self.resolve(_python_name(full) if self.proto < 3 and self.fix_imports else full)

    def _require_allowed(self, obj: Any, what: str) -> None:
        if id(obj) not in self.allowed_ids:
            raise pickle.UnpicklingError(f"{what} {type(obj).__name__} is not allowed")

    def _load_reduce(self) -> None:
        self._require_allowed(self.stack[-2], "calling")
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]

    def _load_newobj(self) -> None:
        self._require_allowed(self.stack[-2], "constructing")
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def _load_newobj_ex(self) -> None:
        self._require_allowed(self.stack[-3], "constructing")
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    def _load_build(self) -> None:
        self._require_allowed(type(self.stack[-2]), "building")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    def _refuse(self) -> None:
        raise pickle.UnpicklingError("the INST/OBJ opcodes are not allowed")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.INST[0]] = dispatch[pickle.OBJ[0]] = _refuse


def _torch_load_legacy(path: Path, allow: list[Any], arch_given: bool, notes: list[str]) -> Any:
    """Read a legacy file with :class:`_LegacyUnpickler`; every pickle in it goes through that."""
    allowed: dict[str, Any] = dict(torch._weights_only_unpickler._get_allowed_globals())
    for entry in allow:
        obj, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        allowed[name] = obj
    allowed_ids = {id(v) for v in allowed.values()}
    placeholders: list[str] = []
    mapped: set[str] = set()

    def resolve(full: str) -> Any:
        module, _, name = full.rpartition(".")
        if full not in allowed:
            if _is_reference_name(full):
                allowed[full] = _reference_mapper(_REFERENCE_CLASS_NAMES[name])
            elif not arch_given:
                raise InputError(_unsafe_globals_message(path, [full]))
            elif module.split(".", 1)[0] in _HOSTILE_MODULES:
                raise InputError(f"{path} calls {full} while unpickling; refusing it (looks hostile)")
            else:
                allowed[full] = _placeholder(full)
                placeholders.append(full)
            allowed_ids.add(id(allowed[full]))
        if _is_reference_name(full) and full not in mapped:
            mapped.add(full)
            notes.append(f"mapped reference class {full} onto wconv_deploy.nn")
        return allowed[full]

    class Unpickler(_LegacyUnpickler):
        pass

    Unpickler.resolve = staticmethod(resolve)  # type: ignore[assignment]
    Unpickler.allowed_ids = allowed_ids

    def load(f: Any, **kwargs: Any) -> Any:
        return Unpickler(f, **kwargs).load()

    module = types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="pickle")
    try:
        with warnings.catch_warnings():  # legacy files carry class sources; ours differ from the reference's
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except InputError:
        raise
    except Exception as e:  # only allowlisted code ran: any other failure is a damaged file
        raise InputError(f"{path} is truncated or corrupt: {first_line(e)}") from None
    if placeholders:
        notes.append(f"read weights only; replaced by placeholders: {', '.join(sorted(placeholders))}")
    return obj


class _TrustedUnpickler(pickle.Unpickler):
    """Full unpickling (the user vouched for the file) that still maps reference classes onto
    ours when the reference code is not importable."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if name in _REFERENCE_CLASS_NAMES:
                return _reference_mapper(_REFERENCE_CLASS_NAMES[name])
            raise


_trusted_pickle_module = types.SimpleNamespace(Unpickler=_TrustedUnpickler, load=pickle.load, __name__="pickle")


def _torch_load_trusted(path: Path) -> Any:
    try:
        with _cwd_on_path():
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_trusted_pickle_module)
    except (ImportError, AttributeError) as e:
        raise InputError(
            f"{path} refers to code that cannot be imported ({first_line(e)}); run from the folder "
            "that holds it, or pass --arch MODULE:CALLABLE"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path} is truncated or corrupt: {first_line(e)}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            notes.append(f"stripped the {prefix!r} prefix from every state_dict key")
    return state


def _load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, notes: list[str]) -> None:
    state = _strip_wrapper_prefix(state, notes)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch (file vs architecture) {_some(wrong)}")
    if problems:
        raise InputError(f"{path}: the weights do not fit the architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _some(items: list[str], n: int = 4) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def _pick_checkpoint_entry(ckpt: Mapping[str, Any], path: Path, key: str | None) -> tuple[str, Any]:
    if key is not None:
        if key not in ckpt:
            raise InputError(f"{path}: checkpoint has no key {key!r} (keys: {', '.join(map(str, ckpt))})")
        return key, ckpt[key]
    for k in CHECKPOINT_KEYS:
        value = ckpt.get(k)
        if isinstance(value, nn.Module) or _is_state_dict(value):
            return k, value
    raise InputError(
        f"{path}: a dict without a model under any known key (keys: {', '.join(map(str, list(ckpt)[:12]))}); "
        "pass --checkpoint-key KEY"
    )


def _load_zoo(uri: str) -> LoadedModel:
    from wconv_deploy.zoo.registry import create_model, get_entry, parse_zoo_uri, zoo_digest

    name, kwargs = parse_zoo_uri(uri)
    with torch.random.fork_rng():  # zoo:NAME is one fixed network: the same weights every time
        torch.manual_seed(0)
        model = create_model(name, **kwargs).eval()
    note = f"built from the zoo: {get_entry(name).description}"
    return LoadedModel(model, "zoo", Path(uri), zoo_digest(uri, model), notes=[note])


def load_model(
    source: str | os.PathLike[str],
    *,
    arch: str | Callable[[], nn.Module] | None = None,
    trust_pickle: bool = False,
    checkpoint_key: str | None = None,
) -> LoadedModel:
    """Load ``source`` into an ``nn.Module`` in eval mode on the CPU.

    ``arch`` (``module:callable``, ``file.py:callable`` or a callable) builds the architecture for
    state_dicts, and for whole-model pickles whose classes are not allowlisted (their weights are
    then read with placeholders for those classes). ``trust_pickle`` allows full unpickling.
    ``checkpoint_key`` picks the entry of a checkpoint dict (default: the first of
    :data:`CHECKPOINT_KEYS` present). Raises :class:`InputError` for anything unusable.
    """
    if isinstance(source, str) and source.startswith("zoo:"):
        return _load_zoo(source)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    kind = _sniff(path)
    digest = file_sha256(path)
    notes: list[str] = []

    if kind == "torchscript":
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise InputError(f"{path}: cannot read the TorchScript archive: {first_line(e)}") from None
        return LoadedModel(
            model.eval(), "torchscript", path, digest, notes=["TorchScript: weighted layers are folded on the exported graph"]
        )
    if kind == "export":
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise InputError(f"{path}: cannot read the torch.export program: {first_line(e)}") from None
        return LoadedModel(
            program.module(),
            "export",
            path,
            digest,
            exported_program=program,
            notes=["torch.export program: weighted layers are folded on the exported graph"],
        )

    obj = _torch_load_trusted(path) if trust_pickle else _torch_load_safe(path, kind, arch is not None, notes)
    fmt, key = "pickle", None
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        key, obj = _pick_checkpoint_entry(obj, path, checkpoint_key)
        fmt = "checkpoint"
        notes.append(f"checkpoint: used the {key!r} entry")
    if isinstance(obj, nn.Module):
        if arch is not None:
            model = _build_arch(arch)
            _load_state_into(model, obj.state_dict(), path, notes)
            notes.append("built the architecture from --arch and loaded the file's weights into it")
        else:
            model = obj
    elif _is_state_dict(obj):
        if fmt == "pickle":
            fmt = "state_dict"
        if arch is None:
            raise InputError(
                f"{path} holds a state_dict ({len(obj)} tensors) but no architecture; "
                "pass --arch MODULE:CALLABLE that builds the model"
            )
        model = _build_arch(arch)
        _load_state_into(model, obj, path, notes)
    else:
        raise InputError(f"{path} holds an object of type {type(obj).__name__}, not a model, state_dict or checkpoint")
    return LoadedModel(model.eval(), fmt, path, digest, checkpoint_key=key, notes=notes)
