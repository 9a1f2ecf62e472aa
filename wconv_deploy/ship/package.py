"""Package an exported model as a Triton Inference Server model repository entry.

:func:`package` writes one model entry::

    REPO/NAME/config.pbtxt                 Triton's ModelConfig (:mod:`wconv_deploy.ship.config`)
    REPO/NAME/VERSION/model.onnx           platform onnxruntime_onnx, or
    REPO/NAME/VERSION/model.plan           platform tensorrt_plan: one engine, or
    REPO/NAME/VERSION/model.sm90.plan ...  one engine per GPU compute capability (cc_model_filenames)
    REPO/NAME/manifest.json                sha256 of every file, where each came from, the options

The entry is written into a hidden folder inside REPO (the same file system, so that renames are
atomic), checked with :func:`~wconv_deploy.ship.check.check_folder`, and only then renamed to
REPO/NAME, replacing an existing entry (all its versions: one config covers every version, and
the check vouches only for files it wrote). A failure leaves the repository as it was. (Triton
polls hidden folders too: one that polls during those seconds logs an error for the staging
folder and carries on.) The entry gets the modes an ordinary tool gives (0755 folders, 0644 files
under umask 022), so a Triton running as another user can read it.

Nothing leaves its folder: the ONNX file is read through :class:`~wconv_deploy.artifacts.OnnxInfo`,
so every external-data file it names (initializers and ``Constant`` values alike) is a regular
file inside its folder, and only those checked files are copied, from the descriptor that was
checked. REPO/NAME itself must not be a symlink: replacing it would write elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wconv_deploy.artifacts import BuildManifest, OnnxInfo, graph_io, manifest_path, read_onnx
from wconv_deploy.errors import InputError, MismatchError
from wconv_deploy.fileio import file_sha256, open_regular, regular_file, staging_dir
from wconv_deploy.golden import ENTRY_GOLDEN, golden_path, read_golden
from wconv_deploy.reports import Report
from wconv_deploy.ship.check import CheckReport, check_folder
from wconv_deploy.ship.config import (
    DEFAULT_FILENAME,
    KINDS,
    MODEL_NAME,
    ONNX_PLATFORM,
    TRT_PLATFORM,
    ModelIO,
    artifact_kind,
    config_text,
    model_config_pb2,
)

Progress = Callable[[str], None]

#: A folder name's limit on Linux file systems (NAME_MAX), in bytes.
NAME_MAX = 255
#: The longest model name: its staging folder ``.NAME.xxxxxxxx.tmp`` (and the replaced entry's
#: ``.NAME.xxxxxxxx.old``) must fit in NAME_MAX too.
MAX_NAME_BYTES = NAME_MAX - len("..xxxxxxxx.tmp")


@dataclass
class _Artifact:
    """One model file to copy into the version folder, and what manifest.json records of it."""

    source: Path
    file: str
    io: ModelIO
    provenance: dict[str, Any]
    data_files: list[str] = field(default_factory=list)  # an ONNX file's external data, copied by name
    built: BuildManifest | None = None  # an engine's manifest, written beside it
    golden: Path | None = None  # its golden file (wconv_deploy.golden), copied as VERSION/model.golden.npz


@dataclass
class PackageReport(Report):
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
    accelerator: str | None = None,
    warmup: bool = False,
    progress: Progress | None = None,
) -> PackageReport:
    """Write ``artifacts`` (one exported ONNX file, or TensorRT engines with their manifests) as
    the Triton model ``REPO/NAME``, check it offline, and return the report.

    ``max_batch`` defaults to the largest batch of the input spec or profile (0 for a model that
    does not batch); ``kind`` to ``gpu`` for engines and ``cpu`` for ONNX. ``accelerator`` (an ONNX
    model on GPUs) and ``warmup`` go into config.pbtxt (:func:`config_text`). Raises InputError for
    unusable artifacts or options, before anything is written; the repository is unchanged by any
    failure (or signal).
    """
    say = progress or (lambda _msg: None)
    model_config_pb2()
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
    io = min((a.io for a in sources), key=lambda io: io.max_batch)  # every engine must take the batch
    kind = kind or ("gpu" if platform == TRT_PLATFORM else "cpu")
    if platform == TRT_PLATFORM and kind == "cpu":
        raise InputError("--kind cpu: TensorRT engines run only on GPUs; give --kind gpu (the default for engines)")
    mbs = io.max_batch_size(max_batch)
    if dynamic_batching and mbs == 0:
        raise InputError(f"--dynamic-batching needs a model that batches; this one does not ({io.not_batching_reason})")
    if accelerator is not None and (platform != ONNX_PLATFORM or kind != "gpu"):
        raise InputError(
            f"--accelerator {accelerator}: ONNX Runtime's TensorRT accelerator is for an ONNX model on GPUs (--kind gpu)"
        )
    if any(not 1 <= b <= mbs for b in preferred_batch):
        raise InputError(f"--preferred-batch {','.join(map(str, preferred_batch))}: each size must be 1 to max_batch_size {mbs}")

    text = config_text(
        name,
        platform,
        io,
        mbs,
        sources[0].file,
        cc_files={a.provenance["compute_capability"]: a.file for a in sources} if len(sources) > 1 else None,
        instances=instances,
        kind=kind,
        dynamic_batching=dynamic_batching,
        preferred_batch=preferred_batch,
        max_queue_delay_us=max_queue_delay_us,
        accelerator=accelerator,
        warmup=warmup,
    )
    options = {
        "max_batch": max_batch,
        "instances": instances,
        "kind": kind,
        "dynamic_batching": dynamic_batching,
        "preferred_batch": list(preferred_batch),
        "max_queue_delay_us": max_queue_delay_us,
        "accelerator": accelerator,
        "warmup": warmup,
    }

    created = not repo_path.exists()
    repo_path.mkdir(exist_ok=True)
    try:
        with staging_dir(repo_path, f".{name}.") as stage:
            say(f"writing {name} into {repo_path} (staged in {stage.name})")
            files = _write_entry(stage, name, version, platform, sources, text, options)  # modes from the umask
            say("checking the entry offline")
            check = CheckReport(os.fspath(repo_path), [check_folder(stage, name, repo_path)])
            if not check.passed:
                raise MismatchError(f"the packaged model {name} fails its own check (a wconv-deploy bug; nothing written)", check)
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
    if not MODEL_NAME.match(name):
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
        if artifact_kind(p) is None:
            raise InputError(f"{p}: not an ONNX file or a TensorRT engine (.onnx, .plan, .engine)")
        regular_file(p)
    onnx_files = [p for p in paths if artifact_kind(p) == "onnx"]
    if onnx_files and len(onnx_files) < len(paths):
        raise InputError("one Triton model is an ONNX file or TensorRT engines, not both: package each under its own --name")
    if len(onnx_files) > 1:
        raise InputError("one Triton model holds one ONNX file: package each under its own --name")
    if onnx_files:
        path = onnx_files[0]
        say(f"reading {path.name}")
        info = OnnxInfo.read(path)  # external data checked: regular files inside its folder
        for location in info.external_data:
            if Path(location).name != location:
                raise InputError(f"{path.name}: its external data {location!r} is not a file beside it")
        artifact = _Artifact(
            path, DEFAULT_FILENAME[ONNX_PLATFORM], ModelIO.of_onnx(info), {"metadata": info.metadata}, info.external_data
        )
        notes: list[str] = []
        artifact.golden = _golden_for(path, file_sha256(path), notes)
        return ONNX_PLATFORM, [artifact], notes
    return _read_engines(paths, say)


def _read_engines(paths: list[Path], say: Progress) -> tuple[str, list[_Artifact], list[str]]:
    sources: list[_Artifact] = []
    for path in paths:
        say(f"reading the manifest of {path.name}")
        if not os.path.lexists(manifest_path(path)):
            raise InputError(
                f"{path} has no manifest {manifest_path(path).name}: packaging needs the shapes and GPU it records; "
                "build the engine with wconv-deploy build"
            )
        built = BuildManifest.read(manifest_path(path), within=path.parent)
        if built.io is None:  # a manifest from before the inputs and outputs were recorded
            built = replace(built, io=_io_from_source(built, path))
        cc = built.compute_capability
        file = "model.plan" if len(paths) == 1 else f"model.sm{cc.replace('.', '')}.plan"
        provenance = {"compute_capability": cc, "build_manifest": built.to_dict()}
        sources.append(_Artifact(path, file, ModelIO.of_engine(built, path.name), provenance, built=built))
    ccs = [a.provenance["compute_capability"] for a in sources]
    if len(set(ccs)) < len(ccs):
        twice = next(cc for cc in ccs if ccs.count(cc) > 1)
        raise InputError(f"several engines are built for sm {twice}: give one engine per compute capability")
    first = sources[0]
    for a in sources[1:]:
        if (a.io.inputs, a.io.outputs) != (first.io.inputs, first.io.outputs):
            raise InputError(
                f"{a.source.name} and {first.source.name} have different inputs or outputs: build both from one ONNX file"
            )
    manifests = [a.built for a in sources if a.built is not None]
    versions = sorted({m.tensorrt_version for m in manifests})
    if len(versions) > 1 and not all(m.version_compatible for m in manifests):
        raise InputError(f"the engines were built with TensorRT {' and '.join(versions)}; one Triton release runs one TensorRT")
    notes = [f"serve with a Triton release on TensorRT {versions[-1]}: an engine runs only under the TensorRT that built it"]
    if len(sources) > 1:
        mapping = ", ".join(f"sm {a.provenance['compute_capability']} -> {a.file}" for a in sources)
        notes.append(f"engines by GPU: {mapping}; other GPUs load the default {first.file}")
    if first.built is not None:
        first.golden = _golden_for(first.source, first.built.onnx_sha256, notes)
    return TRT_PLATFORM, sources, notes


def _golden_for(source: Path, sha256: str, notes: list[str]) -> Path | None:
    """The golden file beside ``source`` when it is readable and made for it (the ONNX file's
    sha256, an engine's ONNX's), else None with a note saying why verify will lack it."""
    path = golden_path(source)
    if not os.path.lexists(path):
        notes.append(f"no golden file {path.name} beside {source.name}: verify cannot check this entry")
        return None
    try:
        golden = read_golden(path, within=source.parent)
    except InputError as e:
        notes.append(f"golden file not packaged: {e}")
        return None
    if golden.artifact_sha256 != sha256:
        notes.append(f"golden file not packaged: {path.name} was made for another file than {source.name} (sha256)")
        return None
    return path


def _io_from_source(built: BuildManifest, engine: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs (as a manifest records them) of the ONNX an older manifest names, if it
    is still there unchanged."""
    src = Path(built.onnx_path)
    if not os.path.lexists(src):
        raise InputError(
            f"{engine.name}: its manifest predates recorded inputs and outputs, and its ONNX {src} is gone: rebuild the engine"
        )
    if file_sha256(src) != built.onnx_sha256:
        raise InputError(f"{engine.name}: its ONNX {src} changed since the engine was built: rebuild the engine")
    inputs, outputs = graph_io(read_onnx(src))
    return {"inputs": [asdict(t) for t in inputs], "outputs": [asdict(t) for t in outputs]}


def _write_entry(
    stage: Path, name: str, version: int, platform: str, sources: list[_Artifact], config: str, options: dict[str, Any]
) -> dict[str, str]:
    """Write config.pbtxt, the model files and manifest.json into ``stage``; returns each file's sha256."""
    from wconv_deploy._version import __version__

    (stage / "config.pbtxt").write_text(config)
    folder = stage / str(version)
    folder.mkdir()
    for a in sources:
        _copy_file(a.source, folder / a.file)
        if a.built is not None:  # beside the engine, so the trt runtime checks it before loading
            (folder / f"{a.file}.json").write_text(a.built.to_json())
        for data in a.data_files:  # checked by read_onnx: regular files in the ONNX file's folder
            _copy_file(a.source.parent / data, folder / data, within=a.source.parent)
        if a.golden is not None:  # read and matched by _golden_for
            _copy_file(a.golden, folder / ENTRY_GOLDEN, within=a.source.parent)
    files = {p.relative_to(stage).as_posix(): file_sha256(p, within=stage) for p in sorted(stage.rglob("*")) if p.is_file()}
    manifest = {
        "name": name,
        "version": version,
        "platform": platform,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wconv_deploy_version": __version__,
        "options": options,
        "files": files,
        "golden": next((f"{version}/{ENTRY_GOLDEN}" for a in sources if a.golden is not None), None),
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
