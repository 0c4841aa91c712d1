"""`python cli.py apply PLAN`: surgery, training, evaluation and the run directory."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

from graft.console import make_console
from graft.errors import WriteError


def register(sub) -> None:
    p = sub.add_parser(
        "apply",
        help="run a plan: surgery, training phases, evaluation, report",
        description="Load the model a plan names, do its surgery, train its phases on the data set, "
        "evaluate, and write model.keras, metrics.json, history.csv, plots and report.html to the run "
        "directory.",
    )
    p.add_argument("plan", help="a plan file written by `advise` (and edited as you like)")
    p.add_argument("--out", help="run directory (default: the plan's outputs.dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in the run directory from its last completed epoch")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and the edited model; train and write nothing")
    p.add_argument("--unsafe", action="store_true", help="load a model file with safe_mode=False (trusted files only)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, uses_keras=True)


class _ConsoleReporter:
    """Per-epoch lines on stderr, and on a terminal a live bar: over a phase's images (images/s, its
    elapsed time and ETA to the phase's last epoch) once the phase has announced itself, else over
    the batches of the current epoch; and over the images of a forward pass (features, evaluation)."""

    def __init__(self, quiet: bool, console: Console | None = None):
        self.console = console or make_console(stderr=True, highlight=False)
        self.quiet = quiet
        self.progress = None
        self.task = None
        self._phase: dict | None = None
        self._forward: str | None = None
        if not quiet and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[unit]}"), _RateColumn(), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
                                     transient=True)

    def _bar(self, total: int, unit: str) -> None:
        """A fresh bar of `total` units (the previous one, if any, is dropped)."""
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("", total=total, unit=unit)

    def phase(self, phase: str, start: int, end: int, epochs: int, images: int, steps: int) -> None:
        self._phase = {"name": phase, "start": start, "end": end, "epochs": epochs, "images": images,
                       "steps": steps}
        self._forward = None
        if self.progress is not None:
            self._bar((end - start) * images, "images")

    def batch(self, phase: str, epoch: int, step: int, steps: int) -> None:
        if self.progress is None:
            return
        p = self._phase if self._phase and self._phase["name"] == phase else None
        if p is None:  # a phase that did not announce itself: the epoch's batches
            if self.task is None or self._forward is not None:
                self._forward = None
                self._bar(steps, "batches")
            self.progress.update(self.task, completed=min(step, steps), total=max(steps, step),
                                 description=f"{phase} epoch {epoch}")
            return
        per_batch = -(-p["images"] // max(1, p["steps"]))
        done = (epoch - p["start"] - 1) * p["images"] + min(step * per_batch, p["images"])
        self.progress.update(self.task, completed=done, description=f"{phase} epoch {epoch}/{p['epochs']}")

    def forward(self, task: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self._forward != task or self.task is None:
            self._forward, self._phase = task, None
            self._bar(total, "images")
        self.progress.update(self.task, completed=min(done, total), description=task)

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.stop()
            self.task = None

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{escape(text)}[/]")

    def epoch(self, phase: str, epoch: int, epochs: int, logs: dict, seconds: float) -> None:
        if self.quiet:
            return
        p = self._phase if self._phase and self._phase["name"] == phase else None
        if self.task is not None and p is None and self._forward is None:
            self.progress.reset(self.task)
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")]
        timing = f"{seconds:.1f} s"
        if p is not None and seconds > 0:
            timing += f", {p['images'] / seconds:,.1f} images/s"
        self.console.print(f"[bold]{phase}[/] epoch {epoch}/{epochs}  " + "  ".join(parts) + f"  ({timing})")


class _RateColumn(ProgressColumn):
    """Images (or batches) per second, from rich's speed estimate over the last seconds."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.1f}/s")


def _phase_table(result) -> Table:
    t = Table(title="Phases")
    for col in ("phase", "trains", "epochs", "lr", "backbone lr", "trainable params", "frozen params",
                "bottleneck", "images/s"):
        t.add_column(col, justify="right" if col not in ("phase", "trains") else "left")
    for p in result.phases:
        run = f"{p.epochs_run}/{p.epochs}" if not result.dry_run else str(p.epochs)
        if p.stopped_early:
            run += " (early stop)"
        t.add_row(p.name, p.trainable, run, f"{p.learning_rate:g}",
                  "-" if p.backbone_learning_rate is None else f"{p.backbone_learning_rate:g}",
                  f"{p.trainable_params:,}", f"{p.frozen_params:,}", "yes" if p.bottleneck else "no",
                  f"{p.images_per_second:,.0f}" if p.images_per_second else "-")
    return t


def _device_line(result, plan) -> str:
    t = plan.training

    def setting(name: str, value: bool, asked: str) -> str:
        return f"{name} {'on' if value else 'off'}{' (auto)' if asked == 'auto' else ''}"

    return (f"device: {result.device}\n"
            f"{setting('mixed precision', result.mixed_precision, t.mixed_precision)}, "
            f"{setting('jit_compile', result.jit_compile, t.jit_compile)} (docs/backends.md)")


def run(args) -> int:
    from advisor.runner_up import runner_up_plan
    from graft.plan import dump_plan, load_plan
    from surgery.runner import run as run_plan

    plan = load_plan(args.plan)
    reporter = _ConsoleReporter(quiet=args.json)
    # plan.png shows the runner-up beside the plan; its recipe is in the rules file (the advisor's).
    runner_up = None if args.dry_run else runner_up_plan(plan)
    try:
        result = run_plan(plan, out_dir=args.out, resume=args.resume, dry_run=args.dry_run,
                          safe_mode=False if args.unsafe else None, reporter=reporter, runner_up=runner_up)
    except KeyboardInterrupt:
        reporter.close()
        out = f" --out {args.out}" if args.out else ""
        print(f"graft: interrupted; every completed epoch is saved: continue with "
              f"`python cli.py apply {args.plan}{out} --resume`", file=sys.stderr)
        return 130
    except WriteError as exc:  # a full disk: say which command continues the run
        reporter.close()
        out = f" --out {args.out}" if args.out else ""
        print(f"graft: error: {exc} (`python cli.py apply {args.plan}{out} --resume`)", file=sys.stderr)
        return exc.exit_code
    finally:
        reporter.close()
    if args.json:
        out = {"run_dir": str(result.run_dir), "model": str(result.model_path) if result.model_path else None,
               "dry_run": result.dry_run, "resumed": result.resumed, "splits": result.splits,
               "phases": [p.__dict__ for p in result.phases], "metrics": result.metrics,
               "epochs": len(result.history), "fallback": result.fallback, "timings": result.timings,
               "notes": result.notes, "device": result.device, "mixed_precision": result.mixed_precision,
               "jit_compile": result.jit_compile}
        print(json.dumps(out, indent=1, default=str))
        return 0
    console = make_console()
    if result.dry_run:
        console.rule("Resolved plan")
        console.print(dump_plan(plan), markup=False, highlight=False)
        console.rule("Edited model")
        console.print(result.summary, markup=False, highlight=False)
        console.print(f"data: {result.splits['train']} train, {result.splits['val']} validation, "
                      f"{result.splits['test']} test images")
        console.print(_phase_table(result))
        console.print(_device_line(result, plan), markup=False, highlight=False)
        console.print("Dry run: nothing was trained or written.")
        return 0
    console.print(_phase_table(result))
    console.print(_device_line(result, plan), markup=False, highlight=False)
    if result.fallback:
        console.print(f"fallback trial: {result.fallback['reason']}")
    m = result.metrics
    from surgery.probe import describe_estimate

    # The headline is the estimate for new images; accuracy on training images is labelled as such.
    console.print(f"[bold]{describe_estimate(m.get('estimate'))}[/]")
    split = {"train": "training", "val": "validation"}.get(m.get("split"), m.get("split", "test"))
    console.print(f"{split} accuracy {m.get('accuracy', 0):.3f}, balanced accuracy "
                  f"{m.get('balanced_accuracy', 0):.3f} on {m.get('n_samples', 0)} images"
                  + (" (images the model was trained on)" if m.get("split") == "train" else ""))
    if m.get("model_input"):
        size = m["model_input"]["size"]
        console.print(f"model.keras takes raw 0..255 pixels, {m['model_input']['channels']} channel(s); "
                      f"resize images to {size[0]}x{size[1]} (the training size) before predicting")
    from surgery.memory import describe_memory
    from surgery.run_time import describe_time

    if m.get("time"):
        console.print(describe_time(m["time"]))
    mem = describe_memory(m.get("memory"))
    if mem:
        console.print("memory: " + "; ".join(f"{k} {v}" for k, v in mem.items()))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"Run directory: [bold]{result.run_dir}[/] (model.keras, metrics.json, history.csv, "
                  "curves.png, confusion.png, plan.png, report.html, run.log)")
    sys.stdout.flush()
    return 0
