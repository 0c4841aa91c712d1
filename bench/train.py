"""Time `apply` (surgery.run) against a hand-written Keras transfer-learning baseline.

    .venv/bin/python bench/train.py                       # EfficientNet-Lite0 at 128 px, CIFAR-10 B
    .venv/bin/python bench/train.py --per-class 100 --size 128 --epochs 10

Both sides get the same model (the real ImageNet EfficientNet-Lite0 from ../shared/models), the same
image files (CIFAR-10 classes dog, frog, horse, ship, truck, written as JPEG class folders), the same
split sizes, batch size and epochs. The baseline follows the Keras transfer-learning guide
(https://keras.io/guides/transfer_learning/): `image_dataset_from_directory`, the base model called
with `training=False` under a new pooling + dropout + dense head, `base.trainable = False`, fit; then
for fine-tuning `base.trainable = True`, recompile at a low learning rate, fit again.

Two plans:
- `probe`: frozen backbone, head only (case 1). graft computes the backbone's features once
  (bottleneck) and trains the head on them; the baseline runs the backbone every epoch.
- `lp_ft`: head warm-up, then fine-tune the top third (case 3 style). Both run the network on images.

Wall time covers everything from the files on disk to a trained model evaluated on the test split
(graft also writes its run directory: model, metrics, plots, report). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from bench.domains import CLASSES_B, cifar, cifar_root  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EFFNET = ROOT.parent / "shared" / "models" / "efficientnet_lite0_imagenet.keras"


def write_dataset(root: Path, per_class: int, seed: int) -> Path:
    x, y, names = cifar(cifar_root(), CLASSES_B, "train", per_class, seed)
    out = root / "data"
    for name in names:
        (out / name).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).save(out / names[label] / f"{i:05d}.jpg", quality=95)
    return out


def split_dirs(data: Path, root: Path, val: float, test: float, seed: int) -> dict[str, Path]:
    """The same stratified split graft makes, as train/val/test folders for the baseline."""
    from graft.images import list_images
    from surgery.pipeline import stratified_split

    listing = list_images(data)
    s = stratified_split(listing.files, listing.labels, None, val, test, seed)
    out = {}
    for name, (files, labels) in (("train", s.train), ("val", s.val), ("test", s.test)):
        d = root / "split" / name
        for f, lab in zip(files, labels):
            (d / listing.classes[lab]).mkdir(parents=True, exist_ok=True)
            os.link(f, d / listing.classes[lab] / Path(f).name)
        out[name] = d
    return out


def baseline(dirs: dict[str, Path], size: int, batch: int, phases: list[dict], seed: int) -> dict:
    """The Keras transfer-learning guide, written out by hand."""
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    kw = {"image_size": (size, size), "batch_size": batch, "label_mode": "int", "seed": seed}
    train = keras.utils.image_dataset_from_directory(dirs["train"], shuffle=True, **kw)
    val = keras.utils.image_dataset_from_directory(dirs["val"], shuffle=False, **kw)
    test = keras.utils.image_dataset_from_directory(dirs["test"], shuffle=False, **kw)
    full = keras.models.load_model(EFFNET, compile=False)
    base = keras.Model(full.input, full.get_layer("top_activation").output)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(CLASSES_B), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    epochs = 0
    for ph in phases:
        if ph["trainable"] == "head":
            base.trainable = False
        else:
            base.trainable = True
            cut = int(len(base.layers) * 2 / 3) if ph["trainable"] == "top_third" else 0
            for layer in base.layers[:cut]:
                layer.trainable = False
            for layer in base.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(ph["lr"]), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(train, validation_data=val, epochs=epochs + ph["epochs"], initial_epoch=epochs, verbose=0)
        epochs += ph["epochs"]
    acc = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    return {"seconds": time.perf_counter() - t0, "accuracy": float(acc)}


def graft(data: Path, root: Path, size: int, batch: int, phases: list[dict], val: float, test: float,
          seed: int, name: str) -> dict:
    from graft.plan import (
        DataPlan,
        HeadPlan,
        ModelSpec,
        OutputPlan,
        Phase,
        Plan,
        SurgeryPlan,
        TrainingPlan,
    )
    from surgery import run

    t0 = time.perf_counter()
    plan = Plan(
        model=ModelSpec(source=str(EFFNET), weights="file"),
        surgery=SurgeryPlan(cut=None, bn="freeze", head=HeadPlan(classes=len(CLASSES_B), dropout=0.2)),
        training=TrainingPlan(phases=[Phase(name=f"p{i}", trainable=p["trainable"], epochs=p["epochs"],
                                            learning_rate=p["lr"]) for i, p in enumerate(phases)]),
        data=DataPlan(path=str(data), input_size=[size, size], channels=3, validation_split=val,
                      test_split=test, batch_size=batch, seed=seed),
        outputs=OutputPlan(dir=str(root / f"run-{name}")),
    )
    result = run(Plan.from_dict(plan.to_dict()))
    return {"seconds": time.perf_counter() - t0, "accuracy": float(result.metrics["accuracy"]),
            "bottleneck": any(p.bottleneck for p in result.phases), "timings": result.timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the probe plan")
    ap.add_argument("--plans", default="probe,lp_ft")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not EFFNET.exists():
        raise SystemExit(f"{EFFNET} is absent; this benchmark needs the shared EfficientNet-Lite0.")
    val, test = 0.2, 0.2
    plans = {
        "probe": [{"trainable": "head", "epochs": args.epochs, "lr": 1e-3}],
        "lp_ft": [{"trainable": "head", "epochs": 2, "lr": 1e-3},
                  {"trainable": "top_third", "epochs": 2, "lr": 1e-4}],
    }
    root = Path(tempfile.mkdtemp(prefix="graft-train-bench-"))
    try:
        data = write_dataset(root, args.per_class, args.seed)
        dirs = split_dirs(data, root, val, test, args.seed)
        n_train = sum(1 for _ in dirs["train"].rglob("*.jpg"))
        rows = []
        for name in args.plans.split(","):
            phases = plans[name]
            epochs = sum(p["epochs"] for p in phases)
            b = baseline(dirs, args.size, args.batch, phases, args.seed)
            g = graft(data, root, args.size, args.batch, phases, val, test, args.seed, name)
            rows.append((name, epochs, b, g))
            print(f"{name}: baseline {b['seconds']:.1f} s acc {b['accuracy']:.3f}; graft {g['seconds']:.1f} s "
                  f"acc {g['accuracy']:.3f} bottleneck={g['bottleneck']} timings={g['timings']}", flush=True)
        print()
        print(f"EfficientNet-Lite0 at {args.size} px, {args.per_class * len(CLASSES_B)} CIFAR-10 images "
              f"({n_train} train), batch {args.batch}, {platform.system()} {platform.machine()}, "
              f"{os.cpu_count()} CPUs, Keras {keras.__version__} ({keras.backend.backend()}), "
              f"{datetime.date.today()}")
        print()
        print("| plan | epochs | baseline s | baseline img/s | graft s | graft img/s | speed-up | "
              "baseline acc | graft acc |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, epochs, b, g in rows:
            work = n_train * epochs
            print(f"| {name} | {epochs} | {b['seconds']:.1f} | {work / b['seconds']:.0f} | {g['seconds']:.1f} | "
                  f"{work / g['seconds']:.0f} | {b['seconds'] / g['seconds']:.2f}x | {b['accuracy']:.3f} | "
                  f"{g['accuracy']:.3f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
