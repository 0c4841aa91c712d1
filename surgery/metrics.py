"""Classification metrics from predictions, with numpy only.

Conventions:
    * Labels are integer class indices `0 .. len(class_names) - 1`.
    * The confusion matrix has rows = true class, columns = predicted class.
    * Zero division gives 0.0: precision of a class that is never predicted, recall (sensitivity)
      of a class with no true samples, specificity of a class when every sample is of that class,
      F1 when precision + recall is 0, and accuracy of an empty set. This matches scikit-learn's
      `zero_division=0`.
    * Macro averages are unweighted means over all classes, including classes with no support
      (as scikit-learn does). Balanced accuracy is the mean recall over the classes that occur in
      `y_true` (as `sklearn.metrics.balanced_accuracy_score`).
    * Every number is a plain Python `int` or `float`, so the result is JSON-serializable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "confusion_matrix"]


def _div(num: float, den: float) -> float:
    """`num / den`, or 0.0 when `den` is 0."""
    return float(num) / float(den) if den else 0.0


def _as_labels(y: Any, name: str, n_classes: int) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == n_classes and n_classes > 1:
        # One-hot or probabilities: take the arg-max.
        arr = arr.argmax(axis=1)
    arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name} must hold integer class indices")
        arr = arr.astype(np.int64)
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"{name} holds class indices outside 0..{n_classes - 1}: "
            f"min {int(arr.min())}, max {int(arr.max())}"
        )
    return arr


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs.

    Args:
        y_true: true class indices, shape (n,).
        y_pred: predicted class indices, shape (n,).
        n_classes: number of classes.

    Returns:
        An (n_classes, n_classes) int64 array; rows are true classes, columns predictions.
    """
    t = _as_labels(y_true, "y_true", n_classes)
    p = _as_labels(y_pred, "y_pred", n_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    y_prob: Any | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class and macro metrics, and the confusion matrix.

    Args:
        y_true: true class indices, shape (n,) (one-hot rows are accepted too).
        y_pred: predicted class indices, shape (n,) (probability rows are accepted too).
        class_names: one name per class, in index order.
        y_prob: optional predicted scores, shape (n, classes); enables `top_k_accuracy`.

    Returns:
        A JSON-serializable dict with keys:

        * `accuracy`: fraction of correct predictions.
        * `balanced_accuracy`: mean recall over classes present in `y_true`.
        * `top_k_accuracy` and `top_k` (only when `y_prob` is given): fraction of samples whose
          true class is among the k highest scores, k = min(5, classes).
        * `per_class`: one dict per class with `class`, `support`, `precision`, `recall`,
          `sensitivity` (= recall), `specificity`, `f1`.
        * `macro`: unweighted means of precision, recall, sensitivity, specificity and f1.
        * `confusion_matrix`: list of lists, rows = true class, columns = predicted.
        * `classes`: the class names.
        * `n_samples`: number of samples.

        Zero divisions give 0.0 (see the module docstring).

    Raises:
        ValueError: no classes, labels outside the class range, or mismatched lengths.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    if k == 0:
        raise ValueError("class_names is empty")
    cm = confusion_matrix(y_true, y_pred, k)
    n = int(cm.sum())
    tp = np.diag(cm).astype(np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    fp = predicted - tp
    fn = support - tp
    tn = n - tp - fp - fn

    per_class: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        precision = _div(tp[i], tp[i] + fp[i])
        recall = _div(tp[i], tp[i] + fn[i])
        specificity = _div(tn[i], tn[i] + fp[i])
        f1 = _div(2 * precision * recall, precision + recall)
        per_class.append(
            {
                "class": name,
                "support": int(support[i]),
                "precision": precision,
                "recall": recall,
                "sensitivity": recall,
                "specificity": specificity,
                "f1": f1,
            }
        )

    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in per_class]))

    present = [row["recall"] for row in per_class if row["support"] > 0]
    result: dict[str, Any] = {
        "n_samples": n,
        "accuracy": _div(tp.sum(), n),
        "balanced_accuracy": float(np.mean(present)) if present else 0.0,
    }
    if y_prob is not None:
        prob = np.asarray(y_prob, dtype=np.float64)
        if prob.ndim != 2 or prob.shape != (n, k):
            raise ValueError(f"y_prob must have shape ({n}, {k}), got {prob.shape}")
        top = min(5, k)
        t = _as_labels(y_true, "y_true", k)
        # Indices of the `top` highest scores per row (order within them does not matter).
        best = np.argpartition(-prob, top - 1, axis=1)[:, :top] if n else np.zeros((0, top), int)
        hits = (best == t[:, None]).any(axis=1)
        result["top_k"] = top
        result["top_k_accuracy"] = _div(int(hits.sum()), n)
    result["per_class"] = per_class
    result["macro"] = {
        key: mean(key) for key in ("precision", "recall", "sensitivity", "specificity", "f1")
    }
    result["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    result["classes"] = names
    return result
