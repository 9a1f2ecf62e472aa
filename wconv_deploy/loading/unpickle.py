"""The unpickling security boundary: what a ``torch.save`` file may make the unpickler build.

Without trust, files are read by PyTorch's weights-only unpickler with an allowlist of torch.nn
layers, our layers and the reference implementation's class names (mapped onto
:mod:`wconv_deploy.nn`); pre-1.6 files, which that unpickler rejects, by :class:`StrictUnpickler`
with the same allowlist. A global off the allowlist is refused with the list of what the file
asks for, or, when the user names the architecture (``arch``), becomes an inert placeholder so
that only the weights are taken; globals of modules such as ``os`` are refused even then. The
module tree that comes out is checked (:func:`check_module_tree`) before anything uses it. With
trust, full unpickling that still maps the reference classes.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
from torch import nn

from wconv_deploy import nn as wnn
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.loading.arch import cwd_on_path

#: Class names of the reference implementation, and their number of spatial dimensions.
_REFERENCE_CLASS_NAMES = {"wConv1d": 1, "wConv2d": 2, "wConv3d": 3}

#: Modules whose globals in a pickle mean an attack, not a model: refused even with ``arch``.
_HOSTILE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins")

#: A pickled module tree with more modules than this, or nested deeper, is not a model to deploy;
#: nn.Module's methods recurse, so a deeper tree would overflow the stack later.
MAX_MODULES = 100_000
MAX_MODULE_DEPTH = 64

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


# --------------------------------------------------------------------------- a strict unpickler


class StrictUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pure-Python unpickler that only does what it is allowed: globals only through
    :meth:`resolve`, calls and constructions only of globals in ``allowed_ids``, BUILD only on
    instances of allowed types; the INST/OBJ opcodes are refused. Subclasses set both per load."""

    resolve: Callable[[str], Any]
    allowed_ids: set[int]
    stack: list[Any]  # pickle._Unpickler's own state, which typeshed does not describe
    proto: int
    fix_imports: bool
    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        # Protocol 2 writes Python 2 names (__builtin__.set); resolve them as pickle would.
        return self.resolve(python_name(full) if self.proto < 3 and self.fix_imports else full)

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


def python_name(full_name: str) -> str:
    """The global an ordinary unpickler would import for a name a protocol-2 pickle wrote in its
    Python 2 spelling (``commands.Popen`` is ``subprocess.Popen``)."""
    module, _, name = full_name.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


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


class WrapperShell(nn.Module):
    """Stands for a training wrapper (``nn.DataParallel``, ``DistributedDataParallel``,
    ``torch.compile``'s ``OptimizedModule``): keeps its state, runs nothing, and is replaced by the
    model it wraps (:func:`unwrap`). Their own ``__setstate__`` would need a process group or
    would compile."""

    wrapper: ClassVar[str] = ""
    inner: ClassVar[str] = "module"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if args and isinstance(args[0], nn.Module):  # OptimizedModule pickles as a call (model, context)
            self._modules[self.inner] = args[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a training wrapper that was not unwrapped")


class _InertState:
    """Stands for a wrapper's plain config object (DDP's bucket and join settings): keeps state only."""

    args: tuple[Any, ...] = ()
    state: Any = None

    def __new__(cls, *args: Any) -> _InertState:  # NamedTuples pickle as a call with their fields
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _shell(full_name: str, inner: str) -> type[WrapperShell]:
    module, _, name = full_name.rpartition(".")
    return type(name, (WrapperShell,), {"__module__": module, "wrapper": full_name, "inner": inner})


#: Training wrappers a whole-model pickle may hold (class -> the attribute with the wrapped
#: model), mapped onto :class:`WrapperShell`s, with the inert config objects DDP pickles.
_WRAPPERS: dict[str, Any] = {
    "torch.nn.parallel.data_parallel.DataParallel": _shell("torch.nn.parallel.data_parallel.DataParallel", "module"),
    "torch.nn.parallel.distributed.DistributedDataParallel": _shell(
        "torch.nn.parallel.distributed.DistributedDataParallel", "module"
    ),
    "torch._dynamo.eval_frame.OptimizedModule": _shell("torch._dynamo.eval_frame.OptimizedModule", "_orig_mod"),
}
_WRAPPER_STATE = ("torch.nn.parallel.distributed._BucketCapacityConfig", "torch.distributed.algorithms.join._JoinConfig")


def _wrapper_allowlist() -> list[tuple[Any, str]]:
    inert = [(type(n.rpartition(".")[2], (_InertState,), {"__module__": n.rpartition(".")[0]}), n) for n in _WRAPPER_STATE]
    return [*((cls, name) for name, cls in _WRAPPERS.items()), *inert]


def unwrap(obj: Any, path: Path, notes: list[str]) -> Any:
    """The model inside any training wrappers around ``obj`` (``obj`` itself if there are none)."""
    while isinstance(obj, WrapperShell):
        inner = obj._modules.get(obj.inner)
        if not isinstance(inner, nn.Module):
            raise InputError(f"{path}: a {obj.wrapper} that wraps no model")
        notes.append(f"unwrapped {obj.wrapper.rpartition('.')[2]}: used the model it wraps")
        obj = inner
    return obj


def _placeholder(full_name: str) -> type[nn.Module]:
    module, _, name = full_name.rpartition(".")
    return type(name, (_Placeholder,), {"__module__": module})


def _is_reference_name(full_name: str) -> bool:
    return full_name.rpartition(".")[2] in _REFERENCE_CLASS_NAMES


# --------------------------------------------------------------------------- torch.load, safe and trusted


def _unsafe_globals_message(path: Path, names: list[str]) -> str:
    return (
        f"{path} needs code that is not on the allowlist: {', '.join(sorted(names))}; nothing was "
        "executed. If you trust this file pass --trust-pickle (full unpickling), or pass "
        "--arch MODULE:CALLABLE to build the architecture and load only its weights"
    )


def torch_load_safe(f: BinaryIO, path: Path, kind: str, arch_given: bool, notes: list[str]) -> Any:
    """Weights-only load of a ``torch.save`` file (``kind``: ``torch.save`` or ``legacy``) with our
    allowlist; placeholders for unknown globals when ``arch_given``."""
    allow: list[Any] = [*_torch_nn_classes(), *_our_classes(), *_wrapper_allowlist()]
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
        except Exception as e:  # only allowlisted code ran: any other failure is a damaged file
            raise InputError(f"{path} is truncated or corrupt: {first_line(e)}") from None


def _torch_load_legacy(f: BinaryIO, path: Path, allow: list[Any], arch_given: bool, notes: list[str]) -> Any:
    """Read a legacy file with a :class:`StrictUnpickler`, every pickle in it.

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
        if f"{module}.{name}" in _WRAPPERS:  # their __setstate__ wants a process group, or compiles
            return _WRAPPERS[f"{module}.{name}"]
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if name in _REFERENCE_CLASS_NAMES:
                return _reference_mapper(_REFERENCE_CLASS_NAMES[name])
            raise


_trusted_pickle_module = types.SimpleNamespace(Unpickler=_TrustedUnpickler, load=pickle.load, __name__="pickle")


def torch_load_trusted(f: BinaryIO, path: Path) -> Any:
    """Full unpickling, for a file the user vouched for; its classes import from the working directory."""
    try:
        with cwd_on_path():
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_trusted_pickle_module)
    except (ImportError, AttributeError) as e:
        raise InputError(
            f"{path} refers to code that cannot be imported ({first_line(e)}); run from the folder "
            "that holds it, or pass --arch MODULE:CALLABLE"
        ) from None
    except Exception as e:  # the file's own code ran (trusted) and failed, or the file is damaged
        why = f"{type(e).__name__}: {first_line(e)}"
        raise InputError(f"{path} is truncated or corrupt, or its code failed while unpickling: {why}") from None


# --------------------------------------------------------------------------- the module tree


def check_module_tree(root: nn.Module, path: Path, *, weights_only: bool = False) -> None:
    """Refuse a module tree the unpickler let through but nn.Module cannot use or would call into:
    submodules, parameters and buffers of the wrong types, filled hook dicts (hooks are code),
    attributes that replace methods (by something callable only, when ``weights_only``: a tree
    only read for its tensors by :func:`~.arch.module_tensors`), cycles, more than MAX_MODULES modules or a nesting deeper
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
        for key, child in _checked_children(module, f"{path}: {label}", weights_only):
            stack.append((child, f"{name}.{key}" if name else key, depth + 1, False))


def _checked_children(module: nn.Module, where: str, weights_only: bool) -> list[tuple[str, nn.Module]]:
    """The submodules of ``module`` once its own state is checked (see :func:`check_module_tree`)."""
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
    for key, value in state.items():
        # a tree only read for its tensors calls no method: plain data may shadow one there
        # (Ultralytics sets a ``type`` string on every layer), something callable never
        if callable(getattr(type(module), key, None)) and (callable(value) or not weights_only):
            raise InputError(f"{where}: attribute {key!r} would replace the method of that name; refusing it")
    return [(key, child) for key, child in state["_modules"].items() if child is not None]
