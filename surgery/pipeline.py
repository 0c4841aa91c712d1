"""The streamed training data pipeline: class-per-folder image files in, `tf.data` batches out.

This is the one module of surgery/ that uses TensorFlow directly (see DESIGN.md, "Rules of the
house"): `tf.data` streams, decodes and resizes the images, whatever the Keras backend is. TensorFlow
is imported inside the functions that need it, so `import surgery` works without it under the JAX
and PyTorch backends; calling a function here without TensorFlow raises a `GraftError` that says
what to install.

Images are never all loaded into memory (unless `DataSpec.cache` asks for it). Each image is read
from disk, decoded with `tf.io.decode_image`, converted to the channel count the model takes
(grayscale to RGB by repeating the channel, RGB to gray with the ITU-R 601 luma weights, an alpha
channel dropped), resized to the model's input size (bilinear) and given as float32 in 0..255. There
is no scaling: the model carries its own preprocessing.

Files that cannot be read or decoded (corrupt, truncated, missing, not an image, or declaring more
than `MAX_IMAGE_PIXELS` in their header, checked before the decoder allocates) do not stop
training: `make_dataset` skips them (`tf.data.Dataset.ignore_errors`), so an epoch may hold fewer
images than files. Use `find_unreadable` to list them beforehand. `image_batches`, whose batches
must line up with the files given, raises a `DatasetError` naming the file instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.errors import DatasetError, GraftError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = [
    "AUGMENT_KEYS",
    "FLIP_MODES",
    "MAX_IMAGE_PIXELS",
    "DataSpec",
    "Splits",
    "find_unreadable",
    "image_batches",
    "indexed_image_batches",
    "make_dataset",
    "stratified_split",
]

#: The keys `DataSpec.augment` accepts.
AUGMENT_KEYS = ("flip", "rotation", "zoom", "contrast", "translation")
#: The values `DataSpec.augment["flip"]` accepts.
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical", None)
#: The values a per-file split entry may take ("" means "no opinion": the file may go anywhere).
SPLIT_NAMES = ("train", "val", "test", "")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "none": "", "trainval": "train"}
#: Images whose header declares more pixels than this are not decoded (PIL's decompression-bomb
#: bound, `PIL.Image.MAX_IMAGE_PIXELS`): one would take over 1 GB as float32 RGB.
MAX_IMAGE_PIXELS = 89_478_485
#: ITU-R 601 luma weights, the ones `tf.image.rgb_to_grayscale` and PIL's "L" mode use.
_LUMA = (0.2989, 0.5870, 0.1140)


# --------------------------------------------------------------------------------------------------
# Spec and splits
# --------------------------------------------------------------------------------------------------


@dataclass
class DataSpec:
    """How to turn image files into model inputs.

    Attributes:
        input_size: (height, width) the model takes.
        channels: channels the model takes, 1 or 3. Files are converted as needed.
        batch_size: images per batch.
        validation_split: fraction of each class held out for validation, used only when no
            explicit validation files are given.
        test_split: fraction of each class held out as a test set, used only when no explicit test
            files are given.
        seed: seed of the split, the shuffle and the augmentation.
        augment: training augmentation; keys `flip` ("horizontal", "vertical",
            "horizontal_and_vertical" or None), `rotation` (fraction of a full turn), `zoom`,
            `contrast`, `translation` (fractions). Empty: no augmentation.
        cache: keep decoded, resized images in memory after the first epoch (small data sets only).
    """

    input_size: tuple[int, int]
    channels: int = 3
    batch_size: int = 32
    validation_split: float = 0.2
    test_split: float = 0.0
    seed: int = 0
    augment: dict = field(default_factory=dict)
    cache: bool = False

    def __post_init__(self) -> None:
        """Check the values, so a bad plan fails before any image is read.

        Raises:
            InputError: a value out of range or an unknown augmentation key.
        """
        try:
            size = tuple(self.input_size)
        except TypeError:  # a bare number or None
            size = ()
        if len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
            raise InputError(
                f"input_size must be (height, width) with two positive integers, got {self.input_size!r}."
            )
        self.input_size = (int(size[0]), int(size[1]))
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels!r}.")
        self.channels = int(self.channels)
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        self.batch_size = int(self.batch_size)
        _check_fractions(self.validation_split, self.test_split)
        if self.augment is not None and not isinstance(self.augment, Mapping):
            raise InputError(
                f"augment must be a mapping of augmentation keys to values, got {self.augment!r}."
            )
        self.augment = dict(self.augment or {})
        unknown = sorted(set(self.augment) - set(AUGMENT_KEYS))
        if unknown:
            raise InputError(
                f"unknown augmentation key(s) {', '.join(unknown)}; "
                f"valid keys are {', '.join(AUGMENT_KEYS)}."
            )
        if self.augment.get("flip") not in FLIP_MODES:
            raise InputError(
                f"augment.flip must be one of horizontal, vertical, horizontal_and_vertical or "
                f"null, got {self.augment.get('flip')!r}."
            )
        for key in AUGMENT_KEYS[1:]:
            value = self.augment.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise InputError(
                    f"augment.{key} must be a number in [0, 1) (a fraction), got {value!r}."
                )


@dataclass
class Splits:
    """Files and integer labels of the train, validation and test sets.

    Attributes:
        train: (files, labels) to train on.
        val: (files, labels) to validate on; may be empty.
        test: (files, labels) held out for a final test; may be empty.
    """

    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_fractions(validation: float, test: float) -> None:
    for name, value in (("validation split", validation), ("test split", test)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise InputError(f"the {name} must be a number in [0, 1), got {value!r}.")
    if validation + test >= 1:
        raise InputError(
            f"the validation split ({validation}) and test split ({test}) leave nothing to train on; "
            "their sum must be below 1."
        )


def _normalise_split(entry: Any, file: str) -> str:
    name = "" if entry is None else str(entry).strip().lower()
    name = _SPLIT_ALIASES.get(name, name)
    if name not in SPLIT_NAMES:
        raise InputError(
            f"split entry {entry!r} for {file} is not one of train, val, test or empty."
        )
    return name


def stratified_split(
    files: Sequence[str],
    labels: Sequence[int],
    split: Sequence[str] | None,
    validation: float,
    test: float,
    seed: int,
) -> Splits:
    """Split files into train, validation and test sets, class by class.

    Explicit assignments win: when `split` names some files "val", exactly those files form the
    validation set, and likewise for "test". A set without explicit files is drawn from the rest
    ("train" and "" entries) of each class with a seeded shuffle, so that every class with at least
    two such files has at least one validation file (when `validation` > 0), every class with at
    least three has a test file (when `test` > 0), and every class keeps at least one training file.
    The result depends only on the arguments (not on the order of classes), and each set keeps the
    order the files were given in.

    Args:
        files: image paths.
        labels: integer class of each file.
        split: per-file "train", "val", "test" or "" (no preference), or None for no explicit split.
            "validation" is accepted for "val".
        validation: fraction of each class to hold out for validation when no file is marked "val".
        test: fraction of each class to hold out for testing when no file is marked "test".
        seed: seed of the shuffle.

    Returns:
        The three sets as `Splits`.

    Raises:
        InputError: lists of different lengths, a bad split entry, or fractions out of range.
    """
    files = [str(f) for f in files]
    labels = [int(v) for v in labels]
    if len(files) != len(labels):
        raise InputError(f"{len(files)} files but {len(labels)} labels; they must pair up.")
    if split is None:
        names = [""] * len(files)
    else:
        if len(split) != len(files):
            raise InputError(
                f"{len(files)} files but {len(split)} split entries; they must pair up."
            )
        names = [_normalise_split(s, f) for s, f in zip(split, files)]
    _check_fractions(validation, test)
    explicit_val = "val" in names
    explicit_test = "test" in names
    if explicit_val:
        validation = 0.0
    if explicit_test:
        test = 0.0
    assigned = [n if n in ("val", "test") else "train" for n in names]

    by_class: dict[int, list[int]] = {}
    for i, n in enumerate(names):
        if n in ("train", ""):
            by_class.setdefault(labels[i], []).append(i)
    for label, members in by_class.items():
        n = len(members)
        n_val = _count(n, validation, minimum_n=2)
        n_test = _count(n, test, minimum_n=3)
        while n_val + n_test > n - 1 and (n_val or n_test):  # keep one file to train on
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        if not n_val and not n_test:
            continue
        order = sorted(members, key=lambda i: files[i])  # independent of the input order
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, label & 0xFFFFFFFF])
        order = [order[k] for k in rng.permutation(n)]
        for i in order[:n_val]:
            assigned[i] = "val"
        for i in order[n_val : n_val + n_test]:
            assigned[i] = "test"

    def pick(name: str) -> tuple[list[str], list[int]]:
        idx = [i for i, a in enumerate(assigned) if a == name]
        return [files[i] for i in idx], [labels[i] for i in idx]

    return Splits(train=pick("train"), val=pick("val"), test=pick("test"))


def _count(n: int, fraction: float, minimum_n: int) -> int:
    """How many of n files a fraction takes: rounded, at least 1 once there are minimum_n files."""
    if fraction <= 0 or n < 2:
        return 0
    k = int(math.floor(n * fraction + 0.5))
    if n >= minimum_n:
        k = max(k, 1)
    return k


# --------------------------------------------------------------------------------------------------
# tf.data
# --------------------------------------------------------------------------------------------------


def _tf():
    """Import TensorFlow, or say clearly that the data pipeline needs it."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - TF is installed where tests run
        raise GraftError(
            "the data pipeline needs TensorFlow (for tf.data), which is not installed; "
            "install it with `pip install tensorflow-cpu` (or `tensorflow` on a GPU machine). "
            "The model itself may still run under the JAX or PyTorch backend."
        ) from exc
    return tf


def _path_tensor(files: Sequence[str]):
    """The paths as a string tensor of their bytes: a name that is not UTF-8 (listed by
    `os.scandir` with surrogate escapes) goes back to the file system as the bytes it came as."""
    tf = _tf()
    return tf.constant([os.fsencode(f) for f in files], dtype=tf.string)


def _check_pairs(files: Sequence[str], labels: Sequence[int], num_classes: int) -> None:
    if len(files) != len(labels):
        raise InputError(f"{len(files)} files but {len(labels)} labels; they must pair up.")
    if not len(files):
        raise DatasetError("no image files to make a data set from.")
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}.")
    bad = [int(v) for v in labels if not 0 <= int(v) < num_classes]
    if bad:
        raise InputError(
            f"label {bad[0]} is outside 0..{num_classes - 1} (num_classes={num_classes})."
        )


def _declared_pixels(raw):
    """Width x height that an image file's header declares (graph ops; 0 for an unknown format).

    Read from the first bytes, so a file that claims a huge size is refused before the decoder
    allocates for it: PNG (IHDR), GIF (logical screen), BMP, WebP (VP8, VP8L, VP8X); JPEG through
    `tf.image.extract_jpeg_shape`.
    """
    tf = _tf()
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(raw, 0, 32), "\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def le(at: int, n: int):
        return sum(b[at + k] * (256**k) for k in range(n))

    def be(at: int, n: int):
        return sum(b[at + k] * (256 ** (n - 1 - k)) for k in range(n))

    def starts(text: bytes, at: int = 0):
        return tf.reduce_all(tf.equal(b[at : at + len(text)], list(text)))

    def jpeg():
        shape = tf.image.extract_jpeg_shape(raw)
        return tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)

    def signed32(v):
        return tf.abs(tf.where(v >= 2**31, v - 2**32, v))

    vp8l_w = 1 + b[21] + (b[22] % 64) * 256
    vp8l_h = 1 + b[22] // 64 + b[23] * 4 + (b[24] % 16) * 1024
    zero = tf.constant(0, tf.int64)
    return tf.case(
        [
            (starts(b"\x89PNG"), lambda: be(16, 4) * be(20, 4)),
            (starts(b"GIF8"), lambda: le(6, 2) * le(8, 2)),
            (starts(b"BM"), lambda: signed32(le(18, 4)) * signed32(le(22, 4))),
            (starts(b"\xff\xd8"), jpeg),
            (starts(b"WEBPVP8X", 8), lambda: (1 + le(24, 3)) * (1 + le(27, 3))),
            (starts(b"WEBPVP8 ", 8), lambda: (le(26, 2) % 16384) * (le(28, 2) % 16384)),
            (starts(b"WEBPVP8L", 8), lambda: vp8l_w * vp8l_h),
        ],
        default=lambda: zero,
        exclusive=False,
    )


def _plain(tf, fn):
    """`fn` marked for `tf.data` to trace as written, without AutoGraph: the decode and augment
    functions are graph ops already (`tf.cond`, `tf.case`; no Python branching on tensors). AutoGraph
    would re-parse the source file of every `lambda` handed to `Dataset.map` with `gast`, which took
    82 s of a 95 s run in a process holding a trained model (tests/surgery/test_apply.py, the
    mirrored run's guard check), against well under a second here."""
    return tf.autograph.experimental.do_not_convert(fn)


def _decode_fn(spec: DataSpec):
    """The per-file graph function: path -> float32 image of spec.input_size x spec.channels."""
    tf = _tf()
    height, width = spec.input_size
    channels = spec.channels
    luma = tf.constant(_LUMA, dtype=tf.float32)

    def decode(path):
        raw = tf.io.read_file(path)
        too_large = tf.debugging.assert_less_equal(
            _declared_pixels(raw),
            tf.constant(MAX_IMAGE_PIXELS, tf.int64),
            message="the image declares more pixels than MAX_IMAGE_PIXELS",
        )
        with tf.control_dependencies([too_large]):  # refused before the decoder allocates
            raw = tf.identity(raw)
        image = tf.io.decode_image(raw, channels=0, expand_animations=False)
        image = tf.cast(image, tf.float32)
        have = tf.shape(image)[-1]
        if channels == 3:
            image = tf.cond(
                have >= 3,
                lambda: image[..., :3],
                lambda: tf.tile(image[..., :1], [1, 1, 3]),  # gray (and gray + alpha) to RGB
            )
        else:
            image = tf.cond(
                have >= 3,
                lambda: tf.reduce_sum(image[..., :3] * luma, axis=-1, keepdims=True),
                lambda: image[..., :1],
            )
        image = tf.ensure_shape(image, [None, None, channels])
        image = tf.image.resize(image, (height, width), method="bilinear")
        return tf.clip_by_value(image, 0.0, 255.0)

    return decode


def _augmenter(spec: DataSpec):
    """A batch -> batch function applying spec.augment with Keras layers, or None for no augmentation."""
    import keras

    aug = spec.augment
    seed = int(spec.seed)
    layers = []
    if aug.get("flip"):
        layers.append(keras.layers.RandomFlip(aug["flip"], seed=seed + 1, dtype="float32"))
    if aug.get("rotation"):
        layers.append(
            keras.layers.RandomRotation(float(aug["rotation"]), seed=seed + 2, dtype="float32")
        )
    if aug.get("zoom"):
        layers.append(keras.layers.RandomZoom(float(aug["zoom"]), seed=seed + 3, dtype="float32"))
    if aug.get("translation"):
        t = float(aug["translation"])
        layers.append(keras.layers.RandomTranslation(t, t, seed=seed + 4, dtype="float32"))
    if aug.get("contrast"):
        layers.append(
            keras.layers.RandomContrast(
                float(aug["contrast"]), value_range=(0, 255), seed=seed + 5, dtype="float32"
            )
        )
    if not layers:
        return None

    def apply(images):
        for layer in layers:
            images = layer(images, training=True)
        return images

    return apply


def make_dataset(
    files: Sequence[str],
    labels: Sequence[int],
    spec: DataSpec,
    *,
    training: bool,
    num_classes: int,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of (images, labels) batches streamed from disk.

    Each element is a batch: float32 images of shape (batch, height, width, channels) with values
    in 0..255 (no scaling; the model carries its own preprocessing) and int32 sparse labels of shape
    (batch,). With `training=True` the files are shuffled (seeded, in a new order every epoch) and
    `spec.augment` is applied with Keras preprocessing layers; otherwise the order is the files'
    order and the images are untouched. The last batch may be smaller.

    Files that cannot be read or decoded are skipped silently (`ignore_errors`), so a corrupt file
    does not stop training; see `find_unreadable` to list them.

    Args:
        files: image paths (any characters, spaces and unicode included).
        labels: integer class of each file, in 0..num_classes-1.
        spec: sizes, batch size, seed, augmentation and caching.
        training: shuffle and augment (train set) or not (validation and test sets).
        num_classes: number of classes; labels are checked against it.

    Returns:
        The dataset, prefetching.

    Raises:
        InputError: files and labels of different lengths, or a label out of range.
        DatasetError: no files.
        GraftError: TensorFlow is not installed.
    """
    tf = _tf()
    _check_pairs(files, labels, num_classes)
    n = len(files)
    autotune = tf.data.AUTOTUNE
    decode = _decode_fn(spec)
    ds = tf.data.Dataset.from_tensor_slices(
        (_path_tensor(files), tf.constant(labels, dtype=tf.int32))
    )

    def shuffle(d):
        return d.shuffle(n, seed=int(spec.seed), reshuffle_each_iteration=True)

    if training and not spec.cache:
        ds = shuffle(ds)  # shuffling paths is cheap; images are decoded afterwards
    ds = ds.map(_plain(tf, lambda f, y: (decode(f), y)), num_parallel_calls=autotune)
    ds = ds.ignore_errors(log_warning=False)  # before batching, so only the bad image is lost
    if spec.cache:
        ds = ds.cache()
        if training:
            ds = shuffle(ds)
    ds = ds.batch(int(spec.batch_size))
    if training:
        augment = _augmenter(spec)
        if augment is not None:
            # One call at a time: the random layers draw from a seeded stream in batch order, so a
            # seed gives the same augmented epochs every run (parallel calls would race for it).
            ds = ds.map(_plain(tf, lambda x, y: (augment(x), y)), num_parallel_calls=None)
    return ds.prefetch(autotune)


def indexed_image_batches(
    files: Sequence[str], spec: DataSpec, *, batch_size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (indices, images) in file order, skipping files that cannot be decoded.

    Args:
        files: image paths.
        spec: input size and channels (and batch size unless `batch_size` is given).
        batch_size: images per batch, overriding `spec.batch_size`.

    Returns:
        An iterator of (indices into `files` as int64, float32 images in 0..255 of shape
        (k, height, width, channels)); decoded exactly as `make_dataset` does, never shuffled or
        augmented. A batch holds fewer images where files were skipped.

    Raises:
        GraftError: TensorFlow is not installed.
    """
    tf = _tf()
    if not len(files):
        return iter(())
    decode = _decode_fn(spec)
    ds = tf.data.Dataset.from_tensor_slices(
        (
            tf.range(len(files), dtype=tf.int64),
            _path_tensor(files),
        )
    )
    ds = ds.map(_plain(tf, lambda i, f: (i, decode(f))), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=False)
    ds = ds.batch(int(batch_size or spec.batch_size)).prefetch(tf.data.AUTOTUNE)
    return ((i.numpy(), x.numpy()) for i, x in ds)


def image_batches(
    files: Sequence[str], spec: DataSpec, *, batch_size: int | None = None
) -> Iterator[np.ndarray]:
    """Batches of images in file order, for prediction or bottleneck features.

    Deterministic, unshuffled and unaugmented, decoded and resized exactly as `make_dataset` does:
    float32, 0..255, shape (k, height, width, channels). Concatenated, the batches line up one to
    one with `files`.

    Args:
        files: image paths.
        spec: input size and channels (and batch size unless `batch_size` is given).
        batch_size: images per batch, overriding `spec.batch_size`.

    Returns:
        An iterator of numpy batches.

    Raises:
        DatasetError: (while iterating) a file that cannot be read or decoded, named, since
            skipping it would misalign the results with the files.
        GraftError: TensorFlow is not installed.
    """
    size = int(batch_size or spec.batch_size)
    expected = 0
    for indices, images in indexed_image_batches(files, spec, batch_size=size):
        wanted = np.arange(expected, expected + len(indices))
        if not np.array_equal(indices, wanted):
            first_gap = int(np.argmax(indices != wanted))
            _raise_unreadable(files[expected + first_gap])
        expected += len(indices)
        yield images
    if expected < len(files):
        _raise_unreadable(files[expected])


def _raise_unreadable(path: str) -> None:
    raise DatasetError(
        f"cannot read or decode the image {path}; remove or replace it (a corrupt, truncated or "
        f"non-image file, or one of more than {MAX_IMAGE_PIXELS:,} pixels)."
    )


def find_unreadable(files: Sequence[str], spec: DataSpec | None = None) -> list[str]:
    """The files that `make_dataset` would skip because they cannot be read or decoded.

    Decodes every file once (streamed), so it costs about one pass over the data.

    Args:
        files: image paths.
        spec: decode settings; a small default (32x32, RGB) when None.

    Returns:
        The unreadable paths, in the order given.

    Raises:
        GraftError: TensorFlow is not installed.
    """
    spec = spec or DataSpec(input_size=(32, 32))
    seen = np.zeros(len(files), dtype=bool)
    for indices, _ in indexed_image_batches(files, spec, batch_size=max(spec.batch_size, 64)):
        seen[indices] = True
    return [str(f) for f, ok in zip(files, seen) if not ok]
