"""Augmentation chosen for the data: keep a transform only where it preserves labels.

A horizontal flip is free extra data for photos and aerial scenes, and a different symbol for digits,
characters and signs ("2" flipped is not a "2"; a left-turn sign flipped is a right-turn sign). The
rules propose candidate transforms for small data sets (`augmentation` modifier); this module
measures, on the user's own images, which of them keep the meaning of an image, and the plan keeps
only those.

The measurement, on a small stratified sample under the pretrained network (top features, one
forward pass per transform):

1. a linear probe (standardized features, logistic regression) is trained on the plain images of
   each cross-validation fold;
2. it classifies the held-out images of the fold twice: as they are, and transformed;
3. a transform is kept unless the probe is worse on the transformed views, paired image by image,
   by more than `TOLERANCE` beyond its noise: `drop - 1.645 * se(drop) > TOLERANCE`, where `drop`
   is the mean of (plain correct - transformed correct) over the held-out images.

A transform that changes the label (or makes the image unlike anything of its class) moves the
features across the probe's boundaries and fails; one the features are nearly invariant to, or that
only makes a view the class already has, passes. Flips are tested in full (every image flipped);
rotation, zoom and contrast as the training pipeline draws them (Keras's random layers, at the
strength the rules propose).

    check = check_augmentation(net, "data/", {"flip": "horizontal_and_vertical", "rotation": 0.05})
    check.kept          # {"flip": "horizontal", "rotation": 0.05}
    check.reasons()     # one line per transform, with the measured accuracies
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: A transform is dropped when the probe loses more than this much accuracy on transformed views,
#: beyond one-sided 95 % noise. Three points is the noise of one test set of 40 images per class.
TOLERANCE = 0.03
Z = 1.645
PER_CLASS = 20
CAP = 200


@dataclass
class TransformCheck:
    """One candidate transform: the probe's accuracy on plain and transformed held-out views."""

    name: str
    value: object
    plain: float
    transformed: float
    drop: float
    se: float
    kept: bool

    def reason(self) -> str:
        verdict = "kept" if self.kept else "dropped"
        return (f"{self.name.replace('_', ' ')} {verdict}: a probe scores {self.transformed:.2f} on transformed "
                f"held-out images against {self.plain:.2f} as they are (drop {self.drop * 100:+.1f} ± "
                f"{self.se * 100:.1f} points; dropped above {TOLERANCE * 100:.0f} beyond noise)")


@dataclass
class AugmentationCheck:
    """What was proposed, what each candidate measured, and what the plan keeps."""

    proposed: dict
    kept: dict
    checks: list[TransformCheck] = field(default_factory=list)
    images: int = 0
    note: str | None = None

    def reasons(self) -> list[str]:
        if self.note:
            return [f"augmentation: {self.note}"]
        head = (f"augmentation measured on {self.images} images: keeps "
                f"{', '.join(_describe(k, v) for k, v in self.kept.items()) or 'nothing'}")
        return [head] + [f"augmentation: {c.reason()}" for c in self.checks]

    def to_dict(self) -> dict:
        return {"proposed": self.proposed, "kept": self.kept, "images": self.images, "note": self.note,
                "checks": [c.__dict__ for c in self.checks]}


def _describe(key: str, value) -> str:
    return f"{value} flip" if key == "flip" else f"{key} {value}"


#: Transforms tried beside the rules' proposal when a measurement can decide (without one, the
#: proposal stands as it is): orientation-free images (aerial, microscopy, textures) gain views from
#: vertical flips, and photos under other light from small contrast changes.
EXTRA = {"flip": "vertical", "contrast": 0.1}


def candidates(proposed: dict, extra: dict | None = None) -> list[tuple[str, str, object]]:
    """(check name, plan key, value) for each transform the proposal holds, then those of `extra`
    it does not; a flip mode of horizontal_and_vertical is two candidates."""
    proposed = dict(proposed)
    for key, value in (extra or {}).items():
        if key == "flip" and proposed.get("flip") and proposed["flip"] != value:
            proposed["flip"] = "horizontal_and_vertical"
        else:
            proposed.setdefault(key, value)
    out = []
    flip = proposed.get("flip")
    if flip in ("horizontal", "horizontal_and_vertical"):
        out.append(("horizontal_flip", "flip", "horizontal"))
    if flip in ("vertical", "horizontal_and_vertical"):
        out.append(("vertical_flip", "flip", "vertical"))
    for key in ("rotation", "zoom", "translation", "contrast"):
        if proposed.get(key):
            out.append((key, key, float(proposed[key])))
    return out


def transform(x: np.ndarray, key: str, value, seed: int = 0) -> np.ndarray:
    """Raw 0..255 images (n, h, w, 3) transformed as the training pipeline would (flips in full)."""
    import keras

    if key == "flip":
        return x[:, :, ::-1] if value == "horizontal" else x[:, ::-1]
    layer = {"rotation": lambda: keras.layers.RandomRotation(value, seed=seed),
             "zoom": lambda: keras.layers.RandomZoom(value, seed=seed),
             "translation": lambda: keras.layers.RandomTranslation(value, value, seed=seed),
             "contrast": lambda: keras.layers.RandomContrast(value, value_range=(0, 255), seed=seed)}[key]()
    out = layer(keras.ops.convert_to_tensor(x.astype("float32")), training=True)
    return np.clip(np.asarray(keras.ops.convert_to_numpy(out), dtype="float32"), 0, 255)


def paired_drop(features: np.ndarray, transformed: np.ndarray, labels: np.ndarray, seed: int = 0
                ) -> tuple[float, float, float, float]:
    """Cross-validated probe on `features`; returns (plain accuracy, transformed accuracy, mean
    paired drop, its standard error) over all held-out images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, int(np.bincount(labels).min()))
    plain_ok = np.zeros(len(labels))
    trans_ok = np.zeros(len(labels))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
        probe.fit(features[train], labels[train])
        plain_ok[test] = probe.predict(features[test]) == labels[test]
        trans_ok[test] = probe.predict(transformed[test]) == labels[test]
    diff = plain_ok - trans_ok
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 1.0
    return float(plain_ok.mean()), float(trans_ok.mean()), float(diff.mean()), se


def pooled_features(net, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The network's output, globally average-pooled when it is a feature map: the features a
    linear probe reads (one compiled function, all views in one pass)."""
    import keras

    out = net.outputs[0]
    pooled = keras.layers.GlobalAveragePooling2D()(out) if len(out.shape) == 4 else out
    model = keras.Model(net.inputs, pooled)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype="float32")


def check_augmentation(net, dataset: str | Path, proposed: dict, *, size: int | None = None,
                       preprocessing=None, per_class: int = PER_CLASS, cap: int = CAP,
                       seed: int = 0) -> AugmentationCheck:
    """Measure which proposed transforms preserve labels on this data (see the module docstring).

    Args:
        net: the pretrained `keras.Model`.
        dataset: the class-per-folder image folder.
        proposed: the rules' augmentation (plan keys: flip, rotation, zoom, translation, contrast);
            `EXTRA` is tried beside it.
        size: input size for networks that take any size.
        preprocessing: the `Preprocessing` the measurement uses (default: the network's own).
        per_class, cap: the sample.
        seed: the sample's, the folds' and the random layers' seed.

    Returns:
        `AugmentationCheck`; with fewer than 2 images in some class of the sample, nothing is
        measured and the proposal is kept as it is, with a note saying so.
    """
    from advisor.embed import input_size, load_images, sample_dataset
    from graft.preprocessing import model_preprocessing

    if not proposed:
        return AugmentationCheck(proposed={}, kept={}, note=None)
    cands = candidates(proposed, EXTRA)
    if not cands:
        return AugmentationCheck(proposed=dict(proposed), kept=dict(proposed), note=None)
    sample = sample_dataset(dataset, per_class, cap, seed)
    hw = input_size(net, size)
    x, kept_idx, _ = load_images(sample.paths, hw)
    labels = np.asarray(sample.labels)[kept_idx]
    counts = np.bincount(labels) if len(labels) else np.zeros(1, int)
    if len(counts[counts > 0]) < 2 or counts[counts > 0].min() < 2:
        return AugmentationCheck(proposed=dict(proposed), kept=dict(proposed), images=len(labels),
                                 note="too few images per class to measure; the rules' proposal is kept")
    prep = preprocessing or model_preprocessing(net)
    views = [x] + [transform(x, key, value, seed) for _, key, value in cands]
    feats = pooled_features(net, prep(np.concatenate(views)))
    plain = feats[: len(x)]
    checks = []
    for k, (name, _, value) in enumerate(cands, start=1):
        view = feats[len(x) * k: len(x) * (k + 1)]
        p, t, drop, se = paired_drop(plain, view, labels, seed)
        checks.append(TransformCheck(name, value, round(p, 4), round(t, 4), round(drop, 4), round(se, 4),
                                     kept=drop - Z * se <= TOLERANCE))
    kept: dict = {}
    flips = [c.value for c in checks if c.kept and c.name.endswith("_flip")]
    if flips:
        kept["flip"] = flips[0] if len(flips) == 1 else "horizontal_and_vertical"
    for c in checks:
        if c.kept and not c.name.endswith("_flip"):
            kept[c.name] = c.value
    return AugmentationCheck(proposed=dict(proposed), kept=kept, checks=checks, images=len(labels))


__all__ = ["TOLERANCE", "AugmentationCheck", "EXTRA", "TransformCheck", "candidates", "check_augmentation", "paired_drop",
           "transform"]
