"""The scratch-vs-pretrained trial (`training.fallback`): train both initializations briefly with
every layer trainable, keep the better; and the model a run starts its phases from."""

from __future__ import annotations

import keras

from surgery.phase import BACKBONE_CLIPNORM
from surgery.pipeline import make_dataset
from surgery.prepare import Prepared, prepare_model, scratch, set_phase_trainable
from surgery.progress import Reporter


def initial_model(plan, prepared: Prepared, state: dict, notes: list[str], scope) -> Prepared:
    """The model the first phase starts from: pretrained, or reinitialized when the fallback trial
    chose random weights or the first phase asks for them."""
    if state.get("fallback") and state["fallback"]["chosen"] == "random":
        with scope():
            prepared = scratch(prepared, seed=plan.data.seed)
    elif plan.training.phases[0].weights == "random":
        with scope():
            prepared = scratch(prepared, seed=plan.data.seed)
        notes.append("the first phase asks for random weights: the backbone starts from scratch")
    return prepared


def scratch_trial(plan, data, reporter: Reporter, jit, safe_mode: bool | None) -> dict:
    """Train pretrained and random initializations briefly with every layer trainable; compare."""
    fb = plan.training.fallback
    # Both arms train every layer as the plan's backbone phase does: at its learning rate (not the
    # head phase's 1e-3, at which a pretrained backbone under a fresh head is wrecked in a few steps:
    # MobileNet v1 on 1,000 CIFAR-10 images scored chance) and with its gradient clip.
    lr = next((ph.learning_rate for ph in plan.training.phases if ph.trainable != "head"),
              plan.training.phases[-1].learning_rate)
    scores = {}
    vds = make_dataset(*(data.val if data.val[0] else data.train), data.spec, training=False,
                       num_classes=len(data.classes))
    for init in ("pretrained", "random"):
        trial = prepare_model(plan, safe_mode=safe_mode)  # a fresh copy: the trial's training is thrown away
        if init == "random":
            trial = scratch(trial, seed=plan.data.seed)
        set_phase_trainable(trial, "all", plan.surgery.bn if init == "pretrained" else "follow")
        keras.utils.set_random_seed(plan.data.seed)
        trial.model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=BACKBONE_CLIPNORM),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
        reporter.message(f"fallback trial: {init} initialization, {fb.scratch_trial_epochs} epoch(s)")
        ds = make_dataset(*data.train, data.spec, training=True, num_classes=len(data.classes))  # same order
        trial.model.fit(ds, epochs=fb.scratch_trial_epochs, verbose=0)
        scores[init] = float(trial.model.evaluate(vds, verbose=0, return_dict=True)["accuracy"])
    chosen = "random" if scores["random"] > scores["pretrained"] + fb.margin else "pretrained"
    return {"epochs": fb.scratch_trial_epochs, "margin": fb.margin, "val_accuracy": scores, "chosen": chosen,
            "reason": (f"random initialization reached {scores['random']:.3f} validation accuracy against "
                       f"{scores['pretrained']:.3f} for pretrained after {fb.scratch_trial_epochs} epoch(s); "
                       f"{'training from scratch' if chosen == 'random' else 'keeping pretrained weights'} "
                       f"(margin {fb.margin})")}


__all__ = ["initial_model", "scratch_trial"]
