"""The labelled image files of a data set folder, listed fast: what both halves read a data set by.

Two layouts are accepted (see docs/dataset.md):

    ROOT/CLASS/.../image.jpg                       class per folder
    ROOT/{train,val,test}/CLASS/.../image.jpg      split folders (``validation``/``valid`` = ``val``)

`list_images` walks the tree once with `os.scandir` (one `stat` per file, for its size; no image is
opened) and returns what a training pipeline needs. The advisor's `scan` (`advisor.dataset`) adds facts
read from a sample of the files; `surgery.run` trains on the listing.

Problems that make the folder unusable raise `graft.errors.DatasetError`; everything else (empty class
folders, unreadable sub-folders, ignored files) ends up in `ImageList.warnings`, never as a Python
warning.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field

from graft.errors import DatasetError

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
}

#: Split folder names (lower case) and the split they stand for.
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}

#: `progress` is called after every this many files seen.
PROGRESS_EVERY = 10_000

@dataclass
class ImageList:
    """The labelled image files of a data set folder, as a training pipeline needs them.

    Attributes:
        root: the data set folder, as an absolute path.
        classes: class names (folder names) with at least one image, sorted like `sorted()` does
            (the order `keras.utils.image_dataset_from_directory` uses).
        files: absolute paths of the image files, sorted; zero-byte files and broken links are left out.
        labels: per file, its class as an index into `classes`.
        split: per file, ``"train"``, ``"val"``, ``"test"``, or ``""`` when there are no split folders.
    """

    root: str
    classes: list[str]
    files: list[str]
    labels: list[int]
    split: list[str]
    # Internal by-products of the walk, used by `scan` (not part of the public contract).
    sizes: list[int] = field(default_factory=list, repr=False)
    non_images: int = field(default=0, repr=False)
    empty_classes: list[str] = field(default_factory=list, repr=False)
    unusable: list[str] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)
    files_seen: int = field(default=0, repr=False)

    def __len__(self) -> int:
        return len(self.files)



# ---------------------------------------------------------------------------------------------------
# Listing


def _check_root(root: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.exists(path):
        if os.path.islink(path):
            raise DatasetError(
                f"Data set folder {path} is a broken symbolic link; point it at the folder that "
                "holds the class folders."
            )
        raise DatasetError(
            f"Data set folder {path} does not exist; pass the folder that holds one sub-folder per "
            "class (or train/val/test folders)."
        )
    if not os.path.isdir(path):
        raise DatasetError(
            f"Data set path {path} is a file, not a folder; pass the folder that holds one "
            "sub-folder per class (extract an archive first)."
        )
    return path


def _scandir_sorted_dirs(path: str, what: str) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """Visible sub-folders and files of `path`, sorted by name; raise DatasetError if unreadable."""
    try:
        with os.scandir(path) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except PermissionError as exc:
        raise DatasetError(
            f"Cannot read the {what} {path} (permission denied); make it readable "
            f"(e.g. chmod -R u+rX {path}) or pass another folder."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from exc
    dirs, files = [], []
    for e in entries:
        try:
            (dirs if e.is_dir() else files).append(e)
        except OSError:
            files.append(e)
    dirs.sort(key=lambda e: e.name)
    files.sort(key=lambda e: e.name)
    return dirs, files


def _inode_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Walker:
    """The recursive scandir walk of the class folders; collects files, sizes and problems."""

    def __init__(self, follow_symlinks: bool, progress: Callable[[int], None] | None):
        self.follow = follow_symlinks
        self.progress = progress
        self.visited: set[tuple[int, int]] = set()
        self.seen = 0
        self.next_report = PROGRESS_EVERY
        self.non_images = 0
        self.loops = 0
        self.unreadable_dirs: list[str] = []
        self.zero_byte: list[str] = []
        self.broken: list[str] = []
        #: (index into `files`, (device, inode) of the target) of every image reached by a file link
        self.linked_files: list[tuple[int, tuple[int, int]]] = []

    def walk(self, top: str, files: list[str], sizes: list[int]) -> int:
        """Append every image under `top` (recursively) to `files`/`sizes`; return how many."""
        n0 = len(files)
        exts = IMAGE_EXTENSIONS
        splitext = os.path.splitext
        append_file = files.append
        append_size = sizes.append
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError as exc:
                self.unreadable_dirs.append(f"{d} ({exc.strerror or type(exc).__name__})")
                continue
            with it:
                for e in it:
                    name = e.name
                    if name[0] == ".":
                        continue
                    self.seen += 1
                    if self.seen >= self.next_report:
                        self.next_report += PROGRESS_EVERY
                        if self.progress is not None:
                            self.progress(self.seen)
                    try:
                        is_link = e.is_symlink()
                        if is_link and not self.follow:
                            continue
                        if e.is_dir():
                            key = _inode_key(e.path)
                            if key is None or key in self.visited:
                                self.loops += key is not None
                                continue
                            self.visited.add(key)
                            stack.append(e.path)
                            continue
                        if splitext(name)[1].lower() not in exts:
                            self.non_images += 1
                            continue
                        st = e.stat()  # follows links: a broken one raises FileNotFoundError
                    except OSError:
                        self.broken.append(e.path)
                        continue
                    if not stat_mod.S_ISREG(st.st_mode):
                        self.non_images += 1
                        continue
                    if st.st_size == 0:
                        self.zero_byte.append(e.path)
                        continue
                    if is_link:
                        self.linked_files.append((len(files), (st.st_dev, st.st_ino)))
                    append_file(e.path)
                    append_size(st.st_size)
        return len(files) - n0


def _distinct_class_dirs(
    class_dirs: list[tuple[str, str, str]], layout: set[tuple[int, int]]
) -> tuple[list[tuple[str, str, str]], int]:
    """Class folders that are distinct real folders, and how many were dropped as duplicates.

    A class folder that is a link to another class folder, to the data set folder or to a split
    folder would count the same images twice; the real folder (or the first link, by name) wins.
    Every kept folder is added to `layout`, the walk's set of visited folders.
    """
    order = sorted(
        range(len(class_dirs)),
        key=lambda i: (os.path.islink(class_dirs[i][2]), class_dirs[i][1]),  # real folders first
    )
    kept: set[int] = set()
    dropped = 0
    for i in order:
        key = _inode_key(class_dirs[i][2])
        if key is not None and key in layout:
            dropped += 1
            continue
        if key is not None:
            layout.add(key)
        kept.add(i)
    return [c for i, c in enumerate(class_dirs) if i in kept], dropped


def _duplicate_links(
    files: list[str], sizes: list[int], linked: list[tuple[int, tuple[int, int]]]
) -> set[int]:
    """Indices of the file links that lead to an image already listed (by device and inode).

    A link to a file that is also listed in its own right is the duplicate; among links to one
    file outside the listing, the first by path counts. Only files of a linked target's size are
    stat-ed again, so a data set without file links costs nothing here.
    """
    if not linked:
        return set()
    link_index = {i for i, _ in linked}
    target_sizes = {sizes[i] for i, _ in linked}
    listed = set()
    for i, (f, size) in enumerate(zip(files, sizes)):
        if size in target_sizes and i not in link_index:
            key = _inode_key(f)
            if key is not None:
                listed.add(key)
    duplicates = set()
    for i, key in sorted(linked, key=lambda ik: files[ik[0]]):
        if key in listed:
            duplicates.add(i)
        listed.add(key)
    return duplicates


def _listing(
    root: str | os.PathLike,
    follow_symlinks: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImageList:
    path = _check_root(root)
    top_dirs, top_files = _scandir_sorted_dirs(path, "data set folder")
    notes: list[str] = []

    splits = [d for d in top_dirs if d.name.lower() in SPLIT_NAMES]
    # (split, class name, folder) for every class folder
    class_dirs: list[tuple[str, str, str]] = []
    loose = sum(1 for f in top_files if os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS)
    if splits:
        others = [d.name for d in top_dirs if d.name.lower() not in SPLIT_NAMES]
        if others:
            notes.append(
                f"Split folders found, so {len(others)} other top-level folder(s) are ignored: "
                f"{', '.join(others[:10])}{' ...' if len(others) > 10 else ''}."
            )
        seen_split: dict[str, str] = {}
        for s in splits:
            split = SPLIT_NAMES[s.name.lower()]
            if split in seen_split:
                raise DatasetError(
                    f"Both {seen_split[split]}/ and {s.name}/ in {path} name the {split} split; "
                    "merge or rename one of them."
                )
            seen_split[split] = s.name
            dirs, files = _scandir_sorted_dirs(s.path, "split folder")
            loose += sum(
                1 for f in files if os.path.splitext(f.name)[1].lower() in IMAGE_EXTENSIONS
            )
            class_dirs += [(split, d.name, d.path) for d in dirs]
    else:
        class_dirs = [("", d.name, d.path) for d in top_dirs]
    if loose:
        notes.append(
            f"{loose} image file(s) lie outside any class folder and are ignored; move them into "
            "a class folder."
        )
    if not class_dirs:
        where = f"{path}/train/CLASS/" if splits else f"{path}/CLASS/"
        raise DatasetError(
            f"No class folders in {path}; expected one sub-folder per class with the images in it, "
            f"like {where}image.jpg."
        )

    walker = _Walker(follow_symlinks, progress)
    # Every real folder of the layout is visited up front, so a link into another class is skipped
    # (each file counts once, for its own class) and a link back up cannot loop.
    for key in [_inode_key(path)] + [_inode_key(s.path) for s in splits]:
        if key is not None:
            walker.visited.add(key)
    class_dirs, walker.loops = _distinct_class_dirs(class_dirs, walker.visited)

    files: list[str] = []
    sizes: list[int] = []
    names: list[str] = []  # class name per file, filled per class folder
    split_of: list[str] = []
    per_split_class: dict[tuple[str, str], int] = {}
    for split, cname, cpath in class_dirs:
        n = walker.walk(cpath, files, sizes)
        names.extend([cname] * n)
        split_of.extend([split] * n)
    duplicates = _duplicate_links(files, sizes, walker.linked_files)
    if duplicates:
        keep = [i for i in range(len(files)) if i not in duplicates]
        files, sizes = [files[i] for i in keep], [sizes[i] for i in keep]
        names, split_of = [names[i] for i in keep], [split_of[i] for i in keep]
    for split, cname in zip(split_of, names):
        per_split_class[(split, cname)] = per_split_class.get((split, cname), 0) + 1
    if progress is not None:
        progress(walker.seen)

    all_names = sorted({c for _, c, _ in class_dirs})
    counts = dict.fromkeys(all_names, 0)
    for (_, cname), n in per_split_class.items():
        counts[cname] += n
    classes = [c for c in all_names if counts[c] > 0]
    empty = [c for c in all_names if counts[c] == 0]

    if walker.unreadable_dirs:
        shown = "; ".join(walker.unreadable_dirs[:5])
        more = (
            f" and {len(walker.unreadable_dirs) - 5} more"
            if len(walker.unreadable_dirs) > 5
            else ""
        )
        notes.append(
            f"{len(walker.unreadable_dirs)} folder(s) could not be read and were skipped: "
            f"{shown}{more}; fix their permissions to include them."
        )
    if not files:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        ignored = []
        if walker.non_images:
            ignored.append(f"{walker.non_images} other file(s) were ignored")
        if walker.zero_byte or walker.broken:
            ignored.append(
                f"{len(walker.zero_byte) + len(walker.broken)} zero-byte file(s) or broken link(s) "
                "were left out"
            )
        extra = f" ({'; '.join(ignored)})" if ignored else ""
        raise DatasetError(
            f"The class folders under {path} hold no images{extra}; image files must end in one "
            f"of {exts}."
        )
    if len(classes) < 2:
        raise DatasetError(
            f"{path} has only one class with images ({classes[0]!r}); classification needs at least "
            "two class folders, each with its images."
        )
    if empty:
        notes.append(
            f"{len(empty)} empty class folder(s) ignored (no images): "
            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}."
        )
    if walker.non_images:
        notes.append(f"{walker.non_images} file(s) without an image extension were ignored.")
    if walker.loops:
        notes.append(
            f"{walker.loops} linked folder(s) were skipped because they lead to a folder already "
            "listed (a link loop or a link into another class)."
        )
    if duplicates:
        notes.append(
            f"{len(duplicates)} linked image file(s) were skipped because they lead to an image "
            "already listed (each image counts once, where the file itself lies)."
        )
    if splits:
        present = sorted({s for s, _, _ in class_dirs})
        for split in present:
            missing = [c for c in classes if per_split_class.get((split, c), 0) == 0]
            if missing:
                notes.append(
                    f"Split {split!r} has no images of {len(missing)} class(es): "
                    f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}."
                )

    # Sort by path: a stable, platform-independent order (and the fingerprint needs it).
    order = sorted(range(len(files)), key=files.__getitem__)
    index = {c: i for i, c in enumerate(classes)}
    return ImageList(
        root=path,
        classes=classes,
        files=[files[i] for i in order],
        labels=[index[names[i]] for i in order],
        split=[split_of[i] for i in order],
        sizes=[sizes[i] for i in order],
        non_images=walker.non_images,
        empty_classes=empty,
        unusable=sorted(walker.zero_byte) + sorted(walker.broken),
        warnings=notes,
        files_seen=walker.seen,
    )


def list_images(
    root: str | os.PathLike,
    follow_symlinks: bool = True,
    progress: Callable[[int], None] | None = None,
) -> ImageList:
    """List the labelled images of a data set folder without opening any of them.

    Args:
        root: the data set folder: ``root/CLASS/...`` or ``root/{train,val,test}/CLASS/...``.
        follow_symlinks: follow links to folders and files (each real folder is visited once, so a
            link loop ends); when False, every link is skipped.
        progress: called as ``progress(files_seen)`` every 10,000 files and once at the end.

    Returns:
        ImageList with absolute, sorted file paths, their labels and splits. Empty class folders
        are left out of `classes`; zero-byte files and broken links are left out of `files`.

    Raises:
        DatasetError: root missing, not a folder or unreadable; no class folders; no images; fewer
            than two classes with images.
    """
    return _listing(root, follow_symlinks, progress)


__all__ = ["IMAGE_EXTENSIONS", "SPLIT_NAMES", "ImageList", "list_images"]
