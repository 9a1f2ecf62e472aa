"""Serve an exported model over Triton's HTTP and gRPC protocols on 127.0.0.1, for local testing.

PyTriton (the ``serve`` extra) starts NVIDIA's Triton Inference Server as a child process and
hands every request to a Python callable in this process, which runs the model through a
wconv-deploy :class:`~wconv_deploy.runtimes.Runtime` (ONNX Runtime, OpenVINO or a TensorRT
engine). Clients see a real Triton server: metadata, model config, health and inference over
both protocols, with Triton's dynamic batcher merging requests up to the model's batch range.

What a served model is comes from the shared shape spec: an ONNX file's stored input spec, an
engine's build manifest (``ENGINE.json``: its optimisation profile), or a model folder written
by ``wconv-deploy package`` (``config.pbtxt`` for the name and ``max_batch_size``, the highest
version folder for ``model.onnx``/``model.plan``). Whether it batches, and up to which size, is
decided as ``package`` decides it (:func:`~wconv_deploy.ship.config.max_batch_size`: the one
rule of :meth:`~wconv_deploy.spec.InputSpec.batches`, outputs included). Every file read from a
model folder is a regular file inside it (a symlink out of it is refused), and ONNX files and
engine manifests are read only through :mod:`wconv_deploy.artifacts`.

Readiness is honest. The model is written into PyTriton's model store before Triton starts, and
Triton (strict readiness) loads it while starting and opens its ports only then: HTTP
``/v2/health/ready`` and gRPC ``ServerReady`` never answer ready without the model. (PyTriton's
default loads the model through the repository API after Triton is up, so Triton reported ready
and answered 404 for the model meanwhile.) ``serve`` prints its "ready" line once one inference
has gone through Triton.

The environment Triton's Python backend needs is provided here, not asked of the user:

* its stub process embeds ``libpython``; with a Python outside the system paths (pyenv, a
  custom build) the loader would pick the system's libpython of another patch release, whose
  stdlib does not match, so this Python's ``LIBDIR`` goes first on ``LD_LIBRARY_PATH``. A
  Python without a shared libpython cannot host the backend: a one-line error says so;
* requests cross processes through ``/dev/shm``; a small one (Docker's default 64 MB) gets a
  warning naming ``--shm-size``;
* PyTriton's workspace (with copies of Triton's programs, so not on a noexec mount) and
  Triton's log live in a private temporary folder (not ``~/.cache``), removed on stop; the
  log's last error line explains a failed start;
* the ports are checked (or chosen) before Triton starts, so a busy one is a clear error.

Stopping (SIGINT, SIGTERM, an error) has PyTriton stop Triton, which removes what it made: the
Python backend's shared-memory regions (``/dev/shm/pytrtion<pid>-*``) and its ``/tmp/python_env_*``
folder (in /tmp whatever TMPDIR says), PyTriton's tensor-store segments (``/dev/shm/psm_*``).
Then whatever still runs of the server (processes naming the private folder, and their
children) is frozen, the segments it maps are noted, and it is killed; those segments, the
backend's regions and folder, and the private folder are removed. So nothing outlives the
:class:`Server`, also when Triton hung, crashed or was killed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import signal
import socket
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from wconv_deploy._optional import require
from wconv_deploy.artifacts import BuildManifest, OnnxInfo, manifest_path
from wconv_deploy.errors import InputError, first_line
from wconv_deploy.fileio import read_text, regular_file
from wconv_deploy.interrupts import signals_as_interrupts
from wconv_deploy.runtimes import registry
from wconv_deploy.ship.config import MAX_TEXT_BYTES, MODEL_NAME, artifact_kind, max_batch_size, parse_config
from wconv_deploy.spec import InputSpec, Tensor

if TYPE_CHECKING:
    from wconv_deploy.runtimes.base import Runtime

HOST = "127.0.0.1"
#: Where Triton's Python backend and PyTriton's tensor store keep their shared memory.
SHM = "/dev/shm"
#: Below this much free space in /dev/shm, larger requests may fail: warn.
SHM_WARN_BYTES = 256 << 20
#: Seconds Triton gives requests in flight to finish when it stops (its exit timeout). Every stop
#: takes at least this long: PyTriton unloads the model only after Triton has exited, so Triton
#: always waits the whole timeout. A request to a model served here takes far less.
DRAIN_S = 1
#: The runtime each artifact kind is served with unless one is named.
DEFAULT_RUNTIME = {"onnx": "ort-cpu", "engine": "trt"}

Progress = Callable[[str], None]

# PyTriton logs warnings of its own ("Triton Inference Server exited with failure"); the errors
# raised here say what happened in one line, so its records reach only handlers an application sets.
logging.getLogger("pytriton").addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- what to serve


def serving_runtimes() -> list[str]:
    """The runtimes ``serve`` may run an artifact with (the registry's entries with ``serves``)."""
    return [e.name for e in registry.entries() if e.serves]


@dataclass(frozen=True)
class ServedModel:
    """A resolved serve target: the artifact, the runtime that runs it and its inputs.
    ``max_batch`` is Triton's ``max_batch_size`` (0: the model does not batch, by the one rule of
    :meth:`~wconv_deploy.spec.InputSpec.batches`); ``outputs`` the graph's outputs (an engine's
    from its build manifest; empty for a manifest that predates recorded outputs)."""

    name: str
    artifact: Path
    runtime: str
    spec: InputSpec
    max_batch: int
    version: int = 1
    outputs: tuple[Tensor, ...] = ()


def resolve_target(
    target: str | os.PathLike[str], *, name: str | None = None, runtime: str | None = None, max_batch: int | None = None
) -> ServedModel:
    """What serving ``target`` means: an ONNX file, a TensorRT engine (``.plan``/``.engine``
    with its manifest), a model folder (``config.pbtxt`` and version folders) or a model
    repository (folders of those; ``name`` picks one when there are several).

    ``runtime`` defaults to ``ort-cpu`` for ONNX and ``trt`` for engines; ``max_batch``
    defaults to ``config.pbtxt``'s, else the spec's batch maximum, and cannot exceed the latter.
    Every file read in a model folder (config, model, engine manifest) is a regular file inside it.
    InputError (one line) for anything that cannot be served."""
    if runtime is not None and runtime not in serving_runtimes():
        raise InputError(f"runtime {runtime!r} cannot serve a file (use one of: {', '.join(serving_runtimes())})")
    path = Path(target)
    version, config_batch, folder = 1, None, path.parent
    if path.is_dir():
        model_dir = _model_dir(path, name)
        config = _read_config(model_dir / "config.pbtxt", model_dir)
        name = name or config.name or model_dir.name
        config_batch = config.max_batch_size or None
        version, path = _artifact_in(model_dir, runtime, _engine_file_for_this_gpu(config))
        folder = model_dir
    else:
        regular_file(path)
    kind = artifact_kind(path)
    if kind is None:
        raise InputError(f"{path} is not an ONNX file (.onnx), a TensorRT engine (.plan, .engine) or a model folder")
    entry = registry.get(runtime or DEFAULT_RUNTIME[kind])
    if entry.kind != kind:
        raise InputError(f"runtime {entry.name} needs {registry.KIND_NAMES[entry.kind]}, not {path.name}")
    spec, outputs, limit_from = _engine_io(path, folder) if kind == "engine" else _onnx_io(path)
    name = name or path.stem
    if not MODEL_NAME.match(name):
        raise InputError(f"{name!r} is not a valid model name (letters, digits, '_', '.', '-')")
    batch = max_batch_size(spec, outputs, max_batch, limit_from)
    if max_batch is None and config_batch and batch:
        batch = min(config_batch, batch)
    return ServedModel(name, path, entry.name, spec, batch, version, outputs)


def _model_dir(path: Path, name: str | None) -> Path:
    """``path`` itself if it holds a config.pbtxt, else its one model folder (or the one named)."""
    if os.path.lexists(path / "config.pbtxt"):
        return path
    models = sorted(d.name for d in path.iterdir() if os.path.lexists(d / "config.pbtxt"))
    if name in models:
        return path / str(name)
    if len(models) == 1 and name is None:
        return path / models[0]
    if not models:
        raise InputError(f"{path} is not a model repository: no folder in it holds a config.pbtxt")
    wanted = f"no model {name!r}" if name else "several models"
    raise InputError(f"{path}: {wanted}; pick one with --name ({', '.join(models)})")


def _read_config(path: Path, model_dir: Path) -> Any:
    """``config.pbtxt`` (a regular file inside ``model_dir``) as Triton's ModelConfig message."""
    text = read_text(path, within=model_dir, limit=MAX_TEXT_BYTES)
    try:
        return parse_config(text)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _artifact_in(model_dir: Path, runtime: str | None, engine_file: str = "model.plan") -> tuple[int, Path]:
    """The highest version folder's model file: the one ``runtime`` runs, else model.onnx, else
    the engine (``engine_file``: the one config.pbtxt names for this GPU)."""
    by_kind = {"onnx": ["model.onnx"], "engine": [engine_file]}
    names = by_kind[registry.get(runtime).kind] if runtime else ["model.onnx", engine_file]
    versions = sorted((int(d.name) for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()), reverse=True)
    for v in versions:
        for file in names:
            if os.path.lexists(model_dir / str(v) / file):
                return v, regular_file(model_dir / str(v) / file, within=model_dir)
    raise InputError(f"{model_dir}: no version folder holds {' or '.join(names)}")


def _engine_file_for_this_gpu(config: Any) -> str:
    """The engine Triton would load here: cc_model_filenames' entry for this GPU's compute
    capability, else default_model_filename, else model.plan."""
    default = config.default_model_filename or "model.plan"
    if not config.cc_model_filenames:
        return str(default)
    try:
        import torch

        major, minor = torch.cuda.get_device_capability(0)
    except Exception:  # no CUDA device: the default file (the trt runtime will say why it cannot run)
        return str(default)
    return str(config.cc_model_filenames.get(f"{major}.{minor}", default))


def _engine_io(path: Path, folder: Path) -> tuple[InputSpec, tuple[Tensor, ...], str]:
    """An engine's input spec and outputs from its build manifest (a regular file inside ``folder``)."""
    if not os.path.lexists(manifest_path(path)):
        raise InputError(f"{path} has no manifest {manifest_path(path).name}: serve engines made by wconv-deploy build")
    built = BuildManifest.read(manifest_path(path), within=folder)
    outputs = built.tensors(path.name)[1] if built.io is not None else ()
    return built.spec(path.name), outputs, "the profile"


def _onnx_io(path: Path) -> tuple[InputSpec, tuple[Tensor, ...], str]:
    """An exported ONNX file's input spec and outputs, read once through the artifact layer
    (external data inside its folder; bad types and shapes refused)."""
    info = OnnxInfo.read(path)
    return info.spec, info.outputs, "the input spec"


# --------------------------------------------------------------------------- the server


class Server:
    """A running Triton server for one model; a context manager that stops it on exit.

    ``http_url`` and ``grpc_url`` (``http://127.0.0.1:PORT``, ``grpc://127.0.0.1:PORT``) are
    what :func:`~wconv_deploy.ship.loadtest.loadtest` and tritonclient take (tritonclient wants
    them without the scheme)."""

    def __init__(self, triton: Any, model: ServedModel, http_port: int, grpc_port: int, workdir: Path) -> None:
        self._triton = triton
        self._workdir = workdir
        self._stopped = False
        self._shm: set[str] = set()  # PyTriton's tensor-store segments the server's processes mapped
        self._shm_prefix: str | None = None  # the Python backend's region prefix, from Triton's command line
        self._envs_before = _python_envs()  # to tell which /tmp/python_env_* Triton's Python backend made
        self._python_env: Path | None = None
        self.model = model
        self.model_name = model.name
        self.http_url = f"http://{HOST}:{http_port}"
        self.grpc_url = f"grpc://{HOST}:{grpc_port}"

    def pids(self) -> list[int]:
        """The server's processes (Triton, its backend stubs, PyTriton's tensor store, their children)."""
        return _processes_naming(str(self._workdir))

    def is_alive(self) -> bool:
        return not self._stopped and bool(self._triton.is_alive())

    def stop(self) -> None:
        """Stop Triton and every process of it, and remove what they made; idempotent.

        PyTriton stops Triton (whose Python backend removes its shared-memory regions and its
        /tmp/python_env_* folder, and whose tensor store unlinks its segments) and then our
        handlers. Whatever still runs after that is frozen, its segments noted, and killed; then
        every segment and region noted, that folder and the private workspace are removed, so
        nothing is left also when Triton died, hung or was killed."""
        if self._stopped:
            return
        self._stopped = True
        self._note()
        try:  # PyTriton echoes Triton's own stdout ("Signal (2) received."): keep ours clean
            with contextlib.redirect_stdout(io.StringIO()):
                self._triton.stop()
        finally:  # also after a failed stop: nothing may outlive the server
            pids = self.pids()
            _signal(pids, signal.SIGSTOP)  # frozen, they cannot make another segment before they die
            self._shm |= _mapped_segments(pids)
            _signal(pids, signal.SIGKILL)
            prefix = self._shm_prefix
            for entry in self._shm | {n for n in _listdir(SHM) if prefix and n.startswith(prefix)}:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM, entry))
            if self._python_env is not None:
                shutil.rmtree(self._python_env, ignore_errors=True)
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _note(self) -> list[int]:
        """The server's processes, noting what they made that stop must remove: the tensor-store
        segments they map, the backend's region prefix and (the one new) python_env folder."""
        pids = self.pids()
        self._shm |= _mapped_segments(pids)
        self._shm_prefix = self._shm_prefix or _backend_shm_prefix(pids)
        if self._python_env is None and pids:
            new = _python_envs() - self._envs_before
            self._python_env = new.pop() if len(new) == 1 else None  # another Triton starting meanwhile: unknown
        return pids

    def _wait_until_ready(self, timeout_s: float = 120.0) -> None:
        """Return once Triton reports ready (it opens its ports only after loading the model), or
        raise InputError at once with the log's error if Triton exits first."""
        http = require("tritonclient.http", "serve")
        client = http.InferenceServerClient(self.http_url.removeprefix("http://"), connection_timeout=2, network_timeout=2)
        begin, started = time.monotonic(), False
        deadline = begin + timeout_s
        try:
            while True:
                with contextlib.suppress(Exception):  # refused until Triton listens; each client raises its own
                    if client.is_server_ready():
                        self._note()
                        return
                pids = self.pids()
                self._shm_prefix = self._shm_prefix or _backend_shm_prefix(pids)
                started = started or bool(pids)
                if not pids and (started or time.monotonic() > begin + 10):  # exited, or never seen running
                    raise InputError(f"Triton exited while loading the model: {self.log_error() or 'see its log'}")
                if time.monotonic() > deadline:
                    raise InputError(f"Triton is not ready after {timeout_s:g} s: {self.log_error() or 'see its log'}")
                time.sleep(0.05)
        finally:
            client.close()

    def _first_answer(self) -> None:
        """One inference through Triton (HTTP, the spec's optimum shapes, the batch clipped to
        max_batch_size): the model answers before ``serve`` says it is ready."""
        from wconv_deploy.ship.loadtest import infer_inputs

        http = require("tritonclient.http", "serve")
        client = http.InferenceServerClient(self.http_url.removeprefix("http://"))
        try:
            arrays = {
                t.name: x.numpy()[: self.model.max_batch] if self.model.max_batch else x.numpy()
                for t, x in zip(self.model.spec.inputs, self.model.spec.example_inputs())
            }
            client.infer(self.model_name, infer_inputs(http, arrays), model_version=str(self.model.version))
        except Exception as e:  # tritonclient's and the transport's errors
            raise InputError(f"the model does not answer through Triton: {first_line(e)}") from None
        finally:
            client.close()

    def log_error(self) -> str | None:
        """The last error line in Triton's log, if any (it explains a failed start)."""
        try:
            lines = (self._workdir / "tritonserver.log").read_text(errors="replace").splitlines()
        except OSError:
            return None
        errors = [ln.split("] ", 1)[-1].strip() for ln in lines if ln.startswith("E")]
        if not errors:
            return None
        # one line: the message's start and, when it quotes a Python traceback, its final error
        text = [t.strip() for t in errors[-1].strip('"').replace('\\"', '"').split("\\n") if t.strip()]
        head = text[0].removesuffix("Traceback (most recent call last):").strip()
        raised = [t for t in text[1:] if re.match(r"^[\w.]+(Error|Exception)\b", t)]
        return f"{head} {raised[-1]}" if raised else head

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_server(
    target: str | os.PathLike[str],
    *,
    name: str | None = None,
    http_port: int = 0,
    grpc_port: int = 0,
    runtime: str | None = None,
    max_batch: int | None = None,
    trust_code: bool = False,
    progress: Progress | None = None,
) -> Server:
    """Serve ``target`` (see :func:`resolve_target`) on 127.0.0.1 and return once the model is
    loaded and has answered an inference through Triton. Port 0 picks a free port. Use as
    ``with start_server(...) as server:``; the server, its processes and everything they made are
    removed on exit, also on an exception or a signal. ``trust_code`` lets a version-compatible
    TensorRT engine run the code embedded in it."""
    say = progress or (lambda _msg: None)
    triton_mod = require("pytriton.triton", "serve")
    config_mod = require("pytriton.model_config", "serve")
    model = resolve_target(target, name=name, runtime=runtime, max_batch=max_batch)
    libdir = _libpython_dir()
    say(f"loading {model.artifact} with {model.runtime}")
    rt = registry.create(
        model.runtime,
        registry.Artifacts(onnx_path=model.artifact, engine_path=model.artifact, spec=model.spec, trust_code=trust_code),
    )
    inputs, outputs = _signature(model, rt)
    http_port, grpc_port = _free_ports(http_port, grpc_port)
    _check_shm(say)

    workdir = _workdir()
    config = triton_mod.TritonConfig(
        http_address=HOST,
        http_port=http_port,
        grpc_address=HOST,
        grpc_port=grpc_port,
        allow_metrics=False,
        log_file=workdir / "tritonserver.log",
        exit_timeout_secs=DRAIN_S,
        strict_readiness=True,
    )
    # The model goes into PyTriton's model store before Triton starts, and Triton loads it while
    # starting (PyTriton's default loads it through the repository API once Triton is up, which
    # reports ready without it, and has Triton copy it to a /tmp/folderXXXXXX of its own).
    policy = triton_mod.TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=True)
    triton = triton_mod.Triton(config=config, workspace=workdir / "workspace", triton_lifecycle_policy=policy)
    start = time.perf_counter()
    server = Server(triton, model, http_port, grpc_port, workdir)
    try:
        triton.bind(
            model_name=model.name,
            model_version=model.version,
            infer_func=_infer_function(rt, model, [o.name for o in outputs]),
            inputs=[_pytriton_tensor(config_mod, t, model) for t in inputs],
            outputs=[_pytriton_tensor(config_mod, t, model) for t in outputs],
            config=config_mod.ModelConfig(batching=bool(model.max_batch), max_batch_size=model.max_batch),  # dynamic batcher
        )
        say(f"starting Triton Inference Server on {HOST} (http {http_port}, grpc {grpc_port})")
        with contextlib.redirect_stdout(io.StringIO()):  # PyTriton echoes Triton's console; its errors reach ours
            with _prepended_env("LD_LIBRARY_PATH", libdir):
                triton._run_server()  # PyTriton's run() would wait two minutes for a Triton that exited at once
            server._wait_until_ready()
            triton.connect()  # PyTriton's handlers attach to the loaded model (requests wait for them meanwhile)
        server._first_answer()
    except Exception as e:
        detail = str(e) if isinstance(e, InputError) else server.log_error() or first_line(e)
        server.stop()
        raise InputError(f"Triton Inference Server did not start: {detail}") from None
    except BaseException:
        server.stop()
        raise
    say(f"serving {model.name} (version {model.version}, max batch {model.max_batch}) in {time.perf_counter() - start:.1f} s")
    return server


def serve(
    target: str | os.PathLike[str],
    *,
    name: str | None = None,
    http_port: int = 0,
    grpc_port: int = 0,
    runtime: str | None = None,
    max_batch: int | None = None,
    trust_code: bool = False,
    progress: Progress | None = None,
) -> None:
    """Serve ``target`` until SIGINT or SIGTERM (the CLI's ``serve``), saying "ready" once the
    model answers. Either signal stops Triton, removes everything the server made and raises
    :class:`~wconv_deploy.errors.Interrupted` (the CLI: one line, exit 130 or 143); a second
    signal during that cleanup is ignored. InputError if the server dies."""
    say = progress or (lambda _msg: None)
    with (
        signals_as_interrupts(),
        start_server(
            target,
            name=name,
            http_port=http_port,
            grpc_port=grpc_port,
            runtime=runtime,
            max_batch=max_batch,
            trust_code=trust_code,
            progress=progress,
        ) as server,
    ):
        say(f"{server.model_name} ready at {server.http_url} and {server.grpc_url}; Ctrl-C stops")
        while server.is_alive():
            time.sleep(0.5)
        error = server.log_error()
    raise InputError("the server stopped unexpectedly" + (f": {error}" if error else ""))


# --------------------------------------------------------------------------- helpers


def _signature(model: ServedModel, rt: Runtime) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """The inputs and outputs Triton serves. A warm-up run at the optimum shapes checks the
    runtime and gives the outputs' dtypes; their shapes come from the graph when it is known
    (-1 for every axis otherwise: an engine whose manifest predates recorded outputs)."""
    feeds = {t.name: x.numpy() for t, x in zip(model.spec.inputs, model.spec.example_inputs())}
    try:
        results = rt.run(feeds)
    except Exception as e:  # each runtime raises its own types
        raise InputError(f"{model.runtime} cannot run {model.artifact.name}: {first_line(e)}") from None
    names = [o.name for o in model.outputs] or rt.output_names
    if len(names) != len(results):
        raise InputError(f"{model.artifact.name} declares {len(names)} outputs but {model.runtime} returned {len(results)}")
    shapes = [o.shape for o in model.outputs] or [None] * len(results)
    outputs = [Tensor(n, r.dtype.name, s if s is not None else (-1,) * r.ndim) for n, r, s in zip(names, results, shapes)]
    return model.spec.tensors, outputs


def _pytriton_tensor(config_mod: Any, t: Tensor, model: ServedModel) -> Any:
    """PyTriton's description of ``t``: Triton's dims (without axis 0 when the model batches)."""
    return config_mod.Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=tuple(t.triton_dims(model.max_batch > 0)))


def _infer_function(rt: Runtime, model: ServedModel, output_names: list[str]) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """PyTriton's callable: requests (dicts of arrays) in, one dict of outputs per request out.
    With batching, the requests the dynamic batcher groups (same shapes) run as one batch. The
    runtime checks the feeds against the spec, so a client sending outside its ranges gets that
    one-line message, not a backend's."""
    names = model.spec.names

    def infer(requests: list[Any]) -> list[dict[str, Any]]:
        if not model.max_batch:
            return [dict(zip(output_names, rt.run({n: r[n] for n in names}))) for r in requests]
        sizes = np.cumsum([len(r[names[0]]) for r in requests])[:-1]
        results = rt.run({n: np.concatenate([r[n] for r in requests]) for n in names})
        parts = [np.split(x, sizes) for x in results]
        return [{n: p[i] for n, p in zip(output_names, parts)} for i in range(len(requests))]

    return infer


def _libpython_dir() -> str:
    """This Python's LIBDIR, which must hold its shared libpython (the backend stub loads it)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not (Path(libdir) / str(soname)).is_file():
        raise InputError(
            "this Python has no shared libpython, which Triton's Python backend loads: use a Python built "
            "with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install ...)"
        )
    return str(libdir)


@contextlib.contextmanager
def _prepended_env(key: str, value: str) -> Iterator[None]:
    """``os.environ[key]`` with ``value`` first while the server process starts (it copies the environment)."""
    old = os.environ.get(key)
    os.environ[key] = value + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _free_ports(*wanted: int) -> list[int]:
    """The ports asked for (InputError if one is taken on 127.0.0.1), a free one for each 0."""
    sockets = []
    try:
        for port in wanted:
            s = socket.socket()
            sockets.append(s)
            try:
                s.bind((HOST, port))
            except OSError:
                raise InputError(f"port {port} on {HOST} is in use; pick another (0: any free port)") from None
        if len({s.getsockname()[1] for s in sockets}) != len(sockets):
            raise InputError(f"the HTTP and gRPC ports must differ (got {', '.join(map(str, wanted))})")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


#: The longest workspace path with which PyTriton's sockets still start (measured: 71 works, 86 fails).
MAX_WORKDIR_CHARS = 72


def _workdir() -> Path:
    """A private temporary folder for PyTriton's workspace, from which Triton's binaries run."""
    workdir = Path(tempfile.mkdtemp(prefix="wconv-serve-"))
    if len(str(workdir)) > MAX_WORKDIR_CHARS:  # Unix socket paths inside it must fit in 108 bytes
        workdir.rmdir()
        raise InputError(
            f"TMPDIR {workdir.parent} is too long a path for Triton's local sockets: set TMPDIR to a shorter folder (e.g. /tmp)"
        )
    if os.statvfs(workdir).f_flag & os.ST_NOEXEC:
        workdir.rmdir()
        raise InputError(f"{workdir.parent} is mounted noexec and Triton runs from there: set TMPDIR to another folder")
    return workdir


def _check_shm(say: Progress) -> None:
    try:
        free = shutil.disk_usage(SHM).free
    except OSError:
        raise InputError(f"{SHM} is missing; Triton's Python backend passes tensors through it") from None
    if free < SHM_WARN_BYTES:
        say(f"warning: only {free >> 20} MiB free in /dev/shm; large requests may fail (docker run --shm-size=1g)")


def _processes_naming(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``, and all their descendants (Linux /proc)."""
    parent: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:  # it just exited
            continue
        parent[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if marker.encode() in cmdline:
            found.add(int(entry))
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _mapped_segments(pids: list[int]) -> set[str]:
    """The tensor-store segments (``/dev/shm/psm_*``, Python's shared_memory names) that ``pids``
    map: PyTriton's tensor store keeps each segment it made mapped until it unlinks it."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:  # it just exited
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(f"{SHM}/psm_") and not fields[5].endswith(" (deleted)"):
                names.add(fields[5].removeprefix(f"{SHM}/"))
    return names


def _backend_shm_prefix(pids: list[int]) -> str | None:
    """The prefix of the Python backend's shared-memory regions, as PyTriton passed it on Triton's
    command line (``--backend-config python,shm-region-prefix-name=PREFIX``)."""
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith("python,shm-region-prefix-name="):
                return arg.removeprefix("python,shm-region-prefix-name=") or None
    return None


def _python_envs() -> set[Path]:
    """This user's ``/tmp/python_env_*`` folders: Triton's Python backend makes one (in /tmp,
    whatever TMPDIR says) and removes it when it shuts down cleanly."""
    uid = os.getuid()
    found = set()
    for name in _listdir("/tmp"):
        path = Path("/tmp", name)
        with contextlib.suppress(OSError):
            if name.startswith("python_env_") and path.lstat().st_uid == uid and path.is_dir():
                found.add(path)
    return found
