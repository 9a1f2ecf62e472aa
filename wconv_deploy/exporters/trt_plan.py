"""Plan a TensorRT engine build, and tell whether a built engine runs here: pure decisions.

The builder (:mod:`wconv_deploy.exporters.tensorrt`) and the trt runtime share these, and so do
the CPU tests: importing this module imports neither TensorRT nor torch (:func:`local_gpu` asks
torch when it is called).

Profiles. One optimisation profile spans the input spec an export stored in the ONNX file
(:func:`profiles_from_spec`); ``--min-shape``/``--opt-shape``/``--max-shape`` override it, and
given N times each they make N profiles (as trtexec and Polygraphy take them).

Precision. TensorRT 10 can lower an fp32 network itself: builder flags ``FP16``/``BF16``/``TF32``
allow those kernels ("weakly typed"), and ``INT8`` needs Q/DQ nodes in the graph (no calibrator
is offered here). TensorRT 11 removed those flags: every network is strongly typed and runs in
the types the ONNX graph holds, so fp16 and int8 engines come from an ONNX file already converted
by ``wconv-deploy convert``. A TensorRT 10 build can ask for the same strong typing
(:func:`plan_build` decides).

Compatibility. An engine runs only under the TensorRT version that built it, on GPUs of the
compute capability it was built on, unless it was built version-compatible (then any later
release of the same major version) or hardware-compatible ``ampere+`` (any GPU of compute
capability 8.0 or later). :func:`check_engine_compatible` compares a manifest with this machine
before the runtime tries to deserialise the engine, so a mismatch is a readable error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from wconv_deploy._optional import install_hint, missing
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, version_tuple
from wconv_deploy.errors import InputError
from wconv_deploy.fileio import file_sha256
from wconv_deploy.precision import Precision
from wconv_deploy.spec import InputSpec, Tensor, TensorSpec

#: ``--hardware-compatibility`` values and the ``trt.HardwareCompatibilityLevel`` member of each.
HARDWARE_COMPATIBILITY = {"ampere+": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}
#: The oldest compute capability an ``ampere+`` engine runs on.
AMPERE = (8, 0)
#: What installs TensorRT for a user: PyPI's ``tensorrt-cu12`` is a small package whose install
#: step fetches TensorRT's libraries from NVIDIA's index (the ``-libs`` wheels live there).
TENSORRT_INSTALL = "pip install tensorrt-cu12 (it pulls TensorRT's libraries from NVIDIA's package index, pypi.nvidia.com)"

Shape = tuple[int, ...]
#: One optimisation profile: input name -> (min, opt, max) shapes.
Profile = dict[str, tuple[Shape, Shape, Shape]]


# --------------------------------------------------------------------------- profiles


def profiles_from_spec(
    spec: InputSpec,
    min_shape: str | Sequence[str] | None = None,
    opt_shape: str | Sequence[str] | None = None,
    max_shape: str | Sequence[str] | None = None,
) -> list[Profile]:
    """The optimisation profiles: each input's (min, opt, max) shapes from the spec's axes.

    ``min_shape``, ``opt_shape`` and ``max_shape`` override them, written like ``--input-shape``
    (``1x3x32x32``, or ``x:1x3x32x32,mask:1x1x32x32``; named inputs not listed keep the spec's
    shapes). A list of N overrides makes N profiles, the i-th from the i-th of each option (every
    option given must be given N times). An override must keep each input's rank and static
    sizes, and every axis must end up with ``min <= opt <= max``; otherwise InputError, naming
    the profile (when there are several), the input, the axis and the sizes.
    """
    given = {
        flag: [text] if isinstance(text, str) else list(text)
        for flag, text in (("--min-shape", min_shape), ("--opt-shape", opt_shape), ("--max-shape", max_shape))
        if text is not None and (isinstance(text, str) or len(text) > 0)
    }
    counts = {len(texts) for texts in given.values()}
    if len(counts) > 1:
        told = ", ".join(f"{flag} {len(texts)} times" for flag, texts in given.items())
        raise InputError(f"{told}: give each of them once per optimisation profile")
    n = counts.pop() if counts else 1
    where = [f"profile {i}: " if n > 1 else "" for i in range(n)]
    return [_profile(spec, {flag: texts[i] for flag, texts in given.items()}, where[i]) for i in range(n)]


def _profile(spec: InputSpec, overrides: dict[str, str], where: str) -> Profile:
    """One profile: the spec's shapes with ``overrides`` (flag -> text) applied and checked."""
    shapes = {t.name: [t.shape("min"), t.shape("opt"), t.shape("max")] for t in spec.inputs}
    for which, flag in enumerate(("--min-shape", "--opt-shape", "--max-shape")):
        if flag not in overrides:
            continue
        try:
            for name, shape in _parse_override(overrides[flag], flag, spec).items():
                _check_fits(spec.inputs[spec.names.index(name)], shape, flag)
                shapes[name][which] = shape
        except InputError as e:
            raise InputError(f"{where}{e}") from None
    for t in spec.inputs:
        lo, opt, hi = shapes[t.name]
        for axis, d in enumerate(t.dims):
            if not lo[axis] <= opt[axis]:
                raise InputError(f"{where}input {t.name!r} axis {axis} ({d.name}): min {lo[axis]} is larger than opt {opt[axis]}")
            if not opt[axis] <= hi[axis]:
                raise InputError(f"{where}input {t.name!r} axis {axis} ({d.name}): opt {opt[axis]} is larger than max {hi[axis]}")
    return {name: (lo, opt, hi) for name, (lo, opt, hi) in shapes.items()}


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
    return version_tuple(version, "TensorRT version")[0]


def plan_build(
    trt_version: str,
    precision: Precision | str,
    onnx_precision: Precision,
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
    precision = Precision.parse(precision)
    major = trt_major(trt_version)
    want, holds = precision.value, onnx_precision.value
    if onnx_precision.low and precision != onnx_precision:
        raise InputError(
            f"{onnx_name} is an {holds} ONNX (converted): build it with --precision {holds}, or build {want} from the fp32 ONNX"
        )
    flags: tuple[str, ...] = ("TF32",) if precision == Precision.TF32 else ()
    clear: tuple[str, ...] = ("TF32",) if precision == Precision.FP32 else ()  # TensorRT enables TF32 by default
    if major >= 11 or strongly_typed:
        if precision.low and onnx_precision != precision:
            who = f"TensorRT {major} builds strongly typed networks" if major >= 11 else "a strongly typed build"
            how = (
                f"wconv-deploy convert {onnx_name} --precision {want}"
                if precision != Precision.BF16
                else "use an ONNX already in bf16 (wconv-deploy convert makes fp16 and int8)"
            )
            raise InputError(f"{who}: the ONNX holds {holds}, not {want}: convert first: {how}")
        return BuildPlan(True, flags, clear)
    if precision == Precision.INT8 and not has_qdq:
        raise InputError(
            f"TensorRT {major} builds int8 only from an ONNX with Q/DQ nodes (there is no calibrator here): "
            f"pass the int8 QDQ ONNX from wconv-deploy convert {onnx_name} --precision int8"
        )
    lower = (want.upper(),) if precision.low else ()  # BuilderFlag.FP16 / BF16 / INT8
    return BuildPlan(False, flags + lower, clear)


def strongly_typed_network(trt: Any, plan: BuildPlan) -> bool:
    """Whether to ask for a strongly typed network (Polygraphy's ``strongly_typed``): when the plan
    says so and this TensorRT (duck-typed ``trt``) has the flag; one without it is strongly typed always."""
    return plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


@dataclass
class BuildConfig:
    """Everything that shapes an engine apart from the ONNX graph itself. ``precision`` is parsed
    on creation (InputError naming ``--precision`` for an unknown one)."""

    precision: Precision = Precision.FP32
    profiles: list[Profile] = field(default_factory=list)
    workspace_gb: float | None = None
    timing_cache: str | None = None
    version_compatible: bool = False
    hardware_compatibility: str | None = None  # "ampere+", "same-compute-capability" or None
    strongly_typed: bool = False

    def __post_init__(self) -> None:
        self.precision = Precision.parse(self.precision)

    def check(self) -> None:
        """InputError for option values that no build accepts."""
        if self.workspace_gb is not None and not self.workspace_gb > 0:
            raise InputError(f"--workspace-gb {self.workspace_gb}: must be positive")
        if self.hardware_compatibility is not None and self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise InputError(
                f"--hardware-compatibility {self.hardware_compatibility!r}: choose {' or '.join(HARDWARE_COMPATIBILITY)}"
            )


# --------------------------------------------------------------------------- manifest


def _io_json(inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> dict[str, list[dict[str, Any]]]:
    """The manifest's ``io``: ``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``."""

    def entry(t: Tensor) -> dict[str, Any]:
        return {"name": t.name, "dtype": t.dtype, "shape": None if t.shape is None else list(t.shape)}

    return {"inputs": [entry(t) for t in inputs], "outputs": [entry(t) for t in outputs]}


def manifest_for(
    onnx_path: str | os.PathLike[str],
    build: BuildConfig,
    plan: BuildPlan,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    io: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    spec: InputSpec | None = None,
) -> BuildManifest:
    """The manifest of an engine built from ``onnx_path`` with ``build`` and ``plan`` here and now.

    ``io`` (the graph's inputs and outputs) and ``spec`` (the input spec the build used) are
    read from ``onnx_path`` when not given."""
    from wconv_deploy._version import __version__

    if io is None or spec is None:
        info = OnnxInfo.read(onnx_path)
        io = (info.inputs, info.outputs) if io is None else io
        spec = info.spec_or_static() if spec is None else spec
    return BuildManifest(
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=build.precision.value,
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
        io=_io_json(*io),
        input_spec=spec.to_dict(),
    )


# --------------------------------------------------------------------------- compatibility


def check_engine_compatible(
    manifest: BuildManifest, trt_version: str, gpu_name: str, compute_capability: str, *, engine: str = "the engine"
) -> None:
    """InputError unless an engine built as ``manifest`` says can run under TensorRT
    ``trt_version`` on a GPU of ``compute_capability``.

    Same TensorRT version (compared as far as both strings go) unless version-compatible: then
    the same major version, not older than the builder. Same compute capability unless
    hardware-compatible ``ampere+``: then 8.0 or later.
    """
    built = version_tuple(manifest.tensorrt_version, "manifest: TensorRT version")
    here = version_tuple(trt_version, "TensorRT version")
    problems = []
    if manifest.version_compatible:
        if here[0] != built[0] or here < built:
            problems.append(f"a version-compatible engine runs under TensorRT {built[0]}.x from {manifest.tensorrt_version} on")
    else:
        n = max(3, min(len(built), len(here)))
        if built[:n] != here[:n]:
            problems.append("an engine runs only under the TensorRT version that built it")
    built_cc = version_tuple(manifest.compute_capability, "manifest: compute capability")
    cc = version_tuple(compute_capability, "compute capability")
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
    """The ``wconv-deploy build`` command line that rebuilds an engine as its manifest describes
    (its profiles as ``--min/--opt/--max-shape`` when they are not the export's own)."""
    args = ["wconv-deploy build", manifest.onnx_path, "--precision", manifest.precision]
    exported = (
        None if manifest.input_spec is None else profiles_to_json(profiles_from_spec(InputSpec.from_dict(manifest.input_spec)))
    )
    if manifest.profiles != exported:
        for p in manifest.profiles:
            for which in ("min", "opt", "max"):
                args += [f"--{which}-shape", ",".join(f"{name}:{_x(shapes[which])}" for name, shapes in p.items())]
    if manifest.version_compatible:
        args.append("--version-compatible")
    if manifest.hardware_compatibility:
        args += ["--hardware-compatibility", manifest.hardware_compatibility]
    return " ".join([*args, "-o", engine])


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be imported here, as one line naming :data:`TENSORRT_INSTALL`; None
    when it can (a ``tensorrt-stubs`` install has no ``Runtime``: types only)."""
    reason = missing("tensorrt", "gpu", attribute="Runtime")
    return None if reason is None else f"{reason.removesuffix(': ' + install_hint('gpu'))}: {TENSORRT_INSTALL}"


def local_gpu() -> tuple[str, str]:
    """This machine's CUDA device 0: its name and compute capability (``"9.0"``)."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"
