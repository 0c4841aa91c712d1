"""`python cli.py inspect MODEL [--show DATASET]`: the layer graph's summary, every layer's output shape
and parameter formula, the valid cut points; with `--show`, a page of pictures of what each depth
sees on a data set (`advisor.inspect_show`, `advisor.show_page`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from commands.advise_cmd import PREPROCESSING_CHOICES
from graft.console import make_console
from graft.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarize a model's layer graph and list its valid cut points",
        description="Summarize a model's layer graph (nested models inlined) and list the valid cut "
        "points: the tensors every path from the inputs to the outputs passes through.",
    )
    p.add_argument("model", help="a .keras/.h5 file or a keras.applications name (resnet50, mobilenetv2, ...)")
    p.add_argument("--weights", default="none",
                   help="for a keras.applications name: none (default), imagenet (downloads) or a weights file")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="for a keras.applications name: build it for N x N x 3 inputs")
    p.add_argument("--unsafe", action="store_true",
                   help="load a model file with safe_mode=False (only for files you trust)")
    p.add_argument("--show", metavar="DATASET",
                   help="draw what each depth sees on this class-per-folder data set: an HTML page and PNGs")
    p.add_argument("--out", metavar="DIR", help="folder for --show's page (default inspect-MODEL-DATASET)")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="--show: sample at most N images per class (default 100)")
    p.add_argument("--cap", type=int, default=None, metavar="N", help="--show: at most N images in all (default 1000)")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="--show: input size for models that take any size (default 160)")
    p.add_argument("--preprocessing", default="auto", choices=PREPROCESSING_CHOICES,
                   help="--show: how pixels are mapped for the network: auto (default: measured on the data "
                        "set's images), model (the model's own layers and name), or raw, unit, tf, torch, caffe")
    p.add_argument("--json", action="store_true", help="print the same data as JSON")
    p.set_defaults(func=run, uses_keras=True)


def inspect_model(model_source: str, weights: str = "none", input_size: int | None = None,
                  safe_mode: bool = True) -> dict:
    """The data `inspect` reports: `{"summary": {...}, "cut_points": [...]}`."""
    from surgery import layer_graph, load_model

    shape = (input_size, input_size, 3) if input_size else None
    model = load_model(model_source, weights=weights, input_shape=shape, safe_mode=safe_mode)
    graph = layer_graph(model)
    from surgery.layer_table import layer_rows

    return {
        "source": model_source,
        "summary": graph.summary(),
        "cut_points": [c.to_dict() for c in graph.cut_points()],
        "layers": [r.to_dict() for r in layer_rows(graph)],
    }


def render(data: dict, console: Console) -> None:
    s = data["summary"]
    console.print(f"[bold]{s['model']}[/bold]  ({data['source']})")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("inputs", ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in s["inputs"]))
    facts.add_row("outputs", ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in s["outputs"]))
    facts.add_row("parameters", f"{s['params']:,}")
    facts.add_row("layers", f"{s['layers']} ({s['calls']} calls, {s['shared_layers']} shared, {s['raw_ops']} raw ops)")
    facts.add_row("batch norm", str(s["batchnorm_layers"]))
    facts.add_row("nested models", ", ".join(s["nested_models"]) or "none")
    top = list(s["layer_types"].items())[:6]
    facts.add_row("layer types", ", ".join(f"{k} {v}" for k, v in top))
    facts.add_row("cut points", str(len(data["cut_points"])))
    console.print(facts)
    if data.get("layers"):
        layers = Table(title="Layers", title_justify="left")
        layers.add_column("#", justify="right", style="dim")
        layers.add_column("layer")
        layers.add_column("type")
        layers.add_column("output shape")
        layers.add_column("params", justify="right")
        layers.add_column("formula")
        for i, row in enumerate(data["layers"]):
            layers.add_row(str(i), row["name"], row["kind"], str(tuple(row["output_shape"])), f"{row['params']:,}",
                           row["formula"])
        console.print(layers)
    table = Table(title="Valid cut points", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("name")
    table.add_column("depth", justify="right")
    table.add_column("output shape")
    table.add_column("params up to here", justify="right")
    for cut in data["cut_points"]:
        table.add_row(str(cut["index"]), cut["name"], f"{cut['depth']:.2f}",
                      str(tuple(cut["shape"])), f"{cut['params']:,}")
    console.print(table)


def show_model(model_source: str, dataset: str, out_dir: str | None = None, weights: str = "none",
               per_class: int | None = None, cap: int | None = None, size: int | None = None,
               safe_mode: bool = True, input_size: int | None = None, preprocessing: str = "auto"):
    """`inspect --show`: look at `dataset` through the model and write the page; returns a `ShowReport`."""
    from advisor.inspect_show import DEFAULT_CAP, DEFAULT_PER_CLASS, look
    from advisor.show_page import write_show

    for name, value in (("--per-class", per_class), ("--cap", cap), ("--size", size)):
        if value is not None and value < 1:
            raise InputError(f"Expected a positive integer for {name}. Received: {value}")
    if not Path(dataset).is_dir():
        raise InputError(f"Data set folder {dataset} does not exist or is not a folder.")
    out = out_dir or f"inspect-{Path(model_source).stem}-{Path(dataset).resolve().name}"
    view = look(model_source, dataset, weights=weights, input_size=input_size, per_class=per_class or DEFAULT_PER_CLASS,
                cap=cap or DEFAULT_CAP, size=size, safe_mode=safe_mode, preprocessing=preprocessing)
    return write_show(view, out)


def render_show(report, console: Console) -> None:
    """A short summary of `inspect --show`: per-depth probe and shift, and the page's path."""
    from advisor.render import convention_line

    n = report.numbers
    console.print(f"[bold]{n['model']}[/bold] on {n['dataset']}: {n['sample']:,} images, {len(n['classes'])} classes, "
                  f"{n['image_size'][0]}x{n['image_size'][1]}")
    table = Table(title="What each depth separates", title_justify="left")
    table.add_column("depth", justify="right")
    table.add_column("layer")
    table.add_column("probe acc.", justify="right")
    table.add_column("BN shift", justify="right")
    for d in n["depths"]:
        mark = " (advised)" if d["layer"] == n["advised_cut"] else ""
        table.add_row(f"{d['depth']:.2f}", d["layer"] + mark,
                      "n/a" if d["probe_accuracy"] is None else f"{d['probe_accuracy']:.3f}",
                      "n/a" if d["shift"] is None else f"{d['shift']:.3f}")
    console.print(table)
    conv = n.get("convention") or {}
    if conv.get("scores"):
        console.print(convention_line(conv), markup=False, highlight=False)
    for note in n["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"{len(report.files)} files in {report.out_dir}, {sum(n['seconds'].values()):.1f} s. "
                  f"Open [bold]{report.page}[/bold]")


def run(args: argparse.Namespace) -> int:
    if args.show:
        report = show_model(args.model, args.show, args.out, args.weights, args.per_class, args.cap, args.size,
                            safe_mode=not args.unsafe, input_size=args.input_size, preprocessing=args.preprocessing)
        if args.json:
            json.dump(report.to_dict(), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            render_show(report, make_console())
        return 0
    data = inspect_model(args.model, args.weights, args.input_size, safe_mode=not args.unsafe)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(data, make_console())
    return 0
