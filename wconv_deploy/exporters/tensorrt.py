"""Build TensorRT engines from an exported ONNX file, and record what each engine was built for.

:func:`build_engine` is the pipeline behind ``wconv-deploy build``: read the input spec from the
ONNX file's metadata, turn it into one optimisation profile (:func:`profiles_from_spec`; the
CLI's ``--min-shape``/``--opt-shape``/``--max-shape`` override it), decide how the precision is
obtained (:func:`plan_build`), parse the ONNX with TensorRT's parser, build, and write the engine
and a manifest (``ENGINE.json``, :class:`BuildManifest`) beside it, each atomically.

Precision. TensorRT 10 can lower an fp32 network itself: builder flags ``FP16``/``BF16``/``TF32``
allow those kernels ("weakly typed"), and ``INT8`` needs Q/DQ nodes in the graph (no calibrator
is offered here). TensorRT 11 removed those flags: every network is strongly typed and runs in
the types the ONNX graph holds, so fp16 and int8 engines come from an ONNX file already converted
by ``wconv-deploy convert``. A TensorRT 10 build can ask for the same strong typing.

Compatibility. An engine runs only under the TensorRT version that built it, on GPUs of the
compute capability it was built on, unless it was built version-compatible (then any later
release of the same major version) or hardware-compatible ``ampere+`` (any GPU of compute
capability 8.0 or later). :func:`check_engine_compatible` compares a manifest with this machine
before the runtime tries to deserialise the engine, so a mismatch is a readable error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import atomic_output, file_sha256, read_bytes, read_text, regular_file, write_text_atomic
from wconv_deploy.spec import InputSpec, TensorSpec

if TYPE_CHECKING:  # checked against the tensorrt-stubs package; TensorRT itself is imported lazily
    import onnx
    import tensorrt

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
#: Precisions that a strongly typed build takes from the ONNX graph rather than from builder flags.
LOW_PRECISIONS = ("fp16", "bf16", "int8")
#: ``--hardware-compatibility`` values and the ``trt.HardwareCompatibilityLevel`` member of each.
HARDWARE_COMPATIBILITY = {"ampere+": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}
#: The oldest compute capability an ``ampere+`` engine runs on.
AMPERE = (8, 0)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

Shape = tuple[int, ...]
#: One optimisation profile: input name -> (min, opt, max) shapes.
Profile = dict[str, tuple[Shape, Shape, Shape]]
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- profiles


def profiles_from_spec(
    spec: InputSpec, min_shape: str | None = None, opt_shape: str | None = None, max_shape: str | None = None
) -> list[Profile]:
    """One optimisation profile: each input's (min, opt, max) shapes from the spec's axes.

    ``min_shape``, ``opt_shape`` and ``max_shape`` override them, written like ``--input-shape``
    (``1x3x32x32``, or ``x:1x3x32x32,mask:1x1x32x32``; named inputs not listed keep the spec's
    shapes). An override must keep each input's rank and static sizes, and every axis must end
    up with ``min <= opt <= max``; otherwise InputError, naming the input, the axis and the sizes.
    """
    shapes = {t.name: [t.shape("min"), t.shape("opt"), t.shape("max")] for t in spec.inputs}
    for which, (flag, text) in enumerate((("--min-shape", min_shape), ("--opt-shape", opt_shape), ("--max-shape", max_shape))):
        if text is None:
            continue
        for name, shape in _parse_override(text, flag, spec).items():
            _check_fits(spec.inputs[spec.names.index(name)], shape, flag)
            shapes[name][which] = shape
    for t in spec.inputs:
        lo, opt, hi = shapes[t.name]
        for axis, d in enumerate(t.dims):
            if not lo[axis] <= opt[axis]:
                raise InputError(f"input {t.name!r} axis {axis} ({d.name}): min {lo[axis]} is larger than opt {opt[axis]}")
            if not opt[axis] <= hi[axis]:
                raise InputError(f"input {t.name!r} axis {axis} ({d.name}): opt {opt[axis]} is larger than max {hi[axis]}")
    return [{name: (lo, opt, hi) for name, (lo, opt, hi) in shapes.items()}]


def _parse_override(text: str, flag: str, spec: InputSpec) -> dict[str, Shape]:
    """``--min-shape`` etc.: input name -> shape (unnamed shapes map to the inputs in order)."""
    try:
        parsed = InputSpec.parse(text)  # the --input-shape syntax and its checks
    except InputError as e:
        raise InputError(str(e).replace("--input-shape", flag)) from None
    items = [s.strip() for s in text.split(",")]
    named = [":" in item for item in items]
    if all(named):
        unknown = [t.name for t in parsed.inputs if t.name not in spec.names]
        if unknown:
            raise InputError(f"{flag}: the ONNX has no input named {', '.join(unknown)} (inputs: {', '.join(spec.names)})")
        return {t.name: t.shape() for t in parsed.inputs}
    if any(named):
        raise InputError(f"{flag}: {text!r}: name every input (name:shape) or none")
    if len(parsed.inputs) != len(spec.inputs):
        raise InputError(f"{flag}: {len(parsed.inputs)} shape(s) for {len(spec.inputs)} input(s) ({', '.join(spec.names)})")
    return {name: t.shape() for name, t in zip(spec.names, parsed.inputs)}


def _check_fits(t: TensorSpec, shape: Shape, flag: str) -> None:
    """``shape`` keeps the rank and the static sizes of input ``t``."""
    if len(shape) != len(t.dims):
        raise InputError(f"{flag}: input {t.name!r} has rank {len(t.dims)} in the ONNX, not {len(shape)} ({_x(shape)})")
    for axis, (d, size) in enumerate(zip(t.dims, shape)):
        if not d.dynamic and size != d.opt:
            raise InputError(f"{flag}: input {t.name!r} axis {axis} ({d.name}) is static in the ONNX: {d.opt}, not {size}")


def _x(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def profiles_to_json(profiles: list[Profile]) -> list[dict[str, dict[str, list[int]]]]:
    """Profiles as JSON-able dicts: ``[{input: {"min": [...], "opt": [...], "max": [...]}}]``."""
    return [{n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in p.items()} for p in profiles]


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class BuildPlan:
    """How a precision is obtained: the network's typing and the builder flags to set and clear."""

    strongly_typed: bool
    flags: tuple[str, ...] = ()
    clear: tuple[str, ...] = ()


def trt_major(version: str) -> int:
    """The major version of a TensorRT version string (``"10.3.0.26"`` -> 10)."""
    return _version_tuple(version, "TensorRT version")[0]


def _version_tuple(text: str, what: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    if not parts:
        raise InputError(f"{what} {text!r} is not a version number")
    return tuple(int(p) for p in parts)


def plan_build(
    trt_version: str,
    precision: str,
    onnx_precision: str,
    has_qdq: bool,
    *,
    strongly_typed: bool = False,
    onnx_name: str = "model.onnx",
) -> BuildPlan:
    """Decide how to build ``precision`` from an ONNX graph holding ``onnx_precision``.

    TensorRT 11 (or ``strongly_typed``): the network runs in the graph's own types, so the ONNX
    must already be in the precision asked for. TensorRT 10: builder flags lower an fp32 graph
    (int8 only through Q/DQ nodes). ``fp32`` clears ``TF32`` (which TensorRT enables by default)
    so that fp32 means fp32. Raises InputError for a combination that cannot be built.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    major = trt_major(trt_version)
    if onnx_precision in LOW_PRECISIONS and precision != onnx_precision:
        raise InputError(
            f"{onnx_name} is an {onnx_precision} ONNX (converted): build it with --precision {onnx_precision}, "
            f"or build {precision} from the fp32 ONNX"
        )
    flags: tuple[str, ...] = ("TF32",) if precision == "tf32" else ()
    clear: tuple[str, ...] = ("TF32",) if precision == "fp32" else ()  # TensorRT enables TF32 by default
    if major >= 11 or strongly_typed:
        if precision in LOW_PRECISIONS and onnx_precision != precision:
            who = f"TensorRT {major} builds strongly typed networks" if major >= 11 else "a strongly typed build"
            how = (
                f"wconv-deploy convert {onnx_name} --precision {precision}"
                if precision != "bf16"
                else "use an ONNX already in bf16 (wconv-deploy convert makes fp16 and int8)"
            )
            raise InputError(f"{who}: the ONNX holds {onnx_precision}, not {precision}: convert first: {how}")
        return BuildPlan(True, flags, clear)
    if precision == "int8" and not has_qdq:
        raise InputError(
            f"TensorRT {major} builds int8 only from an ONNX with Q/DQ nodes (there is no calibrator here): "
            f"pass the int8 QDQ ONNX from wconv-deploy convert {onnx_name} --precision int8"
        )
    lower = {"fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8",)}.get(precision, ())
    return BuildPlan(False, flags + lower, clear)


def onnx_precision(model: onnx.ModelProto) -> str:
    """The precision an ONNX graph holds: our converter's ``wconv_deploy.precision`` metadata,
    else ``int8`` for Q/DQ nodes, else the most common floating type among the initializers."""
    from onnx import TensorProto

    props = {p.key: p.value for p in model.metadata_props}
    if props.get("wconv_deploy.precision") in PRECISIONS:
        return props["wconv_deploy.precision"]
    if has_qdq(model):
        return "int8"
    counts = {"fp32": 0, "fp16": 0, "bf16": 0}
    names = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16"}
    for t in model.graph.initializer:
        if t.data_type in names:
            counts[names[t.data_type]] += 1
    return max(counts, key=lambda k: (counts[k], k == "fp32"))


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph holds QuantizeLinear/DequantizeLinear nodes (explicit quantisation)."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def network_flags_for(trt: Any, plan: BuildPlan) -> int:
    """The ``create_network`` flags for ``plan`` (duck-typed ``trt`` module)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if not plan.strongly_typed or flag is None:  # a TensorRT without the flag is strongly typed always
        return 0
    return 1 << int(flag)


@dataclass
class BuildConfig:
    """Everything that shapes an engine apart from the ONNX graph itself."""

    precision: str = "fp32"
    profiles: list[Profile] = field(default_factory=list)
    workspace_gb: float | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None  # "ampere+", "same-compute-capability" or None
    strongly_typed: bool = False

    def check(self) -> None:
        """InputError for option values that no build accepts."""
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.workspace_gb is not None and not self.workspace_gb > 0:
            raise InputError(f"--workspace-gb {self.workspace_gb}: must be positive")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise InputError(
                f"--hardware-compatibility {self.hardware_compatibility!r}: choose {' or '.join(HARDWARE_COMPATIBILITY)}"
            )


def apply_build_config(trt: Any, builder: Any, config: Any, build: BuildConfig, plan: BuildPlan) -> None:
    """Set ``plan``'s flags and ``build``'s profiles, workspace and compatibility on a builder
    config (duck-typed ``trt``, ``builder`` and ``config``; the timing cache is handled apart)."""
    for name in plan.flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise InputError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}: --precision {build.precision} needs it")
        config.set_flag(flag)
    for name in plan.clear:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    for p in build.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise InputError(f"TensorRT rejects the optimisation profile {profiles_to_json([p])[0]}")
    if build.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_gb * 2**30))
    if build.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if build.hardware_compatibility is not None:
        level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[build.hardware_compatibility], None)
        if level is None:
            raise InputError(f"TensorRT {trt.__version__} has no hardware compatibility level {build.hardware_compatibility}")
        config.hardware_compatibility_level = level


# --------------------------------------------------------------------------- manifest


@dataclass
class BuildManifest:
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
    #: The ONNX graph's inputs and outputs (:func:`onnx_io`): what Triton's config needs beyond the
    #: profiles. ``None`` in manifests written before it was recorded.
    io: dict[str, list[dict[str, Any]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        if m.precision not in PRECISIONS:
            raise InputError(f"not a build manifest: unknown precision {m.precision!r}")
        _version_tuple(m.tensorrt_version, "manifest: TensorRT version")
        _version_tuple(m.compute_capability, "manifest: compute capability")
        return m

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the manifest as JSON, atomically."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BuildManifest:
        """Read a manifest file (InputError, one line, if it is missing or not a manifest)."""
        from wconv_deploy.artifacts import parse_json

        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such build manifest")
        where = f"{p} is not a readable build manifest"
        data = parse_json(read_text(p, what=where, limit=MAX_MANIFEST_BYTES), where)
        try:
            return cls.from_dict(data)
        except (InputError, TypeError, ValueError, AttributeError, KeyError) as e:
            raise InputError(f"{p}: {first_line(e)}") from None

    def render(self) -> str:
        hw = f", hardware-compatible {self.hardware_compatibility}" if self.hardware_compatibility else ""
        vc = ", version-compatible" if self.version_compatible else ""
        lines = [
            f"built       TensorRT {self.tensorrt_version} on {self.gpu_name} (sm {self.compute_capability}){vc}{hw}",
            f"precision   {self.precision} ({'strongly typed' if self.strongly_typed else 'builder flags'}"
            + (f": {', '.join(self.builder_flags)})" if self.builder_flags else ")"),
            f"source      {self.onnx_path} (sha256 {self.onnx_sha256[:12]})",
        ]
        for i, p in enumerate(self.profiles):
            shapes = ", ".join(f"{n} {_x(s['min'])} / {_x(s['opt'])} / {_x(s['max'])}" for n, s in p.items())
            lines.append(f"profile {i}   {shapes} (min / opt / max)")
        return "\n".join(lines)


#: A manifest is a few kB of JSON; anything much larger is not one.
MAX_MANIFEST_BYTES = 1 << 20


def manifest_path(engine: str | os.PathLike[str]) -> Path:
    """Where an engine's manifest lives: ``ENGINE.json`` beside it."""
    return Path(os.fspath(engine) + ".json")


#: More axes than any tensor of a deployable CNN has (ONNX Runtime and TensorRT stop at 8).
MAX_RANK = 8


def onnx_io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """The graph's inputs and outputs: ``{"inputs": [...], "outputs": [...]}``, each tensor
    ``{"name", "dtype", "shape"}`` with NumPy-style dtype names (``float32``) and ``-1`` for a
    dynamic axis (``shape`` is None when the graph gives none). An engine's inputs and outputs
    are its ONNX graph's: TensorRT keeps their names, types and dynamic axes."""
    from onnx import TensorProto

    from wconv_deploy.spec import MAX_DIM

    numpy_names: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}

    def tensor(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise InputError(f"{vi.name!r} is not a tensor (sequences, maps and optionals cannot be deployed)")
        if t.elem_type not in TensorProto.DataType.values() or t.elem_type == TensorProto.UNDEFINED:
            raise InputError(f"{vi.name!r} has element type {t.elem_type}, which ONNX does not define")
        dtype = numpy_names.get(t.elem_type) or TensorProto.DataType.Name(t.elem_type).lower()
        if t.HasField("shape") and len(t.shape.dim) > MAX_RANK:
            raise InputError(f"{vi.name!r} has {len(t.shape.dim)} axes; no convolutional model has more than {MAX_RANK}")
        shape = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim] if t.HasField("shape") else None
        if shape is not None and any(d > MAX_DIM or d < -1 for d in shape):
            raise InputError(f"{vi.name!r} has shape {shape}: an axis beyond {MAX_DIM} is not a real shape")
        return {"name": vi.name, "dtype": dtype, "shape": shape}

    initializers = {t.name for t in model.graph.initializer}
    return {
        "inputs": [tensor(vi) for vi in model.graph.input if vi.name not in initializers],
        "outputs": [tensor(vi) for vi in model.graph.output],
    }


def manifest_for(
    onnx_path: str | os.PathLike[str],
    build: BuildConfig,
    plan: BuildPlan,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    io: dict[str, list[dict[str, Any]]] | None = None,
) -> BuildManifest:
    """The manifest of an engine built from ``onnx_path`` with ``build`` and ``plan`` here and now
    (``io``: the graph's :func:`onnx_io`, read from ``onnx_path`` when not given)."""
    from wconv_deploy import __version__
    from wconv_deploy.artifacts import read_onnx

    if io is None:
        io = onnx_io(read_onnx(onnx_path))
    return BuildManifest(
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=build.precision,
        strongly_typed=plan.strongly_typed,
        profiles=profiles_to_json(build.profiles),
        builder_flags=list(plan.flags) + (["VERSION_COMPATIBLE"] if build.version_compatible else []),
        workspace_gb=build.workspace_gb,
        version_compatible=build.version_compatible,
        hardware_compatibility=build.hardware_compatibility,
        timing_cache=build.timing_cache,
        onnx_path=os.fspath(onnx_path),
        onnx_sha256=file_sha256(onnx_path),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wconv_deploy_version=__version__,
        io=io,
    )


def check_engine_compatible(
    manifest: BuildManifest, trt_version: str, gpu_name: str, compute_capability: str, *, engine: str = "the engine"
) -> None:
    """InputError unless an engine built as ``manifest`` says can run under TensorRT
    ``trt_version`` on a GPU of ``compute_capability``.

    Same TensorRT version (compared as far as both strings go) unless version-compatible: then
    the same major version, not older than the builder. Same compute capability unless
    hardware-compatible ``ampere+``: then 8.0 or later.
    """
    built = _version_tuple(manifest.tensorrt_version, "manifest: TensorRT version")
    here = _version_tuple(trt_version, "TensorRT version")
    problems = []
    if manifest.version_compatible:
        if here[0] != built[0] or here < built:
            problems.append(f"a version-compatible engine runs under TensorRT {built[0]}.x from {manifest.tensorrt_version} on")
    else:
        n = max(3, min(len(built), len(here)))
        if built[:n] != here[:n]:
            problems.append("an engine runs only under the TensorRT version that built it")
    built_cc = _version_tuple(manifest.compute_capability, "manifest: compute capability")
    cc = _version_tuple(compute_capability, "compute capability")
    if manifest.hardware_compatibility == "ampere+":
        if cc < AMPERE:
            problems.append("an ampere+ engine needs a GPU of sm 8.0 or later")
    elif cc != built_cc:
        problems.append("an engine runs only on GPUs of the compute capability it was built for")
    if problems:
        raise InputError(
            f"{engine} was built with TensorRT {manifest.tensorrt_version} for {manifest.gpu_name} "
            f"(sm {manifest.compute_capability}); this machine has TensorRT {trt_version} and {gpu_name} "
            f"(sm {compute_capability}): {'; '.join(problems)}: rebuild it here with {rebuild_command(manifest, engine)}"
        )


def rebuild_command(manifest: BuildManifest, engine: str = "model.plan") -> str:
    """The ``wconv-deploy build`` command line that rebuilds an engine as its manifest describes."""
    args = ["wconv-deploy build", manifest.onnx_path, "--precision", manifest.precision]
    if manifest.version_compatible:
        args.append("--version-compatible")
    if manifest.hardware_compatibility:
        args += ["--hardware-compatibility", manifest.hardware_compatibility]
    return " ".join([*args, "-o", engine])


def local_gpu() -> tuple[str, str]:
    """This machine's CUDA device 0: its name and compute capability (``"9.0"``)."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


# --------------------------------------------------------------------------- build


def _spec_for(path: Path, model: onnx.ModelProto) -> InputSpec:
    """The input spec an export stored in the file; for a foreign ONNX, its static input shapes."""
    from wconv_deploy.spec import AXIS_NAMES, Dim
    from wconv_deploy.validate import spec_from_model

    stored = spec_from_model(model, path.name)
    if stored is not None:
        return stored
    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(d.dim_value < 1 for d in dims):
            raise InputError(
                f"{path.name} has dynamic input {vi.name!r} and no wconv-deploy input spec: export it with wconv-deploy export"
            )
        names = AXIS_NAMES.get(len(dims), tuple(f"axis{i}" for i in range(len(dims))))
        inputs.append(TensorSpec(vi.name, tuple(Dim(n, d.dim_value, d.dim_value, d.dim_value) for n, d in zip(names, dims))))
    return InputSpec(tuple(inputs))


def _check_output(out: Path, onnx_path: Path) -> None:
    if out.is_dir():
        raise InputError(f"-o {out}: is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"-o {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"-o {out}: folder {parent} is not writable")
    if out.resolve() == onnx_path.resolve():
        raise InputError(f"-o {out}: would overwrite the ONNX file")


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the error messages (for the one-line error)."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg.strip())

    return Logger()


def _progress_monitor(trt: Any, say: Progress) -> Any:
    """A ``trt.IProgressMonitor`` that reports the builder's top-level phases (None if this
    TensorRT has none)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if not parent_phase:
                say(f"TensorRT: {phase_name}")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # go on

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _parser_errors(parser: Any) -> str:
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        try:
            where = e.node_name() or f"node {e.node()}"
            errors.append(f"{where}: {_one_line(e.desc())}")
        except AttributeError:  # an older ParserError without node_name()
            errors.append(_one_line(str(e)))
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(errors[:3]) + more if errors else "no parser error reported"


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


def _load_timing_cache(config: Any, path: Path | None, say: Progress) -> Any:
    """A timing cache from ``path`` (a new one if it is absent or unusable), set on ``config``."""
    data = read_bytes(path) if path is not None and path.exists() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # TensorRT raises on a damaged cache file
        cache = None
    if cache is None or not config.set_timing_cache(cache, False):
        say(f"timing cache {path} is from another TensorRT or GPU (or damaged): starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def build_engine(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    precision: str = "fp32",
    *,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    version_compatible: bool = False,
    hardware_compatibility: str | None = None,
    strongly_typed: bool = False,
    progress: Progress | None = None,
) -> BuildManifest:
    """Build a TensorRT engine from ``onnx_path`` and write it to ``output``, with its manifest
    at ``output + ".json"``; returns the manifest.

    Needs TensorRT and a CUDA GPU (InputError, one line, without them). Raises InputError for
    options or an ONNX file TensorRT cannot build; nothing is written at ``output`` then. The
    timing cache, when given, is read before the build and written back after it.
    """
    import torch

    from wconv_deploy.artifacts import read_onnx
    from wconv_deploy.runtimes.tensorrt import import_tensorrt

    say = progress or (lambda _msg: None)
    src, out = Path(onnx_path), Path(output)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    build = BuildConfig(
        precision,
        workspace_gb=workspace_gb,
        timing_cache=os.fspath(cache_path) if cache_path else None,
        version_compatible=version_compatible,
        hardware_compatibility=hardware_compatibility,
        strongly_typed=strongly_typed,
    )
    build.check()
    regular_file(src)
    _check_output(out, src)
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise InputError("building a TensorRT engine needs a CUDA GPU, and torch sees none")
    gpu_name, cc = local_gpu()
    if hardware_compatibility == "ampere+" and _version_tuple(cc, "compute capability") < AMPERE:
        raise InputError(f"--hardware-compatibility ampere+ needs an Ampere or later GPU to build on; {gpu_name} is sm {cc}")

    model = read_onnx(src)
    spec = _spec_for(src, model)
    build.profiles = profiles_from_spec(spec, min_shape, opt_shape, max_shape)
    plan = plan_build(
        trt.__version__, precision, onnx_precision(model), has_qdq(model), strongly_typed=strongly_typed, onnx_name=src.name
    )
    io = onnx_io(model)
    del model

    logger = _make_logger(trt)
    builder: tensorrt.Builder = trt.Builder(logger)
    network: tensorrt.INetworkDefinition = builder.create_network(network_flags_for(trt, plan))
    parser: tensorrt.OnnxParser = trt.OnnxParser(network, logger)
    say(f"parsing {src.name} with TensorRT {trt.__version__}'s ONNX parser")
    if not parser.parse_from_file(os.fspath(src)):
        raise InputError(f"TensorRT cannot parse {src.name}: {_parser_errors(parser)}")
    names = sorted(network.get_input(i).name for i in range(network.num_inputs))
    if names != sorted(spec.names):
        raise InputError(f"{src.name}: TensorRT sees inputs {names}, the input spec names {sorted(spec.names)}")

    config: tensorrt.IBuilderConfig = builder.create_builder_config()
    apply_build_config(trt, builder, config, build, plan)
    cache = _load_timing_cache(config, cache_path, say) if cache_path is not None else None
    monitor = _progress_monitor(trt, say)  # kept alive until the build returns
    if monitor is not None and progress is not None:
        config.progress_monitor = monitor
    say(f"building a {precision} engine on {gpu_name} (sm {cc}); this can take minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        errors = "; ".join(logger.errors[-3:]) or "no error reported"
        raise InputError(f"TensorRT could not build an engine from {src.name}: {errors}")

    manifest = manifest_for(src, build, plan, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, io=io)
    with atomic_output(out) as tmp_engine, atomic_output(manifest_path(out)) as tmp_manifest:
        tmp_engine.write_bytes(memoryview(serialized))
        tmp_manifest.write_text(manifest.to_json())
    if cache_path is not None and cache is not None:
        with atomic_output(cache_path) as tmp_cache:
            tmp_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    say(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {manifest_path(out).name}")
    return manifest
