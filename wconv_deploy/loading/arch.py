"""The architecture a file's weights go into: ``--arch`` resolved and built, checkpoint dicts
searched for the model, state_dicts fitted strictly (wrapper prefixes stripped)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wconv_deploy.errors import InputError, first_line

#: Keys tried, in order, when a checkpoint dict holds the model. EMA weights come first because
#: they are what training scripts (timm, Ultralytics) evaluate and deploy.
CHECKPOINT_KEYS = ("ema", "model_ema", "state_dict_ema", "model", "state_dict", "model_state_dict", "net", "network", "module")

#: Floating dtypes narrower than float32 that a model may be saved in (``model.half()``, every
#: Ultralytics checkpoint, bf16 training); the loader widens them to float32.
HALF_DTYPES = (torch.float16, torch.bfloat16)

#: Prefixes that wrappers add to every state_dict key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@contextlib.contextmanager
def cwd_on_path() -> Iterator[None]:
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
        with cwd_on_path():
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


def build_arch(arch: str | Callable[[], nn.Module]) -> nn.Module:
    """Call the ``arch`` builder (a callable or a ``module:callable`` string): the model the file's weights go into."""
    builder = resolve_arch(arch) if isinstance(arch, str) else arch
    try:
        model = builder()
    except Exception as e:
        raise InputError(f"--arch: building the architecture failed: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch: the callable returned {type(model).__name__}, not a torch.nn.Module")
    return model


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping of tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_wrapper_prefix(state: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            notes.append(f"stripped the {prefix!r} prefix from every state_dict key")
    return state


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, notes: list[str]) -> None:
    """Load ``state`` strictly (wrapper prefixes stripped), or say in one InputError what does not fit."""
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
    model.load_state_dict(state, strict=True)  # copies into the architecture's (float32) tensors
    note = half_note(v for k, v in state.items() if own[k].dtype == torch.float32)
    if note:
        notes.append(note)


def half_note(tensors: Iterable[torch.Tensor]) -> str | None:
    """The note saying that half-precision ``tensors`` became float32, or None if there are none."""
    found = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.dtype in HALF_DTYPES})
    if not found:
        return None
    return (
        f"the file holds {'/'.join(found)} weights: cast to float32 for folding, export and validation "
        "(the ONNX is fp32; `convert --precision fp16` makes the fp16 variant)"
    )


def module_tensors(root: nn.Module) -> dict[str, torch.Tensor]:
    """What ``root.state_dict()`` holds (parameters and persistent buffers, by dotted name), read
    from the modules' own dicts, never through their methods: a pickled tree read only for its
    weights may carry attributes that shadow methods (Ultralytics sets a ``type`` string on every
    layer). Iterative; a tied layer is listed under each of its names, as state_dict lists it."""
    found: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, nn.Module, frozenset[int]]] = [("", root, frozenset())]
    while stack:
        prefix, module, above = stack.pop()
        if id(module) in above:
            raise InputError(f"module {prefix.rstrip('.')!r} contains itself; not a model")
        state = vars(module)
        transient = state.get("_non_persistent_buffers_set", set())
        for kind in ("_parameters", "_buffers"):
            for key, value in state[kind].items():
                if value is not None and not (kind == "_buffers" and key in transient):
                    found[prefix + key] = value.detach()
        inside = above | {id(module)}
        stack += [(f"{prefix}{key}.", c, inside) for key, c in reversed(state["_modules"].items()) if c is not None]
    return found


def _some(items: list[str], n: int = 4) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def pick_checkpoint_entry(ckpt: Mapping[str, Any], path: Path, key: str | None) -> tuple[str, Any]:
    """The entry of a checkpoint dict that holds the model: ``key``, or the first of CHECKPOINT_KEYS present."""
    if key is not None:
        if key not in ckpt:
            raise InputError(f"{path}: checkpoint has no key {key!r} (keys: {', '.join(map(str, ckpt))})")
        return key, ckpt[key]
    for k in CHECKPOINT_KEYS:
        value = ckpt.get(k)
        if isinstance(value, nn.Module) or is_state_dict(value):
            return k, value
    raise InputError(
        f"{path}: a dict without a model under any known key (keys: {', '.join(map(str, list(ckpt)[:12]))}); "
        "pass --checkpoint-key KEY"
    )


def load_weights_only(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str, notes: list[str]) -> None:
    """Load tensors read from a graph archive into the ``arch`` model and say what matched."""
    own = model.state_dict()
    transient = {key for key, _ in model.named_buffers()} - set(own)  # archives keep non-persistent buffers too
    dropped = sorted(k for k in tensors if k in transient)
    load_state_into(model, {k: v for k, v in tensors.items() if k not in transient}, path, notes)
    notes.append(
        f"read {len(tensors) - len(dropped)} tensors from the {what} without running anything from it; they match "
        f"all {len(own)} state_dict keys of --arch ({_some(list(own))})"
    )
    if dropped:
        notes.append(f"ignored the archive's copies of non-persistent buffers: {_some(dropped)}")
