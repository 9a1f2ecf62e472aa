"""Reading and writing files as a careful tool must: the security boundary for paths.

Reading: every file the tool reads goes through :func:`regular_file` / :func:`open_regular`. A
path must name a regular file: a FIFO would hang the reader, a device could be endless, a
folder or socket is not data. A file named *inside* an artifact (external data, a manifest
entry, an image of an ``--inputs`` folder) must stay inside the folder it belongs to (``within``),
also through symlinks: a model must not make the tool read, copy or hash a secret elsewhere.
The file is opened non-blocking and checked again on the open descriptor, so a path swapped for
a FIFO between the check and the open cannot hang the tool either.

Writing: a failure or a signal never leaves a half-written artifact (:func:`atomic_output`,
:func:`staging_dir`); what is written gets the modes an ordinary tool gives, 0644 files and
0755 folders under the usual umask, so a server running as another user can read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from wconv_deploy.errors import InputError

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with every symlink resolved, lies inside ``folder`` (also resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def regular_file(path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, what: str = "") -> Path:
    """``path`` if it is a regular file (and, with ``within``, resolves inside that folder); else InputError.

    ``what`` names the file in the message (default: the path itself).
    """
    p = Path(path)
    label = what or os.fspath(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        broken = os.path.islink(p)
        raise InputError(f"{label}: a symlink to nothing" if broken else f"{label} does not exist") from None
    except OSError as e:
        raise InputError(f"{label}: cannot be read ({e.strerror})") from None
    if within is not None and not is_inside(p, within):
        raise InputError(f"{label}: resolves to {os.path.realpath(p)}, outside {within}; refusing to read it")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{label}: {_kind(st.st_mode)}, not a regular file; refusing to read it")
    return p


def open_regular(path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, what: str = "") -> BinaryIO:
    """Open a file for binary reading after the checks of :func:`regular_file`, without ever blocking
    on a FIFO: the descriptor is opened non-blocking and must itself be a regular file."""
    p = regular_file(path, within=within, what=what)
    label = what or os.fspath(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise InputError(f"{label}: cannot be opened ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between the check and the open
        os.close(fd)
        raise InputError(f"{label}: {_kind(st.st_mode)}, not a regular file; refusing to read it")
    if within is not None and not _still_inside(p, within, st):  # swapped for a symlink out meanwhile
        os.close(fd)
        raise InputError(f"{label}: changed while being opened (now resolves outside {within}); refusing to read it")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def _still_inside(path: Path, within: str | os.PathLike[str], opened: os.stat_result) -> bool:
    """Whether the file opened (``opened``) is the one ``path`` now resolves to, inside ``within``."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return False
    return is_inside(real, within) and (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


def read_bytes(
    path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, what: str = "", limit: int | None = None
) -> bytes:
    """A regular file's bytes; InputError beyond ``limit`` bytes (for files that are small by nature)."""
    with open_regular(path, within=within, what=what) as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise InputError(f"{what or os.fspath(path)}: larger than {limit} bytes; not a file of this kind")
    return data


def read_text(
    path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None, what: str = "", limit: int | None = 64 << 20
) -> str:
    """A regular text file (UTF-8), at most ``limit`` bytes: configs, manifests, metadata."""
    data = read_bytes(path, within=within, what=what, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what or os.fspath(path)}: not UTF-8 text") from None


def file_sha256(path: str | os.PathLike[str], *, within: str | os.PathLike[str] | None = None) -> str:
    """The sha256 of a regular file's bytes (see :func:`stream_sha256`)."""
    with open_regular(path, within=within) as f:
        return stream_sha256(f)


def stream_sha256(f: BinaryIO) -> str:
    """The sha256 of what is left to read in ``f``, in 1 MiB blocks (models can be large)."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from an ordinary tool: 0666 less the umask (0644 by default)."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode a new folder gets from an ordinary tool: 0777 less the umask (0755 by default)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds.

    The parent folder must exist: a command checks its inputs before creating anything.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise InputError(f"{dest}: folder {dest.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, file_mode())  # mkstemp makes 0600
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, file_mode())  # a writer may have replaced it with its own file
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``dest`` atomically."""
    with atomic_output(dest) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike[str], prefix: str) -> Iterator[Path]:
    """A fresh folder in ``parent`` (mode 0755 under the usual umask), removed when the block ends
    however it ends (error, Ctrl-C, SIGTERM), unless the block renamed it away."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    try:
        os.chmod(path, folder_mode())  # mkdtemp makes 0700
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
