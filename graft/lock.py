"""An exclusive lock on a folder, so that two graft processes never work in it at once.

`hold_lock(folder)` takes an exclusive, non-blocking `flock` on `folder/.graft.lock` for the length of
a `with` block and raises `BusyError` when another process holds it. The kernel drops a `flock` when
the process that holds it ends, however it ends (Ctrl-C, SIGKILL, a crash), so a killed run never
leaves its folder locked and nothing has to be cleaned up by hand.

The lock file stays after the block: removing it would let a third process lock a new file of the
same name while a second one still holds the old one. It holds the holder's pid, host and start time,
which the refusal quotes. On a platform without `fcntl` (Windows) `msvcrt.locking` locks its first
byte instead.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from graft.errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "hold_lock"]

LOCK_NAME = ".graft.lock"


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return f" ({text})"
    return ""


@contextlib.contextmanager
def hold_lock(folder: str | os.PathLike[str], what: str = "graft") -> Iterator[Path]:
    """Hold the exclusive lock of `folder` (which must exist) for the block.

    Args:
        folder: the folder to lock; the lock file `LOCK_NAME` is created in it.
        what: how the refusal names the folder's user (e.g. "`graft apply`").

    Yields:
        The lock file's path.

    Raises:
        BusyError: another process holds the lock; nothing was changed.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise BusyError(f"{folder} is in use by another {what}{_holder(path)}; wait for it to finish, or "
                            "choose another directory with --out DIR (nothing was changed)")
        started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # the note is for people; the lock works without it
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
