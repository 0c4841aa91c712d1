"""Recipes bench: every strategy graft trains, against the best of several plain hand-written Keras
transfers of the same strategy, on the eleven real domains of ../shared/data and both ImageNet
networks of ../shared/models.

Tasks: CIFAR-10 (its train/ images), the five sets of devsuite.tar.gz and the five of
devsuite2.tar.gz. Split as ../shared/data/README.md says: classes sorted by name; in each class,
files sorted by name, then shuffled with `random.Random(seed)`; the first 40 are test images, the
next N (10 or 60) the training images. Every arm trains on exactly those N x classes images and is
scored on the same test images.

Networks: EfficientNet-Lite0 (preprocessing inside) and MobileNet v1 without its top (preprocessing
outside: x / 127.5 - 1), both at 160 px, the size graft trains flexible-size networks at on a CPU.

The reference, per strategy, is the best of a few plain variants a careful person would try, picked
per task on the test images (so the reference is, if anything, optimistic), with the choice recorded:

- `probe` (vs graft's linear_probe; `probe_cut` at graft's measured cut vs truncate_probe): global
  average pooling + Dropout(0.2) + softmax Dense on frozen features, Adam(1e-3), batch 32;
  20 or 100 epochs; with or without horizontal flips (flipped copies of the training images).
- `ft_top`, `ft_all` (vs lp_ft_top; lp_ft, lp_ft_cut and finetune_all): the head warmed up as the 20-epoch probe
  above, then the top third of the base's layers (or all of them) trained with Adam at 1e-4 or 3e-5,
  batch 32, BatchNorm in inference mode (the base is called with `training=False`), with or without
  horizontal flips; scored after 8 and after 15 epochs of the same run (a constant learning rate, so
  the 8-epoch score is that of an 8-epoch run). `ft_all` also without the warm-up (1e-4, flips).

graft's arm is what a user runs: `advise(train images, model, strategy=NAME)` then `run(plan)` on a
folder whose train/ and test/ sub-folders hold the split. advise's measurement of each split is
appended to a measurements file (for scoring rule tables offline, bench/advice.py).

    python bench/recipes.py run --network mobilenet_v1 --task gtsrb_signs --n 10 --seed 0
    python bench/recipes.py run --network efficientnet_lite0 --task cifar10 --n 60 --arms reference
    python bench/recipes.py table > /tmp/recipes.md      # everything appended so far
    bench/recipes_all.sh                                  # every part, seed 0 first, resumable

Each part appends one JSON line per (arm, strategy, variant) to bench/results/recipes.jsonl; a part
already recorded is skipped (so the loop resumes after an interruption).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench.provenance import commit  # noqa: E402

SHARED = Path(os.environ.get("GRAFT_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "bench" / "results" / "recipes.jsonl"
MEASUREMENTS = ROOT / "bench" / "results" / "recipes-measurements.jsonl"
WORK = Path(os.environ.get("GRAFT_BENCH_DIR", Path(tempfile.gettempdir()) / "graft-bench"))

NETWORKS = {
    "efficientnet_lite0": {"file": "efficientnet_lite0_imagenet.keras", "features": "top_activation",
                           "scale": None},
    "mobilenet_v1": {"file": "mobilenet_v1_imagenet_notop.keras", "features": None,  # the model's output
                     "scale": (1 / 127.5, -1.0)},
}
DEVSUITE = ("rsscn7_aerial", "pbc_bloodcells", "dtd_textures", "quickdraw_sketches", "fashion_mnist")
DEVSUITE2 = ("eurosat_satellite", "gtsrb_signs", "chest_xray_pneumonia", "lc25000_lung_histopathology",
             "trashnet_waste")
TASKS = ("cifar10", *DEVSUITE, *DEVSUITE2)
GRAFT_STRATEGIES = ("linear_probe", "truncate_probe", "lp_ft_top", "lp_ft", "lp_ft_cut")
#: graft strategy -> the reference strategy it is judged against
REFERENCE_OF = {"linear_probe": "probe", "truncate_probe": "probe_cut", "lp_ft_top": "ft_top", "lp_ft": "ft_all",
                "lp_ft_cut": "ft_all",
                "finetune_all": "ft_all"}
TEST_PER_CLASS = 40
SIZE = 160
BATCH = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm")
FT_EPOCHS = (8, 15)
#: (strategy, learning rate, flips, warm-up): the fine-tuning runs of the reference. `full` is every
#: combination; `lean` (the default, GRAFT_BENCH_GRID=full for the other) drops the rarer pairs, so
#: that all eleven domains x two networks fit on 2 CPUs: lr 3e-5 only with flips, and no run without
#: the warm-up (on the first two tasks it ended at 0.19-0.51, far below every warmed-up variant).
FT_GRIDS = {
    "full": (("ft_all", 1e-4, True, True), ("ft_all", 1e-4, False, True), ("ft_all", 3e-5, True, True),
             ("ft_all", 3e-5, False, True), ("ft_all", 1e-4, True, False),
             ("ft_top", 1e-4, True, True), ("ft_top", 1e-4, False, True), ("ft_top", 3e-5, True, True),
             ("ft_top", 3e-5, False, True)),
    "lean": (("ft_all", 1e-4, True, True), ("ft_all", 1e-4, False, True), ("ft_all", 3e-5, True, True),
             ("ft_top", 1e-4, True, True), ("ft_top", 3e-5, True, True)),
}
FT_RUNS = FT_GRIDS[os.environ.get("GRAFT_BENCH_GRID", "lean")]
PROBE_EPOCHS = (20, 100)
WARMUP_EPOCHS = 20


# ------------------------------------------------------------------------------------------ data


def task_root(task: str) -> Path:
    """The extracted class-per-folder tree of a task (extracted once under WORK)."""
    if task == "cifar10":
        root = WORK / "cifar10" / "train"
        archive, dest = "cifar10-images.tar.gz", WORK / "cifar10"
    else:
        suite = "devsuite" if task in DEVSUITE else "devsuite2"
        root = WORK / suite / task
        archive, dest = f"{suite}.tar.gz", WORK
    if not root.exists():
        with tarfile.open(SHARED / "data" / archive) as tar:
            tar.extractall(dest, filter="data")
    return root


def split_dir(task: str, n: int, seed: int) -> Path:
    """WORK/splits/TASK-nN-sSEED/{train,test}/CLASS/FILE (hard links), made once: built in a folder of
    this process's own and renamed into place, so two bench processes (one per core) that need the
    same split at once cannot collide."""
    final = WORK / "splits" / f"{task}-n{n}-s{seed}"
    if (final / ".done").exists():
        return final
    out = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    root = task_root(task)
    for cls in sorted(d.name for d in root.iterdir() if d.is_dir()):
        files = sorted(f.name for f in (root / cls).iterdir()
                       if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        random.Random(seed).shuffle(files)
        for part, names in (("test", files[:TEST_PER_CLASS]), ("train", files[TEST_PER_CLASS:TEST_PER_CLASS + n])):
            (out / part / cls).mkdir(parents=True, exist_ok=True)
            for name in names:
                try:
                    os.link(root / cls / name, out / part / cls / name)
                except OSError:
                    shutil.copy2(root / cls / name, out / part / cls / name)
    (out / ".done").write_text("")
    try:
        os.rename(out, final)  # atomic; fails when another process got there first, or a stale folder is there
    except OSError:
        if not (final / ".done").exists():
            shutil.rmtree(final, ignore_errors=True)
            os.rename(out, final)
        else:
            shutil.rmtree(out, ignore_errors=True)
    return final


def load_split(split: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images resized to SIZE x SIZE (bilinear, as image_dataset_from_directory) and labels."""
    from PIL import Image

    xs, ys = [], []
    for label, cls in enumerate(sorted(d.name for d in (split / part).iterdir() if d.is_dir())):
        for f in sorted((split / part / cls).iterdir()):
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype="uint8"))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype="int64")


# ------------------------------------------------------------------------------------------ reference


def _base(network: str, cut: str | None = None):

    spec = NETWORKS[network]
    full = keras.models.load_model(SHARED / "models" / spec["file"], safe_mode=True)
    layer = cut or spec["features"]
    out = full.get_layer(layer).output if layer else full.output
    return keras.Model(full.input, out, name="base")


def _model(network: str, classes: int, flips: bool, cut: str | None = None):
    """Input -> [RandomFlip] -> [x/127.5 - 1] -> base(training=False) -> GAP -> Dropout -> Dense."""

    base = _base(network, cut)
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    if flips:
        x = keras.layers.RandomFlip("horizontal")(x)
    scale = NETWORKS[network]["scale"]
    if scale:
        x = keras.layers.Rescaling(scale[0], offset=scale[1])(x)
    x = base(x, training=False)  # BatchNormalization stays in inference mode throughout
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs), base


def _features(network: str, x: np.ndarray, cut: str | None = None) -> np.ndarray:

    base = _base(network, cut)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = inputs
    scale = NETWORKS[network]["scale"]
    if scale:
        h = keras.layers.Rescaling(scale[0], offset=scale[1])(h)
    h = keras.layers.GlobalAveragePooling2D()(base(h, training=False))
    return keras.Model(inputs, h).predict(x.astype("float32"), batch_size=64, verbose=0)


def _head(classes: int, features: int):

    inputs = keras.Input((features,))
    out = keras.layers.Dense(classes, activation="softmax", name="head")(keras.layers.Dropout(0.2)(inputs))
    head = keras.Model(inputs, out)
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return head


def reference_probe(network, strategy, cut, data, seed, classes) -> list[dict]:
    """The probe variants on cached features (flips: the flipped training images added)."""

    (xtr, ytr), (xte, yte) = data
    t0 = time.perf_counter()
    ftr, fte = _features(network, xtr, cut), _features(network, xte, cut)
    fflip = _features(network, xtr[:, :, ::-1], cut)
    feat_s = time.perf_counter() - t0
    rows = []
    for flips in (False, True):
        fx = np.concatenate([ftr, fflip]) if flips else ftr
        fy = np.concatenate([ytr, ytr]) if flips else ytr
        keras.utils.set_random_seed(seed)
        head = _head(classes, ftr.shape[1])
        done, t1 = 0, time.perf_counter()
        for epochs in PROBE_EPOCHS:
            head.fit(fx, fy, batch_size=BATCH, epochs=epochs, initial_epoch=done, verbose=0)
            done = epochs
            acc = float((head.predict(fte, verbose=0).argmax(1) == yte).mean())
            rows.append({"strategy": strategy, "variant": f"{'flips' if flips else 'plain'},ep{epochs}",
                         "accuracy": acc, "seconds": feat_s * (1.5 if flips else 1.0) + time.perf_counter() - t1,
                         "cut": cut})
    return rows


class ScoreAt(keras.callbacks.Callback):
    """Scores the test images after the given epochs; training seconds exclude the scoring."""

    def __init__(self, at, xte, yte):
        super().__init__()
        self.at, self.xte, self.yte = set(at), xte, yte
        self.scores, self.train_s, self._t = {}, 0.0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.train_s += time.perf_counter() - self._t
        if epoch + 1 in self.at:
            prob = self.model.predict(self.xte, batch_size=64, verbose=0)
            self.scores[epoch + 1] = (float((prob.argmax(1) == self.yte).mean()), self.train_s,
                                      float((logs or {}).get("loss", float("nan"))))


def reference_finetune(network, run, data, seed, classes, warm_head) -> list[dict]:

    strategy, lr, flips, warm = run
    (xtr, ytr), (xte, yte) = data
    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    model, base = _model(network, classes, flips)
    if warm:
        model.get_layer("head").set_weights(warm_head["weights"])
    base.trainable = True
    if strategy == "ft_top":
        for layer in base.layers[: int(len(base.layers) * 2 / 3)]:
            layer.trainable = False
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    first_loss = float(model.evaluate(xtr.astype("float32"), ytr, batch_size=64, verbose=0)[0])
    setup = time.perf_counter() - t0 + (warm_head["seconds"] if warm else 0.0)
    score = ScoreAt(FT_EPOCHS, xte.astype("float32"), yte)
    model.fit(xtr.astype("float32"), ytr, batch_size=BATCH, epochs=max(FT_EPOCHS), verbose=0, callbacks=[score],
              shuffle=True)
    rows = []
    for ep, (acc, train_s, loss) in sorted(score.scores.items()):
        rows.append({"strategy": strategy, "variant": f"lr{lr:g},{'flips' if flips else 'plain'},"
                                                      f"{'warm' if warm else 'nowarm'},ep{ep}",
                     "accuracy": acc, "seconds": setup + train_s, "start_loss": first_loss, "end_loss": loss})
    return rows


def warm_head(network, data, seed, classes) -> dict:
    """The 20-epoch probe head on cached (unflipped) features: the fine-tuning runs' warm-up."""

    (xtr, ytr), _ = data
    t0 = time.perf_counter()
    ftr = _features(network, xtr)
    keras.utils.set_random_seed(seed)
    head = _head(classes, ftr.shape[1])
    head.fit(ftr, ytr, batch_size=BATCH, epochs=WARMUP_EPOCHS, verbose=0)
    return {"weights": head.get_layer("head").get_weights(), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ graft


def graft_arm(network: str, strategy: str, split: Path, seed: int, cache: dict) -> dict:
    """advise (forced strategy) on the training images, then run on the train/test folder."""
    from advisor import advise
    from advisor.advise import plan_for
    from surgery import run

    model = str(SHARED / "models" / NETWORKS[network]["file"])
    if "advice" not in cache:
        t0 = time.perf_counter()
        cache["advice"] = advise(split / "train", model=model)
        cache["seconds"] = time.perf_counter() - t0
        record_measurement(cache["advice"], cache["seconds"], **cache["record"])
    t0 = time.perf_counter()
    plan = plan_for(cache["advice"], strategy)  # the one measurement (similarity, cut, augmentation)
    cut = cache["advice"].facts.get("best_cut_layer")
    if strategy in ("truncate_probe", "lp_ft_cut") and cut:
        plan.surgery.cut = cut
    plan.data.path = str(split)
    plan.data.seed = seed
    advise_plan_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="graft-run-") as tmp:
        t0 = time.perf_counter()
        result = run(plan, out_dir=Path(tmp) / "run")
        seconds = time.perf_counter() - t0
    assert result.metrics["split"] == "test", result.metrics["split"]
    return {"accuracy": float(result.metrics["accuracy"]), "seconds": seconds,
            "advise_s": cache["seconds"] + advise_plan_s, "cut": plan.surgery.cut,
            "input_size": plan.data.input_size, "rule_choice": cache["advice"].decision.strategy,
            "augment": getattr(plan.data, "augmentation", None),
            "phases": [{"name": p.name, "solver": p.solver, "epochs_run": p.epochs_run, "steps": p.steps,
                        "seconds": p.seconds, "bottleneck": p.bottleneck} for p in result.phases],
            "history": [{k: v for k, v in h.items() if k in ("phase", "phase_epoch", "loss", "accuracy", "start_loss")}
                        for h in result.history],
            "notes": [n for n in result.notes if "fine-tun" in n or "kept" in n][:5],
            "guard": {k: v for k, v in (result.metrics.get("guard") or {}).items() if k != "reason"} or None,
            "refit": result.metrics.get("refit"), "estimate": result.metrics.get("estimate"),
            "splits": result.splits}


def record_measurement(advice, seconds: float, network: str, task: str, n: int, seed: int, path: Path) -> None:
    facts = {k: v for k, v in advice.facts.items() if isinstance(v, (int, float, str, bool, type(None)))}
    row = {"network": network, "task": task, "n": n, "seed": seed, "facts": facts,
           "rule_choice": advice.decision.strategy,
           "embedding": None if advice.embedding is None else advice.embedding.to_dict(),
           "seconds": round(seconds, 2), "commit": commit(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


# ------------------------------------------------------------------------------------------ commands


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_run(args) -> int:
    strategies = GRAFT_STRATEGIES if args.strategies == "all" else tuple(args.strategies.split(","))
    arms = tuple(args.arms.split(","))
    results = Path(args.results)
    have = {(r["network"], r["task"], r["n"], r["seed"], r["arm"], r["strategy"]) for r in load_rows(results)}
    key = (args.network, args.task, args.n, args.seed)
    split = split_dir(args.task, args.n, args.seed)
    classes = len([d for d in (split / "train").iterdir() if d.is_dir()])
    cache: dict = {"record": {"network": args.network, "task": args.task, "n": args.n, "seed": args.seed,
                              "path": Path(args.measurements)}}
    results.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[dict], arm: str) -> None:
        with results.open("a") as fh:
            for out in rows:
                row = {"network": args.network, "task": args.task, "n": args.n, "seed": args.seed, "arm": arm,
                       **out, "commit": commit(), "host_cpus": os.cpu_count(),
                       "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
                fh.write(json.dumps(row, default=str) + "\n")
                print(f"{args.network} {args.task} n={args.n} s={args.seed} {arm:9s} {out['strategy']:14s} "
                      f"{out.get('variant', ''):28s} acc {out['accuracy']:.3f} {out['seconds']:7.1f} s", flush=True)

    if "reference" in arms:
        data = None
        wanted = {"probe", "ft_top", "ft_all"} - {k[5] for k in have if k[:4] == key and k[4] == "reference"}
        if args.ref_strategies != "all":
            wanted &= set(args.ref_strategies.split(","))
        if wanted:
            data = (load_split(split, "train"), load_split(split, "test"))
        if "probe" in wanted:
            write(reference_probe(args.network, "probe", None, data, args.seed, classes), "reference")
        runs = [r for r in FT_RUNS if r[0] in wanted]
        if runs:
            wh = warm_head(args.network, data, args.seed, classes)
            for strategy in ("ft_top", "ft_all"):
                rows = []
                for r in (r for r in runs if r[0] == strategy):
                    rows += reference_finetune(args.network, r, data, args.seed, classes, wh)
                if rows:
                    write(rows, "reference")
    if "graft" in arms:
        for strategy in strategies:
            if (*key, "graft", strategy) in have and not args.force:
                continue
            out = graft_arm(args.network, strategy, split, args.seed, cache)
            write([{"strategy": strategy, **out}], "graft")
            if strategy == "truncate_probe" and (*key, "reference", "probe_cut") not in have:
                cut = out["cut"]
                data = (load_split(split, "train"), load_split(split, "test"))
                layer = None if cut in (None, "top", NETWORKS[args.network]["features"]) else cut
                write(reference_probe(args.network, "probe_cut", layer, data, args.seed, classes), "reference")
    return 0


def _last(rows: list[dict]) -> dict:
    """The last row of each (network, task, n, seed, arm, strategy, variant): reruns replace."""
    return {(r["network"], r["task"], r["n"], r["seed"], r["arm"], r["strategy"], r.get("variant")): r for r in rows}


def best_reference(last: dict, network, task, n, seeds, strategy) -> tuple[str | None, float, float, float]:
    """The variant with the best mean test accuracy over `seeds` (all seeds must have it): name,
    mean accuracy, std over seeds, mean seconds."""
    variants = {k[6] for k in last if k[:3] == (network, task, n) and k[4] == "reference" and k[5] == strategy}
    best = (None, -1.0, 0.0, 0.0)
    for v in sorted(variants, key=str):
        rows = [last.get((network, task, n, s, "reference", strategy, v)) for s in seeds]
        if any(r is None for r in rows):
            continue
        acc = np.array([r["accuracy"] for r in rows])
        if acc.mean() > best[1]:
            best = (v, float(acc.mean()), float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    float(np.mean([r["seconds"] for r in rows])))
    return best


def table(rows: list[dict]) -> str:
    """Markdown: per network, task, size and graft strategy, graft's mean over seeds against the best
    plain variant of the same strategy (its name), the difference, and the seconds of each; then per
    network and strategy the mean and worst difference."""
    last = _last(rows)
    lines = ["| network | task | n/class | seeds | strategy | graft acc (± sd) | best plain variant | plain acc (± sd) "
             "| diff (points) | graft s | plain s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict = {}
    for network in NETWORKS:
        for task in TASKS:
            for n in sorted({k[2] for k in last}):
                for strategy in (*GRAFT_STRATEGIES, "finetune_all"):
                    seeds = sorted({k[3] for k in last if k[:3] == (network, task, n) and k[4] == "graft"
                                    and k[5] == strategy})
                    ref = REFERENCE_OF[strategy]
                    seeds = [s for s in seeds if any(k[:5] == (network, task, n, s, "reference") and k[5] == ref
                                                     for k in last)]
                    if not seeds:
                        continue
                    g = np.array([last[(network, task, n, s, "graft", strategy, None)]["accuracy"] for s in seeds])
                    gs = np.mean([last[(network, task, n, s, "graft", strategy, None)]["seconds"] for s in seeds])
                    v, racc, rsd, rs = best_reference(last, network, task, n, seeds, ref)
                    if v is None:
                        continue
                    diff = (g.mean() - racc) * 100
                    summary.setdefault((network, strategy, n), []).append((diff, task, gs / max(rs, 1e-9)))
                    gsd = g.std(ddof=1) if len(g) > 1 else 0.0
                    lines.append(f"| {network} | {task} | {n} | {','.join(map(str, seeds))} | {strategy} | "
                                 f"{g.mean():.3f} ± {gsd:.3f} | {v} | {racc:.3f} ± {rsd:.3f} | {diff:+.1f} | "
                                 f"{gs:.0f} | {rs:.0f} |")
    out = ["| network | strategy | n/class | tasks | mean diff (points) | worst task (points) | within 1 point "
           "| time / best plain |", "|---|---|---|---|---|---|---|---|"]
    for (network, strategy, n), d in sorted(summary.items()):
        diffs = np.array([x[0] for x in d])
        worst = min(d)
        out.append(f"| {network} | {strategy} | {n} | {len(d)} | {diffs.mean():+.1f} | {worst[1]} {worst[0]:+.1f} | "
                   f"{int((diffs >= -1).sum())}/{len(d)} | {np.mean([x[2] for x in d]):.2f} |")
    return "\n".join(out + ["", *lines])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one part (network, task, size, seed) and append its rows")
    p.add_argument("--network", required=True, choices=tuple(NETWORKS))
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--n", type=int, required=True, help="training images per class (10 or 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", default="all", help="graft strategies, comma-separated, or all")
    p.add_argument("--ref-strategies", default="all", help="reference strategies (probe,ft_top,ft_all) or all")
    p.add_argument("--arms", default="reference,graft")
    p.add_argument("--force", action="store_true", help="rerun graft arms already recorded")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--measurements", default=str(MEASUREMENTS))
    p.set_defaults(func=cmd_run)
    t = sub.add_parser("table", help="print the markdown table of the results so far")
    t.add_argument("--results", default=str(RESULTS))
    t.set_defaults(func=lambda a: print(table(load_rows(Path(a.results)))) or 0)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
