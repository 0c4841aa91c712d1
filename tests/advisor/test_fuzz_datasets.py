"""Hostile data set folders fed to `advisor.dataset.scan` and `list_images` (see docs/robustness.md).

Whatever the folder holds, the scan either returns (skipping or reporting the bad entry by path) or
raises a `DatasetError`; no other exception, no hang, bounded memory.
"""

from __future__ import annotations

import json
import os
import resource
import string
from collections import Counter
from pathlib import Path

import pytest
from hostile_images import KINDS, good_jpeg, good_png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dataset import run_with_timeout

from advisor.dataset import SPLIT_NAMES, list_images, scan
from graft.errors import DatasetError

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _agree(root: Path):
    """scan and list_images on `root`: they must list the same files under the same classes."""
    facts = run_with_timeout(lambda: scan(root), 20)
    listing = run_with_timeout(lambda: list_images(root), 20)
    assert facts.images == len(listing.files) == len(set(listing.files))
    assert facts.class_names == listing.classes
    per_class = Counter(listing.classes[i] for i in listing.labels)
    assert facts.per_class == dict(per_class)
    json.dumps(facts.to_dict())  # paths with odd characters still serialise
    return facts, listing


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------
# Odd names

# Pieces of names a user's files may carry. Names are made of 1-4 pieces (at most 250 bytes).
PIECES = [
    "a",
    "cat",
    " ",
    "  two  spaces ",
    "ñandú",
    "日本語",
    "🐈",
    "e\u0301",  # a combining accent
    "\u200b",  # zero-width space
    "\u202e",  # right-to-left override
    "tab\there",
    "new\nline",
    "back\\slash",
    "quote'\"",
    "$(x)",
    "*?[",
    "%s{0}",
    "-",
    "x" * 120,
    "é" * 60,
    ".hidden",
    "..",
    "~",
    "#",
    "CON",
]


def _name(pieces: list[str]) -> str:
    name = "".join(pieces)
    while len(os.fsencode(name)) > 250:
        name = name[:-1]
    return name


names = st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map(_name)
# A class folder name must not be a split name (that would change the layout) nor "." / "..".
class_names = names.filter(lambda n: n.lower() not in SPLIT_NAMES and n not in (".", ".."))
file_names = st.tuples(names, st.sampled_from([".jpg", ".PNG", ".jpeg", ".txt", ""])).map(
    lambda t: t[0] + t[1]
)


@FUZZ
@given(
    tree=st.dictionaries(
        class_names, st.lists(file_names, min_size=0, max_size=4, unique=True), min_size=1, max_size=4
    )
)
def test_odd_file_and_folder_names_are_listed_or_refused_cleanly(tmp_path_factory, tree):
    root = tmp_path_factory.mktemp("names")
    expected: Counter = Counter()
    for cname, files in tree.items():
        (root / cname).mkdir()
        for fname in files:
            path = root / cname / fname
            (good_png if fname.lower().endswith(".png") else good_jpeg)(path)
            visible = not cname.startswith(".") and not fname.startswith(".")
            if visible and os.path.splitext(fname)[1].lower() in {".jpg", ".png", ".jpeg"}:
                expected[cname] += 1
    try:
        facts, listing = _agree(root)
    except DatasetError as exc:
        assert str(root) in str(exc)
        assert sum(1 for c in expected if expected[c]) < 2  # refused only when under two classes
        return
    assert facts.per_class == {c: n for c, n in expected.items() if n}
    assert facts.corrupt_files == 0
    assert all(os.path.isfile(f) for f in listing.files)


def test_names_that_are_not_utf8_and_at_the_length_limit(tmp_path):
    root = tmp_path / "d"
    raw = os.fsencode(root)
    os.makedirs(raw + b"/caf\xe9")  # Latin-1, not UTF-8
    good_jpeg(Path(os.fsdecode(raw + b"/caf\xe9/\xff\xfe.jpg")))
    (root / ("c" * 255)).mkdir()
    good_jpeg(root / ("c" * 255) / ("f" * 251 + ".jpg"))  # 255 bytes, the ext4 limit
    facts, listing = _agree(root)
    assert facts.images == 2 and facts.corrupt_files == 0
    assert scan(root).fingerprint == facts.fingerprint


# ---------------------------------------------------------------------------------------------------
# Odd files


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_hostile_image_is_read_or_reported_by_path(tmp_path, kind):
    maker, ext, readable = KINDS[kind]
    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        good_jpeg(root / c / "good.jpg")
    bad = maker(root / "cat" / f"odd{ext}")
    before = _peak_mib()
    facts, _ = _agree(root)
    assert _peak_mib() - before < 200  # no decode of the 1.2 GB the huge headers claim
    if readable:
        assert facts.corrupt_files == 0 and facts.images == 3
    else:
        assert facts.corrupt == [str(bad)] and facts.corrupt_files == 1
        assert any(str(bad) in w for w in facts.warnings)


def test_a_class_folder_that_is_a_file_and_a_fifo_are_ignored(tmp_path):
    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        good_jpeg(root / c / "good.jpg")
    (root / "bird").write_text("a file where a class folder should be")
    good_jpeg(root / "fish.jpg")  # an image where a class folder should be
    os.mkfifo(root / "dog" / "pipe.jpg")  # would block a reader forever
    facts, _ = _agree(root)
    assert facts.per_class == {"cat": 1, "dog": 1}
    assert any("outside any class folder" in w for w in facts.warnings)


@FUZZ
@given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=6),
    goods=st.integers(0, 3),
)
def test_mixtures_of_hostile_images_never_escape_as_other_errors(tmp_path_factory, kinds, goods):
    root = tmp_path_factory.mktemp("mix")
    for c in ("cat", "dog"):
        (root / c).mkdir()
    for k in range(goods):
        good_jpeg(root / ("cat", "dog")[k % 2] / f"good{k}.jpg")
    bad = []
    for k, kind in enumerate(kinds):
        maker, ext, readable = KINDS[kind]
        path = maker(root / ("dog", "cat")[k % 2] / f"{k}{ext}")
        if not readable:
            bad.append(str(path))
    try:
        facts, _ = _agree(root)
    except DatasetError as exc:
        assert str(root) in str(exc)
        return
    assert sorted(facts.corrupt) == sorted(bad)


# ---------------------------------------------------------------------------------------------------
# Links: each image counts once


def _two_classes(root: Path, n: int = 2) -> Path:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for k in range(n):
            good_jpeg(root / c / f"{k}.jpg")
    return root


def test_a_class_folder_linked_to_another_class_counts_once(tmp_path):
    root = _two_classes(tmp_path / "d")
    (root / "alias").symlink_to(root / "cat", target_is_directory=True)  # sorts before "cat"
    (root / "zz_root").symlink_to(root, target_is_directory=True)  # a class folder that is the root
    facts, listing = _agree(root)
    assert facts.per_class == {"cat": 2, "dog": 2}
    assert len({os.path.realpath(f) for f in listing.files}) == len(listing.files) == 4
    assert any("2 linked folder(s) were skipped" in w for w in facts.warnings)


def test_a_class_folder_that_is_only_a_link_keeps_its_name(tmp_path):
    outside = tmp_path / "elsewhere"
    good_jpeg(outside.joinpath("birds").mkdir(parents=True) or outside / "birds" / "0.jpg")
    root = _two_classes(tmp_path / "d")
    (root / "bird").symlink_to(outside / "birds", target_is_directory=True)
    (root / "bird2").symlink_to(outside / "birds", target_is_directory=True)  # a second link to it
    facts, _ = _agree(root)
    assert facts.per_class == {"bird": 1, "cat": 2, "dog": 2}


def test_file_links_to_listed_images_count_once(tmp_path):
    root = _two_classes(tmp_path / "d")
    outside = good_jpeg(tmp_path / "outside.jpg")
    (root / "cat" / "link_to_dog.jpg").symlink_to(root / "dog" / "0.jpg")  # into another class
    (root / "cat" / "link_to_cat.jpg").symlink_to(root / "cat" / "1.jpg")  # within the class
    (root / "cat" / "out_a.jpg").symlink_to(outside)
    (root / "dog" / "out_b.jpg").symlink_to(outside)  # a second link to the same outside file
    os.link(root / "dog" / "1.jpg", root / "dog" / "hard.jpg")  # hard links stay separate files
    facts, listing = _agree(root)
    assert facts.per_class == {"cat": 3, "dog": 3}  # cat: 0, 1, out_a; dog: 0, 1, hard
    assert str(root / "cat" / "out_a.jpg") in listing.files
    assert any("3 linked image file(s) were skipped" in w for w in facts.warnings)


@FUZZ
@given(
    links=st.lists(
        st.tuples(st.sampled_from(["cat", "dog", "cat/sub"]), st.sampled_from(["root", "cat", "dog",
                  "cat/sub", "cat/0.jpg", "dog/1.jpg", "parent", "self", "gone"])),
        min_size=1,
        max_size=6,
    )
)
def test_random_links_never_loop_or_count_an_image_twice(tmp_path_factory, links):
    base = tmp_path_factory.mktemp("links")
    root = _two_classes(base / "d")
    (root / "cat" / "sub").mkdir()
    good_jpeg(root / "cat" / "sub" / "deep.jpg")
    targets = {"root": root, "parent": base, "gone": base / "gone"}
    for k, (where, to) in enumerate(links):
        target = targets.get(to, root / to)
        if to == "self":
            target = root / where
        name = f"l{k}.jpg" if to.endswith(".jpg") or to == "gone" else f"l{k}"
        (root / where / name).symlink_to(target)
    facts, listing = _agree(root)
    real = [os.path.realpath(f) for f in listing.files]
    assert len(set(real)) == len(real)  # every image once
    assert facts.images >= 5


def test_all_of_it_at_once_in_a_subprocess_with_a_time_bound(tmp_path):
    """The scan of a folder holding every hostile kind, from a fresh interpreter: bounded time."""
    import subprocess
    import sys

    root = _two_classes(tmp_path / "d")
    for kind, (maker, ext, _) in KINDS.items():
        maker(root / "cat" / f"{kind}{ext}")
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[2]); from advisor.dataset import scan; "
        "print(json.dumps(scan(sys.argv[1]).facts()))"
    )
    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-c", code, str(root), str(ROOT)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    facts = json.loads(out.stdout)
    assert facts["corrupt_files"] == sum(1 for *_, ok in KINDS.values() if not ok)
    assert set(string.printable) >= set(out.stderr)  # nothing but plain text, if anything
