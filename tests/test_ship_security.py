"""`package`, `package --check` and `serve` at the file boundary and on signals: nothing read or
copied from outside an artifact's folder, ordinary modes, refusals before anything is written,
honest readiness, and nothing left in /tmp or /dev/shm however a server stops. Each test checks the
copied files, listings, mode bits, HTTP answers or leftovers, so it can fail."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.contract import assert_one_line_error, finishes, invoke
from tests.serving import infer as _infer
from tests.serving import model as _model
from tests.serving import needs_pytriton
from tests.serving import proc_state as _state
from tests.serving import reference as _reference
from wconv_deploy.errors import InputError
from wconv_deploy.exporters.onnx import export_onnx
from wconv_deploy.exporters.trt_plan import BuildConfig, BuildPlan, manifest_for, profiles_from_spec
from wconv_deploy.ship.check import check_repository
from wconv_deploy.ship.package import package
from wconv_deploy.ship.serve import resolve_target, start_server
from wconv_deploy.spec import InputSpec

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'wconv-deploy[serve]'")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_serve's model, batch 1..4 of 1x64x64, in a folder of its own."""
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    export_onnx(_model(), path, InputSpec.parse("input:1x1x64x64", "batch=1:4"), exporter="torchscript")
    path.with_name("small.onnx.report.json").unlink()
    return path


def listing(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (not following symlinks): file sha256, 'dir', or 'link -> target'."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


_opened: list[str] | None = None  # recording while not None
_hooked = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.realpath(os.fsdecode(args[0])))


def opened_while(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``fn()`` and every file it opened (resolved), seen by an audit hook on Python's ``open`` event
    (``open()`` and ``os.open`` both raise it; a hook cannot be removed, so it records only here)."""
    global _opened, _hooked
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked = True
    _opened = []
    try:
        return finishes(fn), _opened
    finally:
        _opened = None


# --------------------------------------------------------------------------- package: nothing leaves its folder


def _with_external_data(src: Path, folder: Path) -> Path:
    """``src`` saved in ``folder`` with every initializer in the external file ``w.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ext.onnx"
    onnx.save(onnx.load(os.fspath(src)), os.fspath(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def _constant_reading(src: Path, dst: Path, location: str) -> Path:
    """``src`` with an extra Constant node whose value is external data at ``location``."""
    model = onnx.load(os.fspath(src))
    value = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        value.external_data.add(key=k, value=v)
    model.graph.node.append(helper.make_node("Constant", [], ["unused_c"], value=value))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(model.SerializeToString())
    return dst


@pytest.mark.parametrize("how", ["symlinked-data", "constant-dotdot"])
def test_package_refuses_external_data_from_outside_the_folder(small: Path, tmp_path: Path, how: str) -> None:
    secret = tmp_path / "secret.bin"
    if how == "symlinked-data":  # the data file is a symlink to a secret (of the right size: it would load)
        path = _with_external_data(small, tmp_path / "src")
        secret.write_bytes((tmp_path / "src" / "w.bin").read_bytes())
        (tmp_path / "src" / "w.bin").unlink()
        (tmp_path / "src" / "w.bin").symlink_to(secret)
    else:  # a Constant node, not an initializer, names ../secret.bin
        secret.write_bytes(b"\0" * 16)
        path = _constant_reading(small, tmp_path / "src" / "c.onnx", "../secret.bin")
    with pytest.raises(InputError) as e:
        package([path], tmp_path / "repo", "m")
    assert "\n" not in str(e.value) and ("outside" in str(e.value) or "external data" in str(e.value)), str(e.value)
    assert not (tmp_path / "repo").exists()  # nothing copied, not even the repository folder
    assert_one_line_error(invoke("package", path, "--repo", tmp_path / "repo", "--name", "m"), 2)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("umask", "dirs", "files"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)], ids=["umask022", "umask027"])
def test_package_writes_ordinary_modes_and_copies_the_checked_data(
    small: Path, tmp_path: Path, umask: int, dirs: int, files: int
) -> None:
    path = _with_external_data(small, tmp_path / "src")
    old = os.umask(umask)
    try:
        report = package([path], tmp_path / "repo", "m")
    finally:
        os.umask(old)
    entry = tmp_path / "repo" / "m"
    assert sorted(report.files) == ["1/model.onnx", "1/w.bin", "config.pbtxt"]
    assert (entry / "1" / "w.bin").read_bytes() == (tmp_path / "src" / "w.bin").read_bytes()
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [entry, *entry.rglob("*")]}
    assert modes == {
        "repo/m": dirs,
        "repo/m/1": dirs,
        "repo/m/1/model.onnx": files,
        "repo/m/1/w.bin": files,
        "repo/m/config.pbtxt": files,
        "repo/m/manifest.json": files,
    }
    assert stat.S_IMODE((tmp_path / "repo").stat().st_mode) == dirs


def test_package_onto_a_symlinked_entry_is_refused_before_writing(small: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not a model")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "m").symlink_to(elsewhere)
    before = listing(tmp_path)
    with pytest.raises(InputError, match="is a symlink") as e:
        package([small], repo, "m")
    assert "\n" not in str(e.value)
    assert listing(tmp_path) == before  # no .m.*.tmp or .m.*.old beside it, the link and its target untouched
    assert_one_line_error(invoke("package", small, "--repo", repo, "--name", "m"), 2, "symlink")
    assert listing(tmp_path) == before


def test_a_name_too_long_for_a_folder_is_refused_before_anything_is_created(small: Path, tmp_path: Path) -> None:
    assert_one_line_error(invoke("package", small, "--repo", tmp_path / "repo", "--name", "n" * 300), 2, "--name")
    assert list(tmp_path.iterdir()) == []  # not even --repo
    for length in (300, 242):  # 242: the name fits in 255 bytes, its staging folder .NAME.xxxxxxxx.tmp does not
        with pytest.raises(InputError, match=f"--name is {length} characters long") as e:
            package([small], tmp_path / "repo", "n" * length)
        assert "\n" not in str(e.value)
        assert list(tmp_path.iterdir()) == []
    longest = "n" * 241  # its staging folder's name is 255 bytes
    assert package([small], tmp_path / "repo", longest).check.passed
    assert os.listdir(tmp_path / "repo") == [longest]


def test_a_signal_between_the_renames_puts_the_previous_entry_back(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    package([small], repo, "m")
    before = listing(repo)
    rename = os.rename

    def interrupted(src: Any, dst: Any) -> None:
        if Path(src).name.endswith(".tmp"):  # the staged entry's rename, after the old one moved aside
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        package([small], repo, "m", max_batch=2)
    assert listing(repo) == before  # the previous entry, no .m.*.old, no .m.*.tmp


# --------------------------------------------------------------------------- package --check: nothing read outside


def test_check_flags_what_leads_out_of_the_repository_and_never_reads_it(small: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(b"s3cret " * 100)
    secret_sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    package([small], outside / "r", "evil")  # a valid entry, outside the repository
    repo = tmp_path / "repo"
    package([small], repo, "den")
    den = repo / "den"
    (den / "1" / "stolen.bin").symlink_to(secret)
    os.mkfifo(den / "1" / "pipe")
    manifest = json.loads((den / "manifest.json").read_text())
    manifest["files"].update({"1/stolen.bin": "0" * 64, os.fspath(secret): "0" * 64, "../../outside/secret.bin": "0" * 64})
    (den / "manifest.json").write_text(json.dumps(manifest))
    (repo / "evil").symlink_to(outside / "r" / "evil")
    (repo / "fifo").mkdir()
    os.mkfifo(repo / "fifo" / "config.pbtxt")

    report, opened = opened_while(lambda: check_repository(repo))
    problems = {(p.model, p.field): p.message for p in report.problems}
    assert "outside the repository" in problems[("den", "1/stolen.bin")]
    assert "outside the repository" in problems[("evil", "folder")]
    for rel in (os.fspath(secret), "../../outside/secret.bin"):
        assert "outside the model folder" in problems[("den", rel)], problems
    assert "a FIFO" in problems[("den", "1/pipe")] and "a FIFO" in problems[("fifo", "config.pbtxt")]
    assert not report.passed and len(report.problems) == 6, report.render()
    assert not [p for p in opened if Path(p).is_relative_to(tmp_path) and not Path(p).is_relative_to(repo)], opened
    assert not [p for p in opened if Path(p).is_relative_to(repo) and stat.S_ISFIFO(os.stat(p).st_mode)], opened
    assert secret_sha[:12] not in report.render() and secret_sha[:12] not in json.dumps(report.to_dict())
    result = finishes(lambda: invoke("package", "--check", repo))
    assert result.exit_code == 1 and "outside the repository" in result.output and secret_sha[:12] not in result.output


# --------------------------------------------------------------------------- bad input to package and serve


@pytest.fixture(scope="module")
def bad_onnx(small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    (d / "secret.bin").write_bytes(b"\0" * 16)
    cases = {"outside": _constant_reading(small, d / "outside" / "model.onnx", "../secret.bin")}
    model = onnx.load(os.fspath(small))
    model.graph.input[0].type.tensor_type.elem_type = 999
    cases["elem999"] = d / "elem999" / "model.onnx"
    model2 = onnx.load(os.fspath(small))
    model2.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**40
    cases["dim2^40"] = d / "huge" / "model.onnx"
    cases["garbage"] = d / "garbage" / "model.onnx"
    cases["fifo"] = d / "fifo" / "model.onnx"
    for p in cases.values():
        p.parent.mkdir(exist_ok=True)
    cases["elem999"].write_bytes(model.SerializeToString())
    cases["dim2^40"].write_bytes(model2.SerializeToString())
    cases["garbage"].write_bytes(np.random.default_rng(0).bytes(300))
    os.mkfifo(cases["fifo"])
    return cases


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("outside", "external data"),
        ("elem999", "element type 999"),
        ("dim2^40", "not a real shape"),
        ("garbage", "not a readable ONNX file"),
        ("fifo", "a FIFO"),
    ],
)
@needs_pytriton
def test_bad_onnx_is_one_line_exit_2_for_package_and_serve(
    bad_onnx: dict[str, Path], tmp_path: Path, case: str, needle: str
) -> None:
    path = bad_onnx[case]
    assert_one_line_error(finishes(lambda: invoke("package", path, "--repo", tmp_path / "r", "--name", "m")), 2, needle)
    assert not (tmp_path / "r").exists()
    serve_file = finishes(lambda: invoke("serve", path, "--port", "0", "--grpc-port", "0"))
    assert_one_line_error(serve_file, 2, needle)
    model_dir = tmp_path / "repo" / "m"  # the same file as a repository's model.onnx
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text('name: "m"\nplatform: "onnxruntime_onnx"\n')
    if case == "fifo":
        os.mkfifo(model_dir / "1" / "model.onnx")
    else:  # "outside" names ../secret.bin: out of the version folder, where its data must be
        (model_dir / "secret.bin").write_bytes(b"\0" * 16)
        (model_dir / "1" / "model.onnx").write_bytes(path.read_bytes())
    serve_repo = finishes(lambda: invoke("serve", tmp_path / "repo", "--port", "0", "--grpc-port", "0"))
    assert_one_line_error(serve_repo, 2, needle)


@needs_pytriton
def test_serve_reads_only_regular_files_inside_the_model_folder(small: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    config = 'name: "m"\nmax_batch_size: 2\n'
    (outside / "config.pbtxt").write_text(config)
    (outside / "model.onnx").write_bytes(small.read_bytes())
    spec = InputSpec.parse("input:1x1x64x64", "batch=1:4")
    build = BuildConfig("fp32", profiles_from_spec(spec))
    manifest_for(small, build, BuildPlan(False), tensorrt_version="10.3.0", gpu_name="G", compute_capability="9.0").write(
        outside / "model.plan.json"
    )

    def model_folder(name: str, links: dict[str, Path], files: dict[str, bytes]) -> Path:
        folder = tmp_path / name / "m"
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(config)
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        for rel, target in links.items():
            (folder / rel).unlink(missing_ok=True)
            (folder / rel).symlink_to(target)
        return folder

    cases = [
        model_folder("a", {"config.pbtxt": outside / "config.pbtxt"}, {"1/model.onnx": small.read_bytes()}),
        model_folder("b", {"1/model.onnx": outside / "model.onnx"}, {}),
        model_folder("c", {"1/model.plan.json": outside / "model.plan.json"}, {"1/model.plan": b"engine"}),
    ]
    for folder in cases:
        with pytest.raises(InputError, match="outside") as e:
            resolve_target(folder)
        assert "\n" not in str(e.value)
    assert_one_line_error(invoke("serve", cases[1], "--port", "0", "--grpc-port", "0"), 2, "outside")
    inside = model_folder("d", {"1/model.onnx": tmp_path / "d" / "m" / "1" / "real.onnx"}, {"1/real.onnx": small.read_bytes()})
    assert resolve_target(inside).max_batch == 2  # a symlink that stays inside is fine


# --------------------------------------------------------------------------- serve: readiness and leftovers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # not listening yet
        return None


def _grpc_ready(port: int, model: str) -> tuple[bool, bool]:
    """gRPC ServerReady, then ModelReady (a fresh channel each time: no reconnect back-off)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return bool(client.is_server_ready(client_timeout=1)), bool(client.is_model_ready(model, client_timeout=1))
    except Exception:  # UNAVAILABLE until it listens
        return False, False
    finally:
        client.close()


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parent[int(entry)] = int(data[data.rindex(b")") + 2 :].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def _shm_mapped(pids: list[int] | None = None) -> set[str]:
    """The /dev/shm entries that ``pids`` (default: every process) have mapped."""
    names = set()
    for pid in pids if pids is not None else [int(e) for e in os.listdir("/proc") if e.isdigit()]:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/") and not fields[5].endswith("(deleted)"):
                names.add(fields[5].removeprefix("/dev/shm/"))
    return names


def _triton_tmp() -> set[str]:
    """The /tmp entries Triton makes whatever TMPDIR says: python_env_* (its Python backend) and
    folder* (a model loaded with files through the repository API)."""
    return {n for n in os.listdir("/tmp") if n.startswith(("python_env_", "folder"))}


def _assert_nothing_left(shm_before: set[str], tmp_before: set[str], ours: set[str]) -> None:
    """No /dev/shm entry of the server's left, and no new one that no live process maps (another
    process's running server may hold its own); no new Triton folder in /tmp."""
    now = set(os.listdir("/dev/shm"))
    assert not now & ours, now & ours
    assert not (now - shm_before) - _shm_mapped(), now - shm_before
    assert _triton_tmp() <= tmp_before, _triton_tmp() - tmp_before


@pytest.fixture
def private_tmpdir() -> Iterator[Path]:
    """A short TMPDIR for a child server (Triton's socket paths must fit in 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="wcs", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start_cli_server(model: Path, tmpdir: Path, http: int, grpc: int) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": os.fspath(tmpdir), "PYTHONPATH": os.fspath(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "wconv_deploy", "serve", os.fspath(model), "--port", str(http), "--grpc-port", str(grpc)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _end(proc: subprocess.Popen[str]) -> None:
    """After a failed assertion: SIGTERM (so the server still cleans up), SIGKILL only if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _read_until_ready(proc: subprocess.Popen[str], on_line: Callable[[str], None] = lambda _l: None) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while "Ctrl-C stops" not in (line := proc.stdout.readline()):
        assert line and time.monotonic() < deadline, proc.communicate()[1]
    on_line(line)


@needs_pytriton
def test_serve_is_ready_only_with_its_model_and_leaves_nothing_after_sigterm_under_load(
    small: Path, private_tmpdir: Path
) -> None:
    import tritonclient.http as httpclient

    http, grpc = _free_port(), _free_port()
    base = f"http://127.0.0.1:{http}"
    shm_before, tmp_before = set(os.listdir("/dev/shm")), _triton_tmp()
    seen: list[tuple[int | None, int | None, tuple[bool, bool]]] = []
    ready_line = threading.Event()

    def poll() -> None:  # from the moment the process starts; readiness first, the model's after it
        deadline = time.monotonic() + 120
        while not ready_line.is_set() and time.monotonic() < deadline:
            health, model = _status(f"{base}/v2/health/ready"), _status(f"{base}/v2/models/small/ready")
            seen.append((health, model, _grpc_ready(grpc, "small")))
            time.sleep(0.02)

    proc = _start_cli_server(small, private_tmpdir, http, grpc)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        _read_until_ready(proc, lambda _l: ready_line.set())
        poller.join(10)
        assert _status(f"{base}/v2/health/ready") == 200 and _grpc_ready(grpc, "small") == (True, True)  # when it says
        dishonest = [s for s in seen if (s[0] == 200 and s[1] != 200) or s[2] == (True, False)]
        assert not dishonest and any(s[0] is None for s in seen), dishonest or seen[:3]  # polled before Triton listened
        assert [p.name for p in private_tmpdir.glob("wconv-serve-*")]  # its workspace, while it serves

        answers, failures, stop_at = [0], [0], time.monotonic() + 2.0
        x = np.random.default_rng(3).standard_normal((2, 1, 64, 64)).astype(np.float32)
        np.testing.assert_allclose(_infer(base, "small", x), _reference(x), rtol=1e-5, atol=1e-5)

        def load() -> None:  # 4 clients for 2 s, closed loop, 127.0.0.1 only
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=10)
            request = httpclient.InferInput("input", list(x.shape), "FP32")
            request.set_data_from_numpy(x)
            while time.monotonic() < stop_at:
                try:
                    client.infer("small", [request])
                    answers[0] += 1
                except Exception:  # once SIGTERM arrived
                    failures[0] += 1
                    time.sleep(0.05)
            client.close()

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        ours = _shm_mapped(_tree(proc.pid))
        assert any(n.startswith("psm_") for n in ours), ours  # PyTriton's tensor store carries the load
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        for c in clients:
            c.join()
    finally:
        _end(proc)
    assert proc.returncode == 143 and answers[0] > 0, (proc.returncode, answers, stderr)
    assert stderr.splitlines() == ["error: interrupted (SIGTERM)"], stderr
    assert [p.name for p in private_tmpdir.iterdir()] in ([], [".ses"])  # .ses: ONNX Runtime's own, kept by design
    _assert_nothing_left(shm_before, tmp_before, ours)


@needs_pytriton
def test_serve_leaves_nothing_after_ctrl_c_when_idle(small: Path, private_tmpdir: Path) -> None:
    shm_before, tmp_before = set(os.listdir("/dev/shm")), _triton_tmp()
    proc = _start_cli_server(small, private_tmpdir, _free_port(), _free_port())
    try:
        _read_until_ready(proc)
        ours = _shm_mapped(_tree(proc.pid))
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group, Triton included
        _, stderr = proc.communicate(timeout=60)
    finally:
        _end(proc)
    assert proc.returncode == 130 and stderr.splitlines() == ["error: interrupted"], (proc.returncode, stderr)
    assert [p.name for p in private_tmpdir.iterdir()] in ([], [".ses"])
    _assert_nothing_left(shm_before, tmp_before, ours)


@needs_pytriton
def test_a_server_whose_stop_fails_still_leaves_nothing(small: Path) -> None:
    """The fallback path: PyTriton's stop fails (as when Triton hangs past its timeout), so
    whatever runs is killed; its shared memory, Triton's /tmp folder and the workspace go too."""
    shm_before, tmp_before = set(os.listdir("/dev/shm")), _triton_tmp()
    server = start_server(small)
    x = np.ones((3, 1, 64, 64), np.float32)
    np.testing.assert_allclose(_infer(server.grpc_url, "small", x), _reference(x), rtol=1e-5, atol=1e-5)
    pids, ours = server.pids(), _shm_mapped(server.pids())
    assert len(pids) >= 3 and any(n.startswith("psm_") for n in ours), (pids, ours)
    assert _triton_tmp() - tmp_before  # the Python backend's python_env_* exists while Triton runs
    pytriton_stop = server._triton.stop

    def hung() -> None:
        raise RuntimeError("Triton did not stop")

    server._triton.stop = hung
    with pytest.raises(RuntimeError, match="did not stop"):
        server.stop()
    deadline = time.monotonic() + 10  # SIGKILL is delivered, the exit itself takes a moment
    while not all(_state(p) in ("gone", "Z") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.pids() == [] and all(_state(p) in ("gone", "Z") for p in pids), [_state(p) for p in pids]
    assert not server._workdir.exists()
    _assert_nothing_left(shm_before, tmp_before, ours)
    pytriton_stop()  # PyTriton's own threads, against a Triton that is gone
