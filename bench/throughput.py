"""Throughput of graft's phases against plain Keras on the same network, images, pipeline and backend.

    .venv/bin/python bench/throughput.py                          # 1,000 CIFAR-10 images, 128 px, 2 epochs
    .venv/bin/python bench/throughput.py --images 2000 --size 160 --epochs 2 --rounds 2

Run by hand, never in tests. The network is the real ImageNet EfficientNet-Lite0 of
`../shared/models` (its preprocessing is inside the model); the images are the first N training
images of CIFAR-10 (`../shared/data/cifar10-images.tar.gz`, N/10 per class), extracted once to
`$GRAFT_BENCH_DIR/throughput` (default /tmp/graft-bench). Each arm runs in its own process (so its
peak memory is its own, and no arm inherits another's traced functions):

- `graft_ft`: `surgery.run` of a plan with one phase that trains every layer (`trainable: all`);
  images/s from its `PhaseReport` (the phase's wall time: pipeline, compile, every epoch, its
  checkpoints) and from its last epoch's `history` row.
- `fit`: the same network built by graft's own surgery (`prepare_model`), every layer trainable with
  BatchNormalization frozen as graft's `bn: freeze` does, compiled with Adam at the same rate and
  the same `jit_compile` graft chose, and `model.fit` on the same `tf.data` pipeline
  (`surgery.pipeline.make_dataset` with graft's `DataSpec`: same batch size, same in-memory cache
  decision); timed from building the dataset to the end of `fit`.
- `fit_keras_jit`: the same with Keras's own default `jit_compile="auto"` (XLA on TensorFlow when
  every layer supports it), which graft's `auto` does not pick on a CPU.
- `graft_head`: `surgery.run` of a plan with one frozen-backbone head phase (the bottleneck: features
  once, then the convex head fit); the phase's seconds.
- `predict`: one plain forward pass, `model.predict` of the full network over the same images
  (`make_dataset(training=False)`).

Prints a Markdown table and appends one JSON row per arm (and one summary row per round) to
`bench/results/throughput.jsonl`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import commit  # noqa: E402

SHARED = Path(os.environ.get("GRAFT_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "efficientnet_lite0_imagenet.keras"
ARCHIVE = SHARED / "data" / "cifar10-images.tar.gz"
RESULTS = ROOT / "bench" / "results" / "throughput.jsonl"
ARMS = ("fit", "graft_ft", "fit_keras_jit", "predict", "graft_head")


def extract(images: int) -> Path:
    """The first images/10 training images of each CIFAR-10 class (archive order), as class folders."""
    out = Path(os.environ.get("GRAFT_BENCH_DIR", "/tmp/graft-bench")) / "throughput" / f"cifar10-{images}"
    if (out / ".complete").exists():
        return out
    per_class, counts = images // 10, {}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] != "train":
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            (out / cls).mkdir(parents=True, exist_ok=True)
            (out / cls / parts[-1]).write_bytes(tar.extractfile(member).read())
            if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                break
    (out / ".complete").write_text("ok\n")
    return out


def make_plan(data: Path, run_dir: Path, args, trainable: str):
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

    phase = (Phase(name="finetune", trainable="all", epochs=args.epochs, learning_rate=1e-4)
             if trainable == "all" else Phase(name="head", trainable="head", epochs=1))
    plan = Plan(
        model=ModelSpec(source=str(MODEL), weights="file"),
        surgery=SurgeryPlan(head=HeadPlan(classes=10, dropout=0.0)),
        training=TrainingPlan(phases=[phase]),
        data=DataPlan(path=str(data), input_size=[args.size, args.size], channels=3, validation_split=0.0,
                      test_split=0.0, batch_size=args.batch, seed=0),
        outputs=OutputPlan(dir=str(run_dir)))
    return Plan.from_dict(plan.to_dict())


def _peak_mib() -> float:
    from surgery.memory import peak_rss_mib

    return peak_rss_mib()


def arm(name: str, data: Path, work: Path, args) -> dict:
    """One arm in this process; its measurements."""
    import keras

    from surgery import run

    images = len([p for p in data.rglob("*.jpg")])
    if name in ("graft_ft", "graft_head"):
        plan = make_plan(data, work / name, args, "all" if name == "graft_ft" else "head")
        t0 = time.perf_counter()
        result = run(plan)
        total = time.perf_counter() - t0
        ph = result.phases[0]
        row = {"seconds": ph.seconds, "images_per_second": ph.images_per_second, "run_seconds": round(total, 2),
               "jit_compile": result.jit_compile, "peak_rss_mib": result.metrics["memory"]["peak_rss_mib"],
               "features_seconds": round(result.timings.get("features", 0.0), 2)}
        if name == "graft_ft":
            last = result.history[-1]["seconds"]
            row["epoch_seconds"] = [r["seconds"] for r in result.history]
            row["last_epoch_images_per_second"] = round(images / last, 1)
        return row
    from surgery.pipeline import make_dataset
    from surgery.prepare import prepare_model, set_phase_trainable
    from surgery.run_data import run_data

    plan = make_plan(data, work / name, args, "all")
    d = run_data(plan)
    keras.utils.set_random_seed(0)
    prepared = prepare_model(plan)
    model = prepared.model
    if name == "predict":
        t0 = time.perf_counter()
        ds = make_dataset(*d.train, d.spec, training=False, num_classes=10)
        model.predict(ds, verbose=0)
        return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": _peak_mib()}
    from graft.hardware import device

    set_phase_trainable(prepared, "all", plan.surgery.bn)
    jit = "auto" if name == "fit_keras_jit" else device().auto_jit_compile()
    epoch_seconds = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(round(time.perf_counter() - self.t, 3))

    t0 = time.perf_counter()
    ds = make_dataset(*d.train, d.spec, training=True, num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=jit)
    model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[EpochClock()])
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "images_per_second": round(images * args.epochs / seconds, 1),
            "epoch_seconds": epoch_seconds, "last_epoch_images_per_second": round(images / epoch_seconds[-1], 1),
            "jit_compile": jit, "peak_rss_mib": _peak_mib()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # one arm, in a child process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import keras

    data = extract(args.images)
    if args.arm:
        print(json.dumps(arm(args.arm, data, Path(args.work), args)))
        return 0
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is absent; set GRAFT_SHARED to the folder holding models/ and data/")
    import tempfile

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"images": args.images, "size": args.size, "batch": args.batch, "epochs": args.epochs,
              "model": MODEL.name, "backend": keras.backend.backend(), "keras": keras.__version__,
              "commit": commit(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "time": stamp}
    rows = []
    for r in range(args.rounds):
        got = {}
        for name in args.arms.split(","):
            with tempfile.TemporaryDirectory(prefix="graft_tp_") as work:
                cmd = [sys.executable, __file__, "--arm", name, "--work", work, "--images", str(args.images),
                       "--size", str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"arm {name} failed:\n{proc.stderr[-3000:]}")
                got[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            row = {"arm": name, "round": r, **common, **got[name]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        summary = {"arm": "ratios", "round": r, **common}
        if "fit" in got and "graft_ft" in got:
            summary["ft_vs_fit"] = round(got["graft_ft"]["images_per_second"] / got["fit"]["images_per_second"], 3)
            summary["ft_vs_fit_last_epoch"] = round(got["graft_ft"]["last_epoch_images_per_second"]
                                                    / got["fit"]["last_epoch_images_per_second"], 3)
        if "fit_keras_jit" in got and "graft_ft" in got:
            summary["ft_vs_fit_keras_jit"] = round(got["graft_ft"]["images_per_second"]
                                                   / got["fit_keras_jit"]["images_per_second"], 3)
        if "predict" in got and "graft_head" in got:
            summary["head_vs_predict"] = round(got["graft_head"]["seconds"] / got["predict"]["seconds"], 3)
        rows.append(summary)
        print(json.dumps(summary), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows (one line per arm and round, then the ratios)."""
    out = ["| round | arm | seconds | images/s (whole) | images/s (last epoch) | epoch seconds | jit | peak MiB |",
           "|---:|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        if r["arm"] == "ratios":
            continue
        out.append(f"| {r['round']} | {r['arm']} | {r['seconds']:.1f} | {r.get('images_per_second', '-')} | "
                   f"{r.get('last_epoch_images_per_second', '-')} | "
                   f"{', '.join(str(s) for s in r.get('epoch_seconds', [])) or '-'} | {r.get('jit_compile', '-')} | "
                   f"{r.get('peak_rss_mib', 0):,.0f} |")
    for r in rows:
        if r["arm"] == "ratios":
            out.append("")
            out.append(f"round {r['round']}: " + ", ".join(f"{k} {v}" for k, v in r.items()
                                                          if k.startswith(("ft_", "head_"))))
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
