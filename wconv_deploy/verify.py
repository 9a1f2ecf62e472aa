"""Verify on the target, without PyTorch: re-run the golden inputs, compare with the golden outputs.

:func:`verify` takes what was shipped (a Triton repository, one model entry, or an artifact with
its ``.golden.npz`` beside it), runs the golden inputs through the runtime the entry uses on this
machine (ONNX Runtime on the CPU for ONNX, TensorRT for engines, as ``serve`` picks it) and
compares every output with the fp32 PyTorch outputs recorded at export or convert time, at the
tolerances recorded with them; the task metric (PSNR, top-1 agreement) is measured too and gated
by a :class:`~wconv_deploy.options.TaskBudget` when one is given. It also checks that the artifact
is the one the golden file was made for (its sha256; an engine's manifest records its ONNX's).

:func:`verify_url` does the same through a live Triton server (HTTP or gRPC), so the answers of
the served model are checked, not its files. Nothing on these paths imports torch: the golden
file is read with NumPy, the model runs in ONNX Runtime or behind the server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.golden import ENTRY_GOLDEN, GOLDEN_SUFFIX, Golden, golden_path, read_golden, task_value
from wconv_deploy.options import TaskBudget
from wconv_deploy.precision import Precision
from wconv_deploy.reports import Report
from wconv_deploy.runtimes.base import Runtime, RuntimeInfo
from wconv_deploy.validate import DEFAULT_QUANTILE, Criterion, ValidationReport, compare_runtimes, open_artifact


@dataclass
class VerifyReport(Report):
    """The verdict: the outputs against the golden ones, the artifact's identity, the task metric."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed",)

    target: str
    golden: str
    validation: ValidationReport
    sha256_matches: bool | None = None  # None: not checked (a live server's files are not ours to read)
    task: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.validation.passed and not self.problems

    def render(self) -> str:
        lines = [f"verify      {self.target} against {self.golden}", "", self.validation.render()]
        if self.sha256_matches is not None:
            lines.append(f"artifact    {'is' if self.sha256_matches else 'is NOT'} the one the golden file was made for (sha256)")
        for name, value in self.task.items():
            lines.append(f"{name}: {value:.4g}")
        lines += [f"problem     {p}" for p in self.problems]
        lines.append("verified" if self.passed else "FAILED")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """MismatchError (exit 1, with the report) naming what disagrees, unless it passed."""
        if self.passed:
            return
        what = []
        if self.validation.failed_outputs:
            what.append(f"output(s) {', '.join(self.validation.failed_outputs)} differ from the golden outputs")
        what += self.problems
        raise MismatchError(f"{self.target}: " + "; ".join(what), self)


def _criterion(golden: Golden, atol: float | None, rtol: float | None, stat: str, quantile: float) -> Criterion:
    return Criterion(golden.atol if atol is None else atol, golden.rtol if rtol is None else rtol, stat, quantile)


def _task(golden: Golden, report: ValidationReport, budget: TaskBudget | None) -> tuple[dict[str, float], list[str]]:
    """The task metric as convert names it, and the budget's verdict on it."""
    if golden.task is None:
        return {}, []
    measured = task_value(golden, report.outputs)
    if measured is None:
        return {}, [f"the {golden.task.name} cannot be measured on these outputs"]
    if golden.task.name == "psnr_db":
        task = {"psnr_fp32_torch_db": golden.task.reference, "psnr_variant_db": measured}
    else:
        task = {"top1_agreement": measured}
    miss = budget.miss(task) if budget is not None else None
    return task, [miss] if miss else []


def _entry_golden(artifact: Path, golden: str | os.PathLike[str] | None) -> tuple[Path, Path | None]:
    """The golden file for ``artifact`` and the folder it must stay inside (none for one given)."""
    if golden is not None:
        return Path(golden), None
    for candidate in (golden_path(artifact), artifact.parent / ENTRY_GOLDEN):
        if os.path.lexists(candidate):
            return candidate, artifact.parent
    raise InputError(f"{artifact}: no golden file beside it ({golden_path(artifact).name}); export or convert writes one")


def _sha256_matches(artifact: Path, golden: Golden) -> bool:
    """Whether ``artifact`` is the file the golden outputs belong to (an engine: the ONNX it was built from)."""
    from wconv_deploy.artifacts import BuildManifest, manifest_path
    from wconv_deploy.fileio import file_sha256
    from wconv_deploy.options import artifact_kind

    if artifact_kind(artifact) == "engine":
        if not os.path.lexists(manifest_path(artifact)):
            return False
        return BuildManifest.read(manifest_path(artifact), within=artifact.parent).onnx_sha256 == golden.artifact_sha256
    return file_sha256(artifact) == golden.artifact_sha256


def verify(
    target: str | os.PathLike[str],
    *,
    model: str | None = None,
    runtime: str | None = None,
    golden: str | os.PathLike[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    error_stat: str = "elemwise",
    error_quantile: float = DEFAULT_QUANTILE,
    budget: TaskBudget | None = None,
    trust_code: bool = False,
) -> VerifyReport:
    """Verify ``target`` (a repository, ``model`` picking the entry when it holds several; an
    entry; an ONNX file or engine) against its golden file (``golden``, else the one beside the
    model file) on ``runtime`` (default: the one ``serve`` would use). Tolerances default to the
    golden file's. Returns the report; ``report.raise_for_failure()`` turns a failure into a
    MismatchError naming the outputs. InputError for anything that cannot be verified."""
    from wconv_deploy.ship.serve import resolve_target

    served = resolve_target(target, name=model, runtime=runtime)
    artifact = served.artifact
    golden_file, within = _entry_golden(artifact, golden)
    evidence = read_golden(golden_file, within=within)
    crit = _criterion(evidence, atol, rtol, error_stat, error_quantile)
    rt = open_artifact(artifact, served.runtime, trust_code=trust_code)
    if sorted(evidence.input_names) != sorted(rt.input_names):
        raise InputError(f"{golden_file} holds inputs {evidence.input_names}; {artifact.name} takes {rt.input_names}")
    report = compare_runtimes(
        rt, evidence, artifact_label=artifact.name, reference_label=f"golden {golden_file.name}", criterion=crit
    )
    matches = _sha256_matches(artifact, evidence)
    task, problems = _task(evidence, report, budget)
    if not matches:
        problems.insert(0, f"{artifact.name} is not the file {golden_file.name} was made for (sha256 differs)")
    return VerifyReport(os.fspath(target), os.fspath(golden_file), report, matches, task, problems)


# --------------------------------------------------------------------------- a live server


class ServedRuntime(Runtime):
    """A model behind a Triton server, as a :class:`Runtime`: ``run`` sends one inference request
    (tritonclient, HTTP or gRPC) and returns the outputs in ``output_names`` order (an output the
    server does not return comes back empty, so it fails the comparison)."""

    def __init__(self, url: str, model: str, output_names: list[str], *, protocol: str | None = None) -> None:
        from wconv_deploy.ship.loadtest import split_url

        self.protocol, self.address = split_url(url, protocol)
        self.name = f"triton-{self.protocol}"
        self.url, self.model = url, model
        self._mod = require(f"tritonclient.{self.protocol}", "serve")
        self._utils = require("tritonclient.utils", "serve")
        self._client = self._mod.InferenceServerClient(self.address)
        try:
            ready = self._client.is_server_live() and self._client.is_model_ready(model)
        except Exception as e:  # connection refused, DNS, protocol mismatch: each client raises its own
            raise InputError(f"no Triton server answers at {url} ({first_line(e)})") from None
        if not ready:
            raise InputError(f"the server at {url} has no ready model {model!r}")
        meta = self._client.get_model_metadata(model, **({"as_json": True} if self.protocol == "grpc" else {}))
        self._inputs = [str(i["name"]) for i in meta["inputs"]]
        self._outputs = list(output_names)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        from wconv_deploy.ship.loadtest import infer_inputs

        try:
            result = self._client.infer(self.model, infer_inputs(self._mod, {n: feeds[n] for n in self._inputs}))
        except self._utils.InferenceServerException as e:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise MismatchError(
                f"the served model {self.model!r} at {self.url} refuses the golden inputs {shapes}: {first_line(e)}"
            ) from None
        outs = [result.as_numpy(n) for n in self._outputs]
        return [np.empty(0, np.float32) if o is None else o for o in outs]

    def describe(self) -> RuntimeInfo:
        return RuntimeInfo(self.name, self.url, Precision.FP32, f"model {self.model}")

    def close(self) -> None:
        self._client.close()


def verify_url(
    url: str,
    model: str,
    golden: str | os.PathLike[str],
    *,
    protocol: str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    error_stat: str = "elemwise",
    error_quantile: float = DEFAULT_QUANTILE,
    budget: TaskBudget | None = None,
) -> VerifyReport:
    """Verify the model ``model`` served at ``url`` (``http://HOST:PORT`` or ``grpc://HOST:PORT``)
    against a golden file (``golden``: the file, or a repository, entry or artifact holding one)."""
    path = Path(golden)
    golden_file, within = (path, None) if path.name.endswith(GOLDEN_SUFFIX) else _golden_of_target(path, model)
    evidence = read_golden(golden_file, within=within)
    rt = ServedRuntime(url, model, evidence.output_names, protocol=protocol)
    try:
        if sorted(evidence.input_names) != sorted(rt.input_names):
            raise MismatchError(
                f"the served model {model!r} takes inputs {rt.input_names}; {golden_file.name} holds {evidence.input_names}"
            )
        crit = _criterion(evidence, atol, rtol, error_stat, error_quantile)
        report = compare_runtimes(
            rt, evidence, artifact_label=f"{model} at {url}", reference_label=f"golden {golden_file.name}", criterion=crit
        )
    finally:
        rt.close()
    task, problems = _task(evidence, report, budget)
    return VerifyReport(f"{model} at {url}", os.fspath(golden_file), report, None, task, problems)


def _golden_of_target(target: Path, model: str | None) -> tuple[Path, Path | None]:
    from wconv_deploy.ship.serve import resolve_target

    return _entry_golden(resolve_target(target, name=model if target.is_dir() else None).artifact, None)
