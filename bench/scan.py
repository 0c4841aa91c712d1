"""Time `advisor.dataset.list_images` and `scan` on a large generated data set.

    .venv/bin/python bench/scan.py --files 1000000 --classes 100

Writes a few hundred real tiny images (RGB and grayscale JPEG/PNG, several sizes) with PIL, then fills
the class folders with hard links to them (fast to create, no disk space), sprinkles zero-byte and
non-image files, and times the listing and the full scan (wall time and peak RSS of this process).
Prints a Markdown table. The data set is made in a temporary folder (``--dir`` to choose one) and
removed afterwards unless ``--keep`` is given. ``--cold`` drops the page cache first (needs root).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from advisor.dataset import list_images, scan  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def generate(root: Path, files: int, classes: int, originals: int, seed: int = 0) -> dict:
    """Make `files` image files in `classes` class folders under `root`; return what was made."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = root / ".originals"  # hidden: the scanner ignores it
    src.mkdir(parents=True)
    paths = []
    for i in range(originals):
        w, h = int(rng.integers(24, 96)), int(rng.integers(24, 96))
        gray = i % 5 == 0
        arr = rng.integers(0, 256, size=(h, w) if gray else (h, w, 3), dtype=np.uint8)
        ext = ".png" if i % 3 == 0 else ".jpg"
        p = src / f"orig{i:04d}{ext}"
        Image.fromarray(arr, "L" if gray else "RGB").save(p)
        paths.append(str(p))
    names = [f"class_{c:04d}" for c in range(classes)]
    for n in names:
        (root / n).mkdir()
    # uneven class sizes: weights from 1 to 3
    weights = np.linspace(1.0, 3.0, classes)
    per_class = np.floor(files * weights / weights.sum()).astype(int)
    per_class[: files - per_class.sum()] += 1
    zero = nonimg = 0
    for c, (name, n) in enumerate(zip(names, per_class)):
        d = str(root / name)
        for j in range(int(n)):
            orig = paths[(c * 7919 + j) % originals]
            os.link(orig, f"{d}/img_{j:07d}{orig[-4:]}")
        open(f"{d}/empty.jpg", "wb").close()
        with open(f"{d}/notes.txt", "w") as fh:
            fh.write("not an image\n")
        zero += 1
        nonimg += 1
    return {"images": int(per_class.sum()), "zero_byte": zero, "non_images": nonimg}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000, help="image files to make")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--originals", type=int, default=300, help="real images written with PIL")
    ap.add_argument("--sample", type=int, default=2000, help="scan(sample=...)")
    ap.add_argument("--dir", default=None, help="parent folder of the data set (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data set")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before timing (root)")
    args = ap.parse_args(argv)

    parent = tempfile.mkdtemp(prefix="graft-scan-bench-", dir=args.dir)
    root = Path(parent) / "data"
    try:
        t = time.perf_counter()
        made = generate(root, args.files, args.classes, args.originals)
        gen_s = time.perf_counter() - t
        print(f"generated {made['images']:,} images in {gen_s:.1f} s under {root}", file=sys.stderr)

        if args.cold:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")

        rows = []
        last = [0]
        t = time.perf_counter()
        listing = list_images(root, progress=lambda n: last.__setitem__(0, n))
        rows.append(("list_images", time.perf_counter() - t, peak_rss_mb(), len(listing.files)))
        del listing

        t = time.perf_counter()
        facts = scan(root, sample=args.sample)
        rows.append(("scan", time.perf_counter() - t, peak_rss_mb(), facts.images))

        assert facts.images == made["images"], (facts.images, made["images"])
        assert facts.corrupt_files == made["zero_byte"], facts.corrupt_files
        assert facts.non_images == made["non_images"], facts.non_images

        today = datetime.date.today().isoformat()
        print(
            f"\n{made['images']:,} images, {args.classes} classes, sample {args.sample}, "
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {today}\n"
        )
        print("| step | wall s | peak RSS MiB | images |")
        print("|---|---:|---:|---:|")
        for name, sec, rss, n in rows:
            print(f"| {name} | {sec:.1f} | {rss:.0f} | {n:,} |")
        print(
            f"\nscan: sampled {facts.sampled}, corrupt {facts.corrupt_files}, "
            f"grayscale {facts.grayscale_fraction:.2f}, median {facts.median_width}x"
            f"{facts.median_height}, imbalance {facts.imbalance_ratio:.2f}, "
            f"fingerprint {facts.fingerprint[:12]}, generation {gen_s:.0f} s"
        )
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
