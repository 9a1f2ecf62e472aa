"""Golden evidence that travels with an artifact: ``MODEL.golden.npz`` beside ``MODEL.onnx``.

``export`` and ``convert`` write it once the artifact is in place: the validation inputs (seeded
random ones at the spec's corners, plus ``--inputs`` data; for a single-channel image model the
shipped photograph with the denoiser's noise), the fp32 PyTorch outputs for each, the tolerances
that fit the artifact's precision, the task metric (PSNR on the photograph for denoisers, top-1
agreement for classifiers) with fp32 PyTorch's value, and the sha256 of the artifact. ``verify``
re-runs the inputs where PyTorch is not installed and compares, so this module imports neither
torch nor onnx (writing a golden file runs PyTorch: :func:`write_golden` imports it then).

Layout: arrays ``input.C.K`` and ``output.C.K`` (case ``C``, the K-th input or output name),
``task.clean`` (the denoiser's clean photograph) and ``meta``: the UTF-8 JSON that names
everything, as ``uint8``. A golden file is untrusted input: :func:`read_golden` opens a regular
file only (inside ``within``), refuses one that unpacks beyond the input limit or holds more
arrays than any golden file has, loads with ``allow_pickle=False``, parses ``meta`` with the
artifact layer's JSON limits and checks every array against it; any problem is one InputError.

Polygraphy interoperates through its own JSON serialisation (``polygraphy.json``):
:func:`save_inputs_json` / :func:`load_inputs_json` are ``polygraphy run --save-inputs`` /
``--load-inputs`` files (a list of feed dicts), :func:`save_outputs_json` a ``RunResults`` file as
``--save-outputs`` writes it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import atomic_output, file_sha256, open_regular, read_text
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report
from wconv_deploy.spec import InputSpec, input_limit_bytes

#: ``MODEL.onnx`` -> ``MODEL.golden.npz`` (an engine ``MODEL.plan`` shares its ONNX file's).
GOLDEN_SUFFIX = ".golden.npz"
#: The golden file in a package entry's version folder, beside its model file(s).
ENTRY_GOLDEN = "model" + GOLDEN_SUFFIX
FORMAT = "wconv-deploy golden 1"
#: More arrays than a golden file holds (a few shapes, a few inputs, a folder of images at most).
MAX_ARRAYS = 4096
#: The task metrics a golden file can record.
TASK_METRICS = ("psnr_db", "top1_agreement")

Cases = list[tuple[str, dict[str, np.ndarray]]]


def golden_path(artifact: str | os.PathLike[str]) -> Path:
    """Where the golden file of ``artifact`` lives: beside it, ``STEM.golden.npz``."""
    p = Path(artifact)
    return p.with_name(p.stem + GOLDEN_SUFFIX)


@dataclass
class GoldenCase:
    """One set of inputs and the fp32 PyTorch outputs for it."""

    label: str
    inputs: dict[str, np.ndarray] = field(repr=False)
    outputs: list[np.ndarray] = field(repr=False)

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.inputs.items()}


@dataclass
class TaskMetric:
    """The task metric and fp32 PyTorch's value of it. ``psnr_db``: PSNR of case ``case``'s first
    output against the clean photograph; ``top1_agreement``: the share of samples (2-D outputs of
    every case) whose argmax agrees with the golden output's (1 for fp32 PyTorch itself)."""

    name: str
    reference: float
    case: int | None = None


@dataclass
class Golden(Report):
    """A golden file's content (``cases`` and ``clean`` stay out of the JSON: arrays)."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("summary",)

    path: str
    artifact: str
    artifact_sha256: str
    precision: Precision
    atol: float
    rtol: float
    input_names: list[str]
    output_names: list[str]
    source: str
    created: str
    wconv_deploy_version: str
    task: TaskMetric | None = None
    cases: list[GoldenCase] = field(default_factory=list, repr=False)
    clean: np.ndarray | None = field(default=None, repr=False)

    @property
    def summary(self) -> list[dict[str, Any]]:
        """Each case's label and input shapes."""
        return [{"label": c.label, "shapes": c.shapes} for c in self.cases]

    def feeds(self) -> Cases:
        """The cases as (label, feeds) pairs, as validation takes them."""
        return [(c.label, c.inputs) for c in self.cases]

    def render(self) -> str:
        task = "none"
        if self.task is not None:
            task = f"{self.task.name}, fp32 PyTorch {self.task.reference:.4g}"
        return "\n".join(
            [
                f"golden      {self.path}",
                f"artifact    {self.artifact} (sha256 {self.artifact_sha256[:12]}), {self.precision}, "
                f"atol={self.atol:g} rtol={self.rtol:g}",
                f"cases       {len(self.cases)}: " + "; ".join(c.label for c in self.cases),
                f"task        {task}",
            ]
        )


# --------------------------------------------------------------------------- task metrics


def psnr(image: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB of ``image`` (clipped to [0, 1]) against ``clean`` in [0, 1] (inf when equal)."""
    mse = float(np.mean((np.clip(image.astype(np.float64), 0, 1) - clean.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def task_value(golden: Golden, outputs: Sequence[Sequence[np.ndarray]]) -> float | None:
    """The golden file's task metric measured on ``outputs`` (one list per case, in the golden's
    case order); None when it records none or the outputs cannot be scored (wrong shapes)."""
    task = golden.task
    if task is None or len(outputs) != len(golden.cases):
        return None
    try:
        if task.name == "psnr_db":
            assert task.case is not None and golden.clean is not None
            image = np.asarray(outputs[task.case][0])
            return psnr(image.reshape(golden.clean.shape), golden.clean) if image.size == golden.clean.size else None
        agree = total = 0
        for case, got in zip(golden.cases, outputs):
            expected = case.outputs[0]
            if not got or np.shape(got[0]) != expected.shape:
                return None
            agree += int((np.asarray(got[0]).argmax(1) == expected.argmax(1)).sum())
            total += expected.shape[0]
        return agree / total if total else None
    except (ValueError, IndexError, AssertionError):
        return None


# --------------------------------------------------------------------------- writing


def write_golden(
    artifact: str | os.PathLike[str],
    reference: Any,
    spec: InputSpec,
    *,
    precision: Precision,
    atol: float,
    rtol: float,
    seed: int = 0,
    inputs: str | os.PathLike[str] | None = None,
    random: bool = True,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Write the golden evidence of ``artifact`` beside it and return its path: ``reference``
    (an ``nn.Module``, LoadedModel or TorchReference: fp32 PyTorch) on the validation inputs, and
    the photograph for single-channel image models."""
    from wconv_deploy._version import __version__
    from wconv_deploy.exporters.precision import photo_feeds
    from wconv_deploy.runtimes.torch import TorchReference
    from wconv_deploy.validate import load_inputs, random_inputs

    rt = TorchReference.of(reference, spec.names)
    cases: Cases = random_inputs(spec, seed) if random else []
    if inputs is not None:
        cases += load_inputs(inputs, spec)
    photo = photo_feeds(spec)
    clean = None
    if photo is not None:
        from wconv_deploy.zoo.denoisers import DENOISER_SIGMA, demo_image

        cases.append((f"photo (sigma {DENOISER_SIGMA:g})", photo))
        clean = demo_image().numpy()
    golden_cases = [GoldenCase(label, feeds, rt.run(feeds)) for label, feeds in cases]
    n_outputs = max((len(c.outputs) for c in golden_cases), default=0)
    names = list(output_names) if output_names else [f"output_{i}" for i in range(n_outputs)]
    task = None
    photo_out = golden_cases[-1].outputs[0] if clean is not None and golden_cases[-1].outputs else None
    if clean is not None and photo_out is not None and photo_out.size == clean.size:  # image in, image out
        task = TaskMetric("psnr_db", psnr(photo_out.reshape(clean.shape), clean), len(golden_cases) - 1)
    elif golden_cases and all(c.outputs and c.outputs[0].ndim == 2 for c in golden_cases):
        task = TaskMetric("top1_agreement", 1.0)
    p = Path(artifact)
    golden = Golden(
        path=os.fspath(golden_path(p)),
        artifact=p.name,
        artifact_sha256=file_sha256(p),
        precision=precision,
        atol=atol,
        rtol=rtol,
        input_names=spec.names,
        output_names=names,
        source=rt.source or type(rt.model).__name__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wconv_deploy_version=__version__,
        task=task,
        cases=golden_cases,
        clean=clean,
    )
    save_golden(golden, golden.path)
    return Path(golden.path)


def save_golden(golden: Golden, path: str | os.PathLike[str]) -> None:
    """Write ``golden`` to ``path`` atomically (a complete file or none)."""
    arrays: dict[str, np.ndarray] = {}
    for c, case in enumerate(golden.cases):
        for k, name in enumerate(golden.input_names):
            arrays[f"input.{c}.{k}"] = case.inputs[name]
        for k, out in enumerate(case.outputs):
            arrays[f"output.{c}.{k}"] = out
    if golden.clean is not None:
        arrays["task.clean"] = golden.clean.astype(np.float32)
    meta = golden.to_dict()
    del meta["path"], meta["summary"]
    meta["format"] = FORMAT
    meta["cases"] = [{"label": c.label, "outputs": len(c.outputs)} for c in golden.cases]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------- reading


def read_npz(
    path: str | os.PathLike[str], *, what: str, limit: int, within: str | os.PathLike[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``: a regular file (inside ``within``), at most ``limit``
    bytes unpacked and MAX_ARRAYS arrays, no pickled objects. InputError naming ``what`` otherwise."""
    p = Path(path)
    if not os.path.lexists(p):
        raise InputError(f"{what}: {p} does not exist")
    with open_regular(p, within=within, what=f"{what} {p}") as f:
        try:
            _check_npz(f, p, what, limit)
            with np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except InputError:
            raise
        except Exception as e:  # zipfile, ValueError (pickled objects), OSError: all "not a readable npz"
            raise InputError(f"{what}: {p} is not a readable .npz file ({type(e).__name__})") from None
    return arrays


def _check_npz(f: BinaryIO, path: Path, what: str, limit: int) -> None:
    """Refuse an .npz with too many arrays or that unpacks beyond ``limit`` (a zip bomb) before any is read."""
    with zipfile.ZipFile(f) as z:
        members = z.infolist()
    f.seek(0)
    if len(members) > MAX_ARRAYS:
        raise InputError(f"{what}: {path} holds {len(members)} arrays, more than {MAX_ARRAYS}")
    total = sum(i.file_size for i in members)
    if total > limit:
        raise InputError(f"{what}: {path} unpacks to {total / 2**30:.1f} GiB, more than the input limit (--max-input-gb)")


def golden_limit_bytes() -> int:
    """The most a golden file may unpack to: inputs within the input limit, and outputs as large."""
    return 4 * input_limit_bytes()


def read_golden(path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None) -> Golden:
    """Read and check the golden file at ``path`` (InputError, one line, for anything wrong)."""
    from wconv_deploy.artifacts import parse_json

    p = Path(path)
    what = "golden file"
    arrays = read_npz(p, what=what, limit=golden_limit_bytes(), within=within)
    where = f"{what} {p}"
    meta_bytes = arrays.pop("meta", None)
    if meta_bytes is None or meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
        raise InputError(f"{where}: no metadata; not a golden file wconv-deploy wrote")
    try:
        text = meta_bytes.tobytes().decode()
    except UnicodeDecodeError:
        raise InputError(f"{where}: its metadata is not UTF-8 text") from None
    meta = parse_json(text, where)
    try:
        return _golden_of(p, meta, arrays)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{where}: broken metadata ({type(e).__name__}: {first_line(e)})") from None


def _golden_of(path: Path, meta: Any, arrays: dict[str, np.ndarray]) -> Golden:
    where = f"golden file {path}"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(
            f"{where}: not a golden file wconv-deploy wrote (format {meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    inputs, outputs = [str(n) for n in meta["input_names"]], [str(n) for n in meta["output_names"]]
    cases = []
    for c, entry in enumerate(meta["cases"]):
        feeds = {name: _array(arrays, f"input.{c}.{k}", where, finite=True) for k, name in enumerate(inputs)}
        outs = [_array(arrays, f"output.{c}.{k}", where) for k in range(int(entry["outputs"]))]
        cases.append(GoldenCase(str(entry["label"]), feeds, outs))
    if not cases:
        raise InputError(f"{where}: holds no cases")
    task = None
    if meta.get("task") is not None:
        t = meta["task"]
        if t["name"] not in TASK_METRICS:
            raise InputError(f"{where}: unknown task metric {t['name']!r}")
        case = None if t.get("case") is None else int(t["case"])
        if case is not None and not 0 <= case < len(cases):
            raise InputError(f"{where}: the task metric names case {case}, which it does not hold")
        task = TaskMetric(str(t["name"]), float(t["reference"]), case)
    clean = _array(arrays, "task.clean", where, finite=True) if "task.clean" in arrays else None
    if task is not None and task.name == "psnr_db" and clean is None:
        raise InputError(f"{where}: a PSNR task metric without its clean image (task.clean)")
    known = {f"input.{c}.{k}" for c in range(len(cases)) for k in range(len(inputs))}
    known |= {f"output.{c}.{k}" for c, case in enumerate(cases) for k in range(len(case.outputs))} | {"task.clean"}
    extra = sorted(set(arrays) - known)
    if extra:
        raise InputError(f"{where}: holds arrays its metadata does not name ({', '.join(extra[:3])})")
    atol, rtol = float(meta["atol"]), float(meta["rtol"])
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"{where}: negative tolerances")
    return Golden(
        path=os.fspath(path),
        artifact=str(meta["artifact"]),
        artifact_sha256=str(meta["artifact_sha256"]),
        precision=Precision.parse(str(meta["precision"]), f"{where}: precision"),
        atol=atol,
        rtol=rtol,
        input_names=inputs,
        output_names=outputs,
        source=str(meta.get("source", "")),
        created=str(meta.get("created", "")),
        wconv_deploy_version=str(meta.get("wconv_deploy_version", "")),
        task=task,
        cases=cases,
        clean=clean,
    )


def _array(arrays: dict[str, np.ndarray], key: str, where: str, *, finite: bool = False) -> np.ndarray:
    """The array ``key``: numeric, and finite where ``finite`` (inputs: NaN checks nothing)."""
    if key not in arrays:
        raise InputError(f"{where}: lacks the array {key}")
    a = arrays[key]
    if a.dtype.kind not in "fiub":
        raise InputError(f"{where}: {key} has dtype {a.dtype}, not a number type")
    if finite and a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
        raise InputError(f"{where}: {key} holds NaN or infinity")
    return a


# --------------------------------------------------------------------------- Polygraphy JSON

#: How every array Polygraphy writes begins once base64-encoded: ``np.save``'s magic ``\x93NUMPY``.
_NPY_MAGIC_B64 = base64.b64encode(b"\x93NUMPY").decode()[:8]


@contextlib.contextmanager
def _polygraphy() -> Iterator[Any]:
    """``polygraphy.json``, with Polygraphy's own logging kept off stdout (it prints warnings
    there, which would break ``--json``) and below errors."""
    with contextlib.redirect_stdout(io.StringIO()):
        logger = require("polygraphy.logger", "dev").G_LOGGER
        previous = logger.module_severity
        logger.module_severity = logger.ERROR
        try:
            yield require("polygraphy.json", "dev")
        finally:
            logger.module_severity = previous


def save_inputs_json(cases: Cases, path: str | os.PathLike[str]) -> None:
    """Write the feeds as ``polygraphy run --save-inputs`` does (a JSON list of feed dicts)."""
    with _polygraphy() as pjson, atomic_output(path) as tmp:
        pjson.save_json([dict(feeds) for _, feeds in cases], os.fspath(tmp), description="inputs")


def save_outputs_json(
    runs: Sequence[tuple[str, Sequence[Sequence[np.ndarray]]]], names: Sequence[str], path: str | os.PathLike[str]
) -> None:
    """Write outputs as ``polygraphy run --save-outputs`` does: ``RunResults``, one entry per runner
    (``runs``: runner name, then per case the outputs in ``names`` order)."""
    with _polygraphy() as pjson, atomic_output(path) as tmp:
        comparator = require("polygraphy.comparator", "dev")
        results = comparator.RunResults()
        for runner, cases in runs:
            iterations = [comparator.IterationResult(dict(zip(names, outs)), runner_name=runner) for outs in cases]
            results.append((runner, iterations))
        pjson.save_json(results, os.fspath(tmp), description="outputs")


def load_inputs_json(path: str | os.PathLike[str], spec: InputSpec) -> Cases:
    """Feeds from a ``polygraphy run --save-inputs`` file, each checked against ``spec``. Only
    arrays Polygraphy writes are decoded (``.npy`` payloads, so no archive can unpack to more than
    the file holds, and no pickles); the JSON is parsed with the artifact layer's limits first."""
    from wconv_deploy.artifacts import parse_json

    p = Path(path)
    where = f"--load-inputs {p}"
    text = read_text(p, what=where, limit=2 * input_limit_bytes())
    _check_polygraphy_arrays(parse_json(text, where), where)
    try:
        with _polygraphy() as pjson:
            data = pjson.from_json(text)
    except Exception as e:  # polygraphy raises its own types (PolygraphyException) and ValueError
        raise InputError(f"{where}: not a Polygraphy inputs file ({first_line(e)})") from None
    if not isinstance(data, list) or not data:
        raise InputError(f"{where}: not a Polygraphy inputs file (a non-empty list of feed dicts)")
    cases: Cases = []
    for i, feeds in enumerate(data):
        if not isinstance(feeds, dict) or not all(isinstance(v, np.ndarray) for v in feeds.values()):
            raise InputError(f"{where}: entry {i} is not a dict of arrays")
        typed = {t.name: feeds[t.name].astype(np.dtype(t.dtype), copy=False) for t in spec.inputs if t.name in feeds}
        spec.check_arrays(typed)
        cases.append((f"{p.name}[{i}]", typed))
    return cases


def _check_polygraphy_arrays(node: Any, where: str) -> None:
    """Refuse any encoded value but a plain ``.npy`` array (Polygraphy also decodes npz archives,
    which could unpack to far more than the file, and torch tensors, which would import torch)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            cls = item.get("polygraphy_class")
            if cls is not None and cls != "ndarray":
                raise InputError(f"{where}: holds a {cls!r}; only arrays are read")
            if cls == "ndarray" and not (isinstance(item.get("array"), str) and item["array"].startswith(_NPY_MAGIC_B64)):
                raise InputError(f"{where}: an array that is not an .npy payload (archives are not read)")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
