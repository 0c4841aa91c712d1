"""Where bottleneck features live: in memory when they are small, else in a `.npy` file on disk,
written batch by batch and read back memory-mapped.

A frozen-backbone phase computes the backbone's features of every training image (and of its kept
flips, and of the validation images) once. On 50,000 images of a 1,280-channel network that is
245 MiB per view; a cut whose head flattens a feature map is many times more. Under the budget
(`GRAFT_FEATURE_BYTES`, default 512 MiB, for all the features of a phase together) they are arrays in
memory and cached as `.npz`, as before; over it each set is written as it is computed into
`NAME.x.npy` (`numpy.lib.format.open_memmap`) beside its labels `NAME.y.npy`, and the phase reads
the rows it needs from the page cache (`np.load(mmap_mode="r")`). The results are the same.

    on_disk = features_on_disk(feature_model, rows)          # the decision, from shapes alone
    x, y = store_batches(batches, rows, cache, on_disk)      # batches: (outputs, labels) pairs
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from graft.atomic import as_write_error, write_bytes

#: Bottleneck features of one phase (every view and split together, float32) are kept in memory up
#: to this many bytes, else on disk memory-mapped. GRAFT_FEATURE_BYTES overrides it (read when a
#: phase starts).
FEATURE_BUDGET = 512 * 2**20


def feature_budget() -> int:
    """The budget in bytes: `GRAFT_FEATURE_BYTES` when set, else `FEATURE_BUDGET`."""
    value = os.environ.get("GRAFT_FEATURE_BYTES")
    return int(value) if value not in (None, "") else FEATURE_BUDGET


def feature_bytes(feature_shape: tuple, rows: int) -> int:
    """Bytes of `rows` float32 feature rows of `feature_shape` (without the batch axis)."""
    return int(rows) * int(np.prod([int(d) for d in feature_shape], dtype=np.int64)) * 4


def features_on_disk(feature_shape: tuple, rows: int) -> bool:
    """Whether `rows` feature rows exceed the budget (then they go to disk)."""
    return feature_bytes(feature_shape, rows) > feature_budget()


def feature_plan(feature_shape: tuple, rows: int) -> dict:
    """Where a phase's `rows` feature rows go, as recorded in `state.json` and `metrics.json`:
    `on_disk`, their size and the budget in MiB."""
    size, budget = feature_bytes(feature_shape, rows), feature_budget()
    return {"on_disk": size > budget, "rows": int(rows), "mib": round(size / 2**20, 1),
            "budget_mib": round(budget / 2**20, 1)}


def cached(cache: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The features stored under `cache` (`NAME.npz`, or `NAME.x.npy` + `NAME.y.npy`), or None."""
    if cache is None:
        return None
    if cache.exists():
        with np.load(cache) as z:
            return z["x"], z["y"]
    xs, ys = disk_paths(cache)
    if xs.exists() and ys.exists():  # the labels are written last: their file commits the pair
        y = np.load(ys)
        return np.load(xs, mmap_mode="r")[: len(y)], y
    return None


def disk_paths(cache: Path) -> tuple[Path, Path]:
    """`NAME.x.npy` and `NAME.y.npy` for a cache named `NAME.npz`."""
    stem = cache.name.removesuffix(".npz")
    return cache.with_name(f"{stem}.x.npy"), cache.with_name(f"{stem}.y.npy")


def store_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: int, cache: Path | None,
                  on_disk: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Collect (outputs, labels) batches: concatenated in memory (and saved to `cache` as `.npz`),
    or, `on_disk` with a `cache`, written into `NAME.x.npy` as they come (at most `rows` rows) and
    returned memory-mapped. None when there were no batches."""
    if not on_disk or cache is None:
        outs, ys = [], []
        for out, y in batches:
            outs.append(out)
            ys.append(y)
        if not outs:
            return None
        x, y = np.concatenate(outs), np.concatenate(ys).astype("int32")
        if cache is not None:
            import io

            buf = io.BytesIO()
            np.savez(buf, x=x, y=y)
            write_bytes(cache, buf.getvalue())
        return x, y
    return _store_on_disk(batches, rows, cache)


def _store_on_disk(batches, rows: int, cache: Path):
    xs, ys_path = disk_paths(cache)
    xs.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name that graft.atomic.remove_temporaries recognizes (`.STEM.XXXXXXXX.SUFFIX`)
    fd, tmp = tempfile.mkstemp(dir=xs.parent, prefix=f".{xs.name.removesuffix('.npy')}.", suffix=".npy")
    os.close(fd)
    arr, ys, n = None, [], 0
    try:
        for out, y in batches:
            if arr is None:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype="float32", shape=(rows, *out.shape[1:]))
            arr[n: n + len(out)] = out
            n += len(out)
            ys.append(y)
        if arr is None:
            os.unlink(tmp)
            return None
        arr.flush()
        del arr  # unmapped before the rename
        os.replace(tmp, xs)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise as_write_error(xs, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    y = np.concatenate(ys).astype("int32")
    import io

    buf = io.BytesIO()
    np.save(buf, y)
    write_bytes(ys_path, buf.getvalue())  # commits the pair (rows past len(y): skipped files)
    return np.load(xs, mmap_mode="r")[:n], y


class RowStack:
    """Arrays of the same row shape seen as one, without copying them (memory-mapped features
    and their flipped views): `len`, `shape`, `dtype` and row gathers `stack[indices]`."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.offsets, index, side="right") - 1
        for k, p in enumerate(self.parts):
            sel = np.nonzero(part == k)[0]
            if len(sel):
                rows = index[sel] - self.offsets[k]
                order = np.argsort(rows, kind="stable")  # in file order: sequential reads
                out[sel[order]] = p[rows[order]]
        return out


def stack_rows(parts: list[np.ndarray]):
    """The rows of `parts` one after another: concatenated in memory, or a `RowStack` over
    memory-mapped arrays (so that on-disk features stay on disk)."""
    if len(parts) == 1:
        return parts[0]
    if any(isinstance(p, np.memmap) for p in parts):
        return RowStack(parts)
    return np.concatenate(parts)


def in_memory(x) -> bool:
    """Whether `x` is a plain in-memory array (not memory-mapped, not a `RowStack`)."""
    return isinstance(x, np.ndarray) and not isinstance(x, np.memmap)


__all__ = ["FEATURE_BUDGET", "RowStack", "cached", "disk_paths", "feature_budget", "feature_bytes",
           "feature_plan", "features_on_disk", "in_memory", "stack_rows", "store_batches"]
