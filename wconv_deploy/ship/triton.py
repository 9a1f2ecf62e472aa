"""Triton Inference Server model repositories: package an exported model, check a repository offline.

:func:`package` writes one model entry::

    REPO/NAME/config.pbtxt                 Triton's ModelConfig, built as its protobuf message
    REPO/NAME/VERSION/model.onnx           platform onnxruntime_onnx, or
    REPO/NAME/VERSION/model.plan           platform tensorrt_plan: one engine, or
    REPO/NAME/VERSION/model.sm90.plan ...  one engine per GPU compute capability (cc_model_filenames)
    REPO/NAME/manifest.json                sha256 of every file, where each came from, the options

Shapes. Inputs and outputs come from the artifact's graph (an engine's from its manifest), whose
dims the export wrote from the input spec: -1 where an axis varies. Triton's rule for batching:
when axis 0 of every input and output varies, the model batches; ``max_batch_size`` is then 1 to
the largest batch the input spec (ONNX) or the optimisation profile (engine) allows, and dims
leave axis 0 out. Otherwise ``max_batch_size`` is 0 and dims are the full shapes. A model that
batches cannot be given ``max_batch_size`` 0: Triton's auto-complete would set one itself and then
reject the full-rank dims.

The entry is written into a hidden folder inside REPO (the same file system, so that renames are
atomic), checked with :func:`check_model`, and only then renamed to REPO/NAME, replacing an existing
entry (all its versions: one config covers every version, and the check vouches only for files it
wrote). A failure leaves the repository as it was. (Triton polls hidden folders too: one that
polls during those seconds logs an error for the staging folder and carries on.) The entry gets
the modes an ordinary tool gives (0755 folders, 0644 files under umask 022), so a Triton running
as another user can read it.

Nothing leaves its folder: the ONNX file is read through :func:`~wconv_deploy.artifacts.read_onnx`,
so every external-data file it names (initializers and ``Constant`` values alike) is a regular
file inside its folder, and only those checked files are copied, from the descriptor that was
checked. REPO/NAME itself must not be a symlink: replacing it would write elsewhere.

:func:`check_repository` checks every model folder without a server: the config parses as
Triton's ModelConfig and agrees with the files beside it (name, platform, versions, model files,
checksums, inputs and outputs, batching, instance kind). It reads nothing outside the repository:
a symlink that leads out of it, a manifest path that is absolute or climbs out with ``..``, and a
FIFO or device anywhere in an entry are problems, never opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from wconv_deploy.artifacts import external_data_files, parse_json, read_onnx, wconv_metadata
from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.exporters.tensorrt import BuildManifest, manifest_path, onnx_io
from wconv_deploy.fileio import file_sha256, is_inside, open_regular, read_text, regular_file, staging_dir
from wconv_deploy.table import format_table
from wconv_deploy.validate import spec_from_model

Progress = Callable[[str], None]

ONNX_PLATFORM, TRT_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
#: Triton's default model file name of each platform, and the platform of each model file suffix.
DEFAULT_FILENAME = {ONNX_PLATFORM: "model.onnx", TRT_PLATFORM: "model.plan"}
PLATFORM_OF_SUFFIX = {".onnx": ONNX_PLATFORM, ".plan": TRT_PLATFORM}
#: ``backend:`` values that mean our platforms (hand-written configs may use either field).
BACKEND_PLATFORM = {"onnxruntime": ONNX_PLATFORM, "tensorrt": TRT_PLATFORM}
ENGINE_SUFFIXES = (".plan", ".engine")
KINDS = ("cpu", "gpu")
#: Triton's data type of each dtype name :func:`~wconv_deploy.exporters.tensorrt.onnx_io` gives.
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
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: A folder name's limit on Linux file systems (NAME_MAX), in bytes.
NAME_MAX = 255
#: The longest model name: its staging folder ``.NAME.xxxxxxxx.tmp`` (and the replaced entry's
#: ``.NAME.xxxxxxxx.old``) must fit in NAME_MAX too.
MAX_NAME_BYTES = NAME_MAX - len("..xxxxxxxx.tmp")
#: config.pbtxt and manifest.json are a few kB; anything larger is not one wconv-deploy wrote.
MAX_TEXT_BYTES = 4 << 20


def import_model_config() -> tuple[Any, Any]:
    """Triton's ModelConfig protobuf module and protobuf's ``text_format`` (InputError, one line,
    naming the ``serve`` extra, when tritonclient is not installed)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise InputError("Triton model repositories need tritonclient: pip install 'wconv-deploy[serve]'") from None
    return model_config_pb2, text_format


# --------------------------------------------------------------------------- what an artifact takes


@dataclass(frozen=True)
class Tensor:
    """One input or output: its name, dtype (``float32``, ...) and dims (-1 where it varies)."""

    name: str
    dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    """An artifact's inputs and outputs, and the largest batch it takes (and where that comes from)."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch: int
    limit_from: str

    @property
    def batches(self) -> bool:
        """Triton's rule: a model batches when axis 0 of every input and output varies."""
        return all(t.dims[:1] == (-1,) for t in self.inputs + self.outputs)

    def fixed_axis(self) -> str:
        """Why the model does not batch: the first tensor whose axis 0 is fixed."""
        t = next(t for t in self.inputs + self.outputs if t.dims[:1] != (-1,))
        return f"axis 0 of {t.name!r} is fixed: {list(t.dims)}"


def _tensors(entries: list[dict[str, Any]], where: str) -> tuple[Tensor, ...]:
    for e in entries:
        if e.get("shape") is None:
            raise InputError(f"{where}: the graph gives no shape for {e.get('name')!r}; Triton's config needs one")
    return tuple(Tensor(str(e["name"]), str(e["dtype"]), tuple(int(d) for d in e["shape"])) for e in entries)


def _read_onnx(path: Path) -> tuple[ModelIO, dict[str, str], list[str]]:
    """An exported ONNX file's inputs and outputs (largest batch from its input spec), its
    ``wconv_deploy.*`` metadata, and the external data files it uses (checked: regular files in
    its folder)."""
    model = read_onnx(path)
    props = wconv_metadata(model)
    spec = spec_from_model(model, path.name)
    if spec is None:
        raise InputError(f"{path.name} has no wconv-deploy input spec in its metadata: export it with wconv-deploy export")
    graph = onnx_io(model)
    io = ModelIO(
        _tensors(graph["inputs"], path.name),
        _tensors(graph["outputs"], path.name),
        min((t.dims[0].max for t in spec.inputs), default=0),
        "the input spec",
    )
    return io, props, external_data_files(model, path)


def engine_model_io(manifest: BuildManifest, where: str) -> ModelIO:
    """An engine's inputs and outputs from its manifest; its largest batch from its one profile."""
    if manifest.io is None:
        raise InputError(f"{where}: its build manifest records no inputs and outputs")
    if len(manifest.profiles) != 1:
        raise InputError(f"{where}: {len(manifest.profiles)} optimisation profiles; Triton packaging takes engines with one")
    profile = manifest.profiles[0]
    io = ModelIO(
        _tensors(manifest.io["inputs"], where),
        _tensors(manifest.io["outputs"], where),
        min(s["max"][0] for s in profile.values()),
        "the profile",
    )
    lowest = max(s["min"][0] for s in profile.values())
    if io.batches and lowest > 1:
        raise InputError(
            f"{where}: profile starts at batch {lowest} but Triton sends batches from 1: rebuild with a --min-shape of batch 1"
        )
    return io


# --------------------------------------------------------------------------- check


@dataclass
class Problem:
    """One disagreement: the model, the config field (or file) and what each side says."""

    model: str
    field: str
    message: str


@dataclass
class ModelCheck:
    """The offline check of one model folder."""

    name: str
    platform: str = ""
    versions: list[int] = field(default_factory=list)
    max_batch_size: int | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def add(self, where: str, message: str) -> None:
        """Record a problem with the config field (or file) ``where``, once."""
        problem = Problem(self.name, where, message)
        if problem not in self.problems:  # several engines or versions can disagree the same way
            self.problems.append(problem)


@dataclass
class CheckReport:
    """Every model folder of a repository and its problems; passes when there are models and no problems."""

    repo: str
    models: list[ModelCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.models) and all(m.passed for m in self.models)

    @property
    def problems(self) -> list[Problem]:
        return [p for m in self.models for p in m.problems]

    def to_dict(self) -> dict[str, Any]:
        models = [
            {
                "name": m.name,
                "platform": m.platform,
                "versions": m.versions,
                "max_batch_size": m.max_batch_size,
                "problems": [{"field": p.field, "message": p.message} for p in m.problems],
                "passed": m.passed,
            }
            for m in self.models
        ]
        return {"repo": self.repo, "models": models, "passed": self.passed}

    def render(self) -> str:
        lines = [f"triton repository check: {self.repo}"]
        if not self.models:
            return "\n".join([*lines, "FAILED: no model folders"])
        rows = [
            [
                m.name,
                m.platform or "?",
                ",".join(map(str, m.versions)) or "-",
                "?" if m.max_batch_size is None else m.max_batch_size,
                "ok" if m.passed else f"{len(m.problems)} problem(s)",
            ]
            for m in self.models
        ]
        lines.append(format_table(["model", "platform", "versions", "max batch", "result"], rows))
        if self.passed:
            lines.append(f"passed: {len(self.models)} model(s)")
            return "\n".join(lines)
        lines += ["", format_table(["model", "field", "problem"], [[p.model, p.field, p.message] for p in self.problems])]
        failed = sum(not m.passed for m in self.models)
        lines.append(f"FAILED: {len(self.problems)} problem(s) in {failed} of {len(self.models)} model(s)")
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise :class:`MismatchError` (exit 1, with the report) unless every model passed."""
        if not self.passed:
            what = f"{len(self.problems)} problem(s)" if self.models else "no model folders"
            raise MismatchError(f"Triton repository {self.repo}: {what} (see the report above)", self.render())


def check_repository(repo: str | os.PathLike[str]) -> CheckReport:
    """Check every folder of the Triton repository ``repo`` as a model. Triton polls hidden folders
    too, so one (say, left by an interrupted :func:`package`) is a problem; so is any entry that
    leads out of the repository (it is reported, never read)."""
    path = Path(repo)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder")
    import_model_config()
    report = CheckReport(os.fspath(path))
    for entry in sorted(path.iterdir()):
        problem = _entry_problem(entry, path)
        if problem is not None:
            flagged = ModelCheck(entry.name)
            flagged.add("folder", problem)
            report.models.append(flagged)
        elif not entry.is_dir():
            continue  # a file beside the models: Triton ignores it
        elif entry.name.startswith("."):
            hidden = ModelCheck(entry.name)
            hidden.add(
                "folder", "hidden, but Triton tries to load it as a model too (left by an interrupted package?): delete it"
            )
            report.models.append(hidden)
        else:
            report.models.append(_check_folder(entry, entry.name, path))
    return report


def check_model(folder: str | os.PathLike[str]) -> CheckReport:
    """Check one model folder ``REPO/NAME`` (reading nothing outside REPO)."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder")
    import_model_config()
    return CheckReport(os.fspath(path.parent), [_check_folder(path, path.name, path.parent)])


def _entry_problem(path: Path, repo: Path) -> str | None:
    """What is wrong with the entry ``path`` itself, without opening it: a symlink leading out of
    ``repo`` (Triton would serve what it points at), one to nothing, or a FIFO, socket or device
    (a reader would hang on it; Triton cannot load it). None for a file or folder."""
    if path.is_symlink() and not is_inside(path, repo):
        return f"a symlink to {os.path.realpath(path)}, outside the repository (not read): put a copy here instead"
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a symlink to nothing"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"{kind}, not a file: Triton cannot load it (not opened); delete it"


def _scan(folder: Path, repo: Path, check: ModelCheck) -> tuple[set[str], set[str]]:
    """Every file in ``folder`` and every entry with a problem (relative paths), adding the problems
    to ``check``. Nothing is opened, and symlinked folders are not followed."""
    files, flagged = set(), set()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(folder).as_posix()
            problem = _entry_problem(path, repo)
            if problem is not None:
                check.add(rel, problem)
                flagged.add(rel)
            elif path.is_file():
                files.add(rel)
    return files, flagged


def _read_text(folder: Path, name: str, repo: Path, check: ModelCheck, missing: str, flagged: set[str]) -> str | None:
    """``folder/name`` as text (a regular file inside ``repo``, of a sensible size), or None with a
    problem (``missing`` when it is absent; none more for an entry :func:`_scan` flagged)."""
    path = folder / name
    if name in flagged:
        return None
    if not os.path.lexists(path):
        check.add(name, missing)
        return None
    try:
        return read_text(path, within=repo, what=name, limit=MAX_TEXT_BYTES)
    except InputError as e:
        check.add(name, f"unreadable ({first_line(e)})")
        return None


def _check_folder(folder: Path, name: str, repo: Path) -> ModelCheck:
    """Check ``folder`` as the model ``name`` (the staging folder of :func:`package` has another
    name); every file read is a regular file inside ``repo``."""
    mc, text_format = import_model_config()
    check = ModelCheck(name)
    on_disk, flagged = _scan(folder, repo, check)
    text = _read_text(folder, "config.pbtxt", repo, check, "missing", flagged)
    if text is None:
        return check
    try:
        cfg = text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        check.add("config.pbtxt", f"not a Triton ModelConfig: {first_line(e)}")
        return check
    check.platform = cfg.platform or BACKEND_PLATFORM.get(cfg.backend, cfg.backend)
    check.max_batch_size = cfg.max_batch_size
    check.versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and re.fullmatch("[1-9][0-9]*", p.name))
    if cfg.name and cfg.name != name:
        check.add("name", f"config {cfg.name!r}, folder {name!r}")
    manifest = _read_manifest(folder, repo, check, flagged)
    if check.platform not in DEFAULT_FILENAME:
        check.add("platform", f"config {check.platform!r}; wconv-deploy packages {ONNX_PLATFORM} and {TRT_PLATFORM}")
        return check
    if not check.versions:
        check.add("versions", "no version folder (1, 2, ...)")
    files = {"default_model_filename": cfg.default_model_filename or DEFAULT_FILENAME[check.platform]}
    files.update({f"cc_model_filenames[{cc!r}]": f for cc, f in sorted(cfg.cc_model_filenames.items())})
    for where, filename in files.items():
        kind = PLATFORM_OF_SUFFIX.get(Path(filename).suffix)
        if kind != check.platform:
            check.add("platform", f"config {check.platform!r}, model {filename} is {kind or 'neither .onnx nor .plan'}")
        for version in check.versions:
            rel = f"{version}/{filename}"
            if rel in flagged:
                continue  # a symlink out or a FIFO: reported, not read
            if not os.path.lexists(folder / rel):
                check.add(where, f"{rel} is missing")
            elif kind is not None:
                io = _artifact_io(folder / rel, rel, kind, manifest, cfg, check, repo)
                if io is not None:
                    _compare_io(mc, cfg, io, check)
    if manifest is not None:
        _check_checksums(folder, manifest, check, repo, on_disk, flagged)
    _check_batching(cfg, check)
    if any(PLATFORM_OF_SUFFIX.get(Path(f).suffix) == TRT_PLATFORM for f in files.values()):
        for i, group in enumerate(cfg.instance_group):
            if group.kind == mc.ModelInstanceGroup.KIND_CPU:
                check.add(f"instance_group[{i}].kind", f"config KIND_CPU, model {TRT_PLATFORM} runs on KIND_GPU")
    return check


def _read_manifest(folder: Path, repo: Path, check: ModelCheck, flagged: set[str]) -> dict[str, Any] | None:
    missing = "missing: it records the checksums and the engines' shapes (wconv-deploy package writes it)"
    text = _read_text(folder, "manifest.json", repo, check, missing, flagged)
    if text is None:
        return None
    try:
        data = parse_json(text, "manifest.json")
    except InputError as e:
        check.add("manifest.json", f"unreadable ({first_line(e)})")
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not isinstance(data.get("artifacts"), list):
        check.add("manifest.json", "not a wconv-deploy package manifest (no files and artifacts)")
        return None
    return data


def _check_checksums(
    folder: Path, manifest: dict[str, Any], check: ModelCheck, repo: Path, on_disk: set[str], flagged: set[str]
) -> None:
    """Every file the manifest lists is there with its sha256, and no other file is. A listed path
    that is absolute or climbs out with ``..`` is a problem and is never read (nor hashed)."""
    listed: dict[str, Any] = manifest["files"]
    for rel, sha in sorted(listed.items()):
        pure = PurePosixPath(rel.replace("\\", "/"))
        if not rel or pure.is_absolute() or ".." in pure.parts:
            check.add(rel, "manifest.json lists a path outside the model folder (absolute or with ..); not read")
        elif rel in flagged:
            continue  # a symlink out or a FIFO: reported, not read
        elif not os.path.lexists(folder / rel):
            check.add(rel, "listed in manifest.json but missing")
        else:
            try:
                actual = file_sha256(folder / rel, within=repo)
            except InputError as e:
                check.add(rel, first_line(e))
                continue
            if actual != sha:
                check.add(rel, f"sha256 in manifest.json {str(sha)[:12]}, file {actual[:12]}")
    for rel in sorted(on_disk - listed.keys() - {"manifest.json"}):
        check.add(rel, "not listed in manifest.json (not written by wconv-deploy package)")


def _artifact_io(
    path: Path, rel: str, kind: str, manifest: dict[str, Any] | None, cfg: Any, check: ModelCheck, repo: Path
) -> ModelIO | None:
    """What the model file at ``path`` takes: read from the ONNX file (a regular file inside ``repo``),
    or from the build manifest recorded for the engine in manifest.json (None, with a problem added,
    when unknown)."""
    try:
        if kind == ONNX_PLATFORM:
            return _read_onnx(regular_file(path, within=repo, what=rel))[0]
        if manifest is None:
            return None  # the missing manifest is a problem already
        entry = next((a for a in manifest["artifacts"] if isinstance(a, dict) and a.get("file") == rel), None)
        if entry is None:
            check.add(rel, "manifest.json records no build manifest for it: its inputs and outputs cannot be checked")
            return None
        built = BuildManifest.from_dict(entry.get("build_manifest"))
        for cc, filename in cfg.cc_model_filenames.items():
            if filename == path.name and cc != built.compute_capability:
                check.add(f"cc_model_filenames[{cc!r}]", f"config {filename}, model built for sm {built.compute_capability}")
        return engine_model_io(built, rel)
    except (InputError, KeyError, TypeError, ValueError) as e:
        check.add(rel, first_line(e))
        return None


def _compare_io(mc: Any, cfg: Any, io: ModelIO, check: ModelCheck) -> None:
    """max_batch_size, and each input's and output's name, data_type and dims, against ``io``."""
    mbs = cfg.max_batch_size
    if mbs < 0:
        check.add("max_batch_size", f"config {mbs}, must be 0 or more")
    elif mbs > 0 and not io.batches:
        check.add("max_batch_size", f"config {mbs}, model 0 (no batch axis: {io.fixed_axis()})")
    elif mbs > io.max_batch:
        check.add("max_batch_size", f"config {mbs}, model {io.max_batch} ({io.limit_from}'s max batch)")
    elif mbs == 0 and io.batches:
        check.add(
            "max_batch_size",
            f"config 0, model batches up to {io.max_batch}: Triton's auto-complete would set max_batch_size itself",
        )
    batched = mbs > 0 and io.batches
    for kind, configured, tensors in (("input", cfg.input, io.inputs), ("output", cfg.output, io.outputs)):
        model = {t.name: t for t in tensors}
        names = [c.name for c in configured]
        if sorted(names) != sorted(model):
            check.add(kind, f"config {names}, model {list(model)}")
        for i, c in enumerate(configured):
            t = model.get(c.name)
            if t is None:
                continue
            data_type = mc.DataType.Name(c.data_type)
            if data_type != TRITON_TYPES.get(t.dtype, t.dtype):
                check.add(f"{kind}[{i}].data_type", f"config {data_type}, model {TRITON_TYPES.get(t.dtype, t.dtype)}")
            dims = list(t.dims[1:] if batched else t.dims)
            if list(c.dims) != dims:
                check.add(f"{kind}[{i}].dims", f"config {list(c.dims)}, model {dims}")


def _check_batching(cfg: Any, check: ModelCheck) -> None:
    if not cfg.HasField("dynamic_batching"):
        return
    if cfg.max_batch_size <= 0:
        check.add(
            "dynamic_batching",
            f"config sets it, but max_batch_size is {cfg.max_batch_size}: Triton batches only with max_batch_size > 0",
        )
    preferred = list(cfg.dynamic_batching.preferred_batch_size)
    if any(not 1 <= b <= cfg.max_batch_size for b in preferred):
        check.add("dynamic_batching.preferred_batch_size", f"config {preferred}, max_batch_size {cfg.max_batch_size}")


# --------------------------------------------------------------------------- package


@dataclass
class _Artifact:
    """One model file to copy into the version folder, and what manifest.json records of it."""

    source: Path
    file: str
    io: ModelIO
    provenance: dict[str, Any]
    data_files: list[str] = field(default_factory=list)  # an ONNX file's external data, copied by name


@dataclass
class PackageReport:
    """What :func:`package` wrote, and the offline check of it."""

    model_dir: str
    name: str
    version: int
    platform: str
    max_batch_size: int
    kind: str
    files: dict[str, str]
    replaced: bool
    config: str
    notes: list[str]
    check: CheckReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "name": self.name,
            "version": self.version,
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "kind": self.kind,
            "files": self.files,
            "replaced": self.replaced,
            "config": self.config,
            "notes": self.notes,
            "check": self.check.to_dict(),
        }

    def render(self) -> str:
        batch = f"batches up to {self.max_batch_size}" if self.max_batch_size else "no batching (max_batch_size 0)"
        lines = [f"model       {self.name} version {self.version}: {self.platform}, {batch}, KIND_{self.kind.upper()}"]
        lines += [f"note        {n}" for n in self.notes]
        lines += ["", "config.pbtxt:", *(f"  {ln}" for ln in self.config.splitlines()), "", self.check.render(), ""]
        lines.append(f"wrote {self.model_dir}" + (" (replacing the previous entry)" if self.replaced else ""))
        return "\n".join(lines)


def package(
    artifacts: Sequence[str | os.PathLike[str]],
    repo: str | os.PathLike[str],
    name: str,
    *,
    version: int = 1,
    max_batch: int | None = None,
    instances: int = 1,
    kind: str | None = None,
    dynamic_batching: bool = False,
    preferred_batch: Sequence[int] = (),
    max_queue_delay_us: int | None = None,
    progress: Progress | None = None,
) -> PackageReport:
    """Write ``artifacts`` (one exported ONNX file, or TensorRT engines with their manifests) as
    the Triton model ``REPO/NAME``, check it offline, and return the report.

    ``max_batch`` defaults to the largest batch of the input spec or profile (0 for a model
    without a batch axis); ``kind`` to ``gpu`` for engines and ``cpu`` for ONNX. Raises
    InputError for unusable artifacts or options, before anything is written; the repository is
    unchanged by any failure (or signal).
    """
    say = progress or (lambda _msg: None)
    mc, text_format = import_model_config()
    _check_options(name, version, instances, kind, dynamic_batching, preferred_batch, max_queue_delay_us)
    repo_path, dest = Path(repo), Path(repo) / name
    if repo_path.exists() and not repo_path.is_dir():
        raise InputError(f"--repo {repo_path}: not a folder")
    if not repo_path.parent.is_dir():
        raise InputError(f"--repo {repo_path}: folder {repo_path.parent} does not exist")
    if dest.is_symlink():
        raise InputError(f"{dest} is a symlink: packaging replaces the entry, not what it points at; remove the link first")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} exists and is not a model folder")

    platform, sources, notes = _read_artifacts([Path(a) for a in artifacts], say)
    io = replace(sources[0].io, max_batch=min(a.io.max_batch for a in sources))
    kind = kind or ("gpu" if platform == TRT_PLATFORM else "cpu")
    if platform == TRT_PLATFORM and kind == "cpu":
        raise InputError("--kind cpu: TensorRT engines run only on GPUs; give --kind gpu (the default for engines)")
    mbs = _max_batch_size(io, max_batch)
    if dynamic_batching and mbs == 0:
        raise InputError(f"--dynamic-batching needs a model that batches; this one does not ({io.fixed_axis()})")
    if any(not 1 <= b <= mbs for b in preferred_batch):
        raise InputError(f"--preferred-batch {','.join(map(str, preferred_batch))}: each size must be 1 to max_batch_size {mbs}")

    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=mbs, default_model_filename=sources[0].file)
    if len(sources) > 1:
        for a in sources:
            config.cc_model_filenames[a.provenance["compute_capability"]] = a.file
    for tensor, group in [(t, config.input) for t in io.inputs] + [(t, config.output) for t in io.outputs]:
        group.add(name=tensor.name, data_type=mc.DataType.Value(_triton_type(tensor)), dims=_dims(tensor, mbs))
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(preferred_batch)
        if max_queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    text = "# Written by wconv-deploy package; check it with: wconv-deploy package --check REPO\n"
    text += text_format.MessageToString(config, use_short_repeated_primitives=True)
    options = {
        "max_batch": max_batch,
        "instances": instances,
        "kind": kind,
        "dynamic_batching": dynamic_batching,
        "preferred_batch": list(preferred_batch),
        "max_queue_delay_us": max_queue_delay_us,
    }

    created = not repo_path.exists()
    repo_path.mkdir(exist_ok=True)
    try:
        with staging_dir(repo_path, f".{name}.") as stage:
            say(f"writing {name} into {repo_path} (staged in {stage.name})")
            files = _write_entry(stage, name, version, platform, sources, text, options)  # modes from the umask
            say("checking the entry offline")
            check = CheckReport(os.fspath(repo_path), [_check_folder(stage, name, repo_path)])
            if not check.passed:
                raise MismatchError(
                    f"the packaged model {name} fails its own check (a wconv-deploy bug; nothing written)", check.render()
                )
            replaced = _swap_in(stage, dest)
    finally:
        if created and not dest.exists():  # a failure: remove the repository folder this call made
            with contextlib.suppress(OSError):
                repo_path.rmdir()
    return PackageReport(os.fspath(dest), name, version, platform, mbs, kind, files, replaced, text, notes, check)


def _check_options(
    name: str,
    version: int,
    instances: int,
    kind: str | None,
    dynamic_batching: bool,
    preferred_batch: Sequence[int],
    max_queue_delay_us: int | None,
) -> None:
    if not _MODEL_NAME.match(name):
        raise InputError(f"--name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter, digit or '_'")
    if len(name) > MAX_NAME_BYTES:
        raise InputError(
            f"--name is {len(name)} characters long; at most {MAX_NAME_BYTES} fit a folder name (and its staging name)"
        )
    if version < 1:
        raise InputError(f"--version {version}: Triton serves versions 1, 2, ... (folder names)")
    if instances < 1:
        raise InputError(f"--instances {instances}: must be 1 or more")
    if kind is not None and kind not in KINDS:
        raise InputError(f"--kind {kind!r}: choose {' or '.join(KINDS)}")
    if not dynamic_batching and (preferred_batch or max_queue_delay_us is not None):
        raise InputError("--preferred-batch and --max-queue-delay-us need --dynamic-batching")
    if max_queue_delay_us is not None and max_queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us {max_queue_delay_us}: must be 0 or more")


def _read_artifacts(paths: list[Path], say: Progress) -> tuple[str, list[_Artifact], list[str]]:
    """The platform, the model files to copy (with what each takes) and notes for the report."""
    if not paths:
        raise InputError("nothing to package: give an ONNX file or TensorRT engines")
    for p in paths:
        if p.suffix.lower() not in (".onnx", *ENGINE_SUFFIXES):
            raise InputError(f"{p}: not an ONNX file or a TensorRT engine (.onnx, .plan, .engine)")
        regular_file(p)
    onnx_files = [p for p in paths if p.suffix.lower() == ".onnx"]
    if onnx_files and len(onnx_files) < len(paths):
        raise InputError("one Triton model is an ONNX file or TensorRT engines, not both: package each under its own --name")
    if len(onnx_files) > 1:
        raise InputError("one Triton model holds one ONNX file: package each under its own --name")
    if onnx_files:
        path = onnx_files[0]
        say(f"reading {path.name}")
        io, props, data = _read_onnx(path)
        for location in data:
            if Path(location).name != location:
                raise InputError(f"{path.name}: its external data {location!r} is not a file beside it")
        return ONNX_PLATFORM, [_Artifact(path, DEFAULT_FILENAME[ONNX_PLATFORM], io, {"metadata": props}, data)], []
    return _read_engines(paths, say)


def _read_engines(paths: list[Path], say: Progress) -> tuple[str, list[_Artifact], list[str]]:
    sources: list[_Artifact] = []
    manifests: list[BuildManifest] = []
    for path in paths:
        say(f"reading the manifest of {path.name}")
        if not os.path.lexists(manifest_path(path)):
            raise InputError(
                f"{path} has no manifest {manifest_path(path).name}: packaging needs the shapes and GPU it records; "
                "build the engine with wconv-deploy build"
            )
        built = BuildManifest.read(regular_file(manifest_path(path), within=path.parent))
        if built.io is None:  # a manifest from before the inputs and outputs were recorded
            built = replace(built, io=_io_from_source(built, path))
        cc = built.compute_capability
        file = "model.plan" if len(paths) == 1 else f"model.sm{cc.replace('.', '')}.plan"
        provenance = {"compute_capability": cc, "build_manifest": built.to_dict()}
        sources.append(_Artifact(path, file, engine_model_io(built, path.name), provenance))
        manifests.append(built)
    ccs = [m.compute_capability for m in manifests]
    if len(set(ccs)) < len(ccs):
        twice = next(cc for cc in ccs if ccs.count(cc) > 1)
        raise InputError(f"several engines are built for sm {twice}: give one engine per compute capability")
    first = sources[0]
    for a in sources[1:]:
        if (a.io.inputs, a.io.outputs) != (first.io.inputs, first.io.outputs):
            raise InputError(
                f"{a.source.name} and {first.source.name} have different inputs or outputs: build both from one ONNX file"
            )
    versions = sorted({m.tensorrt_version for m in manifests})
    if len(versions) > 1 and not all(m.version_compatible for m in manifests):
        raise InputError(f"the engines were built with TensorRT {' and '.join(versions)}; one Triton release runs one TensorRT")
    notes = [f"serve with a Triton release on TensorRT {versions[-1]}: an engine runs only under the TensorRT that built it"]
    if len(sources) > 1:
        mapping = ", ".join(f"sm {a.provenance['compute_capability']} -> {a.file}" for a in sources)
        notes.append(f"engines by GPU: {mapping}; other GPUs load the default {first.file}")
    return TRT_PLATFORM, sources, notes


def _io_from_source(built: BuildManifest, engine: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of the ONNX an older manifest names, if it is still there unchanged."""
    src = Path(built.onnx_path)
    if not os.path.lexists(src):
        raise InputError(
            f"{engine.name}: its manifest predates recorded inputs and outputs, and its ONNX {src} is gone: rebuild the engine"
        )
    if file_sha256(src) != built.onnx_sha256:
        raise InputError(f"{engine.name}: its ONNX {src} changed since the engine was built: rebuild the engine")
    return onnx_io(read_onnx(src))


def _max_batch_size(io: ModelIO, max_batch: int | None) -> int:
    """``max_batch_size``: ``max_batch`` checked against the model, or the model's largest batch."""
    if max_batch is not None and max_batch < 0:
        raise InputError(f"--max-batch {max_batch}: must be 0 or more")
    if not io.batches:
        if max_batch:
            raise InputError(
                f"--max-batch {max_batch}: the model has no batch axis ({io.fixed_axis()}), so Triton serves it with "
                "max_batch_size 0: leave --max-batch out, or export with --dynamic batch"
            )
        return 0
    if max_batch is None:
        return io.max_batch
    if max_batch == 0:
        raise InputError(
            f"--max-batch 0: axis 0 of every input and output varies, so Triton's auto-complete would set max_batch_size "
            f"itself; give 1 to {io.max_batch}"
        )
    if max_batch > io.max_batch:
        raise InputError(f"--max-batch {max_batch} is larger than {io.limit_from}'s max batch {io.max_batch}")
    return max_batch


def _triton_type(t: Tensor) -> str:
    if t.dtype not in TRITON_TYPES:
        raise InputError(f"{t.name!r} has dtype {t.dtype}, which Triton has no data type for")
    return TRITON_TYPES[t.dtype]


def _dims(t: Tensor, max_batch_size: int) -> list[int]:
    """Config dims: the shape without axis 0 when Triton batches, else the full shape."""
    if max_batch_size == 0:
        return list(t.dims)
    if len(t.dims) == 1:
        raise InputError(f"{t.name!r} has only a batch axis; Triton would need a reshape, which wconv-deploy does not write")
    return list(t.dims[1:])


def _write_entry(
    stage: Path, name: str, version: int, platform: str, sources: list[_Artifact], config: str, options: dict[str, Any]
) -> dict[str, str]:
    """Write config.pbtxt, the model files and manifest.json into ``stage``; returns each file's sha256."""
    from wconv_deploy import __version__

    (stage / "config.pbtxt").write_text(config)
    folder = stage / str(version)
    folder.mkdir()
    for a in sources:
        _copy_file(a.source, folder / a.file)
        if "build_manifest" in a.provenance:  # beside the engine, so the trt runtime checks it before loading
            (folder / f"{a.file}.json").write_text(json.dumps(a.provenance["build_manifest"], indent=2) + "\n")
        for data in a.data_files:  # checked by read_onnx: regular files in the ONNX file's folder
            _copy_file(a.source.parent / data, folder / data, within=a.source.parent)
    files = {p.relative_to(stage).as_posix(): file_sha256(p, within=stage) for p in sorted(stage.rglob("*")) if p.is_file()}
    manifest = {
        "name": name,
        "version": version,
        "platform": platform,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wconv_deploy_version": __version__,
        "options": options,
        "files": files,
        "artifacts": [
            {"file": f"{version}/{a.file}", "source": os.fspath(a.source.resolve()), "sha256": files[f"{version}/{a.file}"]}
            | a.provenance
            for a in sources
        ],
    }
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return files


def _copy_file(src: Path, dst: Path, within: Path | None = None) -> None:
    """Copy the regular file ``src`` (inside the folder ``within``, when given) to the new file ``dst``.
    The bytes come from the descriptor :func:`open_regular` checked (still the file inside ``within``
    after the open), so a path swapped for a symlink to a secret meanwhile is refused."""
    with open_regular(src, within=within) as f:
        with open(dst, "xb") as out:  # 0666 less the umask, like any new file
            shutil.copyfileobj(f, out, 1 << 20)


def _swap_in(stage: Path, dest: Path) -> bool:
    """Rename ``stage`` to ``dest``; an existing ``dest`` is moved aside first and deleted once the
    new one is in place (put back if the rename fails or a signal comes between the renames).
    Returns whether one was replaced."""
    if not dest.exists():
        os.rename(stage, dest)
        return False
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        os.rename(dest, old)
        os.rename(stage, dest)
    except BaseException:
        if old.exists() and not dest.exists():  # the new entry is not in place: the previous one goes back
            os.rename(old, dest)
        raise
    finally:
        if old.exists() and dest.exists():  # the new entry is in place: the previous one goes
            _remove_tree(old)
    return True


def _remove_tree(path: Path) -> None:
    """Remove a folder even if a signal comes meanwhile: the removal is finished (further signals
    are ignored then, see :mod:`wconv_deploy.interrupts`) before the interruption goes on."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
