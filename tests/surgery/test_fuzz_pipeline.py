"""Hostile image files and names fed to the training pipeline (surgery/pipeline.py).

`find_unreadable` lists every file the pipeline cannot use, `make_dataset` skips them, and
`image_batches` raises a `DatasetError` naming the file; the readable odd ones (1x1, CMYK, 16-bit,
palette, animated) decode like PIL reads them. No other exception, no hang, bounded memory.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np
import pytest
from hostile_images import KINDS, good_jpeg, good_png
from PIL import Image

from graft.errors import DatasetError
from surgery.pipeline import (
    MAX_IMAGE_PIXELS,
    DataSpec,
    find_unreadable,
    image_batches,
    make_dataset,
)

tf = pytest.importorskip("tensorflow")

SPEC = DataSpec(input_size=(8, 8), batch_size=4)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reference(path: Path) -> np.ndarray:
    """What the pipeline should give, from PIL: RGB, resized to 8x8 by TensorFlow's bilinear."""
    with Image.open(path) as im:
        arr = np.asarray(im)
        if arr.dtype == np.uint16:  # 16-bit: scaled to 8 bits
            arr = np.round(arr / 257.0).astype(np.uint8)
        else:
            arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return tf.image.resize(arr.astype(np.float32), (8, 8)).numpy()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[str, bool]]:
    d = tmp_path_factory.mktemp("hostile")
    return {k: (str(maker(d / f"{k}{ext}")), ok) for k, (maker, ext, ok) in KINDS.items()}


def test_find_unreadable_names_exactly_the_bad_files_in_bounded_memory(hostile, tmp_path):
    good = str(good_jpeg(tmp_path / "good.jpg"))
    files = [good] + [p for p, _ in hostile.values()]
    before = _peak_mib()
    bad = find_unreadable(files, SPEC)
    assert _peak_mib() - before < 300  # the 10000 x 10000 PNG alone would take 1.2 GB decoded
    assert bad == [p for p, ok in hostile.values() if not ok]
    ds = make_dataset(files, [0] * len(files), SPEC, training=False, num_classes=1)
    assert sum(len(y) for _, y in ds) == len(files) - len(bad)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_image_batches_decodes_or_names_the_file(hostile, kind):
    path, readable = hostile[kind]
    if not readable:
        with pytest.raises(DatasetError) as info:
            list(image_batches([path], SPEC))
        assert path in str(info.value)
        return
    (batch,) = list(image_batches([path], SPEC))
    assert batch.shape == (1, 8, 8, 3) and batch.dtype == np.float32
    tolerance = 12 if kind == "cmyk_jpeg" else 1.5  # JPEG colour conversions differ a little
    assert np.abs(batch[0] - _reference(Path(path))).mean() < tolerance


def test_the_pixel_bound_is_pils(hostile):
    assert MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    from hostile_images import png_header

    path = Path(hostile["one_pixel"][0]).with_name("at_the_bound.png")
    # 9459 x 9459 = 89,472,681 <= the bound: not refused for its size (it is cut short, so corrupt)
    path.write_bytes(png_header(9459, 9459, b"\x00" * 4, colour=0))
    refused = path.with_name("over.png")
    refused.write_bytes(png_header(9460, 9460, b"\x00" * 4, colour=0))
    with pytest.raises(DatasetError, match="89,478,485 pixels"):
        list(image_batches([str(refused)], SPEC))


NAMES = [
    "space in name.jpg",
    "ñandú 日本 🐈.jpg",
    "new\nline.jpg",
    "tab\there.png",
    ".leading_dot.jpg",
    "quote'\"$(x)*?[.jpg",
    "x" * 251 + ".jpg",
    "%s{0}\\.png",
]


def test_odd_file_names_decode(tmp_path):
    files = []
    for name in NAMES:
        maker = good_png if name.endswith(".png") else good_jpeg
        files.append(str(maker(tmp_path / name)))
    raw = os.fsencode(tmp_path) + b"/\xff\xfe latin1 caf\xe9.jpg"  # not UTF-8
    files.append(str(good_jpeg(Path(os.fsdecode(raw)))))
    assert find_unreadable(files, SPEC) == []
    assert sum(len(b) for b in image_batches(files, SPEC)) == len(files)
    ds = make_dataset(files, [0] * len(files), SPEC, training=True, num_classes=1)
    assert sum(len(y) for _, y in ds) == len(files)


def test_a_folder_and_a_missing_file_are_skipped_or_named(tmp_path):
    # (a FIFO is not tried: reading one blocks; list_images leaves every non-regular file out)
    good = str(good_jpeg(tmp_path / "good.jpg"))
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    missing = str(tmp_path / "missing.jpg")
    bad = [str(folder), missing]
    assert find_unreadable([good, *bad], SPEC) == bad
    with pytest.raises(DatasetError, match="folder.jpg"):
        list(image_batches([good, str(folder)], SPEC))


@pytest.mark.parametrize(
    "fmt, kw", [("BMP", {}), ("WEBP", {"lossless": False}), ("WEBP", {"lossless": True}), ("GIF", {})]
)
def test_ordinary_images_of_every_format_pass_the_header_check(tmp_path, fmt, kw):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(np.full((300, 500, 3), 90, np.uint8)).save(path, format=fmt, **kw)
    (batch,) = list(image_batches([str(path)], SPEC))
    assert batch.shape == (1, 8, 8, 3)


def test_a_bmp_declaring_a_huge_size_is_refused(tmp_path):
    path = tmp_path / "huge.bmp"
    Image.new("RGB", (2, 2)).save(path, format="BMP")
    data = bytearray(path.read_bytes())
    data[18:26] = (20000).to_bytes(4, "little") + (-20000).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(data))
    assert find_unreadable([str(path)], SPEC) == [str(path)]
