"""Wall time and memory of graft's graph operations on the largest keras.applications graphs.

    python bench/surgery.py                 # ResNet50, DenseNet121, ResNet152, DenseNet201, EfficientNetB7
    python bench/surgery.py --models resnet50 --repeat 3

For each model (weights=None, 224x224 input) it times: building the layer graph, finding the cut
points, and the edits truncate (at the middle cut point), freeze (everything up to it) and
replace_head (5 classes), each on a fresh graph (the graph build is timed separately), and, for
reference, `keras.models.clone_model` of the same model. Memory is the
peak resident-set growth during the operation, sampled every 2 ms. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from surgery import freeze, layer_graph, replace_head, truncate  # noqa: E402

MODELS = {
    "resnet50": keras.applications.ResNet50,
    "densenet121": keras.applications.DenseNet121,
    "resnet152": keras.applications.ResNet152,
    "densenet201": keras.applications.DenseNet201,
    "efficientnetb7": keras.applications.EfficientNetB7,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn):
    """(seconds, peak RSS growth in MiB, result) of one call."""
    gc.collect()
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    peak[0] = max(peak[0], rss_bytes())
    return seconds, (peak[0] - base) / 2**20, result


def bench(name: str, repeat: int) -> list[dict]:
    model = MODELS[name](weights=None, input_shape=(224, 224, 3))
    rows = []

    def best(label, fn):
        runs = [measure(fn) for _ in range(repeat)]
        secs = min(r[0] for r in runs)
        mem = max(r[1] for r in runs)
        rows.append({"model": name, "op": label, "seconds": secs, "peak_mib": mem})
        return runs[-1][2]

    graph = best("layer graph", lambda: layer_graph(model))
    cuts = best("cut points", lambda: layer_graph(model).cut_points())
    mid = cuts[len(cuts) // 2].name
    best("truncate", lambda: truncate(graph, mid))
    best("freeze up to", lambda: freeze(graph, up_to=mid))
    best("replace head", lambda: replace_head(graph, classes=5))
    # Reference: Keras' own copy of the same model (every copying edit pays about this much).
    best("keras.models.clone_model (reference)", lambda: keras.models.clone_model(model))
    for r in rows:
        r["layers"] = len(graph.calls)
        r["params_m"] = model.count_params() / 1e6
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeat", type=int, default=2, help="runs per operation; the fastest is reported")
    args = parser.parse_args()
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, {os.cpu_count()} CPUs")
    print("| model | layers | params (M) | operation | wall time (s) | ms per layer | peak RSS growth (MiB) |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name in args.models:
        for r in bench(name, args.repeat):
            print(f"| {r['model']} | {r['layers']} | {r['params_m']:.1f} | {r['op']} | {r['seconds']:.3f} | "
                  f"{1000 * r['seconds'] / r['layers']:.2f} | {r['peak_mib']:.0f} |", flush=True)
        keras.backend.clear_session()
        gc.collect()


if __name__ == "__main__":
    main()
