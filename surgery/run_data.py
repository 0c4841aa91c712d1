"""A run's data: the plan's data set listed, checked against the head, split, and described for the
`tf.data` pipeline (`surgery.pipeline`); and the class weights a phase trains with."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graft.errors import DatasetError, PlanError
from graft.images import list_images
from surgery.pipeline import DataSpec, find_unreadable, stratified_split

#: Decoded, resized training images are cached in memory when all of them fit in this many bytes
#: (float32); larger data sets stream from disk every epoch. Set GRAFT_CACHE_BYTES to change it.
CACHE_BUDGET = int(os.environ.get("GRAFT_CACHE_BYTES", 2**30))


@dataclass
class RunData:
    classes: list[str]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    spec: object
    notes: list[str]
    cache_bytes: int = 0  # the decoded images (float32) of every split
    cache_budget: int = 0  # CACHE_BUDGET when the decision was made


def run_data(plan) -> RunData:
    d = plan.data
    listing = list_images(d.path)
    classes = listing.classes
    if len(classes) != plan.surgery.head.classes:
        raise PlanError(f"surgery.head.classes is {plan.surgery.head.classes} but {d.path} has {len(classes)} "
                        f"classes ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}); "
                        f"set surgery.head.classes: {len(classes)} or run advise again")
    notes = list(listing.warnings)
    files, labels, split = listing.files, listing.labels, listing.split
    if not d.skip_corrupt:
        bad = find_unreadable(files)
        if bad:
            raise DatasetError(f"{len(bad)} image(s) cannot be decoded, e.g. {bad[0]}; remove them or set "
                               "data.skip_corrupt: true")
    has_splits = any(split)
    splits = stratified_split(files, labels, split if has_splits else None, d.validation_split,
                              d.test_split, d.seed)
    decoded = len(files) * d.input_size[0] * d.input_size[1] * d.channels * 4
    cache = decoded <= CACHE_BUDGET
    if cache:
        notes.append(f"decoded images are kept in memory after the first epoch ({decoded / 2**20:,.0f} MiB, "
                     f"under the {CACHE_BUDGET / 2**30:g} GiB budget)")
    spec = DataSpec(input_size=tuple(d.input_size), channels=d.channels, batch_size=d.batch_size,
                    validation_split=d.validation_split, test_split=d.test_split, seed=d.seed,
                    augment=_augment(d.augmentation), cache=cache)
    return RunData(classes, splits.train, splits.val, splits.test, spec, notes, decoded, CACHE_BUDGET)


def _augment(aug: dict) -> dict:
    out = {}
    for key, value in (aug or {}).items():
        if key == "flip":
            out["flip"] = "horizontal" if value is True else (None if value is False else value)
        else:
            out[key] = float(value)
    return out


def class_weights(labels: list[int], classes: int) -> dict[int, float]:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=classes).astype(float)
    n = counts.sum()
    return {i: float(n / (classes * c)) if c else 0.0 for i, c in enumerate(counts)}


__all__ = ["CACHE_BUDGET", "RunData", "class_weights", "run_data"]
