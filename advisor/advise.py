"""`advise`: data set + (optional) model + rules -> facts, decision with trace, plan.

    advice = advise("dataset/", model="examples/models/cifar_a_cnn.keras")
    advice.decision.strategy, advice.decision.reason
    save_plan(advice.plan, "plan.yaml")

Facts come from the data set scan (`advisor.dataset`), the model (layers, BatchNormalization, input
size), the embedding measurement (`advisor.measure`: similarity and the per-cut probe, when a model
is given) or the user (`similarity=`). Unknown facts stay `None`; the rules say how they handle that.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from advisor.dataset import DatasetFacts, scan
from advisor.facts import derived
from advisor.rules import Decision, RuleTable, load_rules
from graft.errors import GraftError, InputError
from graft.plan import (
    DataPlan,
    DecisionRecord,
    Fallback,
    HeadPlan,
    ModelSpec,
    OutputPlan,
    Phase,
    Plan,
    Provenance,
    SurgeryPlan,
    TrainingPlan,
)

DEFAULT_MODEL = "mobilenetv2"
#: Training input side for networks that take any size: with a GPU (the size ImageNet networks are
#: pretrained at) and without one (the size `advise` measures at; see `input_size_for`).
FLEXIBLE_GPU_SIZE = 224
FLEXIBLE_CPU_SIZE = 160
TRAINABLE_FRACTION = {"head": 0.0, "top_third": 1 / 3, "top_half": 0.5, "all": 1.0, "from_cut": 1.0}


@dataclass
class ModelFacts:
    """What `advise` learned from loading the model."""

    source: str
    name: str
    layers: int
    has_batchnorm: bool
    input_size: tuple[int, int] | None
    channels: int
    params: int


@dataclass
class Advice:
    """Everything `advise` found and decided.

    Attributes:
        dataset: the data set scan.
        model: what the model is (None when no model was given).
        embedding: the similarity / per-cut measurement (`advisor.measure.EmbeddingFacts`) or None.
        facts: the fact values the rules saw.
        decision: the rules' decision with its full trace.
        plan: the plan, ready for `save_plan`.
        rules: the rule table used.
        notes: what was not measured and why, and other remarks for the report.
    """

    dataset: DatasetFacts
    model: ModelFacts | None
    embedding: object | None
    facts: dict
    decision: Decision
    plan: Plan
    rules: RuleTable
    notes: list[str] = field(default_factory=list)
    trial: object | None = None
    augmentation: object | None = None  # advisor.augmentation.AugmentationCheck, when measured

    def to_dict(self) -> dict:
        """JSON-ready: facts, decision with trace, measurements, plan."""
        return {
            "dataset": self.dataset.to_dict(),
            "model": None if self.model is None else self.model.__dict__ | {
                "input_size": list(self.model.input_size) if self.model.input_size else None},
            "facts": dict(self.facts),
            "similarity": self.plan.decision.similarity,
            "best_cut_depth": self.facts.get("best_cut_depth"),
            "embedding": None if self.embedding is None else self.embedding.to_dict(),
            "decision": self.decision.to_dict(),
            "plan": self.plan.to_dict(),
            "rules": {"file": self.rules.source, "version": self.rules.version, "sha256": self.rules.sha256,
                      "overrides": dict(self.rules.overrides)},
            "notes": list(self.notes),
            "trial": None if self.trial is None else self.trial.to_dict(),
            "augmentation": None if self.augmentation is None else self.augmentation.to_dict(),
        }


def model_facts(model, source: str) -> ModelFacts:
    """Layers, BatchNormalization, input size and channels of a loaded model (or its `LayerGraph`)."""
    from surgery import LayerGraph, layer_graph

    graph = model if isinstance(model, LayerGraph) else layer_graph(model)
    model = graph.model
    summary = graph.summary()
    shape = model.inputs[0].shape if model.inputs else (None, None, None, 3)
    size = (int(shape[1]), int(shape[2])) if shape[1] and shape[2] else None
    return ModelFacts(source, model.name, summary["layers"], summary["batchnorm_layers"] > 0, size,
                      int(shape[-1] or 3), int(model.count_params()))


def estimate_cost(strategy: dict, train_images: int, augmented: bool, epochs_scale: float = 1.0,
                  batch_size: int = 32) -> dict:
    """Expected compute of a strategy, in forward passes of the pretrained base over one image.

    A head-only phase on the frozen base costs one forward pass per image in all (the bottleneck
    features are computed once and the head is fitted on them; augmentation does not change that);
    any other phase costs `epochs x images x (1 + 2 f)`, where `f` is the trainable fraction of the
    base (a backward pass costs about two forward passes) and `epochs` is raised to reach the
    phase's `min_steps`. `augmented` is kept for callers; it no longer changes the cost.
    """
    total, bottleneck_done, epochs_total = 0.0, False, 0
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    for phase in strategy["phases"]:
        epochs = max(1, round(phase["epochs"] * epochs_scale))
        if phase.get("min_steps"):
            epochs = max(epochs, math.ceil(phase["min_steps"] / steps_per_epoch))
        f = TRAINABLE_FRACTION.get(phase["trainable"], 1.0)
        if f == 0.0 and bottleneck_done is not None:
            if not bottleneck_done:
                total += train_images
                bottleneck_done = True
            epochs_total += 1
            continue
        bottleneck_done = None  # the backbone changed: a later head phase cannot use the features
        total += epochs * train_images * (1 + 2 * f)
        epochs_total += epochs
    fb = strategy.get("fallback")
    if fb:
        total += 2 * fb["scratch_trial_epochs"] * train_images * 3
    return {"base_forward_passes": int(total), "epochs": epochs_total}


def force_strategy(decision: Decision, table: RuleTable, name: str) -> Decision:
    """The decision with `name` as its strategy; the reason keeps what the rules chose."""
    if name == decision.strategy:
        return decision
    chose = decision.strategy
    reason = (f"Strategy {name} was forced (--strategy); the rules chose {chose} (rule {decision.rule}, "
              f"case {decision.case}): {decision.reason}")
    return dataclasses.replace(decision, strategy=name, rule="forced", reason=reason, runner_up=chose)


def input_size_for(model: ModelFacts | None, gpu: bool) -> tuple[list[int], str]:
    """The training input size, and why. A network with a fixed input takes its own size. One that
    takes any size (EfficientNet-Lite, ...) is trained at the size it was pretrained at (224) with a
    GPU, and at FLEXIBLE_CPU_SIZE without one: on 2 CPUs a training step at 224 px costs 3x one at
    160 (12 vs 37 images/s for EfficientNet-Lite0), for 1-2 points of frozen-probe accuracy on
    CIFAR-10 (docs/apply.md). Small images are upsampled to that size rather than trained small:
    ImageNet features are tuned to objects of ~100-200 px (CIFAR-10 probe: 0.60 at 96 px, 0.65 at
    160, 0.67 at 224)."""
    if model is not None and model.input_size:
        return list(model.input_size), "the network's fixed input size"
    if gpu:
        return [FLEXIBLE_GPU_SIZE] * 2, "the network takes any size; its pretraining size, on a GPU"
    return [FLEXIBLE_CPU_SIZE] * 2, (f"the network takes any size; {FLEXIBLE_CPU_SIZE} px without a GPU "
                                     f"(3x cheaper per step than {FLEXIBLE_GPU_SIZE})")


def _phases(strategy: dict, scale: float) -> list[Phase]:
    out = []
    for p in strategy["phases"]:
        out.append(Phase(
            name=p["name"], trainable=p["trainable"], epochs=max(1, round(p["epochs"] * scale)),
            optimizer=p.get("optimizer", "adam"), learning_rate=float(p["learning_rate"]),
            backbone_learning_rate=(float(p["backbone_learning_rate"]) if p.get("backbone_learning_rate")
                                    else None),
            early_stopping_patience=p.get("early_stopping_patience"), weights=p.get("weights", "pretrained"),
            min_steps=p.get("min_steps"), schedule=p.get("schedule", "constant"), solver=p.get("solver", "auto")))
    return out


def build_plan(decision: Decision, table: RuleTable, facts: dict, dataset: DatasetFacts,
               model_source: str, weights: str, model: ModelFacts | None, embedding_cut: str | None,
               out_dir: str | None = None, overrides: dict | None = None,
               forward_rate: float | None = None, preprocessing: tuple[str, dict] = ("model", {})) -> Plan:
    """Turn a decision into a plan: surgery, phases and data settings from the winning strategy, with
    the modifiers applied. `embedding_cut` is the measured best cut layer (for `cut: best`);
    `preprocessing` the pixel convention and its evidence (`advisor.convention`)."""
    from graft import __version__

    strategy = table.strategies[decision.strategy]
    mods = decision.modifiers
    scale = float(mods.get("epochs_scale", 1.0))
    head = strategy.get("head", {})
    cut = embedding_cut if strategy["cut"] == "best" else None
    augmentation = copy.deepcopy(mods.get("augmentation", {}))
    size, _ = input_size_for(model, bool(facts.get("gpu")))
    phases = _phases(strategy, scale)
    holdout = _guard_holdout(phases, dataset, mods)
    data = DataPlan(
        path=str(Path(dataset.root)),
        input_size=size,
        channels=model.channels if model else 3,
        channel_mode=mods.get("channels", "keep"),
        preprocessing=preprocessing[0],
        preprocessing_evidence=copy.deepcopy(preprocessing[1]),
        augmentation=augmentation,
        # Every labelled image trains the final model unless the data set names its own splits or a
        # modifier asks for a hold-out (docs/apply.md, "How accuracy is estimated").
        validation_split=float(mods.get("validation_split", holdout)),
        test_split=0.0,
        batch_size=int(mods.get("batch_size", 32)),
        skip_corrupt=bool(mods.get("skip_corrupt", True)),
    )
    train_images = int(dataset.images * (1 - data.validation_split - data.test_split))
    cost = estimate_cost(strategy, train_images, bool(augmentation), scale, data.batch_size)
    runner = decision.runner_up
    runner_cost = (estimate_cost(table.strategies[runner], train_images, bool(augmentation), scale, data.batch_size)
                   if runner else {})
    from advisor.expect import expect

    probe = facts.get("best_cut_score")
    expected = expect(decision.strategy, cost["base_forward_passes"], probe, forward_rate).to_dict()
    runner_expected = (expect(runner, runner_cost["base_forward_passes"], probe, forward_rate).to_dict()
                       if runner else {})
    reasons = [decision.reason] + [why for _, why in decision.modifier_rules]
    reasons += _budget_reasons(phases, train_images, data.batch_size, bool(holdout))
    hint = _trial_hint(decision.strategy, runner, expected, runner_expected)
    if hint:
        reasons.append(hint)
    if holdout:
        held = round(dataset.images * holdout)
        reasons.append(
            f"A stratified {holdout:.0%} of the images ({held}) is held out to judge fine-tuning against the head "
            "alone on images neither has seen (the guard keeps the head alone only when fine-tuning loses to it "
            "there beyond noise, by a sign test on the images where they disagree, and the accuracy "
            "estimate comes from them); once it has chosen, the head is fitted again on every image "
            "(training.refit_head), so the held-out images are not lost to the final model.")
    fb = strategy.get("fallback")
    sim = {"value": facts.get("similarity"), "method": facts.get("similarity_method"),
           "uncertainty": facts.get("similarity_uncertainty")}
    if facts.get("similarity") is None:
        sim["note"] = f"similarity unknown; handled by rule '{decision.rule}'"
    name = Path(dataset.root).name or "dataset"
    return Plan(
        provenance=Provenance(
            tool=f"graft {__version__}", rules=str(table.source), rules_version=table.version,
            rules_sha256=table.sha256, overrides=dict(overrides or {}), dataset=str(dataset.root),
            dataset_fingerprint=dataset.fingerprint,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()),
        facts={k: v for k, v in facts.items()},
        decision=DecisionRecord(
            strategy=decision.strategy, case=decision.case, rule=decision.rule, reasons=reasons,
            runner_up=runner, expected_cost=cost, runner_up_cost=runner_cost, expected=expected,
            runner_up_expected=runner_expected,
            also_matched=list(decision.also_matched), similarity=sim),
        model=ModelSpec(source=model_source, weights=weights,
                        input_size=list(model.input_size) if model and model.input_size else None),
        surgery=SurgeryPlan(
            cut=cut, bn="freeze" if (model is None or model.has_batchnorm) else "follow",
            head=HeadPlan(classes=dataset.classes, pooling=head.get("pooling", "avg"),
                          hidden=list(head.get("hidden", [])), dropout=float(head.get("dropout", 0.2)))),
        training=TrainingPlan(
            phases=phases, class_weights=mods.get("class_weights", "none"),
            fallback=Fallback(fb["scratch_trial_epochs"], float(fb["margin"])) if fb else None,
            refit_head=bool(holdout)),
        data=data,
        outputs=OutputPlan(dir=out_dir or f"runs/{name}-{decision.strategy}"),
    )


def _budget_reasons(phases, train_images: int, batch_size: int, held_out: bool) -> list[str]:
    """One sentence per phase that trains the backbone: its budget on this data, and why."""
    import math

    from surgery.phase import BACKBONE_CLIPNORM, phase_epochs

    out = []
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    for ph in phases:
        if ph.trainable == "head":
            continue
        epochs = phase_epochs(ph, train_images, batch_size)
        floor = (f", raised from {ph.epochs} to reach the floor of {ph.min_steps} optimizer steps (a budget in "
                 "bare epochs gives a handful of steps on small data)" if epochs > ph.epochs else "")
        stop = (f"; it keeps its best epoch on the held-out images and stops after {ph.early_stopping_patience} "
                "without improvement" if held_out and ph.early_stopping_patience else "")
        sched = ("a linear warm-up over the first tenth of the steps, then a cosine decay to 0"
                 if ph.schedule == "cosine" else "a constant rate")
        out.append(f"Budget of phase {ph.name} ({ph.trainable}): {epochs} epochs x {steps_per_epoch} steps of "
                   f"{batch_size} images = {epochs * steps_per_epoch} steps on {train_images} training images"
                   f"{floor}; {ph.optimizer} at {ph.learning_rate:g} with {sched}, the global gradient norm clipped "
                   f"at {BACKBONE_CLIPNORM:g} (the first steps after the head hand-off move pretrained weights by a "
                   f"bounded amount){stop}.")
    return out


def _trial_hint(strategy: str, runner: str | None, expected: dict, runner_expected: dict) -> str | None:
    """Whether a race (`advise --trial`) would pay on this data, and what it would cost: it pays when
    the expected accuracy ranges of the winner and the runner-up overlap (the measurement cannot tell
    them apart); a round trains both on 75 % of the images."""
    a, b = expected.get("accuracy"), (runner_expected or {}).get("accuracy")
    if not runner or not a or not b:
        return None
    sa, sb = expected.get("seconds"), runner_expected.get("seconds")
    if a[0] > b[1] or b[0] > a[1]:
        better = strategy if a[0] > b[1] else runner
        return (f"A trial would not pay: the expected accuracy of {better} is above the other's whole range "
                f"({strategy} {a[0]:.2f}-{a[1]:.2f}, {runner} {b[0]:.2f}-{b[1]:.2f}).")
    from advisor.expect import duration

    cost = "" if sa is None or sb is None else f" (one round: about {duration(0.75 * (sa + sb))} here)"
    return (f"A trial would pay if the difference matters: the expected accuracy ranges of {strategy} "
            f"({a[0]:.2f}-{a[1]:.2f}) and {runner} ({b[0]:.2f}-{b[1]:.2f}) overlap, so the measurement cannot tell "
            f"them apart; `--trial SECONDS` races both on held-out images of yours{cost}.")


#: Share of the images a guarded plan holds out (at most HOLDOUT_MAX images): fine-tuning is judged
#: against the head alone there, then the head is refit on every image (docs/apply.md, "Recipes").
HOLDOUT = 0.2
HOLDOUT_MAX = 2000


def _guard_holdout(phases, dataset, mods: dict) -> float:
    """The validation share a plan holds out for the fine-tuning guard: HOLDOUT of the images (at
    most HOLDOUT_MAX) when the phases fine-tune after a head phase, the data set names no splits of
    its own, no modifier sets one, and every class keeps at least one image out and four in."""
    from surgery.guard import guarded

    if not guarded(phases) or getattr(dataset, "splits", None) or "validation_split" in mods:
        return 0.0
    if (getattr(dataset, "images_per_class_min", 0) or 0) < 5 or not dataset.images:
        return 0.0
    return round(min(HOLDOUT, HOLDOUT_MAX / dataset.images), 4)


def _embedding_cut(facts: dict, embedding) -> str | None:
    """The measured best cut, or None when it is the top (the whole base is kept)."""
    cut = facts.get("best_cut_layer")
    transfer = getattr(embedding, "transfer", None)
    if cut and transfer is not None and cut == transfer.scores[-1].name:
        return None
    return cut


def _replan(advice: Advice, decision: Decision) -> Plan:
    """The plan of `decision` from the advice's own facts and measurements (no new scan or measurement)."""
    plan = build_plan(decision, advice.rules, advice.facts, advice.dataset, advice.plan.model.source,
                      advice.plan.model.weights, advice.model, _embedding_cut(advice.facts, advice.embedding),
                      None, advice.rules.overrides,
                      forward_rate=getattr(advice.embedding, "forward_rate", None),
                      preprocessing=(advice.plan.data.preprocessing, advice.plan.data.preprocessing_evidence))
    return _with_augmentation(plan, advice.augmentation)


def _with_augmentation(plan: Plan, check) -> Plan:
    """The plan with only the measured label-preserving transforms, and the evidence in its reasons."""
    if check is None or not plan.data.augmentation:
        return plan
    plan.data.augmentation = dict(check.kept)
    plan.decision.reasons = plan.decision.reasons + check.reasons()
    return plan


def _check_augmentation(net, dataset, plan: Plan, notes: list[str], emb=None):
    """advisor.augmentation's measurement of the rules' proposed transforms, or None (nothing
    proposed, or the measurement failed: then the proposal stands and a note says so)."""
    if not plan.data.augmentation:
        return None
    from advisor.augmentation import check_augmentation

    choice = getattr(emb, "convention", None)  # the measured pixel convention, as the measurement used
    try:
        return check_augmentation(net, dataset, plan.data.augmentation, size=plan.data.input_size[0],
                                  seed=plan.data.seed,
                                  preprocessing=choice.preprocessing(net) if choice is not None else None)
    except (GraftError, ValueError, RuntimeError, MemoryError) as exc:
        notes.append(f"augmentation not measured ({type(exc).__name__}: {exc}); the rules' proposal is used")
        return None


def plan_for(advice: Advice, strategy: str) -> Plan:
    """The plan `advise` would write if `strategy` had won, from the same facts and measurements
    (no new scan or measurement). The decision's reasons say the rules chose otherwise."""
    return _replan(advice, force_strategy(advice.decision, advice.rules, strategy))


def with_trial(advice: Advice, trial) -> Advice:
    """The advice after a trial (`advisor.trial.race`): its winner's plan, the trial's reason first
    among the plan's reasons, and the trial kept in `advice.trial`."""
    out_dir = advice.plan.outputs.dir
    if trial.switched:
        decision = dataclasses.replace(
            advice.decision, strategy=trial.winner, rule="trial", runner_up=advice.decision.strategy,
            reason=f"{trial.reason} The rules chose {advice.decision.strategy} (rule {advice.decision.rule}, "
                   f"case {advice.decision.case}): {advice.decision.reason}")
        plan = _replan(advice, decision)
        if not out_dir.endswith(f"-{advice.decision.strategy}"):
            plan.outputs.dir = out_dir  # a directory the user named stays
    else:
        decision = advice.decision
        plan = copy.deepcopy(advice.plan)
        plan.decision.reasons = plan.decision.reasons + [trial.reason]
    new = dataclasses.replace(advice, decision=decision, plan=plan)
    new.trial = trial
    return new


def _preprocessing(asked: str, emb) -> tuple[str, dict]:
    """The plan's `data.preprocessing` and its evidence: the measured choice, else what was asked
    (`auto` without a measurement falls back to `model`, the model's own layers and name)."""
    choice = getattr(emb, "convention", None)
    if choice is not None:
        return choice.convention, choice.to_dict()
    name = "model" if asked == "auto" else asked
    return name, {"convention": name, "asked": asked, "method": "none",
                  "notes": ["not measured (no model, or --no-measure)"]}


def advise(dataset: str | os.PathLike, model: str | os.PathLike | None = None,
           rules: str | os.PathLike | RuleTable | None = None, overrides: dict | None = None, *,
           similarity: float | None = None, weights: str | None = None, measure: bool = True,
           reference: str | os.PathLike | None = None, per_class: int | None = None,
           sample: int = 2000, out_dir: str | None = None, safe_mode: bool = True,
           progress: Callable[[str, int], None] | None = None, strategy: str | None = None,
           preprocessing: str = "auto") -> Advice:
    """Advise how to transfer a network to a data set.

    Args:
        dataset: a class-per-folder image folder (optionally with train/val/test splits).
        model: a `.keras`/`.h5` file or a `keras.applications` name; None: the plan names
            MobileNetV2 (ImageNet) and similarity stays unknown unless `similarity` is given.
        rules: a rules file, a loaded `RuleTable`, or None for the default `rules.yaml`.
        overrides: threshold name -> value (like `--set`).
        similarity: a similarity in [0, 1] stated by the user (method `user`); it replaces the
            measured one.
        weights: for a `keras.applications` name: `imagenet`, `none` or a weights file (default
            `imagenet`); ignored for model files.
        measure: measure similarity and per-cut transferability from embeddings when a model is given.
        reference: a folder of source-domain images or a stored profile, for the similarity.
        per_class: images per class the embedding sample takes (default `advisor.embed`'s).
        sample: image headers the data set scan reads.
        out_dir: the run directory the plan names.
        safe_mode: load model files with Keras safe mode.
        progress: called as `progress(stage, count)` during long steps (`scan`, `measure`).
        strategy: force this strategy of the rules file instead of the one the rules choose (the
            rules still run; the plan's reasons say what they chose).
        preprocessing: how pixels are mapped for the network: `auto` (measured on the data set's
            images, `advisor.convention`), `model` (the model's own layers and name) or a convention
            of `graft.conventions` (`raw`, `unit`, `tf`, `torch`, `caffe`). The plan records it.

    Returns:
        `Advice`.

    Raises:
        DatasetError, ModelLoadError, RulesError, InputError: bad input, with a clear message.
    """
    if similarity is not None and not (isinstance(similarity, (int, float)) and 0 <= similarity <= 1):
        raise InputError(f"similarity must be a number in [0, 1], not {similarity!r}")
    from advisor.convention import check_choice

    check_choice(preprocessing)
    table = rules if isinstance(rules, RuleTable) else load_rules(rules, overrides)
    if strategy is not None and strategy not in table.strategies:
        close = difflib.get_close_matches(str(strategy), list(table.strategies), n=1)
        raise InputError(f"--strategy {strategy!r} is not a strategy of {table.source}"
                         f"{'; did you mean ' + repr(close[0]) + '?' if close else ''} "
                         f"(strategies: {', '.join(table.strategies)})")
    from surgery.load import check_model_path, is_model_file

    if model is not None and is_model_file(model):
        check_model_path(model)  # before the scan: a bad model path fails at once
    facts_ds = scan(dataset, sample=sample, progress=(lambda n: progress("scan", n)) if progress else None)
    facts = dict(facts_ds.facts())
    notes = list(facts_ds.warnings)
    from graft.hardware import gpu_count

    facts["gpu"] = gpu_count() > 0
    mfacts, emb, cut_layer = None, None, None
    source = str(model) if model is not None else DEFAULT_MODEL
    is_file = model is not None and is_model_file(model)
    if is_file and Path(source).is_file():
        source = str(Path(source).resolve())  # like data.path: the plan works from any directory
    weights = weights or ("file" if is_file else "imagenet")
    if model is not None:
        from surgery import layer_graph, load_model

        net = load_model(model, weights="imagenet" if weights == "file" else weights, safe_mode=safe_mode)
        graph = layer_graph(net)  # built once: the model facts and the measurement read it
        mfacts = model_facts(graph, source)
        facts.update(model_layers=mfacts.layers, model_has_batchnorm=mfacts.has_batchnorm,
                     model_channels=mfacts.channels,
                     model_input_size=min(mfacts.input_size) if mfacts.input_size else None)
        if measure:
            from advisor.measure import measure as measure_embeddings

            if progress:
                progress("measure", 0)
            kwargs = {"per_class": per_class} if per_class else {}
            try:
                emb = measure_embeddings(dataset, graph, reference=reference, safe_mode=safe_mode,
                                         preprocessing=preprocessing, **kwargs)
            except InputError:
                raise
            except (GraftError, ValueError, RuntimeError, MemoryError) as exc:
                notes.append(f"embedding measurement failed ({type(exc).__name__}: {exc}); similarity and "
                             "best cut are unknown")
            if emb is not None:
                ef = emb.facts()
                notes.extend(emb.notes)
                facts.update(similarity=ef["similarity"], similarity_method=ef["similarity_method"],
                             similarity_uncertainty=ef["similarity_uncertainty"],
                             best_cut_depth=ef["best_cut_depth"], top_cut_gain=ef["cut_gain"],
                             best_cut_layer=ef["best_cut_layer"], similarity_sample=ef["similarity_sample"],
                             **{k: ef[k] for k in ("shift_early", "shift_late", "shift_ratio", "best_cut_score",
                                                   "probe_lift", "probe_sample", "probe_lower")})
                cut_layer = _embedding_cut(ef, emb)  # None when the top is best: keep the whole base
    if similarity is not None:
        facts.update(similarity=float(similarity), similarity_method="user", similarity_uncertainty=None)
    facts = derived(facts)
    from advisor.rules import evaluate

    decision = evaluate(table, facts)
    if strategy is not None:
        decision = force_strategy(decision, table, strategy)
    plan = build_plan(decision, table, facts, facts_ds, source, weights, mfacts, cut_layer, out_dir,
                      table.overrides, forward_rate=emb.forward_rate if emb is not None else None,
                      preprocessing=_preprocessing(preprocessing, emb))
    check = _check_augmentation(net, dataset, plan, notes, emb) if model is not None and measure else None
    plan = _with_augmentation(plan, check)
    return Advice(facts_ds, mfacts, emb, facts, decision, plan, table, notes, augmentation=check)
