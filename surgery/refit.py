"""The last step of a guarded plan with a hold-out: the linear head refit on every labelled image.

A guarded plan (`surgery.guard`) holds out a stated share of the images (`data.validation_split`)
so that fine-tuning is judged against the head alone on images neither has seen. Those images
would then be lost to the final model. With `training.refit_head: true`, once the guard has chosen,
the head is fitted again - the same convex fit as the head phase (`surgery.probe`), on the final
backbone's features of the training *and* validation images (and their kept flips). The backbone
is unchanged; only the head gains the held-out images. Cheap: one forward pass over the images.

The accuracy estimate is measured before the refit, on the validation images, so it stays honest
(it is that of a model that saw fewer images: slightly conservative).

    metrics = evaluate_run(...)              # on the validation images, before
    refit_head(plan, prepared, data, state, notes)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from surgery.bottleneck import feature_model, features, flip_views, linear_dense
from surgery.feature_store import cached
from surgery.probe import fit_linear_head


def applies(plan, data) -> bool:
    """A plan that asks for the refit and has validation images to give the head."""
    return bool(plan.training.refit_head) and bool(data.val[0])


def refit_head(plan, prepared, data, state: dict, notes: list[str], run_dir: Path | None = None) -> dict | None:
    """Refit the head's Dense layer on the training and validation images; what was done (also in
    `state["refit"]`), or None when the head is not linear (a note says so)."""
    model = prepared.model
    dense = linear_dense(model, prepared.head)
    if dense is None:
        notes.append("refit_head: the head has hidden layers (not a convex problem); the head trained with the "
                     "backbone is kept, fitted on the training images only")
        return None
    feat_model = feature_model(model, prepared.head)
    # The head phase's features (run_dir/features) are those of this backbone when the guard kept the
    # head alone (the backbone is the frozen one they were computed on): only the held-out images'
    # flips are new. After fine-tuning every image goes through the new backbone again.
    fdir = run_dir / "features" if run_dir is not None and _backbone_unchanged(state) else None

    def part(name: str, split: tuple, transform=None):
        cache = fdir / f"{name}.npz" if fdir is not None and cached(fdir / f"{name}.npz") is not None else None
        return features(feat_model, *split, data.spec, cache, transform=transform)

    xs, ys = zip(part("train", data.train), part("val", data.val))
    x, y = np.concatenate(xs), np.concatenate(ys)
    views = [np.concatenate([part(f"train_{name}", data.train, t)[0], part(f"val_{name}", data.val, t)[0]])
             for name, t in flip_views(data.spec.augment).items()]
    cw = "balanced" if plan.training.class_weights == "balanced" else None
    fit = fit_linear_head(x, y, classes=dense.units, seed=plan.data.seed, class_weight=cw,
                          views=[v for v in views if v.shape == x.shape])
    fit.assign_to(dense)
    done = {"images": int(len(y)), "train_images": len(data.train[0]), "val_images": len(data.val[0]),
            "reused_features": fdir is not None, "C": fit.C, "cv_accuracy": fit.cv_accuracy, "temperature": round(fit.temperature, 4),
            "on": (state.get("guard") or {}).get("keep", "fine_tuned")}
    state["refit"] = done
    notes.append(f"refit_head: the head was fitted again on all {done['images']} labelled images "
                 f"({done['train_images']} training + {done['val_images']} held out) on the final backbone "
                 f"(C {fit.C:g}, cross-validated accuracy {_fmt(fit.cv_accuracy)}); the estimate above is from the "
                 "held-out images before this refit")
    return done


def _backbone_unchanged(state: dict) -> bool:
    """The final backbone is the one the convex head phase took its features on: the guard kept
    the head-only weights."""
    return (state.get("guard") or {}).get("keep") == "head_only" and bool(state.get("probe"))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


__all__ = ["applies", "refit_head"]
