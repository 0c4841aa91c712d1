"""`apply` under each Keras backend: time per phase, training images/s, and what the tf.data input costs.

    python bench/backends.py                       # tensorflow jax torch, the bundled example
    python bench/backends.py --backends jax --repeat 2

One plan on the bundled example (CIFAR-A CNN, cifar_b, 32 px, 180 training images): a head phase
by gradient on bottleneck features (6 epochs), then fine-tuning every layer with discriminative
learning rates and flip augmentation (3 epochs), checkpointing every epoch. Each backend runs in its
own process (KERAS_BACKEND is read at import). Besides `apply`'s own timings it measures how long
one epoch of the training input takes to iterate alone (decode, resize, augment: the tf.data
pipeline every backend reads), so the table says whether the input or the model step is the cost.
Prints a Markdown table; docs/backends.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


def measure(out: Path, jit: str = "auto") -> dict:
    sys.path.insert(0, str(ROOT))
    import keras

    from graft.hardware import device
    from graft.plan import (
        DataPlan,
        HeadPlan,
        ModelSpec,
        OutputPlan,
        Phase,
        Plan,
        SurgeryPlan,
        TrainingPlan,
    )
    from surgery import run
    from surgery.pipeline import DataSpec, make_dataset
    from surgery.run_data import run_data as _data

    os.environ["GRAFT_CHECKPOINT_SECONDS"] = "0"
    plan = Plan.from_dict(Plan(
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(cut=None, bn="freeze", head=HeadPlan(classes=5, dropout=0.2)),
        training=TrainingPlan(phases=[
            Phase(name="head", trainable="head", epochs=6, learning_rate=3e-3, solver="gradient"),
            Phase(name="finetune", trainable="all", epochs=3, learning_rate=1e-3, backbone_learning_rate=1e-4)],
            jit_compile=jit),
        data=DataPlan(path=str(DATA), input_size=[32, 32], channels=3, augmentation={"flip": "horizontal"},
                      validation_split=0.2, test_split=0.2, batch_size=32, seed=0),
        outputs=OutputPlan(dir=str(out)),
    ).to_dict())
    t0 = time.perf_counter()
    result = run(plan)
    total = time.perf_counter() - t0
    data = _data(plan)
    spec = DataSpec(**{**data.spec.__dict__, "cache": False})
    ds = make_dataset(*data.train, spec, training=True, num_classes=len(data.classes))
    t1 = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in ds)
    input_epoch = time.perf_counter() - t1
    return {"backend": keras.backend.backend(), "device": device().line(), "total": total,
            "accuracy": result.metrics["accuracy"], "input_epoch": input_epoch, "input_images": n,
            "phases": [{"name": p.name, "seconds": p.seconds, "epochs": p.epochs_run,
                        "images_per_second": p.images_per_second, "bottleneck": p.bottleneck}
                       for p in result.phases],
            "jit_compile": result.jit_compile, "jit": jit}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--jit", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                    help="training.jit_compile settings to run (each backend, each setting)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(Path(args.worker), args.jit[0])), flush=True)
        return 0
    rows = []
    for backend in args.backends:
        for jit, _ in [(j, r) for j in args.jit for r in range(args.repeat)]:
            with tempfile.TemporaryDirectory() as tmp:
                env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, "--worker", str(Path(tmp) / "run"), "--jit", jit], env=env,
                                      capture_output=True, text=True)
                wall = time.perf_counter() - t0
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{backend}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(line[0][7:])
                row["process"] = wall
                rows.append(row)
    print("| backend | jit_compile | process s (imports included) | apply s | head phase (bottleneck) s, img/s | "
          "fine-tune s, img/s | one epoch of input alone s | test accuracy |")
    print("|---|---|---:|---:|---|---|---:|---:|")
    for r in rows:
        head, ft = r["phases"]
        print(f"| {r['backend']} | {'on' if r['jit_compile'] else 'off'}{' (auto)' if r['jit'] == 'auto' else ''} | {r['process']:.1f} | {r['total']:.1f} | "
              f"{head['seconds']:.1f}, {head['images_per_second']:.0f} | {ft['seconds']:.1f}, "
              f"{ft['images_per_second']:.0f} | {r['input_epoch']:.2f} ({r['input_images']} images) | "
              f"{r['accuracy']:.3f} |")
    print()
    for line in dict.fromkeys(r["device"] for r in rows):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
