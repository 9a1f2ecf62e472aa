"""Check a Triton model repository offline, without a server.

:func:`check_repository` checks every model folder: the config parses as Triton's ModelConfig and
agrees with the files beside it (name, platform, versions, model files, checksums, inputs and
outputs, batching by the one rule of :mod:`wconv_deploy.ship.config`, instance kind). It reads
nothing outside the repository: a symlink that leads out of it, a manifest path that is absolute
or climbs out with ``..``, and a FIFO or device anywhere in an entry are problems, never opened.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from wconv_deploy.artifacts import BuildManifest, OnnxInfo, parse_json
from wconv_deploy.errors import InputError, MismatchError, first_line
from wconv_deploy.fileio import file_sha256, is_inside, read_text, regular_file
from wconv_deploy.reports import Report
from wconv_deploy.ship.config import (
    BACKEND_PLATFORM,
    DEFAULT_FILENAME,
    MAX_TEXT_BYTES,
    ONNX_PLATFORM,
    PLATFORM_OF_SUFFIX,
    TRITON_TYPES,
    TRT_PLATFORM,
    ModelIO,
    model_config_pb2,
    parse_config,
)
from wconv_deploy.table import format_table


@dataclass
class Problem:
    """One disagreement: the model, the config field (or file) and what each side says."""

    model: str = field(repr=False)  # the model's entry in the JSON holds it already
    field: str
    message: str


@dataclass
class ModelCheck:
    """The offline check of one model folder."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed",)

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
class CheckReport(Report):
    """Every model folder of a repository and its problems; passes when there are models and no problems."""

    JSON_EXTRA: ClassVar[tuple[str, ...]] = ("passed",)

    repo: str
    models: list[ModelCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.models) and all(m.passed for m in self.models)

    @property
    def problems(self) -> list[Problem]:
        return [p for m in self.models for p in m.problems]

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
        """Raise :class:`MismatchError` (exit 1, carrying this report) unless every model passed."""
        if not self.passed:
            what = f"{len(self.problems)} problem(s)" if self.models else "no model folders"
            raise MismatchError(f"Triton repository {self.repo}: {what} (see the report above)", self)


def check_repository(repo: str | os.PathLike[str]) -> CheckReport:
    """Check every folder of the Triton repository ``repo`` as a model. Triton polls hidden folders
    too, so one (say, left by an interrupted ``package``) is a problem; so is any entry that
    leads out of the repository (it is reported, never read)."""
    path = Path(repo)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder")
    model_config_pb2()
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
            report.models.append(check_folder(entry, entry.name, path))
    return report


def check_model(folder: str | os.PathLike[str]) -> CheckReport:
    """Check one model folder ``REPO/NAME`` (reading nothing outside REPO)."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path}: no such folder")
    model_config_pb2()
    return CheckReport(os.fspath(path.parent), [check_folder(path, path.name, path.parent)])


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


def check_folder(folder: Path, name: str, repo: Path) -> ModelCheck:
    """Check ``folder`` as the model ``name`` (``package``'s staging folder has another name);
    every file read is a regular file inside ``repo``."""
    mc = model_config_pb2()
    check = ModelCheck(name)
    on_disk, flagged = _scan(folder, repo, check)
    text = _read_text(folder, "config.pbtxt", repo, check, "missing", flagged)
    if text is None:
        return check
    try:
        cfg = parse_config(text)
    except InputError as e:
        check.add("config.pbtxt", str(e))
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
            return ModelIO.of_onnx(OnnxInfo.read(regular_file(path, within=repo, what=rel)))
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
        return ModelIO.of_engine(built, rel)
    except (InputError, KeyError, TypeError, ValueError) as e:
        check.add(rel, first_line(e))
        return None


def _compare_io(mc: Any, cfg: Any, io: ModelIO, check: ModelCheck) -> None:
    """max_batch_size, and each input's and output's name, data_type and dims, against ``io``."""
    mbs, reason = cfg.max_batch_size, io.not_batching_reason
    if mbs < 0:
        check.add("max_batch_size", f"config {mbs}, must be 0 or more")
    elif mbs > 0 and reason is not None:
        check.add("max_batch_size", f"config {mbs}, model 0 ({reason})")
    elif mbs > io.max_batch:
        check.add("max_batch_size", f"config {mbs}, model {io.max_batch} ({io.limit_from}'s max batch)")
    elif mbs == 0 and reason is None:
        check.add(
            "max_batch_size",
            f"config 0, model batches up to {io.max_batch}: Triton's auto-complete would set max_batch_size itself",
        )
    batched = mbs > 0 and reason is None
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
            try:
                dims = t.triton_dims(batched)
            except InputError as e:  # a batching model's rank-1 tensor: no dims Triton could take
                check.add(f"{kind}[{i}].dims", first_line(e))
                continue
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
