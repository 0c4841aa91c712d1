"""Rich renderings of advice: the data set, the facts, the decision with its trace, the plan, and the
rule table. Pure presentation: every function takes the dataclasses and returns a renderable."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from advisor.facts import FACTS
from advisor.rules import Decision, RuleTable


def _v(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def dataset_table(ds, limit: int = 20) -> Table:
    """Classes with their image counts (the largest `limit`), splits and warnings in the caption."""
    title = f"Data set {ds.root}"
    # as wide as the title (when the console allows), so the path is not wrapped into the columns'
    # width, a few letters a line
    t = Table(title=title, title_justify="left", min_width=len(title))
    t.add_column("class")
    t.add_column("images", justify="right")
    items = sorted(ds.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
    for name, n in items[:limit]:
        t.add_row(name, str(n))
    if len(items) > limit:
        t.add_row(f"... {len(items) - limit} more", "")
    caption = [f"{ds.images} images, {ds.classes} classes"]
    if ds.splits:
        caption.append("splits: " + ", ".join(f"{k} {v}" for k, v in ds.splits.items()))
    if ds.non_images:
        caption.append(f"{ds.non_images} non-image files ignored")
    if ds.corrupt_files:
        caption.append(f"{ds.corrupt_files} corrupt files")
    t.caption = "; ".join(caption)
    return t


def facts_table(facts: dict) -> Table:
    """Every registered fact with its value, unit and source."""
    t = Table(title="Facts", title_justify="left")
    for col in ("fact", "value", "unit", "from"):
        t.add_column(col, justify="right" if col == "value" else "left")
    for name, spec in FACTS.items():
        value = facts.get(name)
        t.add_row(name, Text(_v(value), style="dim" if value is None else ""), spec.unit, spec.source)
    return t


def decision_panel(decision: Decision, plan=None) -> Panel:
    """The winner, its reason, the runner-up and the modifiers."""
    lines = Text()
    case = f"case {decision.case}" if decision.case else "none of the four cases"
    lines.append(f"{decision.strategy}", style="bold green")
    lines.append(f"  ({case}; rule '{decision.rule}', hit policy {decision.hit_policy})\n")
    lines.append(decision.reason + "\n")
    if plan is not None and plan.decision.expected_cost:
        d = plan.decision
        rows = [(d.strategy, d.expected_cost, d.expected)]
        if d.runner_up:
            rows.append((d.runner_up, d.runner_up_cost, d.runner_up_expected))
        for i, (name, cost, exp) in enumerate(rows):
            lines.append("Expected: " if i == 0 else "Runner-up: ", style="bold" if i == 0 else "dim")
            lines.append(f"{name}: {_expectation_text(cost, exp)}\n", style="" if i == 0 else "dim")
        if d.expected.get("basis"):
            lines.append(f"(from: {d.expected['basis']})\n", style="dim")
    elif decision.runner_up:
        lines.append(f"Runner-up: {decision.runner_up}\n", style="dim")
    if decision.also_matched:
        lines.append("Also matched (lower priority): " + ", ".join(decision.also_matched) + "\n", style="dim")
    for name, why in decision.modifier_rules:
        lines.append(f"+ {name}: ", style="bold cyan")
        lines.append(why + "\n")
    if plan is not None:  # the plan's own reasons: the guard's hold-out, whether a trial would pay, ...
        for why in plan.decision.reasons[1 + len(decision.modifier_rules):]:
            lines.append("+ ", style="bold cyan")
            lines.append(why + "\n")
    return Panel(lines, title="Decision", title_align="left")


def trial_table(trial) -> Table:
    """The race of `advise --trial`: each candidate's pooled held-out accuracy, and the verdict."""
    t = Table(title=f"Trial on held-out training images ({trial.seconds:.0f} s of {trial.budget_s:g} s)",
              title_justify="left")
    for col in ("strategy", "held-out accuracy", "95% interval", "images", "rounds", "seconds", "epochs x"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for e in trial.entries:
        d = e.to_dict()
        name = Text(e.strategy, style="bold green" if e.strategy == trial.winner else "")
        if e.strategy == trial.rules_choice:
            name.append(" (rules)", style="dim")
        t.add_row(name, "-" if d["accuracy"] is None else f"{d['accuracy']:.3f}",
                  "-" if d["interval"] is None else f"{d['interval'][0]:.2f}-{d['interval'][1]:.2f}",
                  str(d["held_out"]), str(d["rounds"]), f"{d['seconds']:.0f}", f"{d['epochs_scale']:.2f}")
    t.caption = trial.reason + ("" if not trial.notes else " " + " ".join(trial.notes))
    return t


def _expectation_text(cost: dict, exp: dict) -> str:
    """`test accuracy 0.71-0.86, ~40 s here (12,300 base forward passes)`."""
    parts = []
    if exp.get("accuracy"):
        lo, hi = exp["accuracy"]
        parts.append(f"test accuracy {lo:.2f}-{hi:.2f}")
    if exp.get("seconds") is not None:
        from advisor.expect import duration

        parts.append(f"~{duration(exp['seconds'])} here")
    passes = cost.get("base_forward_passes")
    if passes is not None:
        parts.append(f"({passes:,} base forward passes)" if parts else f"{passes:,} base forward passes")
    return ", ".join(parts[:-1]) + (" " if len(parts) > 1 else "") + parts[-1] if parts else "no estimate"


def trace_table(decision: Decision) -> Table:
    """Every rule, every condition with its actual value and pass/fail, and the outcome."""
    t = Table(title="Why: every rule, in order", title_justify="left")
    t.add_column("table")
    t.add_column("rule")
    t.add_column("line", justify="right")
    t.add_column("conditions (actual value)")
    t.add_column("result")
    near = {m["rule"] for m in decision.near_misses}
    for rt in decision.trace:
        conds = Text()
        for i, c in enumerate(rt.conditions):
            if i:
                conds.append("\n")
            conds.append("✓ " if c.passed else "✗ ", style="green" if c.passed else "red")
            conds.append(f"{c.text} [{_v(c.actual)}]")
        if not rt.conditions:
            conds.append("(always)")
        if rt.table == "strategy" and rt.name == decision.rule:
            result = Text("WINS", style="bold green")
        elif rt.matched:
            result = Text("matched" if rt.table == "strategy" else "applied", style="green")
        elif rt.name in near:
            result = Text("near miss", style="yellow")
        else:
            result = Text("no", style="dim")
        t.add_row(rt.table, rt.name, str(rt.line), conds, result)
    return t


def _convex_head(plan, index: int) -> bool:
    """Whether `apply` will fit this phase as a convex problem (surgery.runner's conditions, read
    from the plan: a head phase on an unchanged backbone, a linear head, no distribution)."""
    p = plan.training.phases[index]
    return (p.trainable == "head" and p.solver != "gradient" and not plan.surgery.head.hidden
            and plan.surgery.head.activation == "softmax" and plan.training.bottleneck != "off"
            and plan.training.distribution == "none"
            and all(q.trainable == "head" for q in plan.training.phases[:index]))


def plan_panel(plan, path: str | None = None) -> Panel:
    """The surgery, the phases and the data settings of a plan."""
    s, d = plan.surgery, plan.data
    head = s.head
    lines = Text()
    lines.append(f"model      {plan.model.source} (weights {plan.model.weights})\n")
    lines.append(f"cut        {s.cut or 'at the classifier (keep the whole base)'}\n")
    hidden = f", hidden {head.hidden}" if head.hidden else ""
    lines.append(f"head       {head.pooling} pooling, dropout {head.dropout}{hidden}, {head.classes} classes "
                 f"({head.activation})\n")
    lines.append(f"batchnorm  {s.bn}\n")
    lines.append(f"data       {d.input_size[0]}x{d.input_size[1]}x{d.channels}, channels {d.channel_mode}, "
                 f"val {d.validation_split}, test {d.test_split}, batch {d.batch_size}, "
                 f"augmentation {d.augmentation or 'none'}\n")
    lines.append(f"training   class weights {plan.training.class_weights}"
                 + (f", scratch trial {plan.training.fallback.scratch_trial_epochs} epochs"
                    if plan.training.fallback else "") + "\n")
    t = Table(box=None, padding=(0, 2))
    for col in ("phase", "trainable", "budget", "optimizer", "lr", "backbone lr"):
        t.add_column(col)
    for i, p in enumerate(plan.training.phases):
        if _convex_head(plan, i):
            t.add_row(p.name, p.trainable, "convex fit, C by CV", "l-bfgs", "-", "-")
            continue
        budget = f"{p.epochs} epochs" + (f", >= {p.min_steps} steps" if p.min_steps else "")
        lr = f"{p.learning_rate:g}" + (" cosine" if p.schedule == "cosine" else "")
        t.add_row(p.name, p.trainable, budget, p.optimizer, lr, _v(p.backbone_learning_rate))
    title = f"Plan{f' → {path}' if path else ''}"
    return Panel(Group(lines, t), title=title, title_align="left")


def rules_table(table: RuleTable) -> Group:
    """`rules show`: thresholds, the strategy table, the modifiers."""
    th = Table(title=f"Thresholds ({table.source}, rules_version {table.version})", title_justify="left")
    for col in ("name", "value", "meaning"):
        th.add_column(col)
    for t in table.thresholds.values():
        th.add_row(t.name, _v(t.value) + (" (--set)" if t.name in table.overrides else ""), t.doc)
    st = Table(title=f"Strategy table (hit policy: {table.hit_policy})", title_justify="left")
    for col in ("#", "rule", "when", "strategy", "case", "runner-up"):
        st.add_column(col)
    for i, r in enumerate(table.strategy_rules, 1):
        st.add_row(str(i), r.name, "\n".join(c.text() for c in r.conditions) or "(always)",
                   r.then["strategy"], str(r.then["case"]), _v(r.then.get("runner_up")))
    mt = Table(title="Modifiers (all that match apply)", title_justify="left")
    for col in ("rule", "when", "then"):
        mt.add_column(col)
    for r in table.modifier_rules:
        mt.add_row(r.name, "\n".join(c.text() for c in r.conditions) or "(always)",
                   ", ".join(f"{k}={v}" for k, v in r.then.items()))
    sg = Table(title="Strategies", title_justify="left")
    for col in ("strategy", "cut", "phases", "what it does"):
        sg.add_column(col)
    for name, spec in table.strategies.items():
        phases = "; ".join(
            f"{p['name']}: convex fit" if p["trainable"] == "head" and p.get("solver", "auto") != "gradient"
            and not spec.get("head", {}).get("hidden") else
            f"{p['name']}: {p['trainable']} x{p['epochs']}"
            + (f" (>= {p['min_steps']} steps)" if p.get("min_steps") else "") + f" @ {p['learning_rate']:g}"
            for p in spec["phases"])
        sg.add_row(name, spec["cut"], phases, spec.get("doc", ""))
    return Group(th, st, mt, sg)


def convention_line(evidence: dict) -> str:
    """One line on the pixel convention and its evidence (`ConventionChoice.to_dict()`), e.g.
    `pixel convention: tf (auto; bn_fit on 64 images, margin 0.114) - raw 2.494, unit 0.320, ...`."""
    how = evidence.get("asked", "?")
    if evidence.get("method", "none") == "none":
        return f"pixel convention: {evidence.get('convention')} ({how}; not measured)"
    scores = evidence.get("scores") or {}
    order = "lower fits better" if evidence["method"] == "bn_fit" else "higher fits better"
    listed = ", ".join(f"{k} {v:.3f}{'*' if k == evidence.get('best') else ''}" for k, v in scores.items())
    sure = "" if evidence.get("confident") else ", unsure"
    margin = evidence.get("margin")
    return (f"pixel convention: {evidence['convention']} ({how}; {evidence['method']} on {evidence.get('sample')} "
            f"images, margin {'n/a' if margin is None else f'{margin:.3f}'}{sure}) - {listed} ({order})")
