"""SIGINT and SIGTERM as one exception, so every writing command cleans up the same way.

Inside :func:`signals_as_interrupts`, either signal raises :class:`~wconv_deploy.errors.Interrupted`
in the main thread: ``finally`` blocks and context managers remove staging folders, and the CLI
prints one "interrupted" line and exits 130 (SIGINT) or 143 (SIGTERM). Further signals are ignored
while the cleanup runs, so an impatient second Ctrl-C cannot leave half a folder behind.

Libraries that catch every exception (torch.onnx does) may turn the interrupt into an error of
their own; :func:`raise_if_interrupted` lets our code say what really happened.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from wconv_deploy.errors import Interrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


def _handler(signum: int, _frame: Any) -> None:
    global _received
    _received = signum
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` if a signal arrived in the current :func:`signals_as_interrupts` block."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _received = None
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = None
