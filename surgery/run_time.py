"""A run's time against what `advise` expected: the plan's `decision.expected["seconds"]`
(`advisor.expect`: the whole `apply`, from the data listing to the written report) said before
training starts, and beside the measured time at the end (`metrics.json`'s `time`).

    expected_seconds(plan)             # None when the plan has no estimate (hand-written, no model speed)
    time_record(plan, seconds, resumed=False)
"""

from __future__ import annotations

from surgery.run_log import clock


def expected_seconds(plan) -> float | None:
    """The plan's expected wall time of `apply` in seconds, or None."""
    decision = getattr(plan, "decision", None)
    value = (getattr(decision, "expected", None) or {}).get("seconds")
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def expected_line(plan) -> str | None:
    """`expected time: ~4 min 10 s (advise's estimate for ...)`, or None without an estimate."""
    e = expected_seconds(plan)
    if e is None:
        return None
    strategy = getattr(plan.decision, "strategy", "") or "this plan"
    return f"expected time: ~{clock(e)} (advise's estimate for {strategy} on this machine; see plan.yaml decision.expected)"


def time_record(plan, seconds: float, resumed: bool = False) -> dict:
    """`metrics.json`'s `time`: the measured seconds of this `apply` call, the plan's expectation and
    their ratio (measured / expected; not computed for a resumed run, whose call did only part of
    the work)."""
    e = expected_seconds(plan)
    ratio = None if e is None or resumed else round(seconds / e, 3)
    return {"seconds": round(seconds, 1), "expected_seconds": None if e is None else round(e, 1),
            "ratio": ratio, "resumed": bool(resumed)}


def describe_time(record: dict | None) -> str:
    """`time: 4 min 31 s measured, ~4 min 10 s expected (1.08x)` (what `apply` prints)."""
    if not record:
        return ""
    text = f"time: {clock(record['seconds'])} measured"
    if record.get("expected_seconds") is not None:
        text += f", ~{clock(record['expected_seconds'])} expected"
        if record.get("ratio") is not None:
            text += f" ({record['ratio']:.2f}x)"
        elif record.get("resumed"):
            text += " (for the whole run; this call resumed it)"
    return text


__all__ = ["describe_time", "expected_line", "expected_seconds", "time_record"]
