"""Metrics files and the self-contained HTML report of a training run (the plots it embeds are
drawn by `surgery.plots`). Every file is written atomically (`graft.atomic`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from graft.atomic import write_json, write_text
from surgery.plots import finite_values, plot_confusion, plot_curves

__all__ = [
    "history_csv",
    "plot_confusion",
    "plot_curves",
    "write_report",
    "write_run_outputs",
]

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# History CSV
# --------------------------------------------------------------------------------------------


def history_csv(history: Mapping[str, Sequence[Any]]) -> str:
    """Render a training history as CSV text.

    Args:
        history: a dict of per-epoch lists, optionally with a `"phase"` list (phase name of each
            epoch) and an `"epoch"` list; other keys are metrics.

    Returns:
        CSV with columns `epoch`, `phase`, then every metric key in sorted order. Epochs are
        numbered from 1 unless an `epoch` list is given; shorter lists leave cells empty.
    """
    metric_keys = sorted(k for k in history if k not in ("epoch", "phase"))
    n = max((len(v) for v in history.values()), default=0)
    epochs = list(history.get("epoch", []))
    phases = list(history.get("phase", []))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", "phase", *metric_keys])
    for i in range(n):
        row: list[Any] = [epochs[i] if i < len(epochs) else i + 1]
        row.append(phases[i] if i < len(phases) else "")
        for key in metric_keys:
            values = history[key]
            row.append(_csv_value(values[i]) if i < len(values) else "")
        writer.writerow(row)
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return v


# --------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:2em auto;max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #2a6fb0;padding-bottom:.2em}
h2{margin-top:1.6em;color:#2a6fb0}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef3f8}
.kpi{display:inline-block;margin:.3em 1.2em .3em 0;padding:.5em 1em;background:#eef3f8;
border-radius:6px}
.kpi b{display:block;font-size:1.5em}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.85em;border-radius:4px}
img{max-width:100%;height:auto;border:1px solid #ddd}
.muted{color:#777}
"""



def _split_label(split: str | None) -> str:
    return {"train": "training", "val": "validation", "test": "test"}.get(split or "test", str(split))


def _headline(metrics: Mapping, guard: Mapping | None = None, refit: Mapping | None = None) -> str:
    """The first thing the page says: the expected accuracy on new images, its 95 % interval, how
    it was measured and on how many images; or that it was not measured, and why."""
    from surgery.probe import describe_estimate

    est = metrics.get("estimate") or {}
    out = ["<div class='headline'>"]
    if est.get("accuracy") is not None:
        lo, hi = est.get("interval95") or (None, None)
        out.append(f"<span class='kpi'>expected accuracy on new images<b>{_e(_pct(est['accuracy']))}</b>"
                   f"95 % interval {_e(_pct(lo))}&ndash;{_e(_pct(hi))}</span>")
    else:
        out.append("<span class='kpi'>expected accuracy on new images<b>not measured</b></span>")
    out.append(f"<p class='estimate'>{_e(describe_estimate(est or None))}.</p>")
    if guard and guard.get("reason"):
        out.append(f"<p class='estimate'>Fine-tuning guard: {_e(guard['reason'])}.</p>")
    if refit:
        out.append(f"<p class='estimate'>Head refit: once the guard had chosen, the head was fitted again on all "
                   f"{refit['images']} labelled images ({refit['train_images']} training + {refit['val_images']} "
                   "held out); the estimate above is from the held-out images, before the refit.</p>")
    out.append("</div>")
    return "\n".join(out)

def _e(value: Any) -> str:
    """HTML-escape anything (converted with `str`)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f) or math.isinf(f):
            return str(f)
        return f"{f:.{digits}f}"
    return "" if value is None else str(value)


def _pct(value: Any) -> str:
    try:
        return f"{100.0 * float(value):.2f}%"
    except (TypeError, ValueError):
        return "n/a"


def _image_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = []
    for key, value in items.items():
        if isinstance(value, (list, tuple)):
            shown = ", ".join(str(v) for v in value[:50])
            if len(value) > 50:
                shown += f", ... ({len(value)} in all)"
        elif isinstance(value, Mapping):
            shown = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (float, int, np.number)) and not isinstance(value, bool):
            shown = _fmt(value)
        else:
            shown = "" if value is None else str(value)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(shown)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else "<p class='muted'>none</p>"


def _data_summary(plan: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the data-related facts from the plan and metrics."""
    out: dict[str, Any] = {}
    data = plan.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                out[str(key)] = value
            elif isinstance(value, (list, tuple)) and len(value) <= 50:
                out[str(key)] = list(value)
    elif data is not None:
        out["data"] = data
    classes = metrics.get("classes")
    if classes:
        out.setdefault("classes", list(classes))
        out["number of classes"] = len(classes)
    if "n_samples" in metrics:
        out["evaluation samples"] = metrics["n_samples"]
    return out


def _phases_table(phases: Sequence[Mapping[str, Any]]) -> str:
    if not phases:
        return "<p class='muted'>no phases recorded</p>"
    head = (
        "<tr><th>#</th><th>phase</th><th>epochs run</th><th>trainable params</th>"
        "<th>learning rate</th></tr>"
    )
    rows = []
    for i, ph in enumerate(phases, start=1):
        epochs = ph.get("epochs_run", ph.get("epochs"))
        planned = ph.get("epochs")
        epochs_txt = _fmt(epochs)
        if "epochs_run" in ph and planned is not None and planned != epochs:
            epochs_txt += f" of {_fmt(planned)}"
        trainable = ph.get("trainable_params", ph.get("trainable"))
        lr = ph.get("learning_rate", ph.get("lr"))
        lr_txt = (
            f"{float(lr):.3g}"
            if isinstance(lr, (int, float)) and not isinstance(lr, bool)
            else _fmt(lr)
        )
        rows.append(
            f"<tr><td class='num'>{i}</td><td>{_e(ph.get('name', ''))}</td>"
            f"<td class='num'>{_e(epochs_txt)}</td><td class='num'>{_e(_fmt(trainable))}</td>"
            f"<td class='num'>{_e(lr_txt)}</td></tr>"
        )
    return "<table>" + head + "".join(rows) + "</table>"


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    per_class = metrics.get("per_class") or []
    if not per_class:
        return "<p class='muted'>no per-class metrics</p>"
    cols = ("precision", "recall", "specificity", "f1")
    head = "<tr><th>class</th>" + "".join(f"<th>{c}</th>" for c in cols) + "<th>support</th></tr>"
    rows = []
    for row in per_class:
        cells = "".join(f"<td class='num'>{_e(_fmt(row.get(c)))}</td>" for c in cols)
        rows.append(
            f"<tr><td>{_e(row.get('class', ''))}</td>{cells}"
            f"<td class='num'>{_e(_fmt(row.get('support')))}</td></tr>"
        )
    macro = metrics.get("macro")
    if isinstance(macro, Mapping):
        cells = "".join(f"<td class='num'>{_e(_fmt(macro.get(c)))}</td>" for c in cols)
        total = sum(int(r.get("support", 0) or 0) for r in per_class)
        rows.append(f"<tr><th>macro average</th>{cells}<td class='num'>{_e(_fmt(total))}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def write_report(
    run_dir: PathLike,
    *,
    plan: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Mapping[str, Sequence[Any]],
    phases: Sequence[Mapping[str, Any]],
    model_summary: str,
    timings: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `report.html`, a single self-contained page describing the run.

    The page has inline CSS and embeds `plan.png`, `curves.png` and `confusion.png` from `run_dir` as
    base64 `data:` URIs when those files exist (otherwise the images are omitted). All values
    that come from the plan, data or model are HTML-escaped.

    Args:
        run_dir: the run directory (created if missing).
        plan: the resolved plan; `plan["decision"]` may give `strategy`, `case` and `reasons`
            (a list of strings), `plan["data"]` a data description, `plan["name"]` a title.
            Missing fields are tolerated.
        metrics: the output of `surgery.metrics.classification_metrics`.
        history: per-epoch training history (used for the number of epochs and best values).
        phases: the phases run, each with `name` and optionally `epochs`, `epochs_run`,
            `trainable_params` and `learning_rate`.
        model_summary: text of the model summary, shown in a `<pre>` block.
        timings: named durations in seconds (or any values), shown in a table.
        extra: optional further key/value facts shown in their own section.

    Returns:
        The path of `report.html`.
    """
    run_dir = Path(run_dir)
    plan = plan or {}
    metrics = metrics or {}
    decision = plan.get("decision") or {}
    if not isinstance(decision, Mapping):
        decision = {"strategy": decision}
    title = plan.get("name") or plan.get("title") or run_dir.name or "graft run"
    parts: list[str] = []
    add = parts.append

    add("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
    add("<meta name='viewport' content='width=device-width, initial-scale=1'>")
    add(f"<title>graft report: {_e(title)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>graft report: {_e(title)}</h1>")
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    add(f"<p class='muted'>Run directory <code>{_e(run_dir)}</code>, generated {generated}.</p>")

    add(_headline(metrics, (extra or {}).get("guard"), (extra or {}).get("refit")))

    # Decision
    add("<h2>Decision</h2>")
    strategy = decision.get("strategy")
    case = decision.get("case")
    if strategy is None and case is None and not decision.get("reasons"):
        add("<p class='muted'>No decision recorded in the plan.</p>")
    else:
        add("<table>")
        add(f"<tr><th>strategy</th><td>{_e(strategy if strategy is not None else 'n/a')}</td></tr>")
        if case is not None:
            add(f"<tr><th>case</th><td>{_e(case)}</td></tr>")
        add("</table>")
        reasons = decision.get("reasons") or []
        if isinstance(reasons, str):
            reasons = [reasons]
        if reasons:
            add("<p>Reasons:</p><ul>")
            for reason in reasons:
                add(f"<li>{_e(reason)}</li>")
            add("</ul>")

    drawing = _image_uri(run_dir / "plan.png")
    if drawing:
        add("<h3>The plan, drawn</h3>")
        add("<p>The network from input to output: what was removed, frozen, fine-tuned in each phase, "
            "reinitialized, and the new head; the runner-up strategy beside it.</p>")
        add(f"<img alt='the plan drawn as a network' src='{drawing}'>")

    # Data
    add("<h2>Data</h2>")
    add(_kv_table(_data_summary(plan, metrics)))

    # Phases
    add("<h2>Training phases</h2>")
    add(_phases_table(phases))
    n_epochs = max((len(v) for k, v in history.items() if k != "phase"), default=0)
    if n_epochs:
        best = []
        for key in ("val_accuracy", "val_loss"):
            vals = [v for v in finite_values(history.get(key, [])) if not math.isnan(v)]
            if vals:
                best.append(f"best {key} {_fmt(max(vals) if 'acc' in key else min(vals))}")
        add(f"<p>{n_epochs} epochs in all" + (f"; {', '.join(best)}" if best else "") + ".</p>")

    # Metrics
    add("<h2>Evaluation</h2>")
    split = _split_label(metrics.get("split"))
    add("<div>")
    add(f"<span class='kpi'>{_e(split)} accuracy<b>{_e(_pct(metrics.get('accuracy')))}</b></span>")
    add(
        f"<span class='kpi'>{_e(split)} balanced accuracy"
        f"<b>{_e(_pct(metrics.get('balanced_accuracy')))}</b></span>"
    )
    if "top_k_accuracy" in metrics:
        add(
            f"<span class='kpi'>top-{_e(metrics.get('top_k', 5))} accuracy"
            f"<b>{_e(_pct(metrics['top_k_accuracy']))}</b></span>"
        )
    if "n_samples" in metrics:
        add(f"<span class='kpi'>samples<b>{_e(_fmt(metrics['n_samples']))}</b></span>")
    add("</div>")
    add(
        f"<p>Accuracy {_e(_fmt(metrics.get('accuracy')))}, "
        f"balanced accuracy {_e(_fmt(metrics.get('balanced_accuracy')))}"
        f" on the {_e(metrics.get('split', 'test'))} images"
        + (" (the images the model was trained on: not an estimate for new images)"
           if metrics.get("split") == "train" else "") + ".</p>"
    )
    if "estimate" in metrics:
        from surgery.probe import describe_estimate

        add(f"<p class='estimate'>{_e(describe_estimate(metrics['estimate']))}.</p>")
    if metrics.get("model_input"):
        mi = metrics["model_input"]
        add(f"<p>The saved model takes {_e(mi['pixels'])}; {_e(mi['resize'])}.</p>")
    add("<h3>Per class</h3>")
    add(_per_class_table(metrics))

    confusion = _image_uri(run_dir / "confusion.png")
    if confusion:
        add("<h3>Confusion matrix</h3>")
        add(f"<img alt='confusion matrix' src='{confusion}'>")
    curves = _image_uri(run_dir / "curves.png")
    if curves:
        add("<h2>Training curves</h2>")
        add(f"<img alt='training curves' src='{curves}'>")

    # Timings
    add("<h2>Timings</h2>")
    shown_timings = {
        str(k): (
            f"{float(v):.1f} s" if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        )
        for k, v in (timings or {}).items()
    }
    add(_kv_table(shown_timings))

    if extra:
        add("<h2>Details</h2>")
        add(_kv_table({str(k): v for k, v in extra.items()}))

    add("<h2>Model</h2>")
    add(f"<pre>{_e(model_summary or '')}</pre>")
    add("</body></html>\n")
    return write_text(run_dir / "report.html", "\n".join(parts))


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def write_run_outputs(
    run_dir: PathLike,
    *,
    history: Mapping[str, Sequence[Any]],
    phases: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    plan: Mapping[str, Any],
    model_summary: str,
    timings: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the evaluation outputs of a run: metrics, history, plots and the report.

    Args:
        run_dir: the run directory (created if missing).
        history: per-epoch lists keyed by metric name, plus an optional `"phase"` list.
        phases: the phases run (see `write_report`).
        metrics: the output of `surgery.metrics.classification_metrics`.
        plan: the resolved plan (see `write_report`).
        model_summary: text of the model summary.
        timings: named durations in seconds.
        extra: optional further facts for the report.

    Returns:
        Paths by name: `metrics` (metrics.json), `history` (history.csv), `curves`
        (curves.png), `confusion` (confusion.png, only when metrics hold a confusion matrix)
        and `report` (report.html).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["metrics"] = write_json(run_dir / "metrics.json", dict(metrics))
    paths["history"] = write_text(run_dir / "history.csv", history_csv(history))
    paths["curves"] = plot_curves(history, run_dir / "curves.png", phases)
    cm = metrics.get("confusion_matrix")
    if cm is not None and len(cm):
        classes = metrics.get("classes") or [str(i) for i in range(len(cm))]
        paths["confusion"] = plot_confusion(cm, classes, run_dir / "confusion.png")
    paths["report"] = write_report(
        run_dir,
        plan=plan,
        metrics=metrics,
        history=history,
        phases=phases,
        model_summary=model_summary,
        timings=timings,
        extra=extra,
    )
    return paths
