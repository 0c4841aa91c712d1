"""`advisor.dataset`: list_images and scan on small real data sets written with PIL in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

import advisor.dataset as dataset
import graft.images as images
from advisor.dataset import IMAGE_EXTENSIONS, DatasetFacts, list_images, scan
from graft.errors import DatasetError, InputError

FACT_KEYS = {
    "images",
    "classes",
    "images_per_class_min",
    "images_per_class_median",
    "imbalance_ratio",
    "grayscale_fraction",
    "median_width",
    "median_height",
    "corrupt_files",
}


# ---------------------------------------------------------------------------------------------------
# Helpers


def write_image(path: Path, size: tuple[int, int] = (16, 12), mode: str = "RGB", seed: int = 0):
    """A real image file (random pixels) whose format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    Image.fromarray(arr, mode).save(path, format=fmt)
    return path


def make_classes(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (16, 12),
    mode: str = "RGB",
    ext: str = ".jpg",
) -> Path:
    """`root/CLASS/img_K.ext` for each class and count."""
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            write_image(root / c / f"img_{k}{ext}", size, mode, seed=k)
    return root


def run_with_timeout(fn, seconds: float = 10.0):
    """Run `fn()` in a thread; fail (instead of hanging the suite) if it does not finish in time."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"did not finish within {seconds} s (a symlink loop?)")
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def mixed(tmp_path) -> Path:
    """12 images in 3 classes: RGB JPEG 40x30, grayscale PNG 20x10, RGB PNG 40x30, one nested."""
    root = tmp_path / "data"
    make_classes(root, {"dog": 6}, size=(40, 30), ext=".jpg")
    make_classes(root, {"cat": 2}, size=(20, 10), mode="L", ext=".png")
    make_classes(root, {"Zebra": 3}, size=(40, 30), ext=".png")
    write_image(root / "Zebra" / "more" / "deeper.jpeg", size=(40, 30))  # nested: still Zebra
    return root


# ---------------------------------------------------------------------------------------------------
# Counts


def test_counts_sizes_channels_and_class_order(mixed):
    facts = scan(mixed)
    assert isinstance(facts, DatasetFacts)
    assert facts.root == str(mixed)
    assert facts.images == 12
    assert facts.classes == 3
    assert facts.class_names == ["Zebra", "cat", "dog"]  # sorted() order, upper case first
    assert facts.per_class == {"Zebra": 4, "cat": 2, "dog": 6}
    assert facts.images_per_class_min == 2
    assert facts.images_per_class_median == 4.0
    assert facts.imbalance_ratio == 3.0
    assert facts.sampled == 12  # fewer images than the default sample: all are read
    assert facts.channels == {"RGB": 10, "L": 2}
    assert facts.grayscale_fraction == pytest.approx(2 / 12)
    assert (facts.median_width, facts.median_height) == (40, 30)
    assert facts.corrupt_files == 0 and facts.corrupt == []
    assert facts.non_images == 0
    assert facts.splits == {}
    assert facts.empty_classes == []
    assert len(facts.fingerprint) == 64 and int(facts.fingerprint, 16) >= 0
    assert facts.seconds >= 0
    # two classes under 5 images: one warning naming them
    small = [w for w in facts.warnings if "fewer than 5 images" in w]
    assert len(small) == 1 and "Zebra" in small[0] and "cat" in small[0]


def test_median_of_an_even_number_of_classes_is_a_float(tmp_path):
    facts = scan(make_classes(tmp_path / "d", {"a": 3, "b": 4}))
    assert facts.images_per_class_median == 3.5
    assert facts.imbalance_ratio == pytest.approx(4 / 3)


def test_facts_and_to_dict_are_plain_and_complete(mixed):
    facts = scan(mixed)
    f = facts.facts()
    assert set(f) == FACT_KEYS
    for key, value in f.items():
        assert type(value) in (int, float), key
    assert type(f["images"]) is int and type(f["imbalance_ratio"]) is float
    assert f["images"] == 12 and f["median_width"] == 40
    d = facts.to_dict()
    assert list(d) == list(DatasetFacts.__dataclass_fields__)
    assert json.loads(json.dumps(d)) == d  # JSON friendly
    assert d["per_class"] == {"Zebra": 4, "cat": 2, "dog": 6}


def test_list_images_gives_sorted_absolute_paths_labels_and_no_splits(mixed):
    listing = list_images(mixed)
    assert listing.root == str(mixed)
    assert listing.classes == ["Zebra", "cat", "dog"]
    assert len(listing) == len(listing.files) == len(listing.labels) == len(listing.split) == 12
    assert listing.files == sorted(listing.files)
    assert all(os.path.isabs(f) and os.path.isfile(f) for f in listing.files)
    for f, label in zip(listing.files, listing.labels):
        assert Path(f).relative_to(mixed).parts[0] == listing.classes[label]
    assert set(listing.split) == {""}
    assert str(mixed / "Zebra" / "more" / "deeper.jpeg") in listing.files


def test_relative_root_is_made_absolute(mixed, monkeypatch):
    monkeypatch.chdir(mixed.parent)
    facts = scan("data")
    assert facts.root == str(mixed) and facts.images == 12


def test_extensions_are_case_insensitive_and_hidden_entries_ignored(tmp_path):
    root = make_classes(tmp_path / "d", {"a": 2, "b": 2})
    write_image(root / "a" / "UPPER.JPG")
    write_image(root / "b" / "Mixed.Jpeg")
    write_image(root / "a" / ".hidden.jpg")  # hidden file: not counted at all
    write_image(root / ".cache" / "x.jpg")  # hidden top-level folder: not a class
    write_image(root / "b" / ".thumbs" / "y.jpg")  # hidden sub-folder: not walked
    facts = scan(root)
    assert facts.class_names == ["a", "b"]
    assert facts.per_class == {"a": 3, "b": 3}
    assert facts.non_images == 0
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------------
# Split folders


@pytest.mark.parametrize("val_name", ["val", "validation", "valid", "Validation"])
def test_split_folders_are_recognised_and_classes_merged(tmp_path, val_name):
    root = tmp_path / "d"
    make_classes(root / "train", {"cat": 4, "dog": 5})
    make_classes(root / val_name, {"cat": 2, "dog": 2}, ext=".png")
    make_classes(root / "test", {"cat": 1, "dog": 1})
    facts = scan(root)
    assert facts.class_names == ["cat", "dog"]  # merged, not train/cat, val/cat ...
    assert facts.per_class == {"cat": 7, "dog": 8}
    assert facts.splits == {"train": 9, "val": 4, "test": 2}
    assert facts.images == 15
    listing = list_images(root)
    assert sorted(set(listing.split)) == ["test", "train", "val"]
    for f, s in zip(listing.files, listing.split):
        top = Path(f).relative_to(root).parts[0]
        assert dataset.SPLIT_NAMES[top.lower()] == s


def test_split_missing_a_class_and_stray_folders_are_warned_about(tmp_path):
    root = tmp_path / "d"
    make_classes(root / "train", {"cat": 5, "dog": 5})
    make_classes(root / "val", {"cat": 2})
    make_classes(root / "extra", {"cat": 3})  # ignored beside split folders
    facts = scan(root)
    assert facts.per_class == {"cat": 7, "dog": 5}
    assert facts.splits == {"train": 10, "val": 2}
    assert any("'val'" in w and "dog" in w for w in facts.warnings)
    assert any("extra" in w and "ignored" in w for w in facts.warnings)


def test_two_folders_for_the_same_split_are_an_error(tmp_path):
    root = tmp_path / "d"
    make_classes(root / "val", {"cat": 1, "dog": 1})
    make_classes(root / "validation", {"cat": 1, "dog": 1})
    make_classes(root / "train", {"cat": 1, "dog": 1})
    with pytest.raises(DatasetError, match=r"val/ and validation/.*merge or rename"):
        scan(root)


# ---------------------------------------------------------------------------------------------------
# Errors


def test_dataset_error_is_an_input_error_with_exit_code_2():
    assert issubclass(DatasetError, InputError)
    assert DatasetError.exit_code == 2


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as err:
        scan(missing)
    msg = str(err.value)
    assert str(missing) in msg and "does not exist" in msg and "sub-folder per class" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(missing)


def test_broken_link_as_root(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(DatasetError, match="broken symbolic link"):
        scan(link)


def test_file_instead_of_folder(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetError) as err:
        scan(archive)
    msg = str(err.value)
    assert str(archive) in msg and "is a file, not a folder" in msg and "extract" in msg


def test_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DatasetError) as err:
        scan(root)
    msg = str(err.value)
    assert "No class folders" in msg and str(root) in msg and "CLASS/image.jpg" in msg


def test_only_loose_images_is_no_class_folders(tmp_path):
    root = tmp_path / "flat"
    write_image(root / "a.jpg")
    write_image(root / "b.jpg")
    with pytest.raises(DatasetError, match="No class folders"):
        scan(root)


def test_split_folders_without_class_folders(tmp_path):
    root = tmp_path / "d"
    write_image(root / "train" / "a.jpg")
    with pytest.raises(DatasetError, match=r"train/CLASS/image\.jpg"):
        scan(root)


def test_one_class_only(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 3})
    (root / "dog").mkdir()  # a second folder, but empty
    with pytest.raises(DatasetError) as err:
        scan(root)
    msg = str(err.value)
    assert "only one class" in msg and "'cat'" in msg and "at least two" in msg


def test_class_folders_without_images(tmp_path):
    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        (root / c / "readme.txt").write_text("no pictures here\n")
    with pytest.raises(DatasetError) as err:
        scan(root)
    msg = str(err.value)
    assert "hold no images" in msg and "2 other file(s)" in msg and ".jpg" in msg


def test_class_folders_with_only_zero_byte_images(tmp_path):
    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        (root / c / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"hold no images \(2 zero-byte"):
        scan(root)


# ---------------------------------------------------------------------------------------------------
# Warnings, not crashes


def test_corrupt_files_are_listed_by_path(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5}, size=(64, 48))
    zero = root / "cat" / "zero.jpg"
    zero.write_bytes(b"")
    good = write_image(root / "dog" / "whole.jpg", size=(64, 48), seed=7).read_bytes()
    truncated = root / "dog" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    text = root / "cat" / "notes.jpg"
    text.write_text("this is not a JPEG\n")
    facts = scan(root)  # no exception, and no Python warning (pytest turns those into errors)
    assert facts.images == 13  # the zero-byte file is left out of the listing
    assert facts.corrupt_files == 3
    assert sorted(facts.corrupt) == sorted(map(str, (zero, truncated, text)))
    assert facts.sampled == 13 and sum(facts.channels.values()) == 11
    assert any("zero-byte" in w and str(zero) in w for w in facts.warnings)
    assert any("could not be decoded" in w and "2 of 13" in w for w in facts.warnings)
    assert str(zero) not in list_images(root).files


def test_truncated_png_is_corrupt(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 2, "dog": 2}, ext=".png")
    data = write_image(root / "cat" / "big.png", size=(64, 64), seed=3).read_bytes()
    (root / "cat" / "big.png").write_bytes(data[: len(data) - 40])
    facts = scan(root)
    assert facts.corrupt == [str(root / "cat" / "big.png")]


def test_non_image_files_are_ignored_and_counted(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    (root / "cat" / "labels.csv").write_text("a,b\n")
    (root / "dog" / "README").write_text("x")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0\1")
    (root / "dog" / ".DS_Store").write_bytes(b"\0")  # hidden: not even counted
    facts = scan(root)
    assert facts.images == 10 and facts.corrupt_files == 0
    assert facts.non_images == 3
    assert any("3 file(s) without an image extension were ignored" in w for w in facts.warnings)


def test_loose_images_beside_the_class_folders_are_warned_about(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    write_image(root / "stray.jpg")
    facts = scan(root)
    assert facts.images == 10
    assert any("1 image file(s) lie outside any class folder" in w for w in facts.warnings)


def test_empty_class_folders_are_warned_about(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    (root / "empty").mkdir()
    (root / "text_only").mkdir()
    (root / "text_only" / "a.txt").write_text("x")
    facts = scan(root)
    assert facts.class_names == ["cat", "dog"] and facts.classes == 2
    assert facts.empty_classes == ["empty", "text_only"]
    assert any("2 empty class folder(s)" in w and "text_only" in w for w in facts.warnings)
    assert list_images(root).classes == ["cat", "dog"]


def test_unreadable_sub_folder_is_skipped_with_a_warning(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not block reads")
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    locked = root / "dog" / "locked"
    write_image(locked / "hidden_from_us.jpg")
    locked.chmod(0)
    try:
        facts = scan(root)
    finally:
        locked.chmod(0o755)
    assert facts.per_class == {"cat": 5, "dog": 5}
    assert any("could not be read" in w and str(locked) in w for w in facts.warnings)


def test_unreadable_sub_folder_simulated(tmp_path, monkeypatch):
    """The same as above, runnable as root: scandir raises PermissionError for one folder."""
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    locked = root / "dog" / "locked"
    write_image(locked / "hidden_from_us.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(dataset.os, "scandir", scandir)
    facts = scan(root)
    assert facts.per_class == {"cat": 5, "dog": 5}
    msg = [w for w in facts.warnings if "could not be read" in w]
    assert len(msg) == 1 and str(locked) in msg[0] and "Permission denied" in msg[0]
    assert "permissions" in msg[0]


def test_unreadable_data_set_folder_is_an_error(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {"cat": 1, "dog": 1})
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(root):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(dataset.os, "scandir", scandir)
    with pytest.raises(DatasetError, match=r"permission denied.*chmod -R u\+rX"):
        scan(root)


def test_python_warnings_are_not_emitted(tmp_path, recwarn):
    root = make_classes(tmp_path / "d", {"cat": 2, "dog": 2})
    (root / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "dog" / "empty").mkdir()
    facts = scan(root)
    assert facts.corrupt_files == 1 and facts.warnings
    assert len(recwarn) == 0


# ---------------------------------------------------------------------------------------------------
# Symbolic links


def test_symlink_loops_do_not_hang_or_double_count(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 3, "dog": 4})
    before = scan(root)
    (root / "cat" / "loop_to_root").symlink_to(root, target_is_directory=True)
    (root / "cat" / "loop_to_parent").symlink_to(tmp_path, target_is_directory=True)
    (root / "dog" / "sub").mkdir()
    write_image(root / "dog" / "sub" / "deep.jpg")
    (root / "dog" / "sub" / "self").symlink_to(root / "dog" / "sub", target_is_directory=True)
    (root / "dog" / "alias_of_cat").symlink_to(root / "cat", target_is_directory=True)
    facts = run_with_timeout(lambda: scan(root))
    assert facts.images == before.images + 1  # only deep.jpg is new
    assert facts.per_class == {"cat": 3, "dog": 5}
    assert any("linked folder(s) were skipped" in w for w in facts.warnings)
    listing = run_with_timeout(lambda: list_images(root))
    assert len(set(map(os.path.realpath, listing.files))) == len(listing.files) == 8


def test_links_to_outside_folders_and_files_are_followed(tmp_path):
    outside = make_classes(tmp_path / "elsewhere", {"birds": 3})
    write_image(outside / "loose.jpg")
    root = make_classes(tmp_path / "d", {"cat": 2})
    (root / "bird").symlink_to(outside / "birds", target_is_directory=True)  # linked class folder
    (root / "cat" / "linked.jpg").symlink_to(outside / "loose.jpg")  # linked file
    facts = scan(root)
    assert facts.per_class == {"bird": 3, "cat": 3}
    # follow_symlinks=False skips links inside class folders
    listing = list_images(root, follow_symlinks=False)
    assert str(root / "cat" / "linked.jpg") not in listing.files


def test_broken_symlink_is_left_out_and_reported(tmp_path):
    root = make_classes(tmp_path / "d", {"cat": 3, "dog": 3})
    broken = root / "cat" / "gone.jpg"
    broken.symlink_to(tmp_path / "does_not_exist.jpg")
    (root / "dog" / "gone_dir").symlink_to(tmp_path / "no_such_dir", target_is_directory=True)
    facts = run_with_timeout(lambda: scan(root))
    assert facts.images == 6
    assert facts.corrupt == [str(broken)] and facts.corrupt_files == 1
    assert any("broken links" in w for w in facts.warnings)
    assert str(broken) not in list_images(root).files


# ---------------------------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_is_stable_and_follows_the_documented_recipe(mixed, tmp_path):
    a, b = scan(mixed), scan(mixed, sample=3, seed=5)
    assert a.fingerprint == b.fingerprint  # not affected by the sample
    listing = list_images(mixed)
    h = hashlib.sha256()
    for f in listing.files:
        rel = Path(f).relative_to(mixed).as_posix()
        h.update(f"{rel}\t{os.path.getsize(f)}\n".encode())
    assert a.fingerprint == h.hexdigest()
    # the same files under another root have the same fingerprint
    copy = shutil.copytree(mixed, tmp_path / "copy")
    assert scan(copy).fingerprint == a.fingerprint


def test_fingerprint_changes_when_files_are_added_renamed_or_resized(mixed):
    base = scan(mixed).fingerprint
    (mixed / "cat" / "notes.txt").write_text("x")  # non-image files do not count
    assert scan(mixed).fingerprint == base

    added = write_image(mixed / "cat" / "new.png", mode="L")
    fp_added = scan(mixed).fingerprint
    assert fp_added != base

    added.rename(mixed / "cat" / "renamed.png")
    fp_renamed = scan(mixed).fingerprint
    assert fp_renamed not in (base, fp_added)

    (mixed / "cat" / "renamed.png").rename(mixed / "dog" / "renamed.png")  # moved to another class
    assert scan(mixed).fingerprint not in (base, fp_added, fp_renamed)

    (mixed / "dog" / "renamed.png").unlink()
    assert scan(mixed).fingerprint == base
    with open(mixed / "dog" / "img_0.jpg", "ab") as fh:  # same name, other size
        fh.write(b"\0")
    assert scan(mixed).fingerprint != base


# ---------------------------------------------------------------------------------------------------
# Sampling


def test_sample_is_bounded(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 10, "b": 10, "c": 10, "d": 10})
    probed: list[str] = []
    real_probe = dataset._probe

    def counting_probe(path):
        probed.append(path)
        return real_probe(path)

    monkeypatch.setattr(dataset, "_probe", counting_probe)
    facts = scan(root, sample=10)
    assert facts.images == 40  # counts come from the listing, not the sample
    assert facts.per_class == {"a": 10, "b": 10, "c": 10, "d": 10}
    assert facts.sampled == facts.to_dict()["sampled"] == 10
    assert sum(facts.channels.values()) == 10
    assert len(probed) == 10 == len(set(probed))
    assert {Path(p).parent.name for p in probed} == {"a", "b", "c", "d"}  # stratified


def test_sample_is_reproducible_and_seeded(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 10, "b": 10})
    probed: list[str] = []
    real_probe = dataset._probe
    monkeypatch.setattr(dataset, "_probe", lambda p: probed.append(p) or real_probe(p))
    one = scan(root, sample=4, seed=1).to_dict()
    first = list(probed)
    two = scan(root, sample=4, seed=1).to_dict()
    assert probed[4:] == first
    one.pop("seconds"), two.pop("seconds")
    assert one == two
    picks = set()
    for seed in range(6):
        probed.clear()
        scan(root, sample=4, seed=seed)
        picks.add(tuple(probed))
    assert len(picks) > 1


def test_sample_zero_reads_no_headers(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 3, "b": 3})
    monkeypatch.setattr(dataset, "_probe", lambda p: pytest.fail("a header was read"))
    facts = scan(root, sample=0)
    assert facts.sampled == 0 and facts.channels == {}
    assert (facts.median_width, facts.median_height, facts.grayscale_fraction) == (0, 0, 0.0)
    assert facts.images == 6


def test_sample_on_imbalanced_classes(tmp_path):
    # One class floor each overshoots the sample: it must still be exactly `sample` files.
    root = make_classes(tmp_path / "d", {"big": 37})
    make_classes(root, {"x": 1, "y": 1, "z": 1})
    facts = scan(root, sample=10)
    assert facts.sampled == 10 and sum(facts.channels.values()) == 10


def test_sample_smaller_than_the_number_of_classes(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {f"c{i:02d}": 2 for i in range(12)})
    probed: list[str] = []
    real_probe = dataset._probe
    monkeypatch.setattr(dataset, "_probe", lambda p: probed.append(p) or real_probe(p))
    facts = scan(root, sample=5)
    assert facts.sampled == 5
    assert len({Path(p).parent.name for p in probed}) == 5  # one file each from 5 classes
    chosen = set()
    for seed in range(5):  # which classes is random, not always the first ones
        probed.clear()
        scan(root, sample=5, seed=seed)
        chosen.add(frozenset(Path(p).parent.name for p in probed))
    assert len(chosen) > 1


def test_stratified_sample_never_exceeds_its_bound():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(1, 8))
        counts = np.where(
            rng.random(k) < 0.5, rng.integers(1, 3, size=k), rng.integers(20, 60, size=k)
        )
        labels = np.repeat(np.arange(k), counts)
        n = int(counts.sum())
        sample = int(rng.integers(0, n + 5))
        idx = dataset._stratified_sample(labels, k, sample, seed=int(rng.integers(100)))
        assert len(idx) == min(sample, n) == len(set(idx.tolist()))
        if k <= sample < n:
            assert set(labels[idx].tolist()) == set(range(k))  # every class at least once


# ---------------------------------------------------------------------------------------------------
# Progress


def test_progress_is_called(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 6, "b": 6})
    (root / "a" / "x.txt").write_text("x")
    calls: list[int] = []
    scan(root, progress=calls.append)
    assert calls == [13]  # once at the end: every visible entry seen

    monkeypatch.setattr(images, "PROGRESS_EVERY", 5)
    calls.clear()
    list_images(root, progress=calls.append)
    assert calls[:2] == [5, 10] and calls[-1] == 13
    assert calls == sorted(calls)


# ---------------------------------------------------------------------------------------------------
# Names


def test_unicode_and_spaces_in_names(tmp_path):
    root = tmp_path / "data set ✓"
    write_image(root / "café au lait" / "ñandú 1.jpg")
    write_image(root / "café au lait" / "photo (copy) 2.PNG", mode="L")
    write_image(root / "日本 猫" / "ねこ.jpeg")
    write_image(root / "日本 猫" / "sub folder" / "a b.png")
    facts = scan(root)
    assert facts.class_names == sorted(["café au lait", "日本 猫"])
    assert facts.per_class == {"café au lait": 2, "日本 猫": 2}
    assert facts.corrupt_files == 0 and facts.channels == {"RGB": 3, "L": 1}
    assert scan(root).fingerprint == facts.fingerprint
    assert all(os.path.exists(f) for f in list_images(root).files)
    json.dumps(facts.to_dict(), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_missing_folder_is_one_line_and_exit_code_2(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = subprocess.run(
        [sys.executable, "cli.py", "advise", str(missing), "--similarity", "0.8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graft: error:") and str(missing) in lines[0]
