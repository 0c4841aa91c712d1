"""Copy the bundled example data set: a small subset of CIFAR-10 classes B, as JPEG files.

Classes B = {dog, frog, horse, ship, truck} are the *similar* target for the example CNN pretrained on
classes A (`examples/pretrain_cifar.py`). The subset is drawn with a fixed seed from the shared
archive: 60 training and 20 test images per class, laid out

    examples/data/cifar_b/<class>/*.jpg          (training images, what `advise` reads)
    examples/data/cifar_b_test/<class>/*.jpg     (held-out test images)

    .venv/bin/python examples/make_example_data.py [--data /tmp/cifar10] [--train 60 --test 20]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-images.tar.gz"
CLASSES_B = ["dog", "frog", "horse", "ship", "truck"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="extracted CIFAR-10 folder (train/, test/); default: the shared archive")
    ap.add_argument("--train", type=int, default=60, help="training images per class")
    ap.add_argument("--test", type=int, default=20, help="test images per class")
    ap.add_argument("--out", default=str(ROOT / "examples" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.data:
        src = Path(args.data)
    else:
        if not ARCHIVE.exists():
            sys.exit(f"{ARCHIVE} is absent; pass --data DIR with the extracted CIFAR-10 images.")
        src = Path(tempfile.mkdtemp(prefix="graft_cifar_"))
        with tarfile.open(ARCHIVE) as tar:
            members = [m for m in tar.getmembers() if any(f"/{c}/" in f"/{m.name}" for c in CLASSES_B)]
            tar.extractall(src, members=members, filter="data")
    rng = random.Random(args.seed)
    out = Path(args.out)
    total = 0
    for split, count, folder in (("train", args.train, "cifar_b"), ("test", args.test, "cifar_b_test")):
        for cls in CLASSES_B:
            files = sorted((src / split / cls).glob("*.jpg"))
            if len(files) < count:
                sys.exit(f"{src / split / cls} has {len(files)} images; {count} needed.")
            dest = out / folder / cls
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            for f in sorted(rng.sample(files, count)):
                shutil.copyfile(f, dest / f.name)
                total += f.stat().st_size
    print(f"wrote {len(CLASSES_B)} classes x ({args.train} train + {args.test} test) images, "
          f"{total / 1024:.0f} KiB, under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
