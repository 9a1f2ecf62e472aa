"""Which format a model file is (from its content, not its name), one loader per format, and
:func:`load_model`, which picks among them; ``zoo:`` models are sized on the meta device before
they are built."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import open_regular, stream_sha256
from wconv_deploy.loading.arch import (
    HALF_DTYPES,
    build_arch,
    half_note,
    is_state_dict,
    load_state_into,
    load_weights_only,
    module_tensors,
    pick_checkpoint_entry,
)
from wconv_deploy.loading.archives import Archive, check_pt2, check_tar, open_zip, pt2_tensors, torchscript_tensors
from wconv_deploy.loading.unpickle import check_module_tree, torch_load_safe, torch_load_trusted, unwrap
from wconv_deploy.zoo import create_model, get_entry, parse_zoo_uri
from wconv_deploy.zoo.registry import zoo_digest

#: ``zoo:`` options may not describe a model of more parameters and buffers than this (8 GiB of
#: float32) or more tensors than MAX_ZOO_TENSORS: a short URI must not exhaust the memory.
MAX_ZOO_PARAMETERS = 2**31
MAX_ZOO_TENSORS = 20_000


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
    """``zoo:NAME?k=v&...``: the registered model, sized on the meta device first, with fixed weights."""
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
        model = build_arch(arch)
        load_weights_only(model, tensors, path, what, notes)
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
        notes = [f"{what}: weighted layers are folded on the exported graph"]
        return LoadedModel(as_float32(scripted, notes).eval(), kind, path, digest, notes=notes)
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
    obj = torch_load_trusted(f, path) if trust_pickle else torch_load_safe(f, path, kind, arch is not None, notes)
    fmt, key = "pickle", None
    if isinstance(obj, Mapping) and not is_state_dict(obj):
        key, obj = pick_checkpoint_entry(obj, path, checkpoint_key)
        fmt = "checkpoint"
        notes.append(f"checkpoint: used the {key!r} entry")
    if isinstance(obj, nn.Module):
        if not trust_pickle:
            check_module_tree(obj, path, weights_only=arch is not None)
        obj = unwrap(obj, path, notes)
        if arch is not None:
            model = build_arch(arch)
            load_state_into(model, module_tensors(obj), path, notes)
            notes.append("built the architecture from --arch and loaded the file's weights into it")
        else:
            model = obj
    elif is_state_dict(obj):
        if fmt == "pickle":
            fmt = "state_dict"
        if arch is None:
            raise InputError(
                f"{path} holds a state_dict ({len(obj)} tensors) but no architecture; "
                "pass --arch MODULE:CALLABLE that builds the model"
            )
        model = build_arch(arch)
        load_state_into(model, obj, path, notes)
    else:
        raise InputError(f"{path} holds an object of type {type(obj).__name__}, not a model, state_dict or checkpoint")
    return LoadedModel(as_float32(model, notes).eval(), fmt, path, digest, checkpoint_key=key, notes=notes)


def as_float32(model: nn.Module, notes: list[str]) -> nn.Module:
    """``model`` with its float16/bfloat16 parameters and buffers widened to float32, in place
    (noted): the fp32 model is the reference that folding, export and validation compare with,
    and what runs on float32 inputs; ``convert --precision fp16`` makes the fp16 variant."""
    note = half_note([*model.parameters(), *model.buffers()])
    if note:
        model._apply(lambda t: t.float() if t.dtype in HALF_DTYPES else t)  # float64 stays float64
        notes.append(note)
    return model


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
    :data:`~wconv_deploy.loading.arch.CHECKPOINT_KEYS` present). Raises :class:`InputError` for anything unusable.
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
