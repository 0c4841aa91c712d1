"""`advise --trial SECONDS`: race the leading strategies on the user's own images, within a budget.

The rules choose from measured facts and what the bench taught; a trial asks the data directly. Each
candidate (by default the rules' choice and its runner-up) is trained exactly as `apply` would train
it, on part of the training images, and scored on the held-out rest. Rounds repeat with a different
stratified hold-out each (seed 0, 1, ...) while the budget lasts, and the held-out results are
pooled, so every candidate is scored on the same images. When the candidates' expected time does not
fit one round into the budget, their training epochs (and `min_steps`) are scaled down, the same
factor for all: the race stays fair, though it is then a race of shorter recipes.

The measured result decides only when it is clear: the best candidate replaces the rules' choice if
its pooled held-out accuracy beats the rules' choice by more than one standard error of the
difference (unpaired binomial, on the pooled held-out images); otherwise the rules' choice stands, as
the prior that the bench backs. Images in a data set's own test (or validation) split never take part:
the trial uses its training images only.

    advice = advise("data/", model="model.keras")
    trial = race(advice, budget_s=120)
    trial.winner, trial.switched, trial.to_dict()
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import InputError

#: Share of the training images each round holds out.
HOLDOUT = 0.25
#: Rounds at most (each a new hold-out); the budget usually ends the race first.
MAX_ROUNDS = 3


@dataclass
class Entry:
    """One candidate's results, pooled over the rounds it ran."""

    strategy: str
    correct: int = 0
    total: int = 0
    seconds: float = 0.0
    rounds: int = 0
    epochs_scale: float = 1.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def to_dict(self) -> dict:
        from surgery.probe import wilson_interval

        acc = self.accuracy
        return {"strategy": self.strategy, "accuracy": None if acc is None else round(acc, 4),
                "interval": None if acc is None else [round(v, 4) for v in wilson_interval(self.correct, self.total)],
                "held_out": self.total, "rounds": self.rounds, "seconds": round(self.seconds, 1),
                "epochs_scale": round(self.epochs_scale, 3)}


@dataclass
class Trial:
    """The race and its verdict.

    Attributes:
        entries: every candidate, rules' choice first.
        rules_choice: what the rules chose.
        winner: what the trial recommends (the rules' choice unless another won clearly).
        switched: whether the winner differs from the rules' choice.
        reason: one sentence with the numbers.
        budget_s: the budget asked for; `seconds` the time spent.
    """

    entries: list[Entry]
    rules_choice: str
    winner: str
    switched: bool
    reason: str
    budget_s: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rules_choice": self.rules_choice, "winner": self.winner, "switched": self.switched,
                "reason": self.reason, "budget_s": self.budget_s, "seconds": round(self.seconds, 1),
                "entries": [e.to_dict() for e in self.entries], "notes": list(self.notes)}


def _training_root(advice) -> Path:
    """The folder of the training images only: `root/train` when the data set has split folders."""
    root = Path(advice.dataset.root)
    if advice.dataset.splits:
        for name in ("train", "training"):
            if (root / name).is_dir():
                return root / name
        raise InputError(f"{root} has split folders but no train/ folder to run a trial on")
    return root


def _scale_phases(plan, factor: float) -> None:
    for p in plan.training.phases:
        if p.trainable != "head":  # head phases are a convex fit: cheap, and not shortened
            p.epochs = max(1, round(p.epochs * factor))
            if p.min_steps:
                p.min_steps = max(1, round(p.min_steps * factor))


def verdict(entries: list[Entry], rules_choice: str) -> tuple[str, bool, str]:
    """(winner, switched, reason): the best pooled held-out accuracy replaces the rules' choice only
    when it is ahead by more than one standard error of the difference; ties keep the rules' choice."""
    base = next(e for e in entries if e.strategy == rules_choice)
    best = max(entries, key=lambda e: (e.accuracy or 0.0, e is base))
    if best is base or not best.total or not base.total:
        acc = "-" if base.accuracy is None else f"{base.accuracy:.3f}"
        return rules_choice, False, (f"Trial: the rules' choice {rules_choice} scored best on held-out images "
                                     f"({acc}).")
    p1, p2 = best.accuracy, base.accuracy
    se = math.sqrt(p1 * (1 - p1) / best.total + p2 * (1 - p2) / base.total)
    if p1 - p2 > se:
        return best.strategy, True, (
            f"Trial: {best.strategy} reached {p1:.3f} on {best.total} held-out images against {p2:.3f} for "
            f"the rules' choice {rules_choice} (difference {p1 - p2:+.3f} > one standard error {se:.3f}), "
            "so it replaces it.")
    return rules_choice, False, (
        f"Trial: {best.strategy} reached {p1:.3f} against {p2:.3f} for the rules' choice {rules_choice} on "
        f"{best.total} held-out images; the difference ({p1 - p2:+.3f}) is within one standard error "
        f"({se:.3f}), so the rules' choice stands.")


def race(advice, budget_s: float, candidates: list[str] | None = None, holdout: float = HOLDOUT,
         max_rounds: int = MAX_ROUNDS, progress=None) -> Trial:
    """Race candidate strategies on held-out training images within `budget_s` seconds.

    Args:
        advice: what `advise` returned (with a model: the trial trains it).
        budget_s: seconds the whole race may take (estimated from the measured speed; the last round
            is not started if it would not fit).
        candidates: strategies of the rules file to race; default the rules' choice and runner-up.
        holdout: share of the training images held out per round.
        max_rounds: rounds at most.
        progress: called as `progress(message)` before each training run.

    Returns:
        `Trial`.

    Raises:
        InputError: no model, an unknown strategy, a budget too small for one round, or too few images.
    """
    from advisor.advise import plan_for
    from advisor.expect import expect
    from surgery import run

    if advice.model is None:
        raise InputError("a trial trains the network, so advise needs --model to run one")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise InputError(f"--trial takes a positive number of seconds, not {budget_s!r}")
    rules_choice = advice.decision.strategy
    names = list(dict.fromkeys(candidates or [rules_choice, advice.decision.runner_up or rules_choice]))
    unknown = [n for n in names if n not in advice.rules.strategies]
    if unknown:
        raise InputError(f"trial candidate(s) {', '.join(unknown)} are not strategies of {advice.rules.source} "
                         f"(strategies: {', '.join(advice.rules.strategies)})")
    if rules_choice not in names:
        names.insert(0, rules_choice)
    smallest = advice.facts.get("images_per_class_min") or 0
    if smallest * holdout < 1:
        raise InputError(f"the smallest class has {smallest} images: too few to hold {holdout:.0%} out for a "
                         f"trial (it needs at least {math.ceil(1 / holdout)} per class)")
    root = _training_root(advice)
    rate = getattr(advice.embedding, "forward_rate", None)
    train_images = int(advice.dataset.images * (1 - holdout))
    plans = {n: plan_for(advice, n) for n in names}
    est: dict[str, float] = {}
    from advisor.advise import estimate_cost

    for n, plan in plans.items():
        strat = advice.rules.strategies[n]
        cost = estimate_cost(strat, train_images, bool(plan.data.augmentation), 1.0, plan.data.batch_size)
        est[n] = expect(n, cost["base_forward_passes"], None, rate).seconds or 0.0
    round_s = sum(est.values())
    factor = 1.0 if round_s <= budget_s or round_s == 0 else budget_s / round_s
    notes = []
    if factor < 1:
        notes.append(f"One round of full recipes would take ~{round_s:.0f} s (> {budget_s:g} s): fine-tuning "
                     f"epochs are scaled by {factor:.2f} for every candidate.")
        for plan in plans.values():
            _scale_phases(plan, factor)
    entries = {n: Entry(n, epochs_scale=factor) for n in names}
    start = last_round = time.perf_counter()
    for r in range(max_rounds):
        now = time.perf_counter()
        if r > 0 and (now - start) + (now - last_round) > budget_s:
            break  # another round, as long as the last one, would not fit
        last_round = now
        for n in names:
            plan = plans[n]
            plan.data.path = str(root)
            plan.data.test_split, plan.data.validation_split, plan.data.seed = holdout, 0.0, r
            if progress:
                progress(f"trial round {r + 1}: {n}")
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="graft-trial-") as tmp:
                result = run(plan, out_dir=Path(tmp) / "run")
            m = result.metrics
            e = entries[n]
            e.correct += int(round(m["accuracy"] * m["n_samples"]))
            e.total += int(m["n_samples"])
            e.seconds += time.perf_counter() - t0
            e.rounds += 1
    ordered = [entries[n] for n in names]
    winner, switched, reason = verdict(ordered, rules_choice)
    return Trial(ordered, rules_choice, winner, switched, reason, float(budget_s),
                 time.perf_counter() - start, notes)
