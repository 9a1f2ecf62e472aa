"""PyTorch archives read as data: checked listings, and weights taken without torch.jit or torch.export.

Every zip archive (``torch.save``, TorchScript, ``.pt2``) is listed by :func:`open_zip` first: no
two members of one name (two readers could pick different ones), no member that declares far
more bytes than the file holds (a compressed "zip bomb"), records named as torch names them
(relative to the archive's one top folder).
A pre-1.0 ``torch.save`` tar passes :func:`check_tar`: regular members only, or torch's reader
would extract a FIFO and block on it, or follow a link.

Weights without code: :func:`torchscript_tensors` reads a TorchScript archive's ``data.pkl``
with :class:`~wconv_deploy.loading.unpickle.StrictUnpickler` (inert stand-ins for its
``__torch__`` classes, tensors rebuilt from the archive's ``data/N`` records) and
:func:`pt2_tensors` reads a ``.pt2`` program's raw weight records as its weights config
describes them.

:func:`check_pt2` decides whether ``torch.export.load`` may read a ``.pt2`` file that nobody
vouched for. That loader unpickles (some of it with ``weights_only=False``), loads compiled
libraries, evaluates symbolic shape expressions with ``sympy.sympify`` (``eval``) and compiles
guard and graph code; so the program must hold nothing that any of those would run.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import keyword
import pickle
import re
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch
import torch.jit._pickle

from wconv_deploy.errors import InputError, first_line
from wconv_deploy.loading.unpickle import StrictUnpickler

__all__ = [
    "MAX_EXPANSION",
    "Archive",
    "check_pt2",
    "check_tar",
    "open_zip",
    "pt2_tensors",
    "torchscript_tensors",
]

#: A member may declare at most this many times the archive's size (plus a little slack for tiny
#: files) uncompressed: torch stores its records uncompressed, and compressed code is small.
MAX_EXPANSION = 32
_EXPANSION_SLACK = 16 << 20

#: A JSON document of a ``.pt2`` archive larger than this is not one torch.export.save wrote.
MAX_JSON_BYTES = 256 << 20

#: Objects visited in a TorchScript module tree; more means a cycle or not a model.
MAX_SCRIPT_OBJECTS = 100_000

_TAR_KINDS = {
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.DIRTYPE: "a folder",
}


# --------------------------------------------------------------------------- listings


@dataclass
class Archive:
    """A checked zip archive: ``records`` are member names without the archive's top folder."""

    zip: zipfile.ZipFile
    path: Path
    records: dict[str, zipfile.ZipInfo]

    def read(self, record: str) -> bytes:
        """A record's bytes (InputError if missing or damaged)."""
        info = self.records.get(record)
        if info is None:
            raise InputError(f"{self.path}: the archive has no record {record!r}")
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
            raise InputError(f"{self.path}: record {record!r} is damaged ({first_line(e)})") from None

    def json(self, record: str) -> Any:
        """A JSON record, at most :data:`MAX_JSON_BYTES` long."""
        info = self.records.get(record)
        if info is not None and info.file_size > MAX_JSON_BYTES:
            raise InputError(f"{self.path}: {record} is larger than {MAX_JSON_BYTES >> 20} MiB; not what torch writes")
        try:
            return json.loads(self.read(record))
        except (ValueError, RecursionError) as e:
            raise InputError(f"{self.path}: {record} is not valid JSON ({first_line(e)})") from None


def open_zip(f: BinaryIO, path: Path, size: int) -> Archive:
    """List the zip archive in ``f`` (``size`` bytes) and check it (see the module's docstring)."""
    try:
        z = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise InputError(f"{path} is a truncated or corrupt archive ({first_line(e)})") from None
    infos = z.infolist()
    names = [i.filename for i in infos]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{path}: the archive holds two members named {name!r}; refusing it")
        seen.add(name)
    top = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if not top or not all(n.startswith(top) for n in names):
        top = ""
    budget = MAX_EXPANSION * size + _EXPANSION_SLACK
    declared = 0
    for info in infos:
        declared += info.file_size
        if info.file_size > budget or declared > budget:
            raise InputError(
                f"{path}: member {info.filename!r} declares {info.file_size:,} bytes uncompressed in a "
                f"{size:,}-byte file (a zip bomb?); refusing it"
            )
    return Archive(z, path, {i.filename[len(top) :]: i for i in infos})


def check_tar(f: BinaryIO, path: Path, size: int) -> None:
    """If ``f`` opens as a tar archive (as torch's reader of pre-1.0 files tries first), refuse it
    when a member is not a regular file or is larger than the file. A file that does not open as
    a tar is left to torch, which then reads it as a plain pickle too."""
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isreg() or member.issparse():
                    kind = _TAR_KINDS.get(member.type, "a sparse or special file")
                    raise InputError(f"{path}: tar member {member.name!r} is {kind}, not a regular file; refusing it")
                if member.size > size:
                    raise InputError(f"{path}: tar member {member.name!r} declares {member.size:,} bytes in a {size:,}-byte file")
    except (tarfile.TarError, EOFError, UnicodeError, ValueError):
        pass  # torch's tarfile.open or extract fails the same way, before extracting anything
    f.seek(0)


# --------------------------------------------------------------------------- a strict unpickler


# --------------------------------------------------------------------------- TorchScript weights


class ScriptObject:
    """Stands for an object of a TorchScript class (``__torch__.*``): keeps its state, runs nothing."""

    script_class: ClassVar[str] = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    """What a ``torch.FloatStorage``-like global means inside a storage record: a dtype."""

    dtype: torch.dtype


@functools.cache
def _storage_types() -> dict[str, _StorageType]:
    found = {}
    with warnings.catch_warnings():  # the typed storage classes are deprecated; their names are not
        warnings.simplefilter("ignore")
        for name in dir(torch):
            cls = getattr(torch, name)
            if name.endswith("Storage") and isinstance(cls, type) and issubclass(cls, torch.storage._LegacyStorage):
                found[f"torch.{name}"] = _StorageType(cls.dtype)
    return found


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *extra: Any
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for a storage read from the archive; no hooks, no metadata."""
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if not isinstance(storage, torch.Tensor) or ints is None or not all(type(i) is int for i in ints) or hooks or extra:
        raise pickle.UnpicklingError("a tensor record that torch.jit.save does not write")
    return storage.as_strided(size, stride, offset)  # torch checks the view against the storage


def torchscript_tensors(archive: Archive) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a TorchScript archive's module tree by attribute path (``body.0.weight``),
    read without running anything from it, and notes on what was left out."""
    if archive.records.get("byteorder") and archive.read("byteorder").decode(errors="replace") != sys.byteorder:
        raise InputError(f"{archive.path}: written on a machine of the other byte order; not supported")
    storages = _storage_types()
    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "collections.OrderedDict": OrderedDict,
        **{f"torch.jit._pickle.{f.__name__}": f for f in _JIT_PICKLE_HELPERS},
    }
    allowed_ids = {id(v) for v in allowed.values()}
    cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def resolve(full: str) -> Any:
        if full in storages:
            return storages[full]
        if full.startswith("__torch__."):
            cls = type(full.rpartition(".")[2], (ScriptObject,), {"script_class": full})
            allowed_ids.add(id(cls))
            return cls
        if full not in allowed:
            raise pickle.UnpicklingError(f"global {full} is not allowed in a TorchScript archive's data")
        return allowed[full]

    def persistent_load(pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("a persistent id that torch.jit.save does not write")
        dtype, key, numel = pid[1].dtype, pid[2], pid[4]
        if not isinstance(key, str) or type(numel) is not int:
            raise pickle.UnpicklingError("a storage record that torch.jit.save does not write")
        if (key, dtype) not in cache:
            data = archive.read(f"data/{key}")
            if len(data) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, not {numel} x {dtype}")
            cache[key, dtype] = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return cache[key, dtype]

    class Unpickler(StrictUnpickler):
        pass

    Unpickler.resolve = staticmethod(resolve)  # type: ignore[assignment]
    Unpickler.allowed_ids = allowed_ids
    unpickler = Unpickler(io.BytesIO(archive.read("data.pkl")))
    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        root = unpickler.load()
    except InputError:
        raise
    except Exception as e:  # only the helpers above ran: anything else is a damaged or hostile record
        raise InputError(f"{archive.path}: cannot read the TorchScript archive's data.pkl as weights: {first_line(e)}") from None
    if not isinstance(root, ScriptObject):
        raise InputError(f"{archive.path}: the TorchScript archive's data.pkl holds no module")
    return _script_module_tensors(root, archive.path)


_JIT_PICKLE_HELPERS = (
    torch.jit._pickle.build_intlist,
    torch.jit._pickle.build_tensorlist,
    torch.jit._pickle.build_doublelist,
    torch.jit._pickle.build_boollist,
    torch.jit._pickle.restore_type_tag,
)


def _script_module_tensors(root: ScriptObject, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Walk the module tree (iteratively): tensor attributes by path; submodules are the objects
    whose state has a ``training`` flag, as every scripted nn.Module's does."""
    tensors: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    stack: list[tuple[str, ScriptObject]] = [("", root)]
    visited = 0
    while stack:
        prefix, obj = stack.pop()
        visited += 1
        if visited > MAX_SCRIPT_OBJECTS:
            raise InputError(f"{path}: more than {MAX_SCRIPT_OBJECTS:,} modules in the TorchScript archive (or a cycle)")
        if not isinstance(obj.state, dict):
            notes.append(f"took no tensors from {prefix.rstrip('.') or 'the root'} ({obj.script_class} keeps a custom state)")
            continue
        for name, value in obj.state.items():
            if not isinstance(name, str):
                raise InputError(f"{path}: an attribute name of {obj.script_class} is not a string")
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, ScriptObject) and not (isinstance(value.state, dict) and "training" not in value.state):
                stack.append((f"{prefix}{name}.", value))
    return tensors, notes


# --------------------------------------------------------------------------- .pt2 weights


def _pt2_int(value: Any, what: str) -> int:
    if not (isinstance(value, dict) and type(value.get("as_int")) is int and len(value) == 1):
        raise ValueError(f"{what} is not a plain integer")
    return int(value["as_int"])


def pt2_tensors(archive: Archive) -> dict[str, torch.Tensor]:
    """The weights (parameters and persistent buffers) of a ``.pt2`` program by FQN, from its raw
    records and ``data/weights/model_weights_config.json``; nothing is unpickled or compiled."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT

    config_name = "data/weights/model_weights_config.json"
    if config_name not in archive.records:
        raise InputError(
            f"{archive.path}: no {config_name} in the .pt2 archive (an older format); pass --trust-pickle if you trust it"
        )
    config = archive.json(config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{archive.path}: {config_name} is not a weights config")
    flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for fqn, entry in entries.items():
        try:
            if entry.get("use_pickle"):
                raise InputError(
                    f"{archive.path}: weight {fqn} is stored pickled (reading it would unpickle it); "
                    "pass --trust-pickle if you trust this file"
                )
            meta = entry["tensor_meta"]
            dtype = _SERIALIZE_TO_TORCH_DTYPE[meta["dtype"]]
            if _SERIALIZE_TO_TORCH_LAYOUT[meta["layout"]] != torch.strided:
                raise ValueError("not a dense tensor")
            size = [_pt2_int(s, "a size") for s in meta["sizes"]]
            stride = [_pt2_int(s, "a stride") for s in meta["strides"]]
            offset = _pt2_int(meta["storage_offset"], "the storage offset")
            record = entry["path_name"]
            if not isinstance(record, str):
                raise ValueError("path_name is not a string")
            if (record, dtype) not in flat:
                data = archive.read(f"data/weights/{record}")
                if len(data) % dtype.itemsize:
                    raise ValueError(f"{record} holds {len(data)} bytes, not a whole number of {dtype}")
                flat[record, dtype] = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
            tensors[fqn] = flat[record, dtype].as_strided(size, stride, offset)
        except InputError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{archive.path}: weight {fqn} of {config_name} cannot be read: {first_line(e)}") from None
    return tensors


# --------------------------------------------------------------------------- .pt2 programs


_TRUST_HINT = "pass --trust-pickle if you trust this file, or --arch MODULE:CALLABLE to load only its weights"

#: Strings of a program that torch may paste into generated code: plain names only.
_NAME = re.compile(r"[A-Za-z0-9_.:+\-]*\Z")
#: Characters that end a line for Python's tokenizer or str.splitlines, besides "\n".
_LINE_BREAK = re.compile("[\x00\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
#: Subtrees of free text: node metadata (stack traces), pytree specs, string arguments.
_FREE_TEXT = {"metadata", "in_spec", "out_spec", "as_string", "as_strings", "torch_version"}

_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.[A-Za-z0-9_]+\Z")
_OTHER_TARGET = re.compile(r"(?:math\.[a-z0-9_]+|torch\.sym_[a-z_]+)\Z")
_OPERATORS = {
    "_operator." + n
    for n in "getitem add sub mul truediv floordiv mod neg pos abs eq ne lt le gt ge and_ or_ xor not_ invert truth".split()
}
#: aten operators that reach outside the tensors they are given (files).
_FILE_OPS = {"from_file"}

#: What a symbolic shape expression may name: the sympy classes srepr writes for shapes, torch's
#: shape functions and sympy's assumption keywords. No builtins, no attributes, no powers.
_SYMPY_NAMES = set(
    """Symbol Dummy Integer Rational Float Add Mul Max Min Abs Mod floor ceiling Eq Ne Lt Le Gt Ge
    StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not Piecewise
    ExprCondPair Tuple true false oo zoo nan True False None FloorDiv ModularIndexing Where PythonMod
    CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift IntTrueDiv FloatTrueDiv
    IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
    integer positive negative nonnegative nonpositive real finite infinite extended_real commutative
    zero nonzero even odd prime rational precision""".split()
)
_SYMPY_TOKEN = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|'[A-Za-z0-9_.+\-]*'|\d{1,24}(?:\.\d{1,24})?(?:[eE][+-]?\d{1,3})?|[(),=\-])"
)
_MAX_EXPR_CHARS = 10_000


def check_pt2(archive: Archive) -> None:
    """Refuse (InputError) a ``.pt2`` archive that ``torch.export.load`` cannot read without running
    something from it: pickles it would load with ``weights_only=False`` (weights, constants,
    sample inputs), custom or opaque objects, compiled libraries, guard code, and strings it
    would evaluate or paste into code."""
    path, records = archive.path, archive.records
    if "archive_format" not in records:
        raise InputError(f"{path}: a .pt2 archive in the pre-2.8 format, which torch reads by full unpickling; {_TRUST_HINT}")
    if any(r.startswith("data/aotinductor/") for r in records):
        raise InputError(f"{path}: the .pt2 archive holds AOTInductor libraries, which run when loaded; {_TRUST_HINT}")
    for program in [r for r in records if r.startswith("models/")]:
        model = program[len("models/") : -len(".json")]  # how torch names it, whatever the suffix
        _check_payloads(archive, f"data/weights/{model}_weights_config.json", tensor_prefix="")
        _check_payloads(archive, f"data/constants/{model}_constants_config.json", tensor_prefix="tensor_")
        for record in (f"data/sample_inputs/{model}.pt", f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
            if record in records:
                _check_weights_only(archive, record)
        _check_program(archive.json(program), f"{path}: {program}")


def _check_payloads(archive: Archive, record: str, tensor_prefix: str) -> None:
    """A weights or constants config: raw tensors only (torch unpickles the other entries)."""
    if record not in archive.records:
        return  # torch fails on it, before reading anything else
    config = archive.json(record)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise InputError(f"{archive.path}: {record} is not a payload config")
    for fqn, entry in entries.items():
        name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _NAME.match(fqn) or not _NAME.match(name):
            raise InputError(f"{archive.path}: {record}: entry {fqn!r} is not one torch.export.save writes")
        if entry.get("use_pickle") is not False or not name.startswith(tensor_prefix):
            raise InputError(
                f"{archive.path}: {record}: {fqn} is stored pickled and would be unpickled by loading it; {_TRUST_HINT}"
            )


def _check_weights_only(archive: Archive, record: str) -> None:
    """torch.export.load reads these with torch.load and, should that fail, again with
    ``weights_only=False``: refuse the file unless the weights-only load succeeds."""
    data = archive.read(record)
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{archive.path}: {record} needs full unpickling ({first_line(e)}); {_TRUST_HINT}") from None


def _check_program(doc: Any, where: str) -> None:
    """Walk a serialized program (iteratively) and refuse anything torch would run or paste into code."""
    stack: list[tuple[Any, str, bool]] = [(doc, "", False)]
    while stack:
        value, key, free = stack.pop()
        if isinstance(value, dict):
            if not free and isinstance(value.get("target"), str) and "inputs" in value:
                _check_target(value["target"], where)
            for k, v in value.items():
                _check_string(k, "", free, where)
                stack.append((v, k, free or k in _FREE_TEXT))
        elif isinstance(value, list):
            stack.extend((v, key, free) for v in value)
        elif isinstance(value, str):
            _check_string(value, key, free, where)


def _check_string(text: str, key: str, free: bool, where: str) -> None:
    if _LINE_BREAK.search(text):
        raise InputError(f"{where}: a string holds a line break other than newline; {_TRUST_HINT}")
    if free:
        return
    if key == "expr_str":
        _check_sym_expr(text, where)
    elif key == "as_operator":
        _check_target(text, where)
    elif key == "guards_code":
        _check_guard(text, where)
    elif key == "forward_arg_names":
        if not text.isidentifier() or keyword.iskeyword(text):
            raise InputError(f"{where}: argument name {text[:60]!r} is not a Python identifier; {_TRUST_HINT}")
    elif not _NAME.match(text):
        raise InputError(f"{where}: name {text[:60]!r} is not a plain name (torch pastes names into code); {_TRUST_HINT}")


def _check_target(target: str, where: str) -> None:
    aten = _ATEN_TARGET.match(target)
    if aten and aten.group(1) not in _FILE_OPS or target in _OPERATORS or _OTHER_TARGET.match(target):
        return
    raise InputError(f"{where}: the graph calls {target[:80]}, which is not an aten operator; {_TRUST_HINT}")


#: What a guard (a Python expression on the input shapes, compiled and run with the model) may be
#: made of: arithmetic, comparisons, min/max and shape queries such as ``L['x'].size()[0]``.
_GUARD_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.UnaryOp, ast.USub, ast.UAdd, ast.Not, ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
    ast.Call, ast.Name, ast.Attribute, ast.Subscript, ast.Constant, ast.Load,
)  # fmt: skip
_GUARD_NAMES = {"L", "max", "min", "abs", "math", "inf"} | _SYMPY_NAMES
_GUARD_ATTRIBUTES = {"size", "stride", "storage_offset", "dim", "numel", "isnan", "isinf", "inf"}


def _check_guard(text: str, where: str) -> None:
    """Refuse a guard that is anything but arithmetic on the inputs' shapes."""
    try:
        if len(text) > _MAX_EXPR_CHARS:
            raise ValueError(f"{len(text)} characters")
        for node in ast.walk(ast.parse(text, mode="eval")):
            if not isinstance(node, _GUARD_NODES):
                raise ValueError(f"it holds {type(node).__name__}")
            if isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
                raise ValueError(f"it names {node.id!r}")
            if isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRIBUTES:
                raise ValueError(f"it reads .{node.attr}")
            if isinstance(node, ast.Call) and node.keywords:
                raise ValueError("a call with keywords")
            if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
                raise ValueError("a computed subscript")
            if isinstance(node, ast.Constant) and not (
                type(node.value) in (int, float, bool) or isinstance(node.value, str) and _NAME.match(node.value)
            ):
                raise ValueError(f"the constant {node.value!r:.40}")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise InputError(f"{where}: a guard is not one torch writes ({first_line(e)}); {_TRUST_HINT}") from None


def _sym_tokens(text: str) -> Iterator[str | None]:
    """The names in a symbolic expression; raises ValueError at anything else."""
    pos = 0
    while pos < len(text.rstrip()):
        token = _SYMPY_TOKEN.match(text, pos)
        if token is None:
            raise ValueError(f"unexpected {text[pos : pos + 20]!r}")
        pos = token.end()
        yield token.group("name")


def _check_sym_expr(text: str, where: str) -> None:
    """torch.export.load evaluates these with sympy.sympify, which is ``eval``."""
    try:
        if len(text) > _MAX_EXPR_CHARS:
            raise ValueError(f"{len(text)} characters")
        for name in _sym_tokens(text):
            if name is not None and name not in _SYMPY_NAMES:
                raise ValueError(f"it names {name!r}")
    except ValueError as e:
        raise InputError(f"{where}: a shape expression is not one torch writes ({e}); {_TRUST_HINT}") from None
