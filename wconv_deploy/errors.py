"""The errors wconv-deploy raises on purpose, each with the exit status the CLI gives it.

``InputError`` (exit 2): the input is missing, malformed, unsafe or inconsistent.
``MismatchError`` (exit 1): two computations that must agree do not; carries a readable report.
Anything else escaping the library is a bug.
"""

from __future__ import annotations

import errno
from typing import Any

#: The errno values that mean the disk (or the user's quota) is full: one line, exit 2.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WconvError(Exception):
    """Base of the errors the CLI turns into a one-line message and an exit status."""

    exit_code = 2


class InputError(WconvError):
    """Bad input: a file, option or model the tool cannot use as given."""

    exit_code = 2


class MismatchError(WconvError):
    """Numbers that must agree do not. ``report`` is the report object (a
    :class:`wconv_deploy.reports.Report`) the CLI prints, as a table or as JSON under ``--json``."""

    exit_code = 1

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if the message is empty)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the command stops, cleans up, and exits 128 + the signal number.

    A KeyboardInterrupt, so ``except Exception`` in library code (or in torch) never swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
