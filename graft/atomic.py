"""Atomic file writes: write to a temporary file in the target's directory, then rename.

A reader never sees a half-written file: either the old content or the new one. On failure the
temporary file is removed and the target is left untouched. Parent directories are created.

An operating-system error while writing (a full disk, a quota, a read-only folder) is raised as
`graft.errors.WriteError` (also an `OSError`) naming the file and the cause. A process killed
mid-write leaves its temporary file behind (`.NAME.XXXXXXXX.tmp`, `.STEM.XXXXXXXX.SUFFIX`);
`remove_temporaries` clears them from a folder no one else is writing to.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graft.errors import WriteError

__all__ = ["NO_SPACE", "as_write_error", "atomic_path", "is_temporary", "remove_temporaries", "write_bytes", "write_json", "write_text"]

#: tempfile's random part: 8 characters of [a-z0-9_].
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}(\.tmp|\..+)")
#: The errno values of a full disk or quota.
NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def _write(fh, data: bytes) -> None:
    """Write `data` to an open file: the one place `write_bytes` writes (tests inject faults here)."""
    fh.write(data)


def _rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move the finished temporary file onto the target: the commit of every atomic write (tests
    inject faults here)."""
    os.replace(src, dst)


def as_write_error(target: str | os.PathLike[str], exc: OSError) -> WriteError:
    """`exc`, raised while writing `target`, as a `WriteError` that says which file and why."""
    if isinstance(exc, WriteError):
        return exc
    no_space = exc.errno in NO_SPACE or "no space left on device" in str(exc).lower()
    reason = "no space left on device" if no_space else (exc.strerror or str(exc) or type(exc).__name__)
    return WriteError(f"cannot write {target}: {reason} (the file was left as it was)", path=str(target),
                      no_space=no_space)


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file or directory tree if it exists; never raises for a missing path."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: changing the umask is process-wide and racy under threads.
_FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to `path` atomically.

    Args:
        path: destination file; its parent directories are created if missing.
        data: the bytes to write.

    Returns:
        The destination as a `Path`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
        )
    except OSError as exc:
        raise as_write_error(target, exc) from exc
    try:
        with tmp:
            _write(tmp, data)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile creates 0600; give the file the mode a plain open() would.
        with contextlib.suppress(OSError):
            os.chmod(tmp.name, _FILE_MODE)
        _rename(tmp.name, target)
    except BaseException as exc:
        _remove_quietly(tmp.name)
        if isinstance(exc, OSError):
            raise as_write_error(target, exc) from exc
        raise
    _fsync_dir(target.parent)
    return target


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write text to `path` atomically.

    Args:
        path: destination file; its parent directories are created if missing.
        text: the text to write (newlines are written as given).
        encoding: text encoding, UTF-8 by default.

    Returns:
        The destination as a `Path`.
    """
    return write_bytes(path, text.encode(encoding))


def write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, allow_nan: bool = True
) -> Path:
    """Serialize `obj` as JSON and write it to `path` atomically.

    The object is serialized before anything touches the disk, so a non-serializable object
    raises `TypeError` and leaves the target (and the directory) untouched.

    Args:
        path: destination file; its parent directories are created if missing.
        obj: a JSON-serializable object.
        indent: indentation passed to `json.dumps` (None for compact output).
        allow_nan: write NaN/Infinity as Python's `json` module does (not strict JSON); with
            False such values raise `ValueError` instead.

    Returns:
        The destination as a `Path`.

    Raises:
        TypeError: `obj` is not JSON-serializable.
        ValueError: `obj` holds NaN/inf and `allow_nan` is False, or has circular references.
    """
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=allow_nan) + "\n"
    return write_text(path, text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` when the block succeeds.

    The temporary name keeps the target's last two suffixes (`model.keras` -> `.model.XXXX.keras`,
    `w.weights.h5` -> `.w.XXXX.weights.h5`) so that writers that choose a format from the name
    (`keras.Model.save`, `save_weights`, matplotlib `savefig`) work. If the block raises, or writes nothing, the temporary file is removed and the target is
    left untouched.

    Args:
        path: destination file; its parent directories are created if missing.

    Yields:
        The temporary path to write to. It does not exist yet when yielded.

    Raises:
        FileNotFoundError: the block finished without creating the temporary file.
        WriteError: an operating-system error (`OSError`) in the block or in the rename.
    """
    target = Path(path)
    suffix = "".join(target.suffixes[-2:])  # `x.weights.h5` keeps `.weights.h5`, which Keras requires
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[: -len(suffix) or None]}.",
                                    suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise as_write_error(target, exc) from exc
    tmp = Path(name)
    # Some writers refuse to overwrite an existing file; hand over a free name.
    tmp.unlink()
    try:
        yield tmp
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise as_write_error(target, exc) from exc
        raise
    if not tmp.exists():
        raise FileNotFoundError(f"nothing was written to the temporary file for {target}")
    try:
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _rename(tmp, target)
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):
            raise as_write_error(target, exc) from exc
        raise
    _fsync_dir(target.parent)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporary names (`.NAME.XXXXXXXX.tmp`,
    `.STEM.XXXXXXXX.SUFFIX`)."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed writer left in `directory` (not below it).

    Only call it on a folder no other process is writing to (graft's run lock guarantees that for
    a run directory): a live writer's temporary file looks the same.

    Returns:
        The paths removed.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if is_temporary(entry.name) and (entry.is_file() or entry.is_dir()) and not entry.is_symlink():
            _remove_quietly(entry)
            removed.append(entry)
    return removed
