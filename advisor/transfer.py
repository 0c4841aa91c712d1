"""Per-cut transferability: how well a linear head on each cut's frozen features separates the labels.

For every candidate cut the pooled features of the sample are standardized (each feature to zero mean
and unit variance: raw shallow features have small, uneven scales and underfit a head), and a ridge
regression onto the one-hot labels is solved in closed form. Its exact leave-one-out predictions come
from the hat matrix, `y_loo = (y_hat - h * y) / (1 - h)`, so the score - **leave-one-out accuracy of
a ridge probe** (`method="ridge_loo"`) - costs one SVD per cut and needs no held-out split. The ridge
strength is chosen per cut by leave-one-out squared error over a grid. `method="knn_loo"` (leave-one-
out 5-nearest-neighbour accuracy in cosine distance) is kept for comparison; bench/validate_similarity.py
measures both against held-out logistic-regression probes (docs/similarity.md).

The recommended cut is the deepest one whose accuracy is within one paired standard error of the best:
keeping more of the network is the default, and a shallower cut has to win by more than noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advisor.embed import Embeddings
from graft.errors import InputError

METHODS = ("ridge_loo", "knn_loo")
_ALPHAS = np.logspace(-2, 3, 11)


@dataclass
class CutScore:
    """The score of one cut.

    Attributes:
        name: the cut point (call id).
        depth: its depth, 0..1.
        score: leave-one-out accuracy of the probe on the sample (0..1).
        stderr: binomial standard error of `score`.
        dims: feature dimensions at the cut.
    """

    name: str
    depth: float
    score: float
    stderr: float
    dims: int

    def to_dict(self) -> dict:
        return {"layer": self.name, "depth": round(self.depth, 4), "score": round(self.score, 4),
                "stderr": round(self.stderr, 4), "dims": self.dims}


@dataclass
class Transferability:
    """Per-cut scores and the recommended cut.

    Attributes:
        method: `ridge_loo` or `knn_loo`.
        scores: one `CutScore` per candidate cut, shallow to deep.
        best: the recommended cut (see the module docstring for the rule).
        top: the cut with the highest score.
        chance: accuracy of always guessing the most common class.
        sample: images scored.
    """

    method: str
    scores: list[CutScore]
    best: CutScore
    top: CutScore
    chance: float
    sample: int

    def to_dict(self) -> dict:
        return {"method": self.method, "best_cut_layer": self.best.name,
                "best_cut_depth": round(self.best.depth, 4), "best_score": round(self.best.score, 4),
                "top_layer": self.top.name, "chance": round(self.chance, 4), "sample": self.sample,
                "cuts": [s.to_dict() for s in self.scores]}


def standardize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature; constant features become 0."""
    x = np.asarray(x, dtype="float64")
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 1e-8 * max(1.0, float(sd.max(initial=0.0))), sd, np.inf)


def ridge_loo_predictions(x: np.ndarray, onehot: np.ndarray, alphas) -> list[np.ndarray]:
    """Exact leave-one-out predictions of ridge regressions (with intercept) for each alpha.

    `x` is used as given (standardize it first); one eigendecomposition serves every alpha: of the
    smaller Gram matrix (`n x n` or `d x d`), 2-4x faster than an SVD of `x` on a few thousand
    features. Directions whose squared singular value is below 1e-12 of the largest are dropped:
    they are rounding noise, and the ridge shrinks them to nothing anyway.
    """
    n = x.shape[0]
    xc = x - x.mean(axis=0)
    yc = onehot - onehot.mean(axis=0)
    u, s2 = _left_singular(xc)
    uty = u.T @ yc
    out = []
    for alpha in alphas:
        shrink = s2 / (s2 + alpha)
        fitted = u @ (shrink[:, None] * uty) + onehot.mean(axis=0)
        h = 1.0 / n + (u**2) @ shrink
        out.append((fitted - h[:, None] * onehot) / (1.0 - h)[:, None])
    return out


def _left_singular(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and squared singular values of `xc` (rank-revealing, noise dropped)."""
    n, d = xc.shape
    if d >= n:
        s2, u = np.linalg.eigh(xc @ xc.T)
    else:
        s2, v = np.linalg.eigh(xc.T @ xc)
    keep = s2 > 1e-12 * max(1e-300, float(s2.max(initial=0.0)))
    s2 = s2[keep]
    u = u[:, keep] if d >= n else (xc @ v[:, keep]) / np.sqrt(s2)
    return u, s2


def ridge_loo_correct(x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Per-sample correctness (bool) of the leave-one-out ridge probe on standardized features.

    The ridge strength is the one of a grid (relative to the features' mean squared singular value)
    with the smallest leave-one-out squared error.
    """
    x = standardize(x)
    onehot = np.eye(classes)[y]
    scale = float((x**2).sum() / max(1, min(x.shape)))
    loo = ridge_loo_predictions(x, onehot, _ALPHAS * max(scale, 1e-12))
    best = min(loo, key=lambda p: float(((p - onehot) ** 2).sum()))
    return best.argmax(axis=1) == y


def knn_loo_correct(x: np.ndarray, y: np.ndarray, classes: int, k: int = 5) -> np.ndarray:
    """Per-sample correctness of leave-one-out k-NN (cosine, standardized features, majority vote)."""
    x = standardize(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(y) - 1)
    nn = np.argsort(-sim, axis=1)[:, :k]
    # one vote each, nearer neighbours slightly heavier so that ties go to the nearest class
    weights = 1.0 + 1e-3 * np.arange(k, 0, -1)
    votes = np.zeros((len(y), classes))
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[nn].ravel()), np.tile(weights, len(y)))
    return votes.argmax(axis=1) == y


def transferability(emb: Embeddings, method: str = "ridge_loo") -> Transferability:
    """Score every cut of `emb` and pick the recommended one.

    Args:
        emb: labelled embeddings (`advisor.embed.embed` of an `ImageSample`).
        method: `ridge_loo` (default) or `knn_loo`.

    Returns:
        `Transferability`.

    Raises:
        InputError: no labels, fewer than 2 classes, or fewer than 2 images per class on average.

    Example:
        >>> t = transferability(embed(model, sample_dataset("examples/data/cifar_b")))
        >>> t.best.name, round(t.best.depth, 2)
    """
    if method not in METHODS:
        raise InputError(f"Unknown transferability method {method!r}; expected one of {', '.join(METHODS)}.")
    if emb.labels is None:
        raise InputError("Per-cut transferability needs labelled images; the embeddings have no labels.")
    labels = np.asarray(emb.labels)
    _, y = np.unique(labels, return_inverse=True)
    classes = int(y.max()) + 1
    if classes < 2 or len(y) < 2 * classes:
        raise InputError(f"Per-cut transferability needs at least 2 classes and 2 images per class; "
                         f"the sample has {classes} classes and {len(y)} images.")
    scorer = ridge_loo_correct if method == "ridge_loo" else knn_loo_correct
    correct, scores = [], []
    for cut in emb.cuts:
        c = scorer(emb.features[cut.name], y, classes)
        p = float(c.mean())
        correct.append(c)
        scores.append(CutScore(cut.name, float(cut.depth), p, float(np.sqrt(p * (1 - p) / len(y))),
                               int(emb.features[cut.name].shape[1])))
    top_i = int(np.argmax([s.score for s in scores]))
    chosen = top_i
    for i in range(len(scores) - 1, top_i, -1):  # deepest first
        diff = correct[top_i].astype(float) - correct[i].astype(float)
        se = diff.std(ddof=1) / np.sqrt(len(y)) if len(y) > 1 else 0.0
        if diff.mean() <= se:
            chosen = i
            break
    chance = float(np.bincount(y).max() / len(y))
    return Transferability(method, scores, scores[chosen], scores[top_i], chance, len(y))
