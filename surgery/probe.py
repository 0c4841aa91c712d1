"""Fit a linear head on frozen features to convergence, with its regularization chosen by
cross-validation, and write it into a Keras Dense layer.

A head-only phase on a frozen backbone is a convex problem: multinomial logistic regression on the
pooled features. Trained with a few dozen Adam steps it stops far from its optimum on small data
(10 images per class give 2-4 batches an epoch), and raw features from shallow cuts are so small in
scale that it barely moves. Here the features are standardized per channel, the L2 strength is
chosen by stratified k-fold cross-validation, and L-BFGS fits the model to convergence on every
training image. The standardization is then folded into the Dense layer's kernel and bias, so the
saved model takes the same raw features as before and needs no extra layer:

    logits = ((x - mean) / std) @ W + b  =  x @ (W / std) + (b - (mean / std) @ W)

    fit = fit_linear_head(features, labels, classes=5, seed=0)
    fit.assign_to(model.get_layer("head_dense"))
    print(fit.cv_accuracy, fit.C)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

#: Inverse L2 strengths tried by cross-validation (sklearn's C, per image: the penalty is
#: ||W||^2 / (2 C) against the summed log loss).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
MAX_FOLDS = 5
MAX_ITER = 2000
#: Up to this many images, the k-fold cross-validation is repeated over `CV_REPEATS` fold assignments
#: and the accuracies averaged. At 10 images per class one assignment's accuracy per C moves by
#: several points with the shuffle (bench: the C chosen on EfficientNet-Lite0's CIFAR-10 features
#: went from 1e-4 to 1 with the fold seed, 0.655 vs 0.613 on the test images); the average over
#: three is a steadier choice. Above it (20 images per class of 10 classes) one assignment's accuracy
#: has a standard error near 3 points or less, and the repeats would triple the cost of every fit.
REPEAT_MAX_IMAGES = 200
CV_REPEATS = 3
#: Above this many images, C (and whether to keep the views) is cross-validated on a stratified sample
#: of this many, then the final fit uses every image at the same L2 strength per image (C scaled by
#: sample / images). The CV of 50,000 images would fit 35+ models on 40,000 rows each; at 5,000 the
#: CV accuracy's standard error is under 1 point, enough to rank seven values of C a decade apart.
CV_MAX_IMAGES = 5000
#: Standardization scales are floored at this fraction of the median channel scale (`_scale_floor`).
FLOOR = 0.1


@dataclass
class LinearHead:
    """A fitted softmax head.

    Attributes:
        kernel: (features, classes) weights on the *raw* features (standardization folded in).
        bias: (classes,) bias.
        C: the inverse regularization strength chosen.
        cv_accuracy: mean accuracy over the cross-validation folds at `C` (None without CV).
        cv_folds: folds used (0: no cross-validation; too few images per class).
        cv_repeats: fold assignments the CV accuracy is averaged over (`REPEAT_MAX_IMAGES`).
        images: training images the final fit used.
        train_accuracy: accuracy of the final fit on its own training images.
        train_loss: mean cross-entropy of the final fit on its training images.
        scores: mean CV accuracy per C tried.
        notes: anything worth knowing (no CV, not converged).
        temperature: the logits' divisor, calibrated on the out-of-fold predictions (1: none).
        views: label-preserving views of each image the final fit used (0: the images alone; views
            given are dropped when they lower the cross-validated accuracy).
    """

    kernel: np.ndarray
    bias: np.ndarray
    C: float
    cv_accuracy: float | None
    cv_folds: int
    images: int
    train_accuracy: float
    train_loss: float
    scores: dict[float, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    temperature: float = 1.0
    views: int = 0
    cv_repeats: int = 1

    def assign_to(self, dense) -> None:
        """Write the head into a Keras Dense layer of matching shape (kernel (features, classes))."""
        kernel, bias = dense.kernel, dense.bias
        if tuple(kernel.shape) != self.kernel.shape:
            raise ValueError(f"Dense layer {dense.name!r} has a kernel of shape {tuple(kernel.shape)}; "
                             f"the fitted head has {self.kernel.shape}")
        kernel.assign(self.kernel.astype(kernel.dtype))
        if bias is not None:
            bias.assign(self.bias.astype(bias.dtype))


def _folds(labels: np.ndarray) -> int:
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    return min(MAX_FOLDS, smallest)


def fit_linear_head(features: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0,
                    class_weight: str | None = None, grid: tuple[float, ...] = C_GRID,
                    views: list[np.ndarray] | tuple = ()) -> LinearHead:
    """Multinomial logistic regression on standardized features, C by stratified k-fold CV.

    Args:
        features: (images, features) float array.
        labels: (images,) integer classes in 0..classes-1.
        views: feature arrays of the same images under label-preserving transforms (a horizontal
            flip), row for row with `features`. They are extra training rows: each fold trains on
            the views of its training images only and is scored on the plain held-out images, so
            the CV accuracy stays an estimate on new, untransformed images.
        classes: the head's output units (classes absent from `labels` get a zero column and a very
            low bias).
        seed: seed of the fold assignment.
        class_weight: "balanced" to weight the loss by inverse class frequency, else None.
        grid: the C values tried.

    Returns:
        `LinearHead`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, dtype="float64").reshape(len(features), -1)
    y = np.asarray(labels, dtype="int64")
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError("a linear head needs images of at least two classes")
    xv = [np.asarray(v, dtype="float64").reshape(len(v), -1) for v in views]
    if any(v.shape != x.shape for v in xv):
        raise ValueError(f"every view must have the features' shape {x.shape}; got {[v.shape for v in xv]}")
    n, copies = len(y), 1 + len(xv)
    x_all = np.concatenate([x, *xv]) if xv else x
    y_all = np.tile(y, copies)
    mean = x.mean(axis=0)  # the plain images' statistics: a fit that drops the views is the plain fit
    std = _scale_floor(x.std(axis=0))
    z = (x_all - mean) / std
    # An L2-regularized linear model's weights lie in the span of its training rows (the gradient
    # of the loss is z.T @ residuals), and every fold's rows are a subset of all rows: fitting on the
    # coordinates of z in that span is exact and, with fewer images than features (10 per class on
    # 1,280 channels), many times cheaper.
    _, sv, vt = np.linalg.svd(z, full_matrices=False)
    basis = vt[sv > sv.max(initial=0.0) * 1e-10]
    z = z @ basis.T
    notes: list[str] = []
    # the images the cross-validation runs on: every image, or a stratified sample of CV_MAX_IMAGES
    cv_img = np.arange(n) if n <= CV_MAX_IMAGES else _stratified_sample(y, CV_MAX_IMAGES, seed)
    n_cv = len(cv_img)
    cv_rows = (cv_img[None, :] + n * np.arange(copies)[:, None]).ravel()  # the sample and its views
    z_cv, y_all_cv, y_cv = z[cv_rows], y_all[cv_rows], y[cv_img]
    folds = _folds(np.searchsorted(present, y_cv))
    cw = "balanced" if class_weight == "balanced" else None

    def logistic(c: float, warm: bool = False):
        return LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=cw, warm_start=warm)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        scores: dict[float, float] = {}
        cv_acc = None
        temperature = 1.0
        use = copies  # how many copies of the rows the final fit uses (1: the images alone)
        repeats = CV_REPEATS if n_cv <= REPEAT_MAX_IMAGES else 1
        if folds >= 2:
            # fold assignments seed, seed+1, ...: the first is the one a single CV would use
            splits = [list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r).split(z_cv[:n_cv], y_cv))
                      for r in range(repeats)]
            # with views, the plain images alone are cross-validated too, and the views are kept only
            # when they do not lower the CV accuracy (a tie keeps them): a flip that preserves labels
            # can still move these features somewhere the plain images never go
            runs = {m: _cv_path(z_cv, y_all_cv, y_cv, n_cv, m, splits, grid, present, logistic)
                    for m in sorted({copies, 1}, reverse=True)}
            best_of = {m: int(np.argmax(accs)) for m, (accs, _) in runs.items()}  # ties: the strongest L2
            use = max(runs, key=lambda m: (round(float(runs[m][0][best_of[m]]), 9), m))
            accs, oof = runs[use]
            best = best_of[use]
            scores = {float(c): float(a) for c, a in zip(grid, accs)}
            C, cv_acc = float(grid[best]), float(accs[best])
            temperature = calibrated_temperature(oof[best], np.searchsorted(present, y_cv))
            if n_cv < n:
                notes.append(f"C chosen by cross-validation on a stratified sample of {n_cv:,} of the {n:,} images "
                             f"(C {C:g} there, {C * n_cv / n:.3g} on all: the same L2 strength per image); the "
                             f"cross-validated accuracy is that of heads fitted on {n_cv - n_cv // folds:,} images")
                C = C * n_cv / n
            if xv:
                plain, viewed = float(runs[1][0][best_of[1]]), float(runs[copies][0][best_of[copies]])
                notes.append(f"views {'kept' if use == copies else 'dropped'}: cross-validated accuracy "
                             f"{viewed:.3f} with the {len(xv)} label-preserving view(s) of each image, "
                             f"{plain:.3f} without (scored on the plain held-out images)")
        else:
            C = 1.0
            notes.append("fewer than two images in some class: no cross-validation, C = 1")
        rows = np.arange(n * use)
        model = logistic(C)
        model.fit(z[rows], y_all[rows])
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"L-BFGS did not fully converge in {MAX_ITER} iterations")
    coef, intercept = np.asarray(model.coef_) @ basis, np.asarray(model.intercept_)
    if coef.shape[0] == 1:  # sklearn's binary form: one logit for the second class
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    if temperature > 1.005:  # (a temperature within 0.5 % of 1 changes nothing worth a note)
        coef, intercept = coef / temperature, intercept / temperature
        notes.append(f"logits divided by {temperature:.3g}: the temperature at which the cross-validated "
                     "predictions are calibrated (bounds the logits fine-tuning starts from)")
    w = np.zeros((x.shape[1], classes))
    b = np.full(classes, -30.0)  # classes with no training image: never predicted
    w[:, present] = (coef / std).T
    b[present] = intercept - (coef / std) @ mean
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    if xv and use == copies:
        notes.append(f"fitted on the images and {len(xv)} label-preserving view(s) of each "
                     f"({len(y_all)} rows); cross-validated on the plain held-out images")
    return LinearHead(kernel=w.astype("float32"), bias=b.astype("float32"), C=C, cv_accuracy=cv_acc,
                      cv_folds=folds if folds >= 2 else 0, images=len(y),
                      train_accuracy=float((logp.argmax(axis=1) == y).mean()),
                      train_loss=float(-logp[np.arange(len(y)), y].mean()), scores=scores, notes=notes,
                      temperature=float(temperature), views=int(use - 1),
                      cv_repeats=repeats if folds >= 2 else 0)


def _stratified_sample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` image indices (sorted), each class in proportion and at least once (when it fits)."""
    from sklearn.model_selection import train_test_split

    stratify = y if np.bincount(y).max(initial=0) and np.min(np.bincount(y)[np.unique(y)]) >= 2 else None
    idx, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=stratify, random_state=seed)
    return np.sort(idx)


def _cv_path(z, y_all, y, n: int, copies: int, splits, grid, present, logistic):
    """Accuracy per C over the folds of every fold assignment in `splits` (averaged over them),
    training on each fold's images and the first `copies - 1` views of them, scored on the plain
    held-out images; and the out-of-fold logits per C of the first assignment (for the temperature)."""
    correct = np.zeros(len(grid))
    oof = np.zeros((len(grid), len(y), len(present)))
    for r, assignment in enumerate(splits):
        for train, test in assignment:
            _fold_path(z, y_all, y, n, copies, train, test, grid, present, logistic, correct, oof if r == 0 else None)
    return correct / (len(y) * len(splits)), oof


def _fold_path(z, y_all, y, n, copies, train, test, grid, present, logistic, correct, oof) -> None:
    """One fold along the C path: counts its correct held-out predictions into `correct` and, with
    `oof`, writes its out-of-fold logits."""
    rows = (train[None, :] + n * np.arange(copies)[:, None]).ravel()  # the images and their views
    model = logistic(grid[0], warm=True)  # along the path, each fit starts from the last
    for k, c in enumerate(grid):
        model.set_params(C=c)
        model.fit(z[rows], y_all[rows])
        correct[k] += (model.predict(z[test]) == y[test]).sum()
        if oof is not None:
            oof[k][np.ix_(test, np.searchsorted(present, model.classes_))] = _logits(model, z[test])


def _scale_floor(std: np.ndarray) -> np.ndarray:
    """Per-channel scales for standardization, floored at FLOOR x the median scale of the channels
    that vary. A channel that barely varies on the training images (a ReLU6 unit that is almost
    always 0) would otherwise be divided by its tiny spread, and the folded kernel (W / std) would
    turn any later change of that channel - augmentation, a fine-tuned backbone - into huge logits."""
    live = std[std > 0]
    if not live.size:
        return np.ones_like(std)
    return np.maximum(std, FLOOR * float(np.median(live)))


def _logits(model, z: np.ndarray) -> np.ndarray:
    d = np.asarray(model.decision_function(z))
    return np.stack([-d / 2, d / 2], axis=1) if d.ndim == 1 else d


def calibrated_temperature(logits: np.ndarray, labels: np.ndarray, bounds=(1.0, 1000.0)) -> float:
    """The temperature T >= 1 minimizing the log loss of softmax(logits / T) on out-of-fold logits
    (Guo et al. 2017, "On calibration of modern neural networks"). A head fitted to convergence on
    separable features is overconfident on images it has not seen; dividing its logits by T makes its
    confidence match its cross-validated accuracy, and bounds the gradients that fine-tuning starts
    with. Argmax (and so the head's accuracy) is unchanged."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        return float((logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]).mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x)) if res.success else 1.0


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy's `binomtest(...).proportion_ci`)."""
    if total <= 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return (round(float(ci.low), 4), round(float(ci.high), 4))


def describe_estimate(estimate: dict | None) -> str:
    """One sentence for people: the expected accuracy on new images and how it was measured."""
    if not estimate:
        return "accuracy on new images: not recorded"
    if estimate.get("accuracy") is None:
        return f"accuracy on new images: not measured. {estimate.get('note', '')}".strip()
    lo, hi = estimate["interval95"]
    return (f"expected accuracy on new images {estimate['accuracy']:.3f} (95 % interval {lo:.3f}-{hi:.3f}), "
            f"from the {estimate['method']} on {estimate['images']} images")


__all__ = ["C_GRID", "LinearHead", "calibrated_temperature", "describe_estimate", "fit_linear_head", "wilson_interval"]
