"""Pretrain the small CNN that graft's tests, benchmarks and demo use as a real source network.

It learns CIFAR-10 classes A = {airplane, automobile, bird, cat, deer} (the Yosinski-style split of
`../shared/data/README.md`), so CIFAR-10 classes B = {dog, frog, horse, ship, truck} are a *similar*
target and digits or textures are *different* ones. The model takes raw 0..255 pixels (a Rescaling
layer inside), has BatchNormalization after every convolution, and names its blocks so that the
block ends are clean cut points (`block1_pool`, `block2_pool`, `block3_relu2`).

    .venv/bin/python examples/pretrain_cifar.py                # ~7 minutes on 2 CPU cores
    .venv/bin/python examples/pretrain_cifar.py --data /tmp/cifar10 --epochs 6

Writes `examples/models/cifar_a_cnn.keras` and `examples/models/cifar_a_cnn.json` (provenance and
held-out accuracy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-images.tar.gz"
CLASSES_A = ["airplane", "automobile", "bird", "cat", "deer"]
OUT = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


def cifar_root(data: str | None) -> Path:
    """A folder holding `train/<class>/` and `test/<class>/`: `--data`, or the archive extracted."""
    if data:
        root = Path(data)
        if not (root / "train").is_dir():
            sys.exit(f"{root} has no train/ folder; pass the folder the CIFAR-10 archive was extracted to.")
        return root
    if not ARCHIVE.exists():
        sys.exit(f"{ARCHIVE} is absent; pass --data DIR with the extracted CIFAR-10 images.")
    tmp = Path(tempfile.mkdtemp(prefix="graft_cifar_"))
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def load_split(root: Path, split: str, classes: list[str], per_class: int | None = None):
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted((root / split / name).glob("*.jpg"))[:per_class]
        for f in files:
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype="int32")


def build_cnn(classes: int) -> keras.Model:
    """Three conv blocks (conv-BN-ReLU twice), GAP, dropout, softmax; raw 0..255 pixels in."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inputs)
    for b, width in enumerate((32, 64, 128), start=1):
        for k in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{b}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{k}")(x)
            x = layers.ReLU(name=f"block{b}_relu{k}")(x)
        if b < 3:
            x = layers.MaxPooling2D(name=f"block{b}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.3, name="top_dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="cifar_a_cnn")


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flips and up-to-4-pixel translations (reflect padding)."""
    out = x.copy()
    flip = rng.random(len(x)) < 0.5
    out[flip] = out[flip, :, ::-1]
    padded = np.pad(out, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 9, size=(2, len(x)))
    for i in range(len(x)):
        out[i] = padded[i, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="extracted CIFAR-10 folder (train/, test/); default: extract the shared archive")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0, help="stop after the epoch that passes this budget")
    ap.add_argument("--per-class", type=int, default=5000, help="training images per class (max 5000)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    root = cifar_root(args.data)
    x_train, y_train = load_split(root, "train", CLASSES_A, args.per_class)
    x_test, y_test = load_split(root, "test", CLASSES_A)
    print(f"train {x_train.shape}, test {x_test.shape}")

    model = build_cnn(len(CLASSES_A))
    steps = int(np.ceil(len(x_train) / 128)) * args.epochs
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start, epochs_run = time.time(), 0
    for epoch in range(args.epochs):
        order = rng.permutation(len(x_train))
        xb = augment(x_train[order], rng).astype("float32")
        hist = model.fit(xb, y_train[order], batch_size=128, epochs=1, verbose=0)
        epochs_run += 1
        _, acc = model.evaluate(x_test.astype("float32"), y_test, verbose=0, batch_size=256)
        print(f"epoch {epoch + 1}: loss {hist.history['loss'][-1]:.3f}, test accuracy {acc:.3f}, "
              f"{time.time() - start:.0f} s")
        if time.time() - start > args.minutes * 60:
            break
    _, test_acc = model.evaluate(x_test.astype("float32"), y_test, verbose=0, batch_size=256)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.keras")
    # an uncompiled copy: the optimizer's state would triple the file and is of no use downstream
    export = build_cnn(len(CLASSES_A))
    export.set_weights(model.get_weights())
    export.save(tmp)
    tmp.replace(out)
    meta = {
        "model": out.name,
        "source": "CIFAR-10 (JPEG copy in ../shared/data/cifar10-images.tar.gz)",
        "archive_sha256": hashlib.sha256(ARCHIVE.read_bytes()).hexdigest() if ARCHIVE.exists() else None,
        "classes": CLASSES_A,
        "train_images": int(len(x_train)),
        "test_images": int(len(x_test)),
        "test_accuracy": round(float(test_acc), 4),
        "epochs": epochs_run,
        "seconds": round(time.time() - start, 1),
        "params": int(model.count_params()),
        "input": "raw RGB 0..255, 32x32 (Rescaling inside the model)",
        "script": "examples/pretrain_cifar.py",
        "seed": args.seed,
        "keras": keras.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
