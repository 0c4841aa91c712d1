"""`python cli.py inspect MODEL`: the layer graph's summary and its valid cut points."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from graft.console import make_console


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
    p.add_argument("--json", action="store_true", help="print the same data as JSON")
    p.set_defaults(func=run, uses_keras=True)


def inspect_model(model_source: str, weights: str = "none", input_size: int | None = None,
                  safe_mode: bool = True) -> dict:
    """The data `inspect` reports: `{"summary": {...}, "cut_points": [...]}`."""
    from surgery import layer_graph, load_model

    shape = (input_size, input_size, 3) if input_size else None
    model = load_model(model_source, weights=weights, input_shape=shape, safe_mode=safe_mode)
    graph = layer_graph(model)
    return {
        "source": model_source,
        "summary": graph.summary(),
        "cut_points": [c.to_dict() for c in graph.cut_points()],
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


def run(args: argparse.Namespace) -> int:
    data = inspect_model(args.model, args.weights, args.input_size, safe_mode=not args.unsafe)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(data, make_console())
    return 0
