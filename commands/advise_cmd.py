"""`python cli.py advise DATASET`: facts, the decision with its trace, and `plan.yaml`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from graft.console import make_console
from graft.conventions import CONVENTIONS
from graft.errors import InputError

PREPROCESSING_CHOICES = ("auto", "model", *CONVENTIONS)


def register(sub) -> None:
    p = sub.add_parser(
        "advise",
        help="scan a data set, decide how to transfer a network to it, write plan.yaml",
        description="Scan a class-per-folder image data set, measure how the pretrained network sees it "
        "(with --model), run the rule table and write a plan that `apply` executes.",
    )
    p.add_argument("dataset", help="folder with one sub-folder per class (optionally inside train/ val/ test/)")
    p.add_argument("--model", help="a .keras/.h5 file or a keras.applications name; enables measured similarity")
    p.add_argument("--preprocessing", default="auto", choices=PREPROCESSING_CHOICES,
                   help="how pixels are mapped for the network: auto (default: measured on your images), model "
                        "(what the model's own layers and name say), or raw, unit, tf, torch, caffe "
                        "(docs/conventions.md)")
    p.add_argument("--weights", default=None,
                   help="for a keras.applications name: imagenet (default; downloads), none, or a weights file")
    p.add_argument("--rules", help="rules file (default: the rules.yaml shipped with graft)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a rules threshold, e.g. --set small_dataset=5000 (repeatable)")
    p.add_argument("--similarity", type=float, default=None, metavar="X",
                   help="state the similarity to the pretraining data (0..1) instead of measuring it")
    p.add_argument("--reference", help="folder of source-domain images or a .npz profile for the similarity")
    p.add_argument("--no-measure", action="store_true", help="do not embed the data even when --model is given")
    p.add_argument("--strategy", metavar="NAME",
                   help="force a strategy of the rules file (e.g. lp_ft) instead of the one the rules choose; "
                        "the rules still run and the plan says what they chose")
    p.add_argument("--trial", type=float, default=None, metavar="SECONDS",
                   help="race the rules' choice and its runner-up on held-out training images within this "
                        "budget and let a clear result decide (needs --model; trains for real)")
    p.add_argument("--trial-candidates", metavar="A,B", default=None,
                   help="with --trial: the strategies to race (default: the rules' choice and runner-up)")
    p.add_argument("--out", default="plan.yaml", help="where to write the plan (default plan.yaml)")
    p.add_argument("--run-dir", help="run directory the plan names for apply (default runs/DATASET-STRATEGY)")
    p.add_argument("--plot", metavar="PNG", help="also draw the per-depth profile to this PNG")
    p.add_argument("--unsafe", action="store_true", help="load a model file with safe_mode=False (trusted files only)")
    p.add_argument("--json", action="store_true", help="print facts, decision, trace and plan as JSON")
    p.set_defaults(func=run, uses_keras=True)


def _check_out(out: Path, args) -> None:
    protected = [Path(args.dataset)] + [Path(x) for x in (args.model, args.rules, args.reference) if x]
    for path in protected:
        try:
            if path.exists() and out.resolve() == path.resolve():
                raise InputError(f"--out {out} is one of the inputs; choose another file for the plan")
        except OSError:
            continue
    if out.exists() and out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'plan.yaml'}")


def _draw_plan(advice, out: Path):
    """The plan (and its runner-up) drawn as a network into a PNG next to the plan file.

    Returns `(png, networks, note)`; a plan that cannot be drawn (its model will not build) leaves a
    note instead of failing the advice, which is already written.
    """
    from advisor.runner_up import runner_up_plan
    from graft.errors import GraftError
    from surgery.plan_drawing import draw_plan

    try:
        png, networks = draw_plan(advice.plan, out.with_suffix(".png"),
                                  runner_up=runner_up_plan(advice.plan, advice.rules))
    except (GraftError, ValueError, TypeError) as exc:
        return None, [], f"the plan could not be drawn ({type(exc).__name__}: {exc})"
    return png, networks, ""


def run(args) -> int:
    from advisor.advise import advise
    from advisor.render import (
        convention_line,
        dataset_table,
        decision_panel,
        facts_table,
        plan_panel,
        trace_table,
    )
    from advisor.rules import parse_overrides
    from graft.plan import save_plan

    out = Path(args.out)
    _check_out(out, args)
    if args.similarity is not None and not 0 <= args.similarity <= 1:
        raise InputError(f"--similarity {args.similarity}: must be between 0 and 1")
    if args.trial is not None and not (args.trial > 0 and args.trial < float("inf")):
        raise InputError(f"--trial {args.trial}: give a positive number of seconds, e.g. --trial 120")
    if args.trial is not None and not args.model:
        raise InputError("--trial trains the network on your images, so it needs --model")
    if args.trial_candidates is not None and args.trial is None:
        raise InputError("--trial-candidates is used with --trial SECONDS")
    overrides = parse_overrides(args.overrides)
    candidates = None
    if args.trial_candidates is not None:
        from advisor.rules import load_rules

        strategies = load_rules(args.rules, overrides).strategies
        candidates = [c.strip() for c in args.trial_candidates.split(",") if c.strip()]
        unknown = [c for c in candidates if c not in strategies] or ([] if candidates else ["(none)"])
        if unknown:
            raise InputError(f"--trial-candidates: {', '.join(unknown)} are not strategies of "
                             f"{args.rules or 'the default rules'} (strategies: {', '.join(strategies)})")
    err = make_console(stderr=True)
    status = err.status("Scanning the data set…") if not args.json and err.is_terminal else None

    def progress(stage: str, count: int) -> None:
        if status is not None:
            status.update(f"Scanning the data set… {count:,} files" if stage == "scan"
                          else "Embedding a sample under the model…")
        elif stage == "measure" and not args.json:
            print("Embedding a sample under the model…", file=sys.stderr)

    if status is not None:
        status.start()
    try:
        advice = advise(args.dataset, model=args.model, rules=args.rules, overrides=overrides,
                        similarity=args.similarity, weights=args.weights, measure=not args.no_measure,
                        reference=args.reference, out_dir=args.run_dir, safe_mode=not args.unsafe,
                        progress=progress, strategy=args.strategy, preprocessing=args.preprocessing)
        if args.trial is not None:
            from advisor.advise import with_trial
            from advisor.trial import race

            def trial_progress(message: str) -> None:
                if status is not None:
                    status.update(message.capitalize() + "…")
                elif not args.json:
                    print(message.capitalize() + "…", file=sys.stderr)

            advice = with_trial(advice, race(advice, args.trial, candidates, progress=trial_progress))
    finally:
        if status is not None:
            status.stop()
    save_plan(advice.plan, out)
    drawing, networks, drawing_note = _draw_plan(advice, out)
    from graft.hardware import device

    dev = device()
    if args.plot and advice.embedding is not None:
        from advisor.profile_chart import plot_profile

        plot_profile(advice.embedding, args.plot)
    if args.json:
        data = advice.to_dict()
        data["plan_file"] = str(out)
        data["plan_drawing"] = None if drawing is None else {"file": str(drawing),
                                                             "networks": [n.to_dict() for n in networks]}
        data["device"] = dev.line().removeprefix("device: ")
        print(json.dumps(data, indent=1, default=str))
        return 0
    console = make_console()
    console.print(dataset_table(advice.dataset))
    console.print(facts_table(advice.facts))
    console.print(convention_line(advice.plan.data.preprocessing_evidence), markup=False, highlight=False)
    if advice.embedding is not None:
        from advisor.profile_chart import ProfileChart

        console.print(ProfileChart(advice.embedding))
    console.print(decision_panel(advice.decision, advice.plan))
    if advice.trial is not None:
        from advisor.render import trial_table

        console.print(trial_table(advice.trial))
    console.print(trace_table(advice.decision))
    console.print(plan_panel(advice.plan, str(out)))
    if networks:
        from surgery.plan_drawing import PlanDiagram

        for network in networks:
            console.print(PlanDiagram(network))
        console.print(f"Plan drawn in [bold]{drawing}[/] (the chosen strategy and the runner-up, side by side).")
    elif drawing_note:
        console.print(f"[yellow]note:[/] {drawing_note}")
    for note in advice.notes:
        console.print(f"[yellow]note:[/] {note}")
    if args.plot and advice.embedding is None:
        console.print("[yellow]note:[/] --plot needs --model (there is no per-depth profile without one)")
    console.print(dev.line(), markup=False, highlight=False)
    console.print(f"Plan written to [bold]{out}[/]. Run it with: python cli.py apply {out}")
    return 0
