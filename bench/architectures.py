"""Architecture coverage: every `keras.applications` constructor through graft's surgery, per backend.

    python bench/architectures.py                                  # all models, tensorflow jax torch
    python bench/architectures.py --backends jax --models resnet50 mobilenetv2
    python bench/architectures.py --table-only                     # rewrite the table from the results

For each model (weights=None, a small input where the constructor allows one) and each Keras
backend, in a fresh process per backend (KERAS_BACKEND is read once, at import), it runs: the layer
graph (`inspect`), the cut points, `truncate` at three cuts (about 1/4, 1/2 and 3/4 of the depth)
with the numeric check (the truncated model's output equals the original model's tensor at that
cut, computed by Keras itself, on the same random input), `freeze` up to the middle cut (the chosen
layers frozen, the others not), `reinitialize` after the last of those cuts (the kept part's output
unchanged, some weight after it changed) and `replace_head` (5 classes; the features unchanged, the
output 5-way). A model passes when every step does.

Results go, one JSON line per (backend, model), to `bench/results/architectures.jsonl` as they
are measured, so an interrupted run keeps what it measured and a rerun skips it (`--fresh` starts
over); the table goes to `docs/architectures.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "architectures.jsonl"
DOC = ROOT / "docs" / "architectures.md"
BACKENDS = ("tensorflow", "jax", "torch")
#: Input sizes below the default where the constructor accepts them (weights=None); others use 96.
INPUT_SIZE: dict[str, int] = {}
SMALL = 96
#: Largest relative difference allowed between a truncated model and the original (0 is expected;
#: the tolerance only absorbs a backend that picks a different kernel for a smaller graph).
TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------ worker


def _rel_diff(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _reference(model, call_id: str):
    """The original model's output at a call, computed by Keras itself: a function of the input.

    A call inside a nested model (`outer/inner`, as in ConvNeXt's downsampling blocks) is the nested
    model's own sub-model applied to what the outer model feeds it; the edited models are flat, so
    their calls are found by inner name. Raw `keras.ops` nodes (ConvNeXt's residual adds) count.
    """
    parts = call_id.split("/")
    for op in getattr(model, "operations", None) or model.layers:
        if op.name in (call_id, parts[-1]) and op._inbound_nodes:
            sub = keras_model(model.inputs, op._inbound_nodes[0].output_tensors[0])
            return lambda x: sub(x, training=False)
    outer = model.get_layer(parts[0])
    feed = keras_model(model.inputs, outer._inbound_nodes[0].input_tensors[0])
    inner = _reference(outer, "/".join(parts[1:]))
    return lambda x: inner(feed(x, training=False))


def keras_model(inputs, outputs):
    import keras

    return keras.Model(inputs, outputs)


def check_model(ctor: str) -> dict:
    """Run every surgery step on one constructor; returns the result row (never raises)."""
    import keras
    import numpy as np

    from surgery import (
        cut_points,
        find_head,
        freeze,
        layer_graph,
        reinitialize,
        replace_head,
        truncate,
    )
    from surgery.graph import LayerGraph

    def numpy(x):
        return np.asarray(keras.ops.convert_to_numpy(x))

    row = {"model": ctor, "backend": keras.backend.backend(), "ok": False, "steps": {}, "error": None}
    t_start = time.perf_counter()
    step = "build"
    try:
        keras.utils.set_random_seed(0)
        size = INPUT_SIZE.get(ctor, SMALL)
        t = time.perf_counter()
        model = getattr(keras.applications, ctor)(weights=None, input_shape=(size, size, 3))
        row["steps"]["build"] = round(time.perf_counter() - t, 2)
        row["input"] = size
        row["params"] = int(model.count_params())
        x = np.random.default_rng(0).uniform(0, 255, size=(2, size, size, 3)).astype("float32")

        step = "inspect"
        t = time.perf_counter()
        graph: LayerGraph = layer_graph(model)
        summary = graph.summary()
        row["layers"] = len(graph.calls)
        step = "cut_points"
        cuts = cut_points(model)
        row["cut_points"] = len(cuts)
        row["steps"]["inspect"] = round(time.perf_counter() - t, 2)
        if not cuts or not summary:
            raise AssertionError("no cut points")

        step = "truncate"
        t = time.perf_counter()
        picks = sorted({cuts[int(len(cuts) * f)].name: cuts[int(len(cuts) * f)] for f in (0.25, 0.5, 0.75)}.values(),
                       key=lambda c: c.index)
        worst = 0.0
        for cut in picks:
            cut_model = truncate(graph, cut.name)
            if tuple(cut_model.outputs[0].shape) != tuple(cut.shape):
                raise AssertionError(f"truncate at {cut.name}: shape {cut_model.outputs[0].shape} != {cut.shape}")
            expected = _reference(model, cut.name)(x)
            diff = _rel_diff(numpy(cut_model(x, training=False)), numpy(expected))
            worst = max(worst, diff)
            if diff > TOLERANCE:
                raise AssertionError(f"truncate at {cut.name}: output differs by {diff:.3g} (relative)")
            del cut_model
        row["cuts"] = [c.name for c in picks]
        row["max_rel_diff"] = worst
        row["steps"]["truncate"] = round(time.perf_counter() - t, 2)

        step = "freeze"
        t = time.perf_counter()
        middle = picks[len(picks) // 2].name
        frozen = freeze(graph, up_to=middle)
        kept = {graph.calls[c].name for c in graph.ancestors([middle])}
        for layer in frozen.layers:
            if layer.weights and layer.name in kept and layer.trainable:
                raise AssertionError(f"freeze up to {middle}: {layer.name} is still trainable")
        trainable_after = [la for la in frozen.layers if la.weights and la.name not in kept and la.trainable]
        if not trainable_after:
            raise AssertionError(f"freeze up to {middle}: nothing after it stayed trainable")
        del frozen
        row["steps"]["freeze"] = round(time.perf_counter() - t, 2)

        step = "reinitialize"
        t = time.perf_counter()
        last = picks[-1].name
        fresh = reinitialize(graph, from_layer=last, seed=1)
        before = _reference(model, last)(x)
        after = _reference(fresh, last)(x)
        diff = _rel_diff(numpy(after), numpy(before))
        if diff > TOLERANCE:
            raise AssertionError(f"reinitialize after {last}: the kept part's output differs by {diff:.3g}")
        kept = {graph.calls[c].name for c in graph.ancestors([last])}
        old = {w.path.split("/")[-2] + "/" + w.name: numpy(w) for w in model.weights}
        changed = any(
            not np.array_equal(numpy(w), old[key])
            for la in fresh.layers if la.weights and la.name not in kept
            for w in la.weights
            if (key := w.path.split("/")[-2] + "/" + w.name) in old
        )
        if not changed:
            raise AssertionError(f"reinitialize after {last}: no weight changed")
        del fresh
        row["steps"]["reinitialize"] = round(time.perf_counter() - t, 2)

        step = "replace_head"
        t = time.perf_counter()
        head = find_head(graph)
        new = replace_head(graph, classes=5, dropout=0.2)
        if tuple(new.outputs[0].shape) != (None, 5):
            raise AssertionError(f"replace_head: output shape {new.outputs[0].shape}")
        feats = head.features.name
        diff = _rel_diff(numpy(_reference(new, feats)(x)), numpy(_reference(model, feats)(x)))
        if diff > TOLERANCE:
            raise AssertionError(f"replace_head: the features at {feats} differ by {diff:.3g}")
        probs = numpy(new(x, training=False))
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
            raise AssertionError("replace_head: the new head's outputs are not probabilities")
        row["steps"]["replace_head"] = round(time.perf_counter() - t, 2)
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is a row of the table, not a crash
        row["error"] = f"{step}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    row["failed_step"] = None if row["ok"] else step
    row["seconds"] = round(time.perf_counter() - t_start, 1)
    keras.backend.clear_session()
    return row


#: Models one worker process checks before it exits and the parent starts a fresh one: Keras keeps
#: memory from model to model (tens of GB over the whole list).
MODELS_PER_PROCESS = 3


def worker(models: list[str], results: Path) -> None:
    import gc

    for ctor in models[:MODELS_PER_PROCESS]:
        with results.open("a") as f:  # the start mark: a crash is blamed on this model
            f.write(json.dumps({"model": ctor, "backend": os.environ["KERAS_BACKEND"], "started": True}) + "\n")
        row = check_model(ctor)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['backend']:10s} {ctor:20s} {'pass' if row['ok'] else 'FAIL'} {row['seconds']:7.1f}s "
              f"{row['error'] or ''}", flush=True)
        gc.collect()


# ------------------------------------------------------------------------------------------ parent


def read_results(path: Path = RESULTS) -> dict[tuple[str, str], dict]:
    """The latest row per (backend, model); a start mark with no row after it is a crash."""
    rows: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["backend"], r["model"])
        if r.get("started"):
            rows[key] = {"model": r["model"], "backend": r["backend"], "ok": False, "seconds": None,
                         "error": "the process died (out of memory, or killed)", "failed_step": "crash"}
        else:
            rows[key] = r
    return rows


def constructors() -> list[str]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return sorted(a for a in dir(keras.applications) if a[:1].isupper() and callable(getattr(keras.applications, a)))


def run_backend(backend: str, models: list[str], timeout: float, redo_failed: bool = False) -> None:
    """Run the worker for `backend` until every model has a row (a crash skips to the next model)."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    before = read_results()
    while True:
        # done: a row, unless it is a failure from before this call and failures are to be redone
        done = {m for (b, m), r in read_results().items()
                if b == backend and (r["ok"] or not redo_failed or r != before.get((b, m)))}
        todo = [m for m in models if m not in done]
        if not todo:
            return
        cmd = [sys.executable, __file__, "--worker", "--backends", backend, "--models", *todo]
        try:
            subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            pass
        # a model started but never finished (crash or timeout) now has its crash row: the next
        # worker goes on past it


def _versions() -> str:
    import importlib.metadata as md

    parts = []
    for pkg in ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(parts)


def write_table(models: list[str], backends: list[str], path: Path = DOC) -> str:
    rows = read_results()
    measured = [b for b in backends if any((b, m) in rows for m in models)]
    missing = [b for b in backends if b not in measured]
    lines = [
        "# Architecture coverage",
        "",
        "Every `keras.applications` constructor (weights=None) through graft's surgery under each Keras backend:",
        "the layer graph (`inspect`), the cut points, `truncate` at three cuts (about 1/4, 1/2 and 3/4 of the",
        "depth) with the numeric check (the truncated model's output against the original model's tensor at",
        "that cut, same random input, relative difference at most 1e-5; it is 0 in every passing row unless noted),",
        "`freeze` up to the middle cut, `reinitialize` after the last of those cuts (the kept part's output",
        "unchanged, a weight after it changed) and `replace_head` (5 classes, the features unchanged).",
        "Each cell: pass or FAIL, and the seconds the whole model took on that backend (build included) on",
        "this project's 2-core CPU machine, shared with other work, so the times are indicative.",
        "",
        "Reproduce: `python bench/architectures.py` (all), or `--backends jax --models ResNet50` (some);",
        "results are kept in `bench/results/architectures.jsonl`.",
        "",
        f"Measured with {_versions()}. Input {SMALL}x{SMALL}"
        + ("".join(f", {k} {v}x{v}" for k, v in INPUT_SIZE.items())) + ".",
        "",
    ]
    if missing:
        lines += [f"**Not measured yet:** the {', '.join(missing)} column(s) (the run did not reach them); "
                  "rerun `python bench/architectures.py --backends " + " ".join(missing) + "`.", ""]
    partial = {b: [m for m in models if (b, m) not in rows] for b in measured}
    for b, left in partial.items():
        if left:
            lines += [f"**Not measured yet under {b}:** {len(left)} of {len(models)} models (\"not run\" below: the "
                      f"run was stopped for time, nothing failed there); `python bench/architectures.py --backends {b}` "
                      "measures them and keeps the rows above.", ""]
    head = "| model | params | layers | cut points | " + " | ".join(measured) + " |"
    lines += [head, "|---|---:|---:|---:|" + "---|" * len(measured)]
    passed = {b: 0 for b in measured}
    failures = []
    for m in models:
        info = next((rows[(b, m)] for b in measured if (b, m) in rows and rows[(b, m)].get("params")), {})
        cells = []
        for b in measured:
            r = rows.get((b, m))
            if r is None:
                cells.append("not run")
            elif r["ok"]:
                passed[b] += 1
                note = f" (diff {r['max_rel_diff']:.1e})" if r.get("max_rel_diff") else ""
                cells.append(f"pass {r['seconds']:.0f} s{note}")
            else:
                cells.append(f"FAIL ({r.get('failed_step')})")
                failures.append(f"- {m}, {b}: {r['error']}")
        lines.append(f"| {m} | {info.get('params', 0) / 1e6:.1f} M | {info.get('layers', '')} | "
                     f"{info.get('cut_points', '')} | " + " | ".join(cells) + " |")
    lines += ["", "Passed: " + ", ".join(f"{b} {passed[b]}/{len(models)}" for b in measured) + ".", ""]
    if failures:
        lines += ["## Failures", "", *failures, ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--models", nargs="+", help="constructor names (default: every one)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per backend process")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results")
    ap.add_argument("--redo-failed", action="store_true", help="measure again the models that failed")
    ap.add_argument("--table-only", action="store_true", help="only rewrite docs/architectures.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.worker:
        worker(args.models, RESULTS)
        return 0
    all_models = constructors()
    lower = {m.lower(): m for m in all_models}
    models = [lower[m.lower()] for m in args.models] if args.models else all_models
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and RESULTS.exists():
        RESULTS.unlink()
    if not args.table_only:
        for backend in args.backends:
            run_backend(backend, models, args.timeout, args.redo_failed)
            write_table(all_models, list(BACKENDS))
    print(write_table(all_models, list(BACKENDS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
