"""Does `--preprocessing auto` find the pixel convention a network was trained with? On real weights.

Networks (all with real trained weights, none downloaded):
- the two ImageNet networks of ../shared/models: MobileNet v1 (no preprocessing inside; trained with
  `tf`) and EfficientNet-Lite0 (a Rescaling layer inside; takes `raw` pixels), each also re-saved
  under a neutral name (`my_backbone`), which must change nothing;
- small CNNs (fixed 32x32x3 input) pretrained here for `--seconds` each on real CIFAR-10 images under
  each of the five conventions (`graft.conventions`), with and without BatchNormalization, saved under
  `--out`; their BatchNormalization running statistics are then re-estimated at the final weights
  (`recalibrate_batchnorm`), as a pretrained network people bring has them.

For each network: the convention `advisor.convention.find_convention` picks (`auto`) on a sample of
one dev-suite set, its score per candidate and margin; then the similarity (BN statistics) and the
accuracy of a logistic-regression probe on the top features, under the right and a wrong convention.
Split of the dev-suite set (docs/bench.md): classes sorted; files sorted, then
`random.Random(seed).shuffle`; the first 40 per class are the test images, the next `--n` the training
images.

    mkdir -p /tmp/cifar10 && tar -xzf ../shared/data/cifar10-images.tar.gz -C /tmp/cifar10
    mkdir -p /tmp/devsuite && tar -xzf ../shared/data/devsuite.tar.gz -C /tmp
    python bench/preprocessing.py --cifar /tmp/cifar10 --set /tmp/devsuite/rsscn7_aerial

Writes bench/results/preprocessing.json and prints the table of docs/conventions.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from advisor.convention import convention_preprocessing, find_convention  # noqa: E402
from advisor.embed import ImageSample, embed, load_images  # noqa: E402
from advisor.similarity import bn_reference, similarity  # noqa: E402
from graft.conventions import CONVENTIONS, apply_convention  # noqa: E402
from surgery import layer_graph  # noqa: E402

SHARED = ROOT.parent / "shared" / "models"


def small_cnn(batchnorm: bool, name: str) -> keras.Model:
    """A small CIFAR CNN taking exactly 32x32x3 pixels in the given convention (nothing inside)."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for i, width in enumerate((32, 64, 128)):
        for j in range(2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=not batchnorm, name=f"conv{i}_{j}")(x)
            if batchnorm:
                x = keras.layers.BatchNormalization(name=f"bn{i}_{j}")(x)
            x = keras.layers.ReLU(name=f"relu{i}_{j}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def cifar(root: Path, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(p.name for p in (root / "train").iterdir())
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted((root / "train" / c).iterdir())
        random.Random(seed).shuffle(files)
        paths += files[:per_class]
        labels += [k] * min(per_class, len(files))
    x, kept, _ = load_images(paths, (32, 32))
    return x, np.asarray(labels)[kept]


class _Budget(keras.callbacks.Callback):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.start = seconds, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def pretrain(x, y, convention: str, batchnorm: bool, seconds: float, out: Path) -> Path:
    name = f"cnn_{convention}_{'bn' if batchnorm else 'nobn'}"
    path = out / f"{name}.keras"
    if path.exists():
        return path
    keras.utils.set_random_seed(0)
    model = small_cnn(batchnorm, name)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    # the images come grouped by class: shuffle once (seeded) so that the held-out tenth spans all classes
    order = np.random.default_rng(0).permutation(len(x))
    xc, y = apply_convention(convention, x[order]), y[order]
    hold = len(xc) // 10
    model.fit(xc[hold:], y[hold:], batch_size=64, epochs=100, verbose=0, callbacks=[_Budget(seconds)])
    before = float(model.evaluate(xc[:hold], y[:hold], verbose=0)[1])
    if batchnorm:
        recalibrate_batchnorm(model, xc[hold:])
    acc = float(model.evaluate(xc[:hold], y[:hold], verbose=0)[1])
    model.save(path)
    (out / f"{name}.json").write_text(json.dumps({"convention": convention, "batchnorm": batchnorm,
                                                  "cifar_heldout_accuracy": round(acc, 4),
                                                  "cifar_heldout_accuracy_before_recalibration": round(before, 4),
                                                  "seconds": seconds}))
    return path


def recalibrate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int = 500) -> None:
    """Set every BatchNormalization layer's moving mean and variance to the exact mean and variance of
    its input over `x` at the final weights, layer by layer in order (each layer's input computed with
    the layers before it already recalibrated, in inference mode).

    A network people bring ships with running statistics that have settled at its final weights; 45 s
    of training with Keras's momentum 0.99 (running variance starting at 1) leaves them wherever the
    exponential average has got to, which is not what a pretrained network looks like."""
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        head = keras.Model(model.inputs, layer.input)
        total = total_sq = 0.0
        for s in range(0, len(x), batch_size):
            h = np.asarray(head.predict_on_batch(x[s:s + batch_size]), "float64")
            h = h.reshape(-1, h.shape[-1])
            total, total_sq = total + h.sum(axis=0), total_sq + (h**2).sum(axis=0)
        n = len(x) * int(np.prod(head.output.shape[1:-1]))
        mean = total / n
        layer.moving_mean.assign(mean.astype("float32"))
        layer.moving_variance.assign(np.maximum(total_sq / n - mean**2, 0.0).astype("float32"))


def split(root: Path, n: int, seed: int = 0) -> tuple[list, np.ndarray, list, np.ndarray]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, ytr, test, yte = [], [], [], []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).iterdir() if f.is_file())
        random.Random(seed).shuffle(files)
        test += files[:40]
        yte += [k] * len(files[:40])
        train += files[40:40 + n]
        ytr += [k] * len(files[40:40 + n])
    return train, np.asarray(ytr), test, np.asarray(yte), classes


def figures(model: keras.Model, convention: str, data) -> dict:
    """Similarity and the top-feature logistic probe's test accuracy under `convention`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, ytr, test, yte, classes = data
    graph = layer_graph(model)
    paths = train + test
    sample = ImageSample(paths, np.concatenate([ytr, yte]), classes, {})
    emb = embed(graph, sample, preprocessing=convention_preprocessing(convention))
    sim = None
    if emb.stat_kind == "bn_input":
        sim = round(similarity(emb, bn_reference(graph, emb.stat_layers), bootstrap=0).value, 4)
    feats = emb.features[emb.cuts[-1].name]
    scaler = StandardScaler().fit(feats[:len(train)])
    probe = LogisticRegression(max_iter=3000).fit(scaler.transform(feats[:len(train)]), ytr)
    acc = float((probe.predict(scaler.transform(feats[len(train):])) == yte).mean())
    return {"similarity": sim, "probe": round(acc, 4)}


def renamed(model: keras.Model) -> keras.Model:
    return keras.Model(model.inputs, model.outputs, name="my_backbone")


def row(label: str, model: keras.Model, truth: str, data, with_figures: bool = True) -> dict:
    sample = ImageSample(data[0] + data[2], np.concatenate([data[1], data[3]]), data[4], {})
    t = time.perf_counter()
    choice = find_convention(model, sample)
    again = find_convention(renamed(model), sample)
    out = {"network": label, "batchnorm": choice.method == "bn_fit", "trained_with": truth,
           "auto": choice.convention, "best": choice.best, "method": choice.method,
           "margin": None if choice.margin is None else round(choice.margin, 3), "confident": choice.confident,
           "scores": {k: round(v, 4) for k, v in choice.scores.items()},
           "renamed_same": again.to_dict()["scores"] == choice.to_dict()["scores"]
                           and again.convention == choice.convention,
           "seconds": round(time.perf_counter() - t, 1)}
    if with_figures:
        wrong = "unit" if truth == "raw" else "raw"
        out["wrong"] = wrong
        out["right_figures"] = figures(model, truth if truth in CONVENTIONS else "raw", data)
        out["wrong_figures"] = figures(model, wrong, data)
    print(json.dumps(out), flush=True)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| network | BN | trained with | `auto` finds | method | margin | similarity right / wrong | "
             "probe right / wrong (wrong =) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rf, wf = r.get("right_figures", {}), r.get("wrong_figures", {})
        sim = "n/a" if rf.get("similarity") is None else f"{rf['similarity']:.3f} / {wf['similarity']:.3f}"
        margin = "n/a" if r["margin"] is None else f"{r['margin']:.2f}{'' if r['confident'] else ' (unsure)'}"
        probe = f"{rf['probe']:.3f} / {wf['probe']:.3f} ({r['wrong']})" if rf else "-"
        ok = "" if r["auto"] == r["trained_with"] else " ✗"
        lines.append(f"| {r['network']} | {'yes' if r['batchnorm'] else 'no'} | {r['trained_with']} | "
                     f"{r['auto']}{ok} | {r['method']} | {margin} | {sim} | {probe} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=Path, default=Path("/tmp/cifar10"))
    ap.add_argument("--set", type=Path, default=Path("/tmp/devsuite/rsscn7_aerial"))
    ap.add_argument("--n", type=int, default=10, help="training images per class of the probe")
    ap.add_argument("--seconds", type=float, default=60, help="pretraining time of each small CNN")
    ap.add_argument("--per-class", type=int, default=1000, help="CIFAR-10 images per class to pretrain on")
    ap.add_argument("--out", type=Path, default=Path("/tmp/graft-conventions-v3"))
    ap.add_argument("--only", default="", help="comma-separated network labels to run (default all)")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "preprocessing.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = split(args.set, args.n)
    only = set(filter(None, args.only.split(",")))
    rows = []
    for f, truth in (("mobilenet_v1_imagenet_notop", "tf"), ("efficientnet_lite0_imagenet", "raw")):
        if (SHARED / f"{f}.keras").exists() and (not only or f in only):
            rows.append(row(f, keras.models.load_model(SHARED / f"{f}.keras"), truth, data))
    x = y = None
    for bn in (True, False):
        for conv in CONVENTIONS:
            label = f"cnn_{conv}_{'bn' if bn else 'nobn'}"
            if only and label not in only:
                continue
            if not (args.out / f"{label}.keras").exists() and x is None:
                x, y = cifar(args.cifar, args.per_class)
            path = pretrain(x, y, conv, bn, args.seconds, args.out)
            r = row(label, keras.models.load_model(path), conv, data)
            r["cifar_heldout_accuracy"] = json.loads((args.out / f"{label}.json").read_text())["cifar_heldout_accuracy"]
            rows.append(r)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"set": str(args.set.name), "n": args.n, "seconds": args.seconds,
                                        "rows": rows}, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
