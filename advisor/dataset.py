"""Facts about an image data set folder, fast: counts from a directory listing, pixels from a sample.

The listing (the layouts, `list_images`) is `graft/images.py`, shared with `surgery`; it is
re-exported here. `scan` adds the facts the rules use: counts per
class come from the listing, while image size, channels and corruption come from a bounded, stratified
random sample whose headers are read with PIL (JPEGs are also decoded at 1/8 scale and PNGs
CRC-checked, so truncated files are caught).

Problems that make the folder unusable raise `graft.errors.DatasetError`; everything else (empty class
folders, unreadable sub-folders, corrupt files, ignored files, tiny classes) ends up in
`DatasetFacts.warnings`, never as a Python warning.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
import warnings as py_warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from graft.images import IMAGE_EXTENSIONS, SPLIT_NAMES, ImageList, list_images

#: PIL modes with one colour channel (with or without alpha).
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

#: A class with fewer images than this gets a warning.
SMALL_CLASS = 5

#: At most this many paths are kept in `DatasetFacts.corrupt` (the count stays exact).
MAX_LISTED = 100

#: Non-JPEG/PNG images up to this many pixels are fully decoded in the sample; larger ones are verified.
_FULL_DECODE_PIXELS = 16_000_000

_FACT_KEYS = (
    "images",
    "classes",
    "images_per_class_min",
    "images_per_class_median",
    "imbalance_ratio",
    "grayscale_fraction",
    "median_width",
    "median_height",
    "corrupt_files",
)


@dataclass
class DatasetFacts:
    """What `scan` found in a data set folder. Units and meaning of every field: docs/dataset.md."""

    root: str
    images: int
    classes: int
    class_names: list[str]
    per_class: dict[str, int]
    images_per_class_min: int
    images_per_class_median: float
    imbalance_ratio: float
    grayscale_fraction: float
    median_width: int
    median_height: int
    channels: dict[str, int]
    sampled: int
    corrupt_files: int
    corrupt: list[str]
    non_images: int
    splits: dict[str, int]
    empty_classes: list[str]
    fingerprint: str
    warnings: list[str]
    seconds: float

    def facts(self) -> dict:
        """The facts the rules may use, as plain Python numbers.

        Returns:
            dict with exactly the keys images, classes, images_per_class_min,
            images_per_class_median, imbalance_ratio, grayscale_fraction, median_width,
            median_height, corrupt_files.
        """
        out = {}
        for key in _FACT_KEYS:
            value = getattr(self, key)
            out[key] = float(value) if isinstance(value, float) else int(value)
        return out

    def to_dict(self) -> dict:
        """Every field, JSON and YAML friendly (plain str, int, float, list and dict).

        Returns:
            dict of all fields in declaration order.
        """
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Sample


def _stratified_sample(labels: np.ndarray, n_classes: int, sample: int, seed: int) -> np.ndarray:
    """Indices of a random sample of at most `sample` files, spread over the classes by size."""
    n = len(labels)
    if sample <= 0:
        return np.zeros(0, dtype=np.int64)
    if sample >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=n_classes)
    exact = sample * counts / n
    quota = np.floor(exact).astype(np.int64)
    if sample < n_classes:  # more classes than the sample: a random subset of classes, one each
        keep = rng.choice(np.flatnonzero(counts), size=sample, replace=False)
        quota = np.zeros_like(quota)
        quota[keep] = 1
    else:  # every class is seen at least once
        quota = np.minimum(np.maximum(quota, 1), counts)
    left = sample - int(quota.sum())
    if left > 0:  # largest remainders first, among classes with files to spare
        rest = np.argsort(-(exact - np.floor(exact)), kind="stable")
        for c in rest:
            if left == 0:
                break
            if quota[c] < counts[c]:
                quota[c] += 1
                left -= 1
    while left < 0:  # the one-per-class floor overshot: take the excess from the largest quotas
        quota[int(np.argmax(quota))] -= 1
        left += 1
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    picked = [
        rng.choice(by_class[starts[c] : starts[c + 1]], size=int(quota[c]), replace=False)
        for c in range(n_classes)
        if quota[c] > 0
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _probe(path: str) -> tuple[str, int, int]:
    """Mode and size of one image; raises if it cannot be decoded.

    JPEGs are decoded at 1/8 scale (reads the whole stream, catches truncation), PNGs are
    CRC-checked with `verify`, other formats are decoded fully when not huge.
    """
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        width, height = im.size
        fmt = im.format
        if fmt == "JPEG":
            im.draft(mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
        elif fmt == "PNG" or width * height > _FULL_DECODE_PIXELS:
            im.verify()
        else:
            im.load()
    return mode, width, height


def _read_sample(paths: list[str]) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    from PIL import Image, ImageFile

    good: list[tuple[str, int, int]] = []
    bad: list[tuple[str, str]] = []
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt here, whatever else set
    try:
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore")  # EXIF noise ...
            # ... but an image over PIL's pixel bound is too large, as the training pipeline finds it
            py_warnings.simplefilter("error", Image.DecompressionBombWarning)
            for p in paths:
                try:
                    good.append(_probe(p))
                except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                    bad.append((p, f"too large to decode safely ({exc})"))
                except Exception as exc:  # noqa: BLE001 - any decoder failure means corrupt
                    bad.append((p, f"{type(exc).__name__}: {exc}"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    return good, bad


def _fingerprint(listing: ImageList) -> str:
    """sha256 over ``relative/path<TAB>size<LF>`` for every image file, sorted by path."""
    h = hashlib.sha256()
    cut = len(listing.root) + 1
    sep = os.sep
    files, sizes = listing.files, listing.sizes
    step = 50_000
    for i in range(0, len(files), step):
        chunk = [
            f"{(f[cut:] if sep == '/' else f[cut:].replace(sep, '/'))}\t{s}\n"
            for f, s in zip(files[i : i + step], sizes[i : i + step])
        ]
        h.update("".join(chunk).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def scan(
    root: str | os.PathLike,
    sample: int = 2000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> DatasetFacts:
    """Count a data set folder and read a sample of its images.

    Args:
        root: the data set folder: ``root/CLASS/...`` or ``root/{train,val,test}/CLASS/...``.
        sample: at most this many images have their headers read (stratified by class, at least one
            per class when `sample` >= the number of classes); 0 reads none.
        seed: seed of the random sample.
        progress: called as ``progress(files_seen)`` every 10,000 files of the listing.

    Returns:
        DatasetFacts: counts over every file, pixel facts over the sample, warnings.

    Raises:
        DatasetError: root missing, not a folder or unreadable; no class folders; no images; fewer
            than two classes with images.
    """
    t0 = time.perf_counter()
    listing = list_images(root, True, progress)
    notes = list(listing.warnings)
    classes = listing.classes
    labels = np.asarray(listing.labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    per_class = {c: int(n) for c, n in zip(classes, counts)}

    idx = _stratified_sample(labels, len(classes), sample, seed)
    good, bad = _read_sample([listing.files[i] for i in idx])

    channels: dict[str, int] = {}
    for mode, _, _ in good:
        channels[mode] = channels.get(mode, 0) + 1
    gray = sum(n for m, n in channels.items() if m in GRAYSCALE_MODES)
    widths = [w for _, w, _ in good]
    heights = [h for _, _, h in good]

    corrupt_paths = list(listing.unusable) + [p for p, _ in bad]
    if listing.unusable:
        notes.append(
            f"{len(listing.unusable)} zero-byte or unreadable image file(s) (e.g. broken links) were "
            f"left out, e.g. {listing.unusable[0]}; delete or replace them."
        )
    if bad:
        rate = len(bad) / len(idx)
        notes.append(
            f"{len(bad)} of {len(idx)} sampled images could not be decoded ({rate:.1%}), e.g. "
            f"{bad[0][0]} ({bad[0][1]}); expect about {round(rate * len(listing.files))} corrupt "
            "files in all; delete or re-encode them."
        )
    small = [c for c in classes if per_class[c] < SMALL_CLASS]
    if small:
        notes.append(
            f"{len(small)} class(es) have fewer than {SMALL_CLASS} images: "
            f"{', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; collect more or merge them."
        )

    splits: dict[str, int] = {}
    if any(listing.split):
        for s in listing.split:
            splits[s] = splits.get(s, 0) + 1
        splits = {k: splits[k] for k in ("train", "val", "test") if k in splits}

    cmin, cmax = int(counts.min()), int(counts.max())
    return DatasetFacts(
        root=listing.root,
        images=len(listing.files),
        classes=len(classes),
        class_names=list(classes),
        per_class=per_class,
        images_per_class_min=cmin,
        images_per_class_median=float(statistics.median(counts.tolist())),
        imbalance_ratio=float(cmax / max(cmin, 1)),
        grayscale_fraction=float(gray / len(good)) if good else 0.0,
        median_width=int(statistics.median(widths)) if widths else 0,
        median_height=int(statistics.median(heights)) if heights else 0,
        channels=dict(sorted(channels.items(), key=lambda kv: (-kv[1], kv[0]))),
        sampled=len(idx),
        corrupt_files=len(corrupt_paths),
        corrupt=corrupt_paths[:MAX_LISTED],
        non_images=listing.non_images,
        splits=splits,
        empty_classes=list(listing.empty_classes),
        fingerprint=_fingerprint(listing),
        warnings=notes,
        seconds=round(time.perf_counter() - t0, 3),
    )


__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "DatasetFacts",
    "ImageList",
    "list_images",
    "scan",
]
