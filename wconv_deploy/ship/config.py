"""Triton's model configuration (``config.pbtxt``): what an artifact takes, the dims and data types
Triton lists for it, its ``max_batch_size``, and the config text itself (written and parsed as
Triton's ModelConfig protobuf message).

Shapes. Inputs and outputs come from the artifact's graph (an engine's from its build manifest),
whose dims the export wrote from the input spec: -1 where an axis varies. Whether the model
batches is the one rule of :meth:`~wconv_deploy.spec.InputSpec.batches` (``package``, ``package
--check`` and ``serve`` all ask it): axis 0 of every input is the spec's dynamic ``batch`` axis
and axis 0 of every output varies. ``max_batch_size`` is then 1 to the largest batch of the input
spec (ONNX) or the optimisation profile (engine), and dims leave axis 0 out. Otherwise
``max_batch_size`` is 0 and dims are the full shapes. A model that batches cannot be given
``max_batch_size`` 0: Triton's auto-complete would set one itself and then reject the full-rank
dims.

Accelerator and warm-up (optional). An ONNX model on GPUs can run through the onnxruntime
backend's TensorRT execution accelerator (``optimization { execution_accelerators {
gpu_execution_accelerator: [{name: "tensorrt" ...}] } }``), given the spec's min/opt/max shapes
as one explicit profile (without it ONNX Runtime builds an engine per new shape). A
``model_warmup`` entry at the spec's opt shape makes Triton run the model once at load, so the
first request does not pay for initialisation (or the TensorRT build).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wconv_deploy._optional import require
from wconv_deploy.artifacts import BuildManifest, OnnxInfo
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.spec import InputSpec, Tensor

ONNX_PLATFORM, TRT_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
#: Triton's default model file name of each platform, and the platform of each model file suffix.
DEFAULT_FILENAME = {ONNX_PLATFORM: "model.onnx", TRT_PLATFORM: "model.plan"}
PLATFORM_OF_SUFFIX = {".onnx": ONNX_PLATFORM, ".plan": TRT_PLATFORM}
#: ``backend:`` values that mean our platforms (hand-written configs may use either field).
BACKEND_PLATFORM = {"onnxruntime": ONNX_PLATFORM, "tensorrt": TRT_PLATFORM}
#: The artifact kind (the runtime registry's) of each file suffix ``package`` and ``serve`` take.
KIND_OF_SUFFIX: dict[str, Literal["onnx", "engine"]] = {".onnx": "onnx", ".plan": "engine", ".engine": "engine"}
PLATFORM_OF_KIND = {"onnx": ONNX_PLATFORM, "engine": TRT_PLATFORM}
KINDS = ("cpu", "gpu")
#: Triton's data type of each dtype name of :class:`~wconv_deploy.spec.Tensor`.
TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}
#: A Triton model name (a folder name that is not hidden and cannot climb out).
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: config.pbtxt and manifest.json are a few kB; anything larger is not one wconv-deploy wrote.
MAX_TEXT_BYTES = 4 << 20
#: The module holding Triton's ModelConfig message (tritonclient, the ``serve`` extra).
PROTO_MODULE = "tritonclient.grpc.model_config_pb2"
HEADER = "# Written by wconv-deploy package; check it with: wconv-deploy package --check REPO\n"
#: ``--accelerator`` values: the onnxruntime backend's TensorRT accelerator and its precision_mode.
ACCELERATORS = {"tensorrt": "FP32", "tensorrt-fp16": "FP16"}


def model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module (InputError naming the ``serve`` extra without tritonclient)."""
    return require(PROTO_MODULE, "serve")


def parse_config(text: str) -> Any:
    """``config.pbtxt`` text as a ModelConfig message (InputError, with line and column, if it is not one)."""
    mc = model_config_pb2()
    text_format = require("google.protobuf.text_format", "serve")
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise InputError(f"not a Triton ModelConfig: {first_line(e)}") from None


def artifact_kind(path: str | os.PathLike[str]) -> Literal["onnx", "engine"] | None:
    """``onnx`` or ``engine`` by the file's suffix; None for anything else."""
    return KIND_OF_SUFFIX.get(Path(path).suffix.lower())


def triton_type(t: Tensor) -> str:
    """Triton's data type of ``t`` (InputError for a dtype Triton has none for)."""
    if t.dtype not in TRITON_TYPES:
        raise InputError(f"{t.name!r} has dtype {t.dtype}, which Triton has no data type for")
    return TRITON_TYPES[t.dtype]


# --------------------------------------------------------------------------- what an artifact takes


@dataclass(frozen=True)
class ModelIO:
    """What an artifact takes: its input spec, its graph's inputs and outputs (every shape known),
    and what bounds its batch (``the input spec`` or ``the profile``, for messages)."""

    spec: InputSpec
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    limit_from: str

    @classmethod
    def of_onnx(cls, info: OnnxInfo) -> ModelIO:
        """An exported ONNX file's (InputError without a stored input spec)."""
        where = info.path.name
        return cls(info.spec, _shaped(info.inputs, where), _shaped(info.outputs, where), "the input spec")

    @classmethod
    def of_engine(cls, built: BuildManifest, where: str) -> ModelIO:
        """An engine's, from its build manifest (one optimisation profile, whose batches start at 1)."""
        if len(built.profiles) != 1:
            raise InputError(f"{where}: {len(built.profiles)} optimisation profiles; Triton packaging takes engines with one")
        inputs, outputs = built.tensors(where)
        io = cls(built.spec(where), _shaped(inputs, where), _shaped(outputs, where), "the profile")
        if io.batches and io.spec.min_batch > 1:
            raise InputError(
                f"{where}: profile starts at batch {io.spec.min_batch} but Triton sends batches from 1: "
                "rebuild with a --min-shape of batch 1"
            )
        return io

    @property
    def not_batching_reason(self) -> str | None:
        """Why the model does not batch (the one rule), or None when it does."""
        return self.spec.not_batching_reason(self.outputs)

    @property
    def batches(self) -> bool:
        return self.not_batching_reason is None

    @property
    def max_batch(self) -> int:
        """The largest batch the spec allows."""
        return self.spec.max_batch

    def max_batch_size(self, wanted: int | None) -> int:
        """``max_batch_size`` for this artifact (see :func:`max_batch_size`)."""
        return max_batch_size(self.spec, self.outputs, wanted, self.limit_from)


def _shaped(tensors: Sequence[Tensor], where: str) -> tuple[Tensor, ...]:
    for t in tensors:
        if t.shape is None:
            raise InputError(f"{where}: the graph gives no shape for {t.name!r}; Triton's config needs one")
    return tuple(tensors)


def max_batch_size(spec: InputSpec, outputs: Sequence[Tensor], wanted: int | None, limit_from: str) -> int:
    """Triton's ``max_batch_size``: ``wanted`` (``--max-batch``) checked against the model, or the
    spec's largest batch; 0 for a model that does not batch (InputError, one line, for a value
    Triton would refuse or the model cannot take)."""
    if wanted is not None and wanted < 0:
        raise InputError(f"--max-batch {wanted}: must be 0 or more")
    reason = spec.not_batching_reason(outputs)
    if reason is not None:
        if wanted:
            raise InputError(
                f"--max-batch {wanted}: the model does not batch ({reason}), so Triton serves it with max_batch_size 0: "
                "leave --max-batch out"
            )
        return 0
    limit = spec.max_batch
    if wanted is None:
        return limit
    if wanted == 0:
        raise InputError(
            f"--max-batch 0: axis 0 of every input and output varies, so Triton's auto-complete would set max_batch_size "
            f"itself; give 1 to {limit}"
        )
    if wanted > limit:
        raise InputError(f"--max-batch {wanted} is larger than {limit_from}'s max batch {limit}")
    return wanted


# --------------------------------------------------------------------------- the config text


def config_text(
    name: str,
    platform: str,
    io: ModelIO,
    max_batch_size: int,
    default_file: str,
    *,
    cc_files: Mapping[str, str] | None = None,
    instances: int = 1,
    kind: str = "cpu",
    dynamic_batching: bool = False,
    preferred_batch: Sequence[int] = (),
    max_queue_delay_us: int | None = None,
    accelerator: str | None = None,
    warmup: bool = False,
) -> str:
    """``config.pbtxt`` for ``io`` (built as Triton's ModelConfig message, so it parses as one).
    ``cc_files``: the model file for each GPU compute capability (``cc_model_filenames``);
    ``accelerator``: a key of :data:`ACCELERATORS`; ``warmup``: add a ``model_warmup`` entry."""
    mc = model_config_pb2()
    text_format = require("google.protobuf.text_format", "serve")
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size, default_model_filename=default_file)
    for cc, file in (cc_files or {}).items():
        config.cc_model_filenames[cc] = file
    batching = max_batch_size > 0
    for tensor, group in [(t, config.input) for t in io.inputs] + [(t, config.output) for t in io.outputs]:
        group.add(name=tensor.name, data_type=mc.DataType.Value(triton_type(tensor)), dims=tensor.triton_dims(batching))
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch)
        if max_queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if accelerator is not None:
        _add_accelerator(config, io.spec, accelerator)
    if warmup:
        _add_warmup(config, mc, io.spec, max_batch_size)
    return HEADER + str(text_format.MessageToString(config, use_short_repeated_primitives=True))


def _add_accelerator(config: Any, spec: InputSpec, accelerator: str) -> None:
    """The TensorRT execution accelerator with its precision and the spec's shapes as its profile."""
    from wconv_deploy.runtimes.onnxruntime import trt_profile_shapes

    if accelerator not in ACCELERATORS:
        raise InputError(f"--accelerator {accelerator!r}: choose {' or '.join(ACCELERATORS)}")
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    tensorrt.parameters["precision_mode"] = ACCELERATORS[accelerator]
    for which, shapes in trt_profile_shapes(spec).items():
        tensorrt.parameters[f"trt_profile_{which}_shapes"] = shapes


def _add_warmup(config: Any, mc: Any, spec: InputSpec, max_batch_size: int) -> None:
    """One warm-up request of random data at the spec's opt shape (its batch, for a model that
    batches: Triton repeats the sample that many times)."""
    batching = max_batch_size > 0
    batch = min(max(spec.inputs[0].shape("opt")[0], 1), max_batch_size) if batching else 1
    warmup = config.model_warmup.add(name="opt_shape", batch_size=batch)
    for t in spec.inputs:
        shape = t.shape("opt")
        sample = warmup.inputs[t.name]
        sample.data_type = mc.DataType.Value(triton_type(t.tensor()))
        sample.dims.extend(shape[1:] if batching else shape)
        sample.random_data = True
