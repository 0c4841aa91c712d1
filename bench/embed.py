"""Embedding throughput, and the cost of an `advise`-style measurement on a 10,000-image data set.

1. On the same images, compares
   - `model.predict` (the final output only: the floor any embedding must pay),
   - one `truncate(model, cut).predict` per candidate cut (what collecting every cut costs naively),
   - graft's one-pass multi-cut extraction (`advisor.embed.embed`: every cut's pooled features and
     every BN input's channel moments from one forward pass per batch).
2. Times `advisor.measure.measure` (sample, embed, similarity with bootstrap, per-cut scores) with
   MobileNetV2 (random weights; the cost does not depend on them) on a 10,000-image folder of real
   CIFAR-10 JPEGs, and, when the `advise` command exists, `python cli.py advise DIR --model mobilenetv2`.

    .venv/bin/python bench/embed.py [--images 256] [--size 128] [--data /tmp/cifar10]

Writes bench/results/embed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # for domains.py; the project root must come first
sys.path.insert(0, str(ROOT))

import domains  # noqa: E402
import numpy as np  # noqa: E402

from advisor.embed import candidate_cuts, embed  # noqa: E402
from advisor.measure import measure  # noqa: E402
from surgery import layer_graph, load_model, truncate  # noqa: E402

EFFNET = ROOT.parent / "shared" / "models" / "efficientnet_lite0_imagenet.keras"


def timed(fn, repeat: int = 2) -> float:
    fn()  # warm-up: tracing and first-call costs are not throughput
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(model_path: Path, x: np.ndarray, size: int | None, batch: int) -> dict:
    model = load_model(model_path)
    graph = layer_graph(model)
    cuts = candidate_cuts(graph)
    if size:
        import keras

        x = np.asarray(keras.ops.image.resize(x, (size, size)), dtype="float32")
    n = len(x)
    t_build = time.perf_counter()
    embed(graph, x[:batch], size=size)
    build = time.perf_counter() - t_build
    plain = timed(lambda: model.predict(x, batch_size=batch, verbose=0))
    truncated = [truncate(model, c.name) for c in cuts]

    def per_cut():
        for m in truncated:
            np.asarray(m.predict(x, batch_size=batch, verbose=0)).mean(axis=(1, 2))

    naive = timed(per_cut, repeat=1)
    one_pass = timed(lambda: embed(graph, x, size=size, batch_size=batch), repeat=2)
    row = {"model": model.name, "images": n, "input": list(x.shape[1:3]), "cuts": len(cuts),
           "predict_img_s": round(n / plain, 1), "per_cut_predict_img_s": round(n / naive, 1),
           "one_pass_img_s": round(n / one_pass, 1), "one_pass_setup_s": round(build, 2)}
    print(json.dumps(row), flush=True)
    return row


def make_folder(cifar_root: Path, dest: Path, per_class: int) -> int:
    """A 10-class folder of real CIFAR-10 JPEGs (hard links where possible)."""
    count = 0
    for cls in domains.CLASSES_A + domains.CLASSES_B:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((cifar_root / "train" / cls).glob("*.jpg"))[:per_class]:
            target = dest / cls / f.name
            try:
                os.link(f, target)
            except OSError:
                shutil.copyfile(f, target)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="extracted CIFAR-10 folder; default: extract the shared archive")
    ap.add_argument("--images", type=int, default=256, help="images for the throughput comparison")
    ap.add_argument("--size", type=int, default=128, help="EfficientNet-Lite0 input size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--folder-images", type=int, default=10000)
    args = ap.parse_args(argv)

    root = domains.cifar_root(args.data)
    x, _, _ = domains.cifar(root, domains.CLASSES_B, "test", args.images // 5)
    x = x.astype("float32")
    rows = [throughput(ROOT / "examples" / "models" / "cifar_a_cnn.keras", x, None, args.batch)]
    if EFFNET.exists():
        rows.append(throughput(EFFNET, x, args.size, args.batch))

    folder = Path(tempfile.mkdtemp(prefix="graft_10k_"))
    try:
        n = make_folder(root, folder, args.folder_images // 10)
        t = time.perf_counter()
        facts = measure(folder, "mobilenetv2", weights="none")
        lib_s = time.perf_counter() - t
        advise = {"folder_images": n, "measure_s": round(lib_s, 1), "sample": facts.sample,
                  "image_size": list(facts.image_size), "cuts": len(facts.transfer.scores),
                  "facts": facts.facts()}
        print(json.dumps(advise), flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "advise", str(folder), "--model",
                               "mobilenetv2", "--weights", "none", "--json"],
                              capture_output=True, text=True, cwd=ROOT)
        advise["advise_cli_s"] = round(time.perf_counter() - t, 1) if proc.returncode == 0 else None
        advise["advise_cli_rc"] = proc.returncode
        if proc.returncode != 0:
            advise["advise_cli_error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        print(json.dumps({k: advise[k] for k in advise if k.startswith("advise_cli")}), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    out = {"throughput": rows, "advise_10k": advise, "cpu_count": os.cpu_count()}
    (ROOT / "bench" / "results" / "embed.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
