"""The artifact layer: the one place that reads and writes ONNX files, their metadata and
engine manifests, and answers what an artifact is (:class:`OnnxInfo`, :class:`BuildManifest`).

An ONNX file is untrusted input. :func:`read_onnx` opens it as a regular file only, turns every
parse failure into an :class:`InputError`, and checks every tensor stored as external data
(initializers *and* tensors inside node attributes, such as ``Constant`` values, in every
subgraph): each must name a relative path that resolves to a regular file inside the model's
folder. A model whose external data points at ``../../etc/shadow`` or a symlink to a secret is
refused before anything reads, copies or hashes that file. :func:`json_metadata` parses the JSON
we store in ``metadata_props`` with limits (size, nesting), so hostile metadata is one line too.
Importing this module imports neither onnx nor torch; reading a file imports onnx.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import open_regular, read_text, regular_file, write_text_atomic
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report
from wconv_deploy.spec import AXIS_NAMES, MAX_DIM, Dim, InputSpec, Tensor, TensorSpec

#: Our keys in an ONNX file's ``metadata_props`` start with this.
METADATA_PREFIX = "wconv_deploy."
#: The keys we write (``METADATA_PREFIX`` + name); their values are strings, JSON where noted.
KEY_VERSION = METADATA_PREFIX + "version"
KEY_SOURCE = METADATA_PREFIX + "source"  # the model file's name, or zoo:NAME?...
KEY_SOURCE_SHA256 = METADATA_PREFIX + "source_sha256"
KEY_INPUT_SPEC = METADATA_PREFIX + "input_spec"  # JSON: InputSpec.to_dict()
KEY_FOLD = METADATA_PREFIX + "fold"  # JSON: what folding did
KEY_EXPORTER = METADATA_PREFIX + "exporter"
KEY_TORCH_VERSION = METADATA_PREFIX + "torch_version"
KEY_PRECISION = METADATA_PREFIX + "precision"  # a Precision value, written by convert
KEY_KEEP_FP32 = METADATA_PREFIX + "keep_fp32"  # JSON: the nodes convert left in fp32
KEY_CONV_LAYERS = METADATA_PREFIX + "conv_layers"  # JSON: {Conv node name: PyTorch module name}, by export
KEY_PREPROCESS = METADATA_PREFIX + "preprocess"  # JSON: how images become inputs (preprocess.ImagePreprocess.record)
#: Quantisation nodes: a graph holding them is int8 (explicit quantisation).
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
#: More axes than any tensor of a deployable CNN has (ONNX Runtime and TensorRT stop at 8).
MAX_RANK = 8
#: Our metadata values are small JSON documents; anything larger or deeper is not ours.
MAX_METADATA_CHARS = 1 << 20
MAX_JSON_DEPTH = 64


def read_onnx(path: str | os.PathLike[str], *, load_external_data: bool = False) -> Any:
    """The ``onnx.ModelProto`` in ``path``; external data checked (and loaded when asked)."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    with open_regular(p) as f:
        data = f.read()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RecursionError, RuntimeError) as e:
        raise InputError(f"{p} is not a readable ONNX file ({type(e).__name__})") from None
    files = external_data_files(model, p)
    if load_external_data and files:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, os.fspath(p.parent))
    return model


def write_onnx(model: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` (a staged file: callers publish it atomically)."""
    import onnx

    onnx.save_model(model, os.fspath(path))


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers, sparse initializers and attribute tensors, in
    every (nested) subgraph; iterative, so a graph nested 100k deep cannot overflow the stack."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def external_data_files(model: Any, path: str | os.PathLike[str]) -> list[str]:
    """The external data files (relative locations) the model at ``path`` uses, each checked to be
    a regular file inside the model's folder; InputError for any that is not."""
    import onnx

    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    found: set[str] = set()
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in t.external_data}
        location = entries.get("location", "")
        where = f"{p.name}: tensor {t.name!r} stores its data in {location!r}"
        rel = PurePosixPath(location.replace("\\", "/"))
        if not location or rel.is_absolute() or ".." in rel.parts or location.startswith("~"):
            raise InputError(f"{where}: external data must be a file inside the model's folder")
        regular_file(folder / location, within=folder, what=where)
        found.add(location)
    return sorted(found)


def wconv_metadata(model: Any) -> dict[str, str]:
    """The model's ``wconv_deploy.*`` metadata entries (InputError for oversized values)."""
    props = {}
    for p in model.metadata_props:
        if p.key.startswith(METADATA_PREFIX):
            if len(p.value) > MAX_METADATA_CHARS:
                raise InputError(f"metadata {p.key}: {len(p.value)} characters; not metadata wconv-deploy wrote")
            props[p.key] = p.value
    return props


def json_metadata(model: Any, key: str, where: str) -> Any:
    """The JSON value stored under ``key`` (a ``KEY_*`` constant; None if absent), parsed with
    limits: not larger than MAX_METADATA_CHARS, not nested deeper than MAX_JSON_DEPTH, no NaN or
    infinity."""
    text = wconv_metadata(model).get(key)
    if text is None:
        return None
    return parse_json(text, f"{where}: metadata {key}")


def set_metadata(model: Any, props: Mapping[str, str]) -> None:
    """Add or replace ``metadata_props`` entries of ``model`` (keys: the ``KEY_*`` constants)."""
    import onnx

    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})


def stored_spec(model: Any, where: str) -> InputSpec | None:
    """The input spec ``export`` stored in the model's metadata, or None if it has none."""
    data = json_metadata(model, KEY_INPUT_SPEC, where)
    if data is None:
        return None
    try:
        return InputSpec.from_dict(data)
    except InputError as e:
        raise InputError(f"{where}: its wconv-deploy input spec is broken: {e}") from None


def graph_io(model: Any) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The graph's inputs (initializers excluded) and outputs. An engine's inputs and outputs
    are its ONNX graph's: TensorRT keeps their names, types and dynamic axes. InputError for
    what no deployable model has: non-tensors, undefined element types, rank above MAX_RANK,
    axes beyond MAX_DIM."""
    from onnx import TensorProto

    numpy_names: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}

    def tensor(vi: Any) -> Tensor:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"{vi.name!r} is not a tensor (sequences, maps and optionals cannot be deployed)")
        if t.elem_type not in TensorProto.DataType.values() or t.elem_type == TensorProto.UNDEFINED:
            raise InputError(f"{vi.name!r} has element type {t.elem_type}, which ONNX does not define")
        dtype = numpy_names.get(t.elem_type) or TensorProto.DataType.Name(t.elem_type).lower()
        if t.HasField("shape") and len(t.shape.dim) > MAX_RANK:
            raise InputError(f"{vi.name!r} has {len(t.shape.dim)} axes; no convolutional model has more than {MAX_RANK}")
        shape = tuple(d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim) if t.HasField("shape") else None
        if shape is not None and any(d > MAX_DIM or d < -1 for d in shape):
            raise InputError(f"{vi.name!r} has shape {list(shape)}: an axis beyond {MAX_DIM} is not a real shape")
        return Tensor(vi.name, dtype, shape)

    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(tensor(vi) for vi in model.graph.input if vi.name not in initializers)
    return inputs, tuple(tensor(vi) for vi in model.graph.output)


def qdq_count(model: Any) -> int:
    """How many QuantizeLinear/DequantizeLinear nodes the graph holds (explicit quantisation)."""
    return sum(n.op_type in QDQ_OPS for n in model.graph.node)


def graph_precision(model: Any) -> Precision:
    """The precision a graph holds: convert's ``KEY_PRECISION`` metadata, else int8 for Q/DQ
    nodes, else the most common floating type among the initializers (fp32 on a tie)."""
    from onnx import TensorProto

    stamped = wconv_metadata(model).get(KEY_PRECISION)
    if stamped in {p.value for p in Precision}:
        return Precision(stamped)
    if qdq_count(model):
        return Precision.INT8
    names = {TensorProto.FLOAT: Precision.FP32, TensorProto.FLOAT16: Precision.FP16, TensorProto.BFLOAT16: Precision.BF16}
    counts = dict.fromkeys(names.values(), 0)
    for t in model.graph.initializer:
        if t.data_type in names:
            counts[names[t.data_type]] += 1
    return max(counts, key=lambda k: (counts[k], k == Precision.FP32))


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX file is, read once through :func:`read_onnx`: its I/O, the input spec export
    stored (None for a foreign file), its precision, our metadata and its external data files."""

    path: Path
    model: Any = field(repr=False, compare=False)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    stored_spec: InputSpec | None
    precision: Precision
    qdq_nodes: int
    metadata: dict[str, str]
    external_data: list[str]

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, load_external_data: bool = False) -> OnnxInfo:
        """Read and check ``path`` (InputError, one line, if it is not a usable ONNX file)."""
        p = Path(path)
        return cls.of(read_onnx(p, load_external_data=load_external_data), p)

    @classmethod
    def of(cls, model: Any, path: str | os.PathLike[str]) -> OnnxInfo:
        """The info of a model already read from ``path``."""
        p = Path(path)
        inputs, outputs = graph_io(model)
        return cls(
            p,
            model,
            inputs,
            outputs,
            stored_spec(model, p.name),
            graph_precision(model),
            qdq_count(model),
            wconv_metadata(model),
            external_data_files(model, p),
        )

    @property
    def spec(self) -> InputSpec:
        """The stored input spec; InputError naming the fix for a file export did not write."""
        if self.stored_spec is None:
            fix = "export it with wconv-deploy export, or pass --input-shape"
            raise InputError(f"{self.path} has no wconv-deploy input spec in its metadata: {fix}")
        return self.stored_spec

    def spec_or_static(self) -> InputSpec:
        """The stored spec, else (a foreign ONNX) its static input shapes; InputError for a
        foreign file with a dynamic input."""
        if self.stored_spec is not None:
            return self.stored_spec
        inputs = []
        for t in self.inputs:
            if not t.shape or any(d < 1 for d in t.shape):
                fix = "export it with wconv-deploy export"
                raise InputError(f"{self.path.name} has dynamic input {t.name!r} and no wconv-deploy input spec: {fix}")
            names = AXIS_NAMES.get(len(t.shape), tuple(f"axis{i}" for i in range(len(t.shape))))
            inputs.append(TensorSpec(t.name, tuple(Dim(n, d, d, d) for n, d in zip(names, t.shape)), t.dtype))
        return InputSpec(tuple(inputs))

    @property
    def provenance(self) -> dict[str, str]:
        """Where the file came from: our metadata entries without the prefix, JSON ones left as text."""
        return {k[len(METADATA_PREFIX) :]: v for k, v in self.metadata.items() if k != KEY_INPUT_SPEC}

    @property
    def batches(self) -> bool:
        """Whether the model batches (the one rule: :meth:`InputSpec.batches`)."""
        return self.spec.batches(self.outputs)


def parse_json(text: str, where: str) -> Any:
    """JSON from an untrusted file: InputError unless it is finite and at most MAX_JSON_DEPTH deep."""
    depth = 0
    for ch in text:  # brackets inside strings count too: a cheap, safe over-estimate
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InputError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels; not a file wconv-deploy wrote")
        elif ch in "]}":
            depth -= 1

    def finite(value: str) -> float:
        number = float(value)
        if number in (float("inf"), float("-inf")):
            raise ValueError(f"the number {value} is out of range")
        return number

    def refuse(value: str) -> float:
        raise ValueError(f"{value} is not a number JSON allows")

    try:
        return json.loads(text, parse_float=finite, parse_constant=refuse)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- engine manifests


def version_tuple(text: str, what: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` as ``(10, 3, 0, 26)`` (InputError naming ``what`` if it is not a version)."""
    parts = re.findall(r"\d+", text)
    if not parts:
        raise InputError(f"{what} {text!r} is not a version number")
    return tuple(int(p) for p in parts)


#: A manifest is a few kB of JSON; anything much larger is not one.
MAX_MANIFEST_BYTES = 1 << 20


def manifest_path(engine: str | os.PathLike[str]) -> Path:
    """Where an engine's manifest lives: ``ENGINE.json`` beside it."""
    return Path(os.fspath(engine) + ".json")


@dataclass
class BuildManifest(Report):
    """What an engine was built from, with what, and for which TensorRT and GPU (``ENGINE.json``)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    profiles: list[dict[str, dict[str, list[int]]]]
    builder_flags: list[str]
    workspace_gb: float | None
    version_compatible: bool
    hardware_compatibility: str | None
    timing_cache: str | None
    onnx_path: str
    onnx_sha256: str
    created: str
    wconv_deploy_version: str
    #: The ONNX graph's inputs and outputs (``{"inputs": [...], "outputs": [...]}``, each tensor
    #: ``{"name", "dtype", "shape"}``): what Triton's config needs beyond the profiles. ``None``
    #: in manifests written before it was recorded.
    io: dict[str, list[dict[str, Any]]] | None = None
    #: The export's input spec (``InputSpec.to_dict()``); None in manifests written before.
    input_spec: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> BuildManifest:
        """Read a dict written by :meth:`to_dict` (InputError if it is not one)."""
        if not isinstance(data, dict):
            raise InputError("not a build manifest: not a JSON object")
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise InputError(f"not a build manifest: it lacks {', '.join(missing)}")
        m = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        texts = (m.tensorrt_version, m.gpu_name, m.compute_capability, m.precision, m.onnx_path, m.onnx_sha256)
        if not all(isinstance(v, str) for v in texts) or not isinstance(m.profiles, list):
            raise InputError("not a build manifest: a field has the wrong type")
        if m.io is not None and not (isinstance(m.io, dict) and {"inputs", "outputs"} <= m.io.keys()):
            raise InputError("not a build manifest: io is not {inputs, outputs}")
        if m.precision not in {p.value for p in Precision}:
            raise InputError(f"not a build manifest: unknown precision {m.precision!r}")
        version_tuple(m.tensorrt_version, "manifest: TensorRT version")
        version_tuple(m.compute_capability, "manifest: compute capability")
        if m.input_spec is not None:
            InputSpec.from_dict(m.input_spec)
        return m

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the manifest as JSON, atomically."""
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None) -> BuildManifest:
        """Read a manifest file (InputError, one line, if it is missing or not a manifest);
        ``within``: the folder it must resolve inside."""
        p = Path(path)
        if not os.path.lexists(p):
            raise InputError(f"{p}: no such build manifest")
        where = f"{p} is not a readable build manifest"
        data = parse_json(read_text(p, what=where, limit=MAX_MANIFEST_BYTES, within=within), where)
        try:
            return cls.from_dict(data)
        except (InputError, TypeError, ValueError, AttributeError, KeyError) as e:
            raise InputError(f"{p}: {first_line(e)}") from None

    def render(self) -> str:
        """What ``wconv-deploy build`` prints."""
        hw = f", hardware-compatible {self.hardware_compatibility}" if self.hardware_compatibility else ""
        vc = ", version-compatible" if self.version_compatible else ""
        typing = "strongly typed" if self.strongly_typed else "builder flags"
        lines = [
            f"built       TensorRT {self.tensorrt_version} on {self.gpu_name} (sm {self.compute_capability}){vc}{hw}",
            f"precision   {self.precision} ({typing}" + (f": {', '.join(self.builder_flags)})" if self.builder_flags else ")"),
            f"source      {self.onnx_path} (sha256 {self.onnx_sha256[:12]})",
        ]
        x = "x".join
        for i, p in enumerate(self.profiles):
            shapes = ", ".join(f"{n} " + " / ".join(x(map(str, s[k])) for k in ("min", "opt", "max")) for n, s in p.items())
            lines.append(f"profile {i}   {shapes} (min / opt / max)")
        return "\n".join(lines)

    @property
    def typed_precision(self) -> Precision:
        return Precision(self.precision)

    def tensors(self, where: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """The engine's inputs and outputs as recorded at build time."""
        if self.io is None:
            raise InputError(f"{where}: its build manifest records no inputs and outputs")
        try:
            return tuple(
                tuple(
                    Tensor(str(e["name"]), str(e["dtype"]), None if e.get("shape") is None else tuple(int(d) for d in e["shape"]))
                    for e in self.io[side]
                )
                for side in ("inputs", "outputs")
            )  # type: ignore[return-value]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: its build manifest's io is broken: {first_line(e)}") from None

    def spec(self, where: str, profile: int = 0) -> InputSpec:
        """The input spec the engine serves: the export's spec narrowed to the profile when both are
        recorded, else the profile alone (axes named by rank)."""
        if not self.profiles:
            raise InputError(f"{where}: its build manifest records no optimisation profile")
        if not 0 <= profile < len(self.profiles):
            raise InputError(f"{where}: no optimisation profile {profile} (it has {len(self.profiles)})")
        dtypes = {t.name: t.dtype for t in self.tensors(where)[0]} if self.io is not None else None
        from_profile = InputSpec.from_profile(self.profiles[profile], dtypes)
        if self.input_spec is None:
            return from_profile
        exported = InputSpec.from_dict(self.input_spec)
        if exported.names != from_profile.names or [len(s) for s in exported.shapes()] != [len(s) for s in from_profile.shapes()]:
            return from_profile
        # the export named the axes; the profile bounds them
        inputs = tuple(
            TensorSpec(t.name, tuple(Dim(d.name, p.opt, p.min, p.max) for d, p in zip(t.dims, pt.dims)), t.dtype)
            for t, pt in zip(exported.inputs, from_profile.inputs)
        )
        return InputSpec(inputs)
