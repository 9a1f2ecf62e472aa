"""Load a trained model from any format users save, without running code hidden in the file.

Formats (detected from the file's content, not its name):

- ``pickle``: ``torch.save(model)``, a whole module;
- ``state_dict``: ``torch.save(model.state_dict())``; needs ``arch`` to build the architecture;
- ``checkpoint``: a dict holding a module or a state_dict under a key such as ``model`` or ``ema``;
- ``torchscript``: ``torch.jit.save`` archives (``torchscript_weights``: only their tensors, into ``arch``);
- ``export``: ``torch.export.save`` programs, ``.pt2`` (``export_weights``: only their weights, into ``arch``).

Safety: nothing inside a model file runs unless the user vouches for it (``trust_pickle=True``).
Files written by ``torch.save`` are read with PyTorch's weights-only unpickler and an allowlist
of torch.nn layers, our layers and the reference implementation's class names (mapped onto
:mod:`wconv_deploy.nn`, so the reference code need not be installed); the module tree that comes
out is checked before anything uses it (real parameters, buffers and submodules, no hooks, not
absurdly deep). A file that asks for any other global is refused with the list of what it asks
for, unless the user either vouches for it (full unpickling) or names the architecture
(``arch``): then the unknown globals become inert placeholders and only the weights are taken
from the file. TorchScript archives are code: without trust they load only with ``arch``, their
tensors read straight from the archive (:mod:`wconv_deploy.archives`). A ``.pt2`` program loads
without trust when nothing in it would run (:func:`~wconv_deploy.archives.check_pt2`), and with
``arch`` from its raw weight records only. The path must be a regular file, every archive passes
the listing checks of :func:`~wconv_deploy.archives.open_zip`, and ``zoo:`` models are sized on
the meta device before they are built.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from wconv_deploy import nn as wnn
from wconv_deploy.archives import (
    Archive,
    StrictUnpickler,
    check_pt2,
    check_tar,
    open_zip,
    pt2_tensors,
    python_name,
    torchscript_tensors,
)
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import open_regular, stream_sha256

__all__ = [
    "CHECKPOINT_KEYS",
    "MAX_MODULES",
    "MAX_MODULE_DEPTH",
    "MAX_ZOO_PARAMETERS",
    "LoadedModel",
    "load_model",
    "resolve_arch",
]

#: Keys tried, in order, when a checkpoint dict holds the model. EMA weights come first because
#: they are what training scripts (timm, Ultralytics) evaluate and deploy.
CHECKPOINT_KEYS = ("ema", "model_ema", "state_dict_ema", "model", "state_dict", "model_state_dict", "net", "network", "module")

#: Prefixes that wrappers add to every state_dict key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_REFERENCE_CLASS_NAMES = {"wConv1d": 1, "wConv2d": 2, "wConv3d": 3}

#: Modules whose globals in a pickle mean an attack, not a model: refused even with ``arch``.
_HOSTILE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins")

#: A pickled module tree with more modules than this, or nested deeper, is not a model to deploy;
#: nn.Module's methods recurse, so a deeper tree would overflow the stack later.
MAX_MODULES = 100_000
MAX_MODULE_DEPTH = 64

#: ``zoo:`` options may not describe a model of more parameters and buffers than this (8 GiB of
#: float32) or more tensors than MAX_ZOO_TENSORS: a short URI must not exhaust the memory.
MAX_ZOO_PARAMETERS = 2**31
MAX_ZOO_TENSORS = 20_000

#: The dicts of hooks every nn.Module has: code to call, so a file that fills one is refused.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


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


def _is_reference_name(full_name: str) -> bool:
    return full_name.rpartition(".")[2] in _REFERENCE_CLASS_NAMES


# --------------------------------------------------------------------------- file sniffing


def _sniff(f: BinaryIO, path: Path, size: int) -> tuple[str, Archive | None]:
    """``torchscript``, ``export``, ``torch.save`` (zip) or ``legacy`` (pre-1.6 torch.save, a pickle
    or a pre-1.0 tar), with the checked listing of a zip archive."""
    head = f.read(512)
    f.seek(0)
    if head.startswith(b"PK"):
        archive = open_zip(f, path, size)
        records = archive.records
        if "archive_format" in records or "serialized_exported_program.json" in records:
            return "export", archive
        if "constants.pkl" in records:  # what torch.load itself takes for TorchScript
            return "torchscript", archive
        if "data.pkl" in records:
            return "torch.save", archive
        raise InputError(f"{path} is a zip archive but not one PyTorch wrote (no data.pkl, code/ or archive_format)")
    if head[:1] == b"\x80" or head[257:262] == b"ustar":
        return "legacy", None
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


def _torch_load_safe(f: BinaryIO, path: Path, kind: str, arch_given: bool, notes: list[str]) -> Any:
    """Weights-only load with our allowlist; placeholders for unknown globals when ``arch_given``."""
    allow: list[Any] = [*_torch_nn_classes(), *_our_classes()]
    if kind == "torch.save":
        with torch.serialization.safe_globals(allow):
            try:
                unknown = torch.serialization.get_unsafe_globals_in_checkpoint(f)
            except Exception as e:
                raise InputError(f"{path} is a truncated or corrupt torch.save archive ({first_line(e)})") from None
        f.seek(0)
    else:
        unknown = []  # the legacy format cannot be scanned up front; the unpickler reports the first one
    # Reference classes under the names found, and always under the reference's own module names.
    canonical = [f"{m}.{n}" for n in _REFERENCE_CLASS_NAMES for m in ("wConv", "wConv_Trainable")]
    for name in dict.fromkeys([*filter(_is_reference_name, unknown), *canonical]):
        allow.append((_reference_mapper(_REFERENCE_CLASS_NAMES[name.rpartition(".")[2]]), name))
        if name in unknown:
            notes.append(f"mapped reference class {name} onto wconv_deploy.nn")
    if kind == "legacy":
        return _torch_load_legacy(f, path, allow, arch_given, notes)
    others = [n for n in unknown if not _is_reference_name(n)]
    if others:
        if not arch_given:
            raise InputError(_unsafe_globals_message(path, [python_name(n) for n in others]))
        blocked = [python_name(n) for n in others if python_name(n).split(".", 1)[0] in _HOSTILE_MODULES]
        if blocked:
            raise InputError(f"{path} calls {', '.join(blocked)} while unpickling; refusing it (looks hostile)")
        allow += [(_placeholder(n), n) for n in others]
        notes.append(f"read weights only; replaced by placeholders: {', '.join(sorted(others))}")
    with torch.serialization.safe_globals(allow):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            marker = "GLOBAL "
            if marker in msg:
                name = msg.split(marker, 1)[1].split()[0]
                raise InputError(_unsafe_globals_message(path, [name])) from None
            raise InputError(f"{path} cannot be read safely: {first_line(e)}") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise InputError(f"{path} is truncated or corrupt: {first_line(e)}") from None


def _torch_load_legacy(f: BinaryIO, path: Path, allow: list[Any], arch_given: bool, notes: list[str]) -> Any:
    """Read a legacy file with a :class:`~wconv_deploy.archives.StrictUnpickler`, every pickle in it.

    Pre-1.6 files hold a ``("module", cls, ...)`` persistent id per nn.Module, which torch's
    weights-only unpickler rejects; this one is as strict about what it calls and builds."""
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

    class Unpickler(StrictUnpickler):
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
            obj = torch.load(f, map_location="cpu", weights_only=False, pickle_module=module)
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


def _torch_load_trusted(f: BinaryIO, path: Path) -> Any:
    try:
        with _cwd_on_path():
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_trusted_pickle_module)
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


def _check_module_tree(root: nn.Module, path: Path) -> None:
    """Refuse a module tree the unpickler let through but nn.Module cannot use or would call into:
    submodules, parameters and buffers of the wrong types, filled hook dicts (hooks are code),
    attributes that replace methods, cycles, more than MAX_MODULES modules or a nesting deeper
    than MAX_MODULE_DEPTH. Iterative, so a deep tree cannot overflow the stack here."""
    stack: list[tuple[nn.Module, str, int, bool]] = [(root, "", 0, False)]
    on_path: set[int] = set()
    done: set[int] = set()
    while stack:
        module, name, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(module))
            continue
        label = f"module {name!r}" if name else "the model"
        if id(module) in on_path:
            raise InputError(f"{path}: {label} contains itself; not a model")
        if id(module) in done:
            continue  # one module registered in two places (tied layers) is checked once
        if depth > MAX_MODULE_DEPTH:
            raise InputError(f"{path}: modules nested deeper than {MAX_MODULE_DEPTH} levels (at {name[:80]}...); not a model")
        done.add(id(module))
        if len(done) > MAX_MODULES:
            raise InputError(f"{path}: more than {MAX_MODULES:,} modules; not a model")
        on_path.add(id(module))
        stack.append((module, name, depth, True))
        for key, child in _checked_children(module, f"{path}: {label}"):
            stack.append((child, f"{name}.{key}" if name else key, depth + 1, False))


def _checked_children(module: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    """The submodules of ``module`` once its own state is checked (see :func:`_check_module_tree`)."""
    state = vars(module)  # not attribute access: nn.Module.__getattr__ reads the very dicts checked here
    kinds: dict[str, tuple[type, str]] = {
        "_parameters": (nn.Parameter, "a Parameter"),
        "_buffers": (torch.Tensor, "a tensor"),
        "_modules": (nn.Module, "a module"),
    }
    for attr in (*kinds, *_HOOK_DICTS):
        if not isinstance(state.get(attr), dict):
            raise InputError(f"{where}: {attr} is {type(state.get(attr)).__name__}, not a dict; not a valid module")
    for attr, (kind, what) in kinds.items():
        for key, value in state[attr].items():
            if not isinstance(key, str) or not (value is None or isinstance(value, kind)):
                raise InputError(f"{where}: {attr} entry {key!r} is {type(value).__name__}, not {what}; not a valid module")
            if isinstance(value, torch.Tensor) and value._backward_hooks:
                raise InputError(f"{where}: tensor {key!r} carries backward hooks (code to call); refusing it")
    for attr in _HOOK_DICTS:
        if state[attr]:
            raise InputError(f"{where} carries {attr} ({len(state[attr])} entries): hooks are code to call; refusing it")
    if not isinstance(state.get("training"), bool):
        raise InputError(f"{where}: its training flag is not a bool; not a valid module")
    for key in state:
        if callable(getattr(type(module), key, None)):
            raise InputError(f"{where}: attribute {key!r} would replace the method of that name; refusing it")
    return [(key, child) for key, child in state["_modules"].items() if child is not None]


def _check_zoo_size(name: str, build: Callable[[], nn.Module]) -> None:
    """Build on the meta device (no memory for weights), counting every parameter and buffer as it
    is registered, and refuse at once when the model outgrows MAX_ZOO_PARAMETERS or MAX_ZOO_TENSORS."""
    elements = tensors = 0

    def count(module: nn.Module, key: str, tensor: torch.Tensor | None) -> None:
        nonlocal elements, tensors
        if tensor is not None:
            elements, tensors = elements + tensor.numel(), tensors + 1
            if elements > MAX_ZOO_PARAMETERS or tensors > MAX_ZOO_TENSORS:
                raise InputError(
                    f"zoo:{name}: these options build a model of more than {MAX_ZOO_PARAMETERS:,} parameters "
                    f"(8 GiB of float32) or {MAX_ZOO_TENSORS:,} tensors; refusing to build it"
                )

    hooks = [
        torch.nn.modules.module.register_module_parameter_registration_hook(count),
        torch.nn.modules.module.register_module_buffer_registration_hook(count),
    ]
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loading packaged weights into meta tensors is a no-op, said loudly
            build()
    finally:
        for hook in hooks:
            hook.remove()


def _load_zoo(uri: str) -> LoadedModel:
    from wconv_deploy.zoo.registry import create_model, get_entry, parse_zoo_uri, zoo_digest

    name, kwargs = parse_zoo_uri(uri)
    _check_zoo_size(name, lambda: create_model(name, **kwargs))
    with torch.random.fork_rng():  # zoo:NAME is one fixed network: the same weights every time
        torch.manual_seed(0)
        model = create_model(name, **kwargs).eval()
    note = f"built from the zoo: {get_entry(name).description}"
    return LoadedModel(model, "zoo", Path(uri), zoo_digest(uri, model), notes=[note])


class _Collect(logging.Handler):
    """Keeps log records instead of printing them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _torch_export_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect what torch.export logs while loading instead of printing it (a traceback on stderr),
    so that a failure is our one line; the records say why. torch gives these loggers handlers of
    their own, so those are swapped out too."""
    collect = _Collect()
    roots = ("torch.export", "torch._export")
    loggers = [logging.getLogger(name) for name in roots]
    loggers += [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and logger.handlers and name.startswith(tuple(f"{r}." for r in roots))
    ]
    saved = [(logger, logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [collect], False
    try:
        yield collect.records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def _load_weights_only(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str, notes: list[str]) -> None:
    """Load tensors read from a graph archive into the ``arch`` model and say what matched."""
    own = model.state_dict()
    transient = {key for key, _ in model.named_buffers()} - set(own)  # archives keep non-persistent buffers too
    dropped = sorted(k for k in tensors if k in transient)
    _load_state_into(model, {k: v for k, v in tensors.items() if k not in transient}, path, notes)
    notes.append(
        f"read {len(tensors) - len(dropped)} tensors from the {what} without running anything from it; they match "
        f"all {len(own)} state_dict keys of --arch ({_some(list(own))})"
    )
    if dropped:
        notes.append(f"ignored the archive's copies of non-persistent buffers: {_some(dropped)}")


def _load_graph(
    f: BinaryIO,
    path: Path,
    kind: str,
    archive: Archive,
    arch: str | Callable[[], nn.Module] | None,
    trust_pickle: bool,
    digest: str,
) -> LoadedModel:
    """A TorchScript archive or ``.pt2`` program: its weights into ``arch``, or the graph itself."""
    what = "TorchScript archive" if kind == "torchscript" else "torch.export program"
    if arch is not None:  # never through torch.jit or torch.export: nothing from the file runs
        notes: list[str] = []
        if kind == "torchscript":
            tensors, notes = torchscript_tensors(archive)
        else:
            tensors = pt2_tensors(archive)
        model = _build_arch(arch)
        _load_weights_only(model, tensors, path, what, notes)
        return LoadedModel(model.eval(), f"{kind}_weights", path, digest, notes=notes)
    if kind == "torchscript":
        if not trust_pickle:
            raise InputError(
                f"{path} is a TorchScript archive: its code runs when it is loaded, so nothing was loaded or "
                "executed. If you trust this file pass --trust-pickle, or pass --arch MODULE:CALLABLE to "
                "load only its weights without running anything"
            )
        try:
            scripted = torch.jit.load(f, map_location="cpu")
        except Exception as e:
            raise InputError(f"{path}: cannot read the TorchScript archive: {first_line(e)}") from None
        return LoadedModel(
            scripted.eval(), kind, path, digest, notes=[f"{what}: weighted layers are folded on the exported graph"]
        )
    if not trust_pickle:
        check_pt2(archive)
    f.seek(0)  # the checks read through the same file
    with _torch_export_logs() as logged:
        try:
            program = torch.export.load(f)
            module = program.module()
        except Exception as e:
            causes = [r.exc_info[1] for r in logged if r.exc_info and r.exc_info[1] is not None]
            raise InputError(f"{path}: cannot read the torch.export program: {first_line(causes[0] if causes else e)}") from None
    notes = [f"{what}: weighted layers are folded on the exported graph"]
    return LoadedModel(module, kind, path, digest, exported_program=program, notes=notes)


def _load_pickled(
    f: BinaryIO,
    path: Path,
    kind: str,
    arch: str | Callable[[], nn.Module] | None,
    trust_pickle: bool,
    checkpoint_key: str | None,
    digest: str,
) -> LoadedModel:
    """A ``torch.save`` file (zip or legacy): a whole model, a state_dict or a checkpoint dict."""
    notes: list[str] = []
    if kind == "legacy":
        check_tar(f, path, os.fstat(f.fileno()).st_size)
    obj = _torch_load_trusted(f, path) if trust_pickle else _torch_load_safe(f, path, kind, arch is not None, notes)
    fmt, key = "pickle", None
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        key, obj = _pick_checkpoint_entry(obj, path, checkpoint_key)
        fmt = "checkpoint"
        notes.append(f"checkpoint: used the {key!r} entry")
    if isinstance(obj, nn.Module):
        if not trust_pickle:
            _check_module_tree(obj, path)
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


def load_model(
    source: str | os.PathLike[str],
    *,
    arch: str | Callable[[], nn.Module] | None = None,
    trust_pickle: bool = False,
    checkpoint_key: str | None = None,
) -> LoadedModel:
    """Load ``source`` into an ``nn.Module`` in eval mode on the CPU; nothing in the file runs
    unless ``trust_pickle``.

    ``arch`` (``module:callable``, ``file.py:callable`` or a callable) builds the architecture for
    state_dicts, for whole-model pickles whose classes are not allowlisted (their weights are then
    read with placeholders for those classes), and for TorchScript archives and ``.pt2`` programs
    (their tensors are read from the archive, never through torch.jit or torch.export).
    ``trust_pickle`` allows full unpickling, ``torch.jit.load`` and ``torch.export.load`` of
    anything. ``checkpoint_key`` picks the entry of a checkpoint dict (default: the first of
    :data:`CHECKPOINT_KEYS` present). Raises :class:`InputError` for anything unusable.
    """
    if isinstance(source, str) and source.startswith("zoo:"):
        return _load_zoo(source)
    path = Path(source)
    if not os.path.lexists(path):
        raise InputError(f"{path}: no such file")
    with open_regular(path) as f:  # a FIFO, device or folder is refused here, never read
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InputError(f"{path}: the file is empty")
        kind, archive = _sniff(f, path, size)
        f.seek(0)
        digest = stream_sha256(f)  # the file opened and checked, not the path again
        f.seek(0)
        if archive is not None and kind in ("torchscript", "export"):
            return _load_graph(f, path, kind, archive, arch, trust_pickle, digest)
        return _load_pickled(f, path, kind, arch, trust_pickle, checkpoint_key, digest)
