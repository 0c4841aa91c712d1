"""The streamed data pipeline (surgery/pipeline.py) on real image files written with PIL."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.errors import DatasetError, InputError
from surgery.pipeline import (
    DataSpec,
    Splits,
    find_unreadable,
    image_batches,
    indexed_image_batches,
    make_dataset,
    stratified_split,
)

tf = pytest.importorskip("tensorflow")

LUMA = (0.2989, 0.5870, 0.1140)


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------


def _write(path: Path, image: Image.Image, **kw) -> str:
    image.save(path, **kw)
    return str(path)


def _gray(h: int, w: int, value: int) -> Image.Image:
    return Image.fromarray(np.full((h, w), value, np.uint8))  # mode "L"


def _rgb(h: int, w: int, rgb: tuple[int, int, int]) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), rgb, np.uint8))  # mode "RGB"


def _rgba(h: int, w: int, rgba: tuple[int, int, int, int]) -> Image.Image:
    return Image.fromarray(np.full((h, w, 4), rgba, np.uint8))  # mode "RGBA"


def _gradient(h: int, w: int, seed: int) -> Image.Image:
    """An asymmetric RGB image (any flip, rotation or zoom changes it)."""
    rng = np.random.default_rng(seed)
    base = np.add.outer(np.arange(h) * 7, np.arange(w) * 3)[..., None] + np.array([0, 40, 80])
    noise = rng.integers(0, 30, size=(h, w, 3))
    return Image.fromarray(((base + noise) % 256).astype(np.uint8))


def _jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _gradient(24, 24, seed).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """A folder of small images of every kind, and some broken files."""
    d = tmp_path_factory.mktemp("images")
    out = {
        "gray": _write(d / "gray.png", _gray(5, 7, 100)),
        "red": _write(d / "red.png", _rgb(9, 4, (255, 0, 0))),
        "rgb": _write(d / "rgb.png", _rgb(6, 6, (10, 120, 230))),
        "rgba": _write(d / "rgba.png", _rgba(8, 3, (10, 20, 30, 0))),
        "gray_alpha": _write(
            d / "gray alpha.png", Image.fromarray(np.full((4, 4, 2), (40, 9), np.uint8), "LA")
        ),
        "jpeg": _write(d / "photo.jpg", _rgb(16, 12, (200, 200, 200)), quality=95),
        "gray_jpeg": _write(d / "gray photo.jpeg", _gray(10, 10, 60), quality=95),
        "unicode": _write(d / "ünïcödé 画像 file.png", _rgb(3, 11, (0, 255, 0))),
        "big": _write(d / "big.png", _gradient(64, 48, 1)),
    }
    (d / "corrupt.png").write_bytes(b"this is not a png at all")
    out["corrupt"] = str(d / "corrupt.png")
    truncated = _jpeg_bytes(3)
    (d / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    out["truncated"] = str(d / "truncated.jpg")
    (d / "empty.jpg").write_bytes(b"")
    out["empty"] = str(d / "empty.jpg")
    out["missing"] = str(d / "does not exist.png")
    return out


GOOD = ["gray", "red", "rgb", "rgba", "gray_alpha", "jpeg", "gray_jpeg", "unicode", "big"]
BAD = ["corrupt", "truncated", "empty", "missing"]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory) -> list[str]:
    """12 gray images whose pixel value is 10 * their index: the value says which file it is."""
    d = tmp_path_factory.mktemp("numbered")
    return [_write(d / f"img {i:02d}.png", _gray(6 + i % 3, 5 + i % 4, 10 * i)) for i in range(12)]


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _labels_per_epoch(ds, epochs: int = 3) -> list[list[int]]:
    return [np.concatenate([y.numpy() for _, y in ds]).tolist() for _ in range(epochs)]


# --------------------------------------------------------------------------------------------------
# DataSpec
# --------------------------------------------------------------------------------------------------


def test_dataspec_defaults_and_normalisation():
    spec = DataSpec(input_size=[32, np.int64(24)])
    assert spec.input_size == (32, 24)
    assert all(type(s) is int for s in spec.input_size)
    assert (spec.channels, spec.batch_size, spec.augment, spec.cache) == (3, 32, {}, False)
    assert DataSpec(input_size=(8, 8), augment=None).augment == {}
    aug = {"flip": "horizontal", "rotation": 0.1}
    spec = DataSpec(input_size=(8, 8), augment=aug)
    assert spec.augment == aug and spec.augment is not aug  # a copy
    DataSpec(input_size=(8, 8), channels=1, batch_size=1, validation_split=0, test_split=0.5)
    DataSpec(
        input_size=(8, 8),
        augment={"flip": None, "zoom": 0.2, "contrast": 0.0, "translation": 0.1, "rotation": None},
    )


@pytest.mark.parametrize(
    "input_size",
    [224, None, (224,), (224, 224, 3), (0, 32), (32, -1), (32.0, 32.0), ("a", "b"), (True, 8)],
)
def test_dataspec_bad_input_size(input_size):
    with pytest.raises(InputError, match="input_size must be .height, width. with two positive"):
        DataSpec(input_size=input_size)


@pytest.mark.parametrize("channels", [0, 2, 4, 3.0, True, "3"])
def test_dataspec_bad_channels(channels):
    with pytest.raises(InputError, match="channels must be 1 or 3"):
        DataSpec(input_size=(8, 8), channels=channels)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "8", None, True])
def test_dataspec_bad_batch_size(batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        DataSpec(input_size=(8, 8), batch_size=batch_size)


@pytest.mark.parametrize(
    "fractions, message",
    [
        ((-0.1, 0.0), "validation split must be a number in \\[0, 1\\)"),
        ((1.0, 0.0), "validation split must be a number in \\[0, 1\\)"),
        ((0.2, 1.5), "test split must be a number in \\[0, 1\\)"),
        (("0.2", 0.0), "validation split must be a number"),
        ((True, 0.0), "validation split must be a number"),
        ((float("nan"), 0.0), "validation split must be a number"),
        ((0.5, 0.5), "leave nothing to train on"),
        ((0.7, 0.4), "leave nothing to train on"),
    ],
)
def test_dataspec_bad_fractions(fractions, message):
    with pytest.raises(InputError, match=message):
        DataSpec(input_size=(8, 8), validation_split=fractions[0], test_split=fractions[1])


def test_dataspec_unknown_augmentation_key_named():
    with pytest.raises(InputError, match="unknown augmentation key.*blur.*valid keys are flip"):
        DataSpec(input_size=(8, 8), augment={"blur": 0.1, "flip": "horizontal"})
    with pytest.raises(InputError, match="augment must be a mapping"):
        DataSpec(input_size=(8, 8), augment=["flip"])


@pytest.mark.parametrize("flip", ["sideways", "Horizontal", True, 1])
def test_dataspec_bad_flip(flip):
    with pytest.raises(InputError, match="augment.flip must be one of horizontal, vertical"):
        DataSpec(input_size=(8, 8), augment={"flip": flip})


@pytest.mark.parametrize(
    "key, value", [("rotation", 1.0), ("zoom", -0.1), ("contrast", "0.2"), ("translation", True)]
)
def test_dataspec_bad_augmentation_value(key, value):
    with pytest.raises(InputError, match=f"augment.{key} must be a number in \\[0, 1\\)"):
        DataSpec(input_size=(8, 8), augment={key: value})


# --------------------------------------------------------------------------------------------------
# stratified_split
# --------------------------------------------------------------------------------------------------


def _dataset(sizes: dict[int, int]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for label, n in sizes.items():
        for i in range(n):
            files.append(f"class{label}/img{i:03d}.png")
            labels.append(label)
    return files, labels


def _check_partition(s: Splits, files: list[str], labels: list[int]) -> None:
    got = s.train[0] + s.val[0] + s.test[0]
    assert sorted(got) == sorted(files) and len(got) == len(set(got))
    pair = dict(zip(files, labels))
    for part in (s.train, s.val, s.test):
        assert len(part[0]) == len(part[1])
        assert all(pair[f] == y for f, y in zip(*part))
        positions = [files.index(f) for f in part[0]]
        assert positions == sorted(positions)  # each set keeps the given order


def test_split_per_class_fractions():
    files, labels = _dataset({0: 100, 1: 50, 2: 10})
    s = stratified_split(files, labels, None, validation=0.2, test=0.1, seed=0)
    _check_partition(s, files, labels)
    for part, expected in ((s.val, {0: 20, 1: 10, 2: 2}), (s.test, {0: 10, 1: 5, 2: 1})):
        assert Counter(part[1]) == expected
    assert Counter(s.train[1]) == {0: 70, 1: 35, 2: 7}


def test_split_small_classes():
    files, labels = _dataset({0: 1, 1: 2, 2: 3, 3: 4})
    s = stratified_split(files, labels, None, validation=0.1, test=0.1, seed=3)
    _check_partition(s, files, labels)
    train, val, test = Counter(s.train[1]), Counter(s.val[1]), Counter(s.test[1])
    assert all(train[c] >= 1 for c in range(4))  # every class keeps a training file
    assert train[0] == 1 and val[0] == 0 and test[0] == 0  # a single file can only train
    assert (train[1], val[1], test[1]) == (1, 1, 0)  # two files: one val, no test
    assert (train[2], val[2], test[2]) == (1, 1, 1)  # three: one of each
    assert (val[3], test[3]) == (1, 1)


def test_split_always_keeps_a_training_file():
    files, labels = _dataset({0: 2, 1: 3, 2: 10})
    s = stratified_split(files, labels, None, validation=0.6, test=0.39, seed=0)
    _check_partition(s, files, labels)
    assert all(Counter(s.train[1])[c] >= 1 for c in range(3))
    assert Counter(s.val[1])[2] >= 1 and Counter(s.test[1])[2] >= 1


def test_split_no_fractions_keeps_everything_for_training():
    files, labels = _dataset({0: 5, 1: 5})
    s = stratified_split(files, labels, None, validation=0.0, test=0.0, seed=0)
    assert s.train == (files, labels) and s.val == ([], []) and s.test == ([], [])


def test_split_deterministic_and_order_independent():
    files, labels = _dataset({0: 30, 1: 17, 5: 9})
    a = stratified_split(files, labels, None, 0.2, 0.2, seed=7)
    assert a == stratified_split(files, labels, None, 0.2, 0.2, seed=7)
    perm = np.random.default_rng(0).permutation(len(files))
    b = stratified_split(
        [files[i] for i in perm], [labels[i] for i in perm], None, 0.2, 0.2, seed=7
    )
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert sorted(zip(*x)) == sorted(zip(*y))
    c = stratified_split(files, labels, None, 0.2, 0.2, seed=8)
    assert set(c.val[0]) != set(a.val[0])  # another seed, another draw
    # a class's draw does not depend on which other classes are present
    only = [(f, y) for f, y in zip(files, labels) if y == 1]
    d = stratified_split([f for f, _ in only], [y for _, y in only], None, 0.2, 0.2, seed=7)
    assert set(d.val[0]) == {f for f, y in zip(*a.val) if y == 1}


def test_split_explicit_entries_win():
    files, labels = _dataset({0: 10, 1: 10})
    split = [""] * 20
    split[0] = "val"
    split[1] = "validation"
    split[2] = "TEST "
    split[3] = "train"
    split[12] = None
    s = stratified_split(files, labels, split, validation=0.3, test=0.0, seed=0)
    _check_partition(s, files, labels)
    assert s.val == ([files[0], files[1]], [0, 0])  # exactly the marked files, none drawn
    assert s.test == ([files[2]], [0])
    assert files[3] in s.train[0]

    # explicit test files only: the validation set is still drawn, from the unmarked files
    split = ["test" if i in (5, 15) else "" for i in range(20)]
    s = stratified_split(files, labels, split, validation=0.2, test=0.5, seed=0)
    assert s.test == ([files[5], files[15]], [0, 1])
    assert Counter(s.val[1]) == {0: 2, 1: 2} and not set(s.val[0]) & {files[5], files[15]}

    # "train" entries may be drawn into val like unmarked ones, never test/val-marked ones
    split = ["train"] * 20
    s = stratified_split(files, labels, split, validation=0.2, test=0.0, seed=0)
    assert Counter(s.val[1]) == {0: 2, 1: 2}


def test_split_errors():
    files, labels = _dataset({0: 4})
    with pytest.raises(InputError, match="4 files but 3 labels"):
        stratified_split(files, labels[:3], None, 0.2, 0.0, 0)
    with pytest.raises(InputError, match="4 files but 2 split entries"):
        stratified_split(files, labels, ["val", ""], 0.2, 0.0, 0)
    with pytest.raises(InputError, match="split entry 'holdout' for class0/img001.png"):
        stratified_split(files, labels, ["", "holdout", "", ""], 0.2, 0.0, 0)
    with pytest.raises(InputError, match="leave nothing to train on"):
        stratified_split(files, labels, None, 0.6, 0.4, 0)


def test_split_accepts_paths(tmp_path):
    files = [tmp_path / f"{i}.png" for i in range(5)]
    s = stratified_split(files, np.array([0, 0, 0, 1, 1]), None, 0.0, 0.0, 0)
    assert s.train == ([str(f) for f in files], [0, 0, 0, 1, 1])
    assert all(type(y) is int for y in s.train[1])


# --------------------------------------------------------------------------------------------------
# make_dataset
# --------------------------------------------------------------------------------------------------


def test_make_dataset_is_a_streaming_tf_dataset(images):
    files = [images[k] for k in GOOD]
    spec = DataSpec(input_size=(6, 5), batch_size=4)
    ds = make_dataset(files, [0] * len(files), spec, training=False, num_classes=1)
    assert isinstance(ds, tf.data.Dataset)
    x_spec, y_spec = ds.element_spec
    assert x_spec.dtype == tf.float32 and tuple(x_spec.shape) == (None, 6, 5, 3)
    assert y_spec.dtype == tf.int32 and tuple(y_spec.shape) == (None,)


@pytest.mark.parametrize("channels", [3, 1])
def test_make_dataset_batches(images, channels):
    files = [images[k] for k in GOOD]
    labels = [i % 3 for i in range(len(files))]
    spec = DataSpec(input_size=(10, 7), channels=channels, batch_size=4)
    batches = list(make_dataset(files, labels, spec, training=False, num_classes=3))
    assert [len(x) for x, _ in batches] == [4, 4, 1]  # the last batch is smaller
    for x, y in batches:
        assert x.dtype == tf.float32 and x.shape[1:] == (10, 7, channels)
        assert y.dtype == tf.int32 and y.shape == (x.shape[0],)
        assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 255.0
    x, y = _collect(batches)
    assert y.tolist() == labels
    assert x.max() > 1.0  # not scaled to 0..1


def test_decode_values_rgb(images):
    keys = ["gray", "red", "rgb", "rgba", "gray_alpha", "unicode", "jpeg", "gray_jpeg"]
    spec = DataSpec(input_size=(4, 4), channels=3, batch_size=16)
    ds = make_dataset(
        [images[k] for k in keys], [0] * len(keys), spec, training=False, num_classes=1
    )
    x, _ = _collect(ds)
    got = dict(zip(keys, x))
    expected = {
        "gray": (100, 100, 100),  # gray -> RGB repeats the channel
        "red": (255, 0, 0),
        "rgb": (10, 120, 230),
        "rgba": (10, 20, 30),  # the alpha channel is dropped (not premultiplied)
        "gray_alpha": (40, 40, 40),
        "unicode": (0, 255, 0),
    }
    for key, rgb in expected.items():
        np.testing.assert_allclose(
            got[key], np.broadcast_to(rgb, (4, 4, 3)), atol=1e-4, err_msg=key
        )
    np.testing.assert_allclose(got["jpeg"], 200, atol=3)
    np.testing.assert_allclose(got["gray_jpeg"], 60, atol=3)
    assert np.all(got["gray_jpeg"][..., 0] == got["gray_jpeg"][..., 2])


def test_decode_values_gray(images):
    keys = ["gray", "red", "rgb", "rgba", "gray_alpha", "unicode"]
    spec = DataSpec(input_size=(3, 5), channels=1, batch_size=16)
    ds = make_dataset(
        [images[k] for k in keys], [0] * len(keys), spec, training=False, num_classes=1
    )
    x, _ = _collect(ds)
    assert x.shape == (len(keys), 3, 5, 1)
    got = dict(zip(keys, x[..., 0]))

    def luma(r, g, b):
        return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b

    expected = {
        "gray": 100.0,
        "red": 0.2989 * 255,
        "rgb": luma(10, 120, 230),
        "rgba": luma(10, 20, 30),  # alpha dropped before the conversion
        "gray_alpha": 40.0,
        "unicode": 0.5870 * 255,
    }
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-3, err_msg=key)
    # the same weights as PIL's own RGB -> L conversion, to within rounding
    pil = np.asarray(Image.open(images["rgb"]).convert("L"), np.float32)
    assert abs(float(pil.mean()) - float(got["rgb"].mean())) <= 1.0


def test_resize_is_bilinear_from_any_size(images):
    spec = DataSpec(input_size=(64, 48), batch_size=2)
    (x,) = list(image_batches([images["big"]], spec))
    np.testing.assert_allclose(x[0], np.asarray(Image.open(images["big"]), np.float32), atol=1e-3)
    spec = DataSpec(input_size=(32, 24), batch_size=2)
    (small,) = list(image_batches([images["big"]], spec))
    want = tf.image.resize(np.asarray(Image.open(images["big"]), np.float32)[None], (32, 24))
    np.testing.assert_allclose(small, want.numpy(), atol=1e-3)


def test_training_false_keeps_order(numbered):
    spec = DataSpec(input_size=(4, 4), batch_size=5, seed=1)
    ds = make_dataset(numbered, list(range(12)), spec, training=False, num_classes=12)
    assert _labels_per_epoch(ds, 2) == [list(range(12))] * 2
    x, y = _collect(ds)
    np.testing.assert_allclose(x[:, 0, 0, 0], 10 * y)


@pytest.mark.parametrize("cache", [False, True])
def test_training_true_shuffles_per_epoch_with_seed(numbered, cache):
    labels = list(range(12))

    def orders(seed):
        spec = DataSpec(input_size=(4, 4), batch_size=5, seed=seed, cache=cache)
        return _labels_per_epoch(
            make_dataset(numbered, labels, spec, training=True, num_classes=12)
        )

    first = orders(0)
    assert all(sorted(epoch) == labels for epoch in first)  # every file once per epoch
    assert first[0] != labels  # shuffled
    assert len({tuple(epoch) for epoch in first}) == 3  # a new order every epoch
    assert orders(0) == first  # reproducible with the seed
    assert orders(1) != first


def test_shuffled_images_stay_with_their_labels(numbered):
    spec = DataSpec(input_size=(4, 4), batch_size=5, seed=4)
    x, y = _collect(make_dataset(numbered, list(range(12)), spec, training=True, num_classes=12))
    assert y.tolist() != list(range(12))
    np.testing.assert_allclose(x[:, 0, 0, :], np.repeat(10.0 * y[:, None], 3, axis=1))


def test_augmentation_only_when_training(tmp_path):
    files = [_write(tmp_path / f"g{i}.png", _gradient(12, 12, i)) for i in range(8)]
    labels = list(range(8))
    plain = DataSpec(input_size=(12, 12), batch_size=8, seed=2)
    aug = DataSpec(
        input_size=(12, 12),
        batch_size=8,
        seed=2,
        augment={"flip": "horizontal_and_vertical", "rotation": 0.2, "contrast": 0.3},
    )
    x_plain, y_plain = _collect(make_dataset(files, labels, plain, training=True, num_classes=8))
    x_aug, y_aug = _collect(make_dataset(files, labels, aug, training=True, num_classes=8))
    assert y_plain.tolist() == y_aug.tolist()  # the same shuffle, so the same files in each slot
    assert x_aug.shape == x_plain.shape and x_aug.dtype == np.float32
    assert not np.allclose(x_aug, x_plain)
    changed = [not np.allclose(a, p) for a, p in zip(x_aug, x_plain)]
    assert sum(changed) >= 4
    # evaluation data is never augmented
    x_eval_aug, _ = _collect(make_dataset(files, labels, aug, training=False, num_classes=8))
    x_eval, _ = _collect(make_dataset(files, labels, plain, training=False, num_classes=8))
    np.testing.assert_array_equal(x_eval_aug, x_eval)
    np.testing.assert_allclose(x_eval[0], np.asarray(Image.open(files[0]), np.float32), atol=1e-3)


def test_corrupt_files_are_skipped(images):
    good = [images[k] for k in GOOD]
    files = good[:3] + [images["corrupt"]] + good[3:6] + [images["truncated"], images["missing"]]
    labels = list(range(len(files)))
    spec = DataSpec(input_size=(5, 5), batch_size=4)
    for training in (False, True):
        ds = make_dataset(files, labels, spec, training=training, num_classes=len(files))
        x, y = _collect(ds)
        assert len(y) == len(x) == 6  # three fewer images, no crash
        assert sorted(y.tolist()) == [0, 1, 2, 4, 5, 6]


def test_make_dataset_errors(images):
    spec = DataSpec(input_size=(4, 4))
    files = [images["gray"], images["red"]]
    with pytest.raises(InputError, match="label 2 is outside 0..1 .num_classes=2."):
        make_dataset(files, [0, 2], spec, training=False, num_classes=2)
    with pytest.raises(InputError, match="label -1 is outside"):
        make_dataset(files, [-1, 0], spec, training=True, num_classes=2)
    with pytest.raises(InputError, match="2 files but 1 labels"):
        make_dataset(files, [0], spec, training=False, num_classes=2)
    with pytest.raises(InputError, match="num_classes must be at least 1"):
        make_dataset(files, [0, 0], spec, training=False, num_classes=0)
    with pytest.raises(DatasetError, match="no image files"):
        make_dataset([], [], spec, training=True, num_classes=2)


def test_make_dataset_accepts_numpy_labels_and_paths(images):
    files = [Path(images["gray"]), Path(images["unicode"])]
    spec = DataSpec(input_size=(4, 4), batch_size=8)
    ds = make_dataset(files, np.array([1, 0], np.int64), spec, training=False, num_classes=2)
    _, y = _collect(ds)
    assert y.dtype == np.int32 and y.tolist() == [1, 0]


# --------------------------------------------------------------------------------------------------
# image_batches, indexed_image_batches, find_unreadable
# --------------------------------------------------------------------------------------------------


def test_image_batches_line_up_with_files(images, numbered):
    spec = DataSpec(input_size=(4, 4), channels=1, batch_size=32)
    batches = list(image_batches(numbered, spec, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    x = np.concatenate(batches)
    assert x.dtype == np.float32 and x.shape == (12, 4, 4, 1)
    np.testing.assert_allclose(x[:, 0, 0, 0], 10.0 * np.arange(12))
    # the same decoding as make_dataset
    files = [images[k] for k in GOOD]
    spec = DataSpec(input_size=(6, 6), batch_size=4)
    x_ds, _ = _collect(make_dataset(files, [0] * len(files), spec, training=False, num_classes=1))
    np.testing.assert_array_equal(np.concatenate(list(image_batches(files, spec))), x_ds)
    assert list(image_batches([], spec)) == []


@pytest.mark.parametrize("position", [0, 3, 4, 8])
def test_image_batches_name_the_corrupt_file(images, numbered, position):
    files = list(numbered[:8])
    files.insert(position, images["corrupt"])
    spec = DataSpec(input_size=(4, 4), batch_size=4)
    with pytest.raises(DatasetError, match="cannot read or decode the image .*corrupt.png"):
        list(image_batches(files, spec))


def test_image_batches_name_a_missing_file(images):
    spec = DataSpec(input_size=(4, 4), batch_size=4)
    with pytest.raises(DatasetError, match="does not exist.png"):
        list(image_batches([images["gray"], images["missing"]], spec))


def test_indexed_image_batches_skip_and_report(images, numbered):
    files = list(numbered[:6])
    files.insert(2, images["corrupt"])
    files.append(images["empty"])
    spec = DataSpec(input_size=(4, 4), batch_size=3)
    got = list(indexed_image_batches(files, spec))
    indices = np.concatenate([i for i, _ in got])
    assert all(i.dtype == np.int64 for i, _ in got)
    assert indices.tolist() == [0, 1, 3, 4, 5, 6]
    x = np.concatenate([b for _, b in got])
    assert x.shape == (6, 4, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0, 0], [0, 10, 20, 30, 40, 50])
    assert list(indexed_image_batches([], spec)) == []


def test_find_unreadable_lists_exactly_the_bad_files(images):
    keys = ["gray", "corrupt", "rgba", "truncated", "unicode", "empty", "jpeg", "missing", "big"]
    files = [images[k] for k in keys]
    assert find_unreadable(files) == [images[k] for k in BAD]
    assert find_unreadable(files, DataSpec(input_size=(2, 2), channels=1, batch_size=2)) == [
        images[k] for k in BAD
    ]
    assert find_unreadable([images[k] for k in GOOD]) == []
    assert find_unreadable([]) == []
