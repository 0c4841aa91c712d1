"""The fine-tuning guard: a fine-tuned strategy never ends below its own head-only model.

LP-FT fits a head on frozen features (the convex phase), then trains the backbone. On small data a
bad hand-off wrecks the backbone: a head fitted to convergence on separable features has huge
logits, the first fine-tuning steps take huge gradients through every layer, and the model ends
near chance while the head alone was good (MobileNet v1, 7 classes of faces, 10 per class: 0.15
after fine-tuning). The head's logits are bounded before the hand-off (surgery/probe.py: calibrated
temperature, floored feature scales), and the backbone phases clip the global gradient norm; this
module is the last line: it keeps the head-only weights and, when the backbone phases end, compares.

The evidence, in order of strength:

- **held-out images** (the plan's validation split): the head-only model and the fine-tuned one are
  compared image by image on them (the convex phase records which ones the head gets right). The
  head alone is kept only when fine-tuning is worse beyond the noise of so few images: an exact
  one-sided sign test (McNemar's) on the images where the two disagree, at `ALPHA`. A tie or a
  difference within noise keeps fine-tuning. At 10 images per class the hold-out is 20 images, and
  a plain "whichever scores higher" turns on one or two of them: on the recipes bench (seed 0, 10
  per class) the head alone was kept on 15 of 39 guarded runs, 10 of them on a margin of 1 image, while
  the fine-tuned models the guard kept beat their own linear probe on 9 of 11 tasks (mean +1.9
  points on 400 test images). A collapse (fine-tuning near chance) is many images and is caught.
  Without per-image records (a state written by an older graft), the accuracies are compared.
- **no held-out images** (every labelled image trains, the default on small data): the fine-tuned
  model is scored on its own training images, without augmentation. That cannot show that
  fine-tuning helps, only that it broke: a model that fits its training images worse than the head
  alone predicts new ones (its cross-validated accuracy, less two standard errors) has lost what
  the pretrained backbone knew, and the head-only model is kept.

    keep_head_only(plan, model, run_dir)  # when the head phase ends (surgery.runner)
    verdict = check(plan, model, data, state, run_dir)   # when the backbone phases end
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HEAD_ONLY = "head-only.weights.h5"

#: One-sided level of the paired sign test on held-out images: the head alone replaces the fine-tuned
#: model only when P(fine-tuning loses this many of the disagreements | it is no worse) <= ALPHA.
#: 20 held-out images with no image the head gets wrong and fine-tuning right: 4 losses fall back.
ALPHA = 0.1


def head_only_file(run_dir: Path) -> Path:
    """Where the head-only model's weights are kept while the backbone phases run."""
    return Path(run_dir) / "checkpoints" / HEAD_ONLY


def applies(plan) -> bool:
    """A plan whose first phase trains only the head and a later phase trains the backbone."""
    return guarded(plan.training.phases)


def guarded(phases) -> bool:
    """Phases whose first trains only the (pretrained-backbone) head and a later one the backbone."""
    return (len(phases) > 1 and phases[0].trainable == "head" and phases[0].weights != "random"
            and any(p.trainable != "head" for p in phases[1:]))


def head_only_scores(state: dict, phase: str) -> dict:
    """The head-only model's evidence from the run state: its validation accuracy (when the head
    phase scored held-out images) and its cross-validated accuracy (convex fit)."""
    rows = [h for h in state.get("history", []) if h.get("phase") == phase]
    head = rows[-1] if rows else {}
    probe = state.get("probe") or {}
    scores = {"val_accuracy": head.get("val_accuracy"), "cv_accuracy": probe.get("cv_accuracy"),
              "images": probe.get("images"), "train_accuracy": head.get("accuracy")}
    if probe.get("val_correct"):
        scores["val_correct"] = probe["val_correct"]
    return scores


def paired_test(head_correct, tuned_correct) -> dict:
    """The exact one-sided sign test (McNemar's) that fine-tuning is worse than the head alone, on the
    images where the two disagree: `head_wins` images only the head gets right, `tuned_wins` images
    only the fine-tuned model gets right, `p` = P(X >= head_wins), X ~ Binomial(head_wins + tuned_wins, 1/2)."""
    from scipy.stats import binomtest

    h, t = np.asarray(head_correct, dtype=bool), np.asarray(tuned_correct, dtype=bool)
    head_wins, tuned_wins = int((h & ~t).sum()), int((~h & t).sum())
    p = (binomtest(head_wins, head_wins + tuned_wins, 0.5, alternative="greater").pvalue
         if head_wins > tuned_wins else 1.0)
    return {"head_wins": head_wins, "tuned_wins": tuned_wins, "p": round(float(p), 4)}


def judge(head: dict, fine_tuned: float, on: str, tuned_correct=None) -> dict:
    """Keep fine-tuning or fall back to the head-only model.

    Args:
        head: `head_only_scores(state, first phase's name)`.
        fine_tuned: the fine-tuned model's accuracy on the validation images (`on="val"`) or on its
            own training images without augmentation (`on="train"`).
        on: which images `fine_tuned` was measured on.
        tuned_correct: with `on="val"`, which held-out images the fine-tuned model gets right (in the
            order of `head["val_correct"]`); with both, the comparison is paired.

    Returns:
        {"keep": "fine_tuned" | "head_only", "evidence": on, "fine_tuned_accuracy", "head_only_accuracy",
         "threshold", "reason"}, and with a paired comparison "paired": `paired_test`'s record and "alpha".
    """
    paired = None
    if on == "val" and head.get("val_accuracy") is not None:
        ref = float(head["val_accuracy"])
        threshold = ref
        what = (f"on the held-out images fine-tuning reached {fine_tuned:.3f} against {ref:.3f} for the head "
                "alone")
        hc = head.get("val_correct")
        if hc and tuned_correct is not None and len(hc) == len(tuned_correct):
            paired = paired_test([c == "1" for c in hc], tuned_correct)
            worse = paired["p"] <= ALPHA
            threshold = None
            what += (f" (image by image: {paired['head_wins']} right only with the head alone, "
                     f"{paired['tuned_wins']} only after fine-tuning; one-sided sign test p = {paired['p']:.3g}, "
                     f"{'below' if worse else 'not below'} {ALPHA:g})")
        else:
            worse = fine_tuned < threshold
    elif head.get("cv_accuracy") is not None and head.get("images"):
        ref = float(head["cv_accuracy"])
        n = int(head["images"])
        threshold = ref - 2 * math.sqrt(max(ref * (1 - ref), 1e-4) / n)
        worse = fine_tuned < threshold
        what = (f"the fine-tuned model fits its own training images at {fine_tuned:.3f}, while the head alone "
                f"predicts new ones at {ref:.3f} (cross-validated on {n} images; collapse below {threshold:.3f})")
    else:
        return {"keep": "fine_tuned", "evidence": "none", "fine_tuned_accuracy": fine_tuned,
                "head_only_accuracy": None, "threshold": None,
                "reason": "no held-out or cross-validated score of the head alone: fine-tuning kept unchecked"}
    keep = "head_only" if worse else "fine_tuned"
    kept = "; fine-tuning kept"
    if paired and not worse and fine_tuned < ref:
        kept = "; the difference is within the noise of so few images, so fine-tuning is kept"
    reason = what + ("; fine-tuning made the model worse, so the head-only model is kept" if worse else kept)
    verdict = {"keep": keep, "evidence": on, "fine_tuned_accuracy": round(fine_tuned, 4),
               "head_only_accuracy": round(ref, 4), "threshold": None if threshold is None else round(threshold, 4),
               "reason": reason}
    if paired:
        verdict.update(paired=paired, alpha=ALPHA)
    return verdict


def keep_head_only(plan, model, run_dir: Path) -> None:
    """Save the head-only model's weights, once, when a guarded plan's head phase has ended."""
    from surgery.train import save_weights_atomic

    path = head_only_file(run_dir)
    if applies(plan) and not path.exists():
        save_weights_atomic(model, path)


def check(plan, model, data, state: dict, run_dir: Path, notes: list[str], distributed: bool = False) -> None:
    """Judge the fine-tuned model once (the verdict is kept in `state["guard"]`, so a resumed run
    does not judge again), load the head-only weights back when it loses, and say so in `notes`."""
    from graft.atomic import write_json
    from surgery.bottleneck import predict

    path = head_only_file(run_dir)
    if not applies(plan) or not path.exists() and state.get("guard") is None:
        return
    if state.get("guard") is None:
        on, (files, labels) = ("val", data.val) if data.val[0] else ("train", data.train)
        prob, y = predict(model, files, labels, data.spec, distributed)
        correct = prob.argmax(axis=1) == y
        verdict = judge(head_only_scores(state, plan.training.phases[0].name), float(correct.mean()), on=on,
                        tuned_correct=correct if on == "val" else None)
        verdict["images"] = len(y)
        state["guard"] = verdict
        write_json(Path(run_dir) / "state.json", state)
    if state["guard"]["keep"] == "head_only":
        model.load_weights(path)
    notes.append("guard: " + state["guard"]["reason"])


__all__ = ["ALPHA", "HEAD_ONLY", "applies", "check", "guarded", "head_only_file", "head_only_scores", "judge", "keep_head_only", "paired_test"]
