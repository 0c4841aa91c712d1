"""What a strategy is expected to reach and to cost, on this data set and this machine.

`advise` measures, on a sample of the data, the leave-one-out accuracy of a linear probe at the best
cut (`best_cut_score`) and how fast the network's forward pass runs here (`forward_rate`). The
expectation of a strategy is read off those two measurements with numbers fitted on the real-data
bench (six domains, 10 and 60 images per class, several seeds; `python bench/advice.py --calibrate`
prints them, docs/bench.md shows the fit):

- **accuracy**: `best_cut_score + [low, high]`, where `[low, high]` is the split-conformal 80 % range
  of (test accuracy the strategy reached - the probe score measured on the training images) over the
  recipes bench's runs on both networks (`python bench/advice.py --suite recipes --coverage --json`,
  `pooled_ranges`): with n runs sorted, a new run falls between the floor((n+1)/10)-th and the
  ceil(9(n+1)/10)-th with probability 80 %, where the plain 10th-90th percentiles of a few runs
  cover less. It folds in both the sampling noise of the measured probe and how much the strategy
  adds to (or loses against) a probe; being relative to the probe measured with the user's network
  on the user's data, it moves with both. Clipped to [0, 1]. `--coverage` checks the stated rate
  per network, leave-one-network-out and leave-one-domain-out (docs/bench.md).
- **wall time**: `fixed + (overhead + per_pass x passes) / forward_rate`, where `passes` is the strategy's
  compute in forward-pass equivalents (`advisor.advise.estimate_cost`), `forward_rate` the images/s
  of the measurement's forward pass here, and `overhead` (model building, evaluation, saving, in
  image-passes of that forward) and `per_pass` (the time of one training image-pass relative to one
  measured forward image: the measurement's network has many outputs and is slower than plain
  inference) fitted on the bench; `fixed` (5 s) is what does not scale (writing the run directory).
  The last two terms scale with the measured speed, so a faster machine or
  a smaller network gets a proportionally shorter estimate.

A strategy the bench did not run (a custom rules file's) gets no accuracy range; a data set measured
without a model gets no time.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Test accuracy minus the measured best-cut probe score: the split-conformal 80 % range per strategy
#: and the runs behind it (bench/advice.py --suite recipes --coverage --json: `pooled_ranges`; seed 0,
#: 10 per class, EfficientNet-Lite0 and MobileNet v1 at 160 px). `finetune_all` is `lp_ft`'s recipe
#: (the bench runs it as `lp_ft`); `finetune_or_scratch` has only the first bench's runs (one network).
ACCURACY_VS_PROBE: dict[str, tuple[float, float, int]] = {
    "linear_probe": (-0.158, 0.086, 29),
    "truncate_probe": (-0.117, 0.116, 28),
    "lp_ft_top": (-0.158, 0.114, 28),
    "lp_ft": (-0.158, 0.131, 28),
    "finetune_all": (-0.158, 0.131, 28),
    "lp_ft_cut": (-0.142, 0.131, 28),
    "finetune_or_scratch": (-0.045, 0.072, 6),
}
#: Where each range comes from, as the decision panel says it.
ACCURACY_BASIS: dict[str, str] = {
    "finetune_or_scratch": "EfficientNet-Lite0 runs of the first bench (10th-90th percentile)",
}
DEFAULT_BASIS = "bench runs on two networks (a split-conformal 80 % range)"
#: seconds = (OVERHEAD + PER_PASS x passes) / forward_rate (bench/advice.py --calibrate: least
#: squares over the bench's 133 graft runs with --forward-rate 25; median error of a single run's
#: time 43 %, on a machine whose load varied during the bench).
OVERHEAD = 800.0
PER_PASS = 0.26
#: Seconds of every run that do not scale with the network's speed (writing the model, plots and
#: report, building the graph): apply on the bundled example CNN, 300 images, took 8-12 s on 2 CPUs.
FIXED_S = 5.0


@dataclass(frozen=True)
class Expectation:
    """One strategy's expected test accuracy range and wall time.

    Attributes:
        strategy: the strategy's name.
        accuracy: `(low, high)` expected test accuracy, or None when there is no basis.
        seconds: expected wall time of `apply` on this machine, or None without a measured speed.
        basis: one sentence saying where the numbers come from.
    """

    strategy: str
    accuracy: tuple[float, float] | None
    seconds: float | None
    basis: str

    def to_dict(self) -> dict:
        return {"strategy": self.strategy,
                "accuracy": None if self.accuracy is None else [round(a, 3) for a in self.accuracy],
                "seconds": None if self.seconds is None else round(self.seconds, 1), "basis": self.basis}

    def text(self) -> str:
        """`accuracy 0.71-0.86, ~40 s` (what the decision panel prints)."""
        parts = []
        if self.accuracy is not None:
            parts.append(f"accuracy {self.accuracy[0]:.2f}-{self.accuracy[1]:.2f}")
        if self.seconds is not None:
            parts.append(f"~{duration(self.seconds)}")
        return ", ".join(parts) or "no estimate"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def expect(strategy: str, passes: int | None, probe_score: float | None,
           forward_rate: float | None) -> Expectation:
    """The expectation of `strategy` given its compute (`passes`), the measured probe score and the
    measured forward speed (images/s); any of them may be unknown (None)."""
    acc, basis = None, []
    calib = ACCURACY_VS_PROBE.get(strategy)
    if calib is not None and probe_score is not None:
        lo, hi, runs = calib
        acc = (max(0.0, probe_score + lo), min(1.0, probe_score + hi))
        basis.append(f"probe score {probe_score:.2f} measured on the sample, {lo:+.2f}..{hi:+.2f} as this "
                     f"strategy did on {runs} {ACCURACY_BASIS.get(strategy, DEFAULT_BASIS)}")
    seconds = None
    if passes is not None and forward_rate:
        seconds = FIXED_S + (OVERHEAD + PER_PASS * passes) / forward_rate
        basis.append(f"{passes:,} forward-pass equivalents at {forward_rate:.0f} images/s measured here")
    return Expectation(strategy, acc, seconds, "; ".join(basis) or "nothing measured to estimate from")
