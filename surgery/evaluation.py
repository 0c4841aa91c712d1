"""Evaluation: the trained model on the test split (else validation, else training), its metrics,
how well it is expected to do on new images (with a Wilson interval), and what input it expects."""

from __future__ import annotations

from surgery.bottleneck import predict
from surgery.metrics import classification_metrics
from surgery.probe import wilson_interval


def evaluate_run(plan, model, data, state: dict, notes: list[str], distributed: bool = False,
                 reporter=None) -> dict:
    """`metrics.json`'s content: the metrics on the held-out split `data` has, the estimate of the
    accuracy on new images, and the input the model expects. Appends a note when only the
    training images were left to measure on."""
    eval_name, (files, labels) = ("test", data.test) if data.test[0] else ("val", data.val)
    if not files:
        eval_name, (files, labels) = "train", data.train
        notes.append("no validation or test images: metrics are on the training set")
    metrics = _evaluate(model, files, labels, data, distributed=distributed, reporter=reporter,
                        task=f"evaluate ({eval_name} images)")
    metrics["split"] = eval_name
    metrics["estimate"] = _estimate(metrics, eval_name, state, plan)
    if state.get("guard"):
        metrics["guard"] = state["guard"]
    d = plan.data
    metrics["model_input"] = {
        "size": list(d.input_size), "channels": d.channels, "channel_mode": d.channel_mode,
        "pixels": "raw values 0..255; the preprocessing is inside the model",
        "resize": f"resize images to {d.input_size[0]}x{d.input_size[1]} (bilinear) before calling the model: "
                  "the accuracy above was measured at that size"}
    return metrics


def _estimate(metrics: dict, split: str, state: dict, plan) -> dict:
    """How well the model is expected to do on new images, how that was measured, on how many
    images, with a Wilson 95 % interval."""
    n = int(metrics.get("n_samples", 0))
    acc = float(metrics.get("accuracy", 0.0))
    if split in ("test", "val"):
        method = "test split" if split == "test" else "validation split"
        if split == "val" and plan.training.refit_head:
            method = "held-out images (scored before the head was refit on them)"
        return {"method": method, "accuracy": acc, "images": n,
                "interval95": list(wilson_interval(round(acc * n), n))}
    probe = state.get("probe")
    head_only = (state.get("guard") or {}).get("keep") == "head_only"  # the final model is the head alone
    if probe and probe.get("cv_accuracy") is not None and (probe["phase"] == len(plan.training.phases) - 1
                                                             or head_only):
        m = int(probe["images"])
        cv = float(probe["cv_accuracy"])
        return {"method": _cv_method(probe), "accuracy": cv, "images": m,
                "interval95": list(wilson_interval(round(cv * m), m))}
    out = {"method": "none", "accuracy": None, "images": 0, "interval95": None,
           "note": "every labelled image was used for training, and the backbone was fine-tuned: accuracy on "
                   "new images is not measured; give val/ or test/ folders, or set data.test_split, to measure it"}
    if probe and probe.get("cv_accuracy") is not None:
        out["head_only_cv_accuracy"] = float(probe["cv_accuracy"])
        out["note"] += (f" (before fine-tuning, the head alone reached {probe['cv_accuracy']:.3f} in "
                        f"{probe['cv_folds']}-fold cross-validation)")
    return out


def _cv_method(probe: dict) -> str:
    repeats = int(probe.get("cv_repeats") or 1)
    shuffles = f", averaged over {repeats} fold assignments" if repeats > 1 else ""
    return f"{probe['cv_folds']}-fold cross-validation of the head{shuffles}"


def _evaluate(model, files, labels, data, distributed: bool = False, reporter=None, task: str = "evaluate") -> dict:
    """Metrics from one streamed pass: the images are decoded batch by batch; only the (images x
    classes) float32 probabilities are kept, which calibration-style metrics need."""
    prob, y = predict(model, files, labels, data.spec, distributed, reporter=reporter, task=task)
    return classification_metrics(y, prob.argmax(axis=1), data.classes, y_prob=prob)


__all__ = ["evaluate_run"]
