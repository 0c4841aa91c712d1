"""Real-data transfer bench: every strategy of rules.yaml, graft against a plain hand-written Keras
reference of the same strategy, on six real domains with the real ImageNet EfficientNet-Lite0.

Tasks (../shared/data): CIFAR-10 and the five sets of devsuite.tar.gz. Split as
../shared/data/README.md says: classes sorted by name; in each class, files sorted by name, then
shuffled with `random.Random(seed)`; the first 40 are test images, the next N (10 or 60) training
images. Both arms train on exactly the N x classes training images and are scored on the same test
images.

    # one part (one task, one size, one seed): appends one JSON line per (arm, strategy)
    python bench/transfer.py run --task dtd_textures --n 10 --seed 0
    python bench/transfer.py run --task cifar10 --n 60 --seed 1 --strategies linear_probe,lp_ft
    # the table (markdown) from everything appended so far
    python bench/transfer.py table > /tmp/table.md

The reference is written the way the Keras transfer-learning guide writes it
(keras.io/guides/transfer_learning): `image_dataset_from_directory` at a fixed size, cached;
RandomFlip + RandomRotation(0.1) in the model; the base called with `training=False`; a new
GlobalAveragePooling + Dropout(0.2) + Dense head trained with Adam(1e-3); then, for the fine-tuning
strategies, the chosen layers unfrozen and trained with Adam(1e-4) for a fixed number of epochs.
Every image is used for training; nothing is held out.

graft's arm is what a user runs: `advise(train images, model, strategy=NAME)` then `run(plan)` on a
folder whose train/ and test/ sub-folders hold the split (so the plan trains on train/ and reports
on test/). Wall time of graft is `run`'s (the advise measurement, done once per data set, is
reported apart as `advise_s`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The split protocol, the task folders and the row files are bench/recipes.py's (a superset of tasks).
from bench.recipes import load_rows, split_dir, task_root  # noqa: E402,F401

SHARED = Path(os.environ.get("GRAFT_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "efficientnet_lite0_imagenet.keras"
RESULTS = ROOT / "bench" / "results" / "transfer.jsonl"
#: One row per (task, n, seed): the facts advise measured on the training images and the whole
#: embedding measurement (shift profile, per-cut probe scores), so rule tables can be scored offline.
MEASUREMENTS = ROOT / "bench" / "results" / "measurements.jsonl"
TASKS = ("cifar10", "rsscn7_aerial", "pbc_bloodcells", "dtd_textures", "quickdraw_sketches", "fashion_mnist")
STRATEGIES = ("linear_probe", "truncate_probe", "lp_ft_top", "lp_ft", "finetune_all", "finetune_or_scratch")

# The reference's fixed settings (the guide's, with 1e-4 for fine-tuning as the hand-written runs).
REF_SIZE = 160          # the size the model README recommends on CPU
REF_BATCH = 32
REF_PROBE_EPOCHS = 20   # the guide trains the new top for 20 epochs
REF_WARMUP_EPOCHS = 10  # head warm-up before fine-tuning
REF_FT_EPOCHS = 10
REF_FT_LR = 1e-4
REF_TRIAL_EPOCHS = 2    # finetune_or_scratch: pretrained vs random, as graft's fallback trial


# ------------------------------------------------------------------------------------------ reference


def _ref_data(split: Path, seed: int):
    import keras
    import tensorflow as tf

    def load(part, shuffle):
        ds = keras.utils.image_dataset_from_directory(split / part, image_size=(REF_SIZE, REF_SIZE),
                                                      batch_size=None, shuffle=shuffle, seed=seed,
                                                      color_mode="rgb", verbose=False)
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(REF_BATCH).prefetch(tf.data.AUTOTUNE)

    return load("train", True), load("test", False)


def reference(strategy: str, split: Path, seed: int, cut: str | None, classes: int) -> dict:
    """A plain Keras transfer of the strategy; returns test accuracy and seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    train, test = _ref_data(split, seed)
    full = keras.models.load_model(MODEL, safe_mode=True)
    layer = cut if strategy == "truncate_probe" and cut else "top_activation"
    base = keras.Model(full.input, full.get_layer(layer).output, name="base")
    base.trainable = False
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)],
                               name="augment")
    inputs = keras.Input((REF_SIZE, REF_SIZE, 3))
    x = base(augment(inputs), training=False)  # BatchNormalization stays in inference mode throughout
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    def fit(lr, epochs):
        nonlocal model
        model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(train, epochs=epochs, verbose=0)

    if strategy in ("linear_probe", "truncate_probe"):
        fit(1e-3, REF_PROBE_EPOCHS)
    elif strategy in ("lp_ft", "lp_ft_top"):
        fit(1e-3, REF_WARMUP_EPOCHS)
        base.trainable = True
        if strategy == "lp_ft_top":
            for lyr in base.layers[: int(len(base.layers) * 2 / 3)]:
                lyr.trainable = False
        fit(REF_FT_LR, REF_FT_EPOCHS)
    else:  # finetune_all, finetune_or_scratch: replace the last layer, fine-tune everything
        base.trainable = True
        if strategy == "finetune_or_scratch":
            trial = _scratch_trial(model, train, seed)
            if trial["chosen"] == "random":
                model = keras.models.clone_model(model)  # fresh weights from every initializer
        fit(REF_FT_LR, REF_FT_EPOCHS)
    acc = float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])
    out = {"accuracy": acc, "seconds": time.perf_counter() - t0}
    if strategy == "finetune_or_scratch":
        out["trial"] = trial
    return out


def _scratch_trial(model, train, seed: int, epochs: int = REF_TRIAL_EPOCHS, margin: float = 0.01) -> dict:
    """Train a pretrained and a randomly initialized copy for a few epochs; keep random if it wins
    on the training images (there is no hold-out) by more than `margin`."""
    import keras

    scores = {}
    for init in ("pretrained", "random"):
        keras.utils.set_random_seed(seed)
        trial = keras.models.clone_model(model)
        if init == "pretrained":
            trial.set_weights(model.get_weights())
        trial.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        trial.fit(train, epochs=epochs, verbose=0)
        scores[init] = float(trial.evaluate(train, verbose=0, return_dict=True)["accuracy"])
    return {"scores": scores, "chosen": "random" if scores["random"] > scores["pretrained"] + margin else "pretrained"}


# ------------------------------------------------------------------------------------------ graft


def graft_arm(strategy: str, split: Path, seed: int, advice_cache: dict) -> dict:
    """advise (forced strategy) on the training images, then run on the train/test folder."""
    from advisor import advise
    from surgery import run

    if "advice" not in advice_cache:
        t0 = time.perf_counter()
        advice_cache["advice"] = advise(split / "train", model=str(MODEL))
        advice_cache["seconds"] = time.perf_counter() - t0
        if advice_cache.get("record"):
            record_measurement(advice_cache["advice"], advice_cache["seconds"], **advice_cache["record"])
    base = advice_cache["advice"]
    t0 = time.perf_counter()
    advice = advise(split / "train", model=str(MODEL), strategy=strategy, measure=False)
    plan = advice.plan
    # The measured cut and facts come from the one measurement above (advise measures once).
    cut = base.facts.get("best_cut_layer")
    if strategy == "truncate_probe" and cut and cut != "top_activation":
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
            "advise_s": advice_cache["seconds"] + advise_plan_s, "cut": plan.surgery.cut,
            "input_size": plan.data.input_size, "rule_choice": base.decision.strategy,
            "phases": [{"name": p.name, "solver": p.solver, "epochs_run": p.epochs_run, "steps": p.steps,
                        "seconds": p.seconds, "bottleneck": p.bottleneck} for p in result.phases],
            "estimate": result.metrics.get("estimate", {}).get("method")}


def record_measurement(advice, seconds: float, task: str, n: int, seed: int, path: Path = MEASUREMENTS) -> None:
    """Append what advise measured on a split's training images (facts + embedding measurement)."""
    facts = {k: v for k, v in advice.facts.items() if isinstance(v, (int, float, str, bool, type(None)))}
    row = {"task": task, "n": n, "seed": seed, "facts": facts, "rule_choice": advice.decision.strategy,
           "embedding": None if advice.embedding is None else advice.embedding.to_dict(),
           "seconds": round(seconds, 2), "commit": commit(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def cmd_measure(args) -> int:
    """Record the measurement of each (task, n, seed) that has result rows but no measurement row."""
    from advisor import advise

    done = {(m["task"], m["n"], m["seed"]) for m in load_rows(Path(args.measurements))}
    wanted = sorted({(r["task"], r["n"], r["seed"]) for r in load_rows(Path(args.results))} - done)
    for task, n, seed in wanted:
        split = split_dir(task, n, seed)
        t0 = time.perf_counter()
        advice = advise(split / "train", model=str(MODEL))
        record_measurement(advice, time.perf_counter() - t0, task, n, seed, Path(args.measurements))
        print(f"{task} n={n} seed={seed}: similarity {advice.facts.get('similarity')}, "
              f"rules choose {advice.decision.strategy}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ commands


def cmd_run(args) -> int:
    strategies = STRATEGIES if args.strategies == "all" else tuple(args.strategies.split(","))
    arms = tuple(args.arms.split(","))
    split = split_dir(args.task, args.n, args.seed)
    classes = len([d for d in (split / "train").iterdir() if d.is_dir()])
    cache: dict = {"record": {"task": args.task, "n": args.n, "seed": args.seed,
                              "path": Path(args.measurements)}}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    for strategy in strategies:
        for arm in arms:
            if arm == "graft":
                out = graft_arm(strategy, split, args.seed, cache)
            else:
                if "advice" not in cache and strategy == "truncate_probe":
                    graft_arm("linear_probe", split, args.seed, cache)  # for the measured cut
                cut = cache["advice"].facts.get("best_cut_layer") if "advice" in cache else None
                out = reference(strategy, split, args.seed, cut, classes)
                out["cut"] = cut if strategy == "truncate_probe" else None
            row = {"task": args.task, "n": args.n, "seed": args.seed, "strategy": strategy, "arm": arm,
                   **out, "commit": commit(), "host_cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with results.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{args.task} n={args.n} seed={args.seed} {strategy:20s} {arm:9s} "
                  f"acc {out['accuracy']:.3f}  {out['seconds']:6.1f} s", flush=True)
    return 0


def table(rows: list[dict]) -> str:
    """Markdown: per strategy and size, graft vs reference (mean accuracy, mean seconds) over the
    (task, seed) pairs both arms ran; then per task the best strategy of each arm."""
    import numpy as np

    # Keep the last row of each (task, n, seed, strategy, arm): a rerun replaces an earlier one.
    last = {}
    for r in rows:
        last[(r["task"], r["n"], r["seed"], r["strategy"], r["arm"])] = r
    out = ["| strategy | n/class | runs | graft acc | reference acc | diff (points) | graft s | reference s | time ratio |",
           "|---|---|---|---|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        for n in sorted({k[1] for k in last}):
            pairs = [(last[k], last[(k[0], k[1], k[2], k[3], "reference")]) for k in last
                     if k[3] == strategy and k[1] == n and k[4] == "graft"
                     and (k[0], k[1], k[2], k[3], "reference") in last]
            if not pairs:
                continue
            g = np.array([[p[0]["accuracy"], p[0]["seconds"]] for p in pairs])
            r = np.array([[p[1]["accuracy"], p[1]["seconds"]] for p in pairs])
            diff = (g[:, 0] - r[:, 0]) * 100
            out.append(f"| {strategy} | {n} | {len(pairs)} | {g[:, 0].mean():.3f} | {r[:, 0].mean():.3f} | "
                       f"{diff.mean():+.1f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.1f} | "
                       f"{g[:, 1].mean():.1f} | {r[:, 1].mean():.1f} | {g[:, 1].mean() / r[:, 1].mean():.2f} |")
    out += ["", "| task | n/class | seeds | graft: best strategy (acc) | reference: best strategy (acc) |",
            "|---|---|---|---|---|"]
    for task in TASKS:
        for n in sorted({k[1] for k in last}):
            cells = []
            seeds = sorted({k[2] for k in last if k[0] == task and k[1] == n})
            if not seeds:
                continue
            for arm in ("graft", "reference"):
                means = {}
                for s in STRATEGIES:
                    accs = [last[(task, n, sd, s, arm)]["accuracy"] for sd in seeds if (task, n, sd, s, arm) in last]
                    if len(accs) == len(seeds):
                        means[s] = float(np.mean(accs))
                best = max(means, key=means.get) if means else None
                cells.append(f"{best} ({means[best]:.3f})" if best else "-")
            out.append(f"| {task} | {n} | {','.join(map(str, seeds))} | {cells[0]} | {cells[1]} |")
    out += ["", "Per task (mean over the seeds run; accuracy, seconds):", "",
            "| task | n/class | strategy | seeds | graft acc | ref acc | graft s | ref s |", "|---|---|---|---|---|---|---|---|"]
    for task in TASKS:
        for n in sorted({k[1] for k in last}):
            for s in STRATEGIES:
                seeds = sorted({k[2] for k in last if k[0] == task and k[1] == n and k[3] == s
                                and (task, n, k[2], s, "graft") in last and (task, n, k[2], s, "reference") in last})
                if not seeds:
                    continue
                g = [last[(task, n, sd, s, "graft")] for sd in seeds]
                r = [last[(task, n, sd, s, "reference")] for sd in seeds]
                out.append(f"| {task} | {n} | {s} | {','.join(map(str, seeds))} | "
                           f"{np.mean([x['accuracy'] for x in g]):.3f} | {np.mean([x['accuracy'] for x in r]):.3f} | "
                           f"{np.mean([x['seconds'] for x in g]):.1f} | {np.mean([x['seconds'] for x in r]):.1f} |")
    out += ["", advice_table(last)]
    return "\n".join(out)


def advice_table(last: dict) -> str:
    """How good the rules' choice is among graft's own strategies: per (task, n), the oracle (best
    strategy by mean test accuracy over the seeds run), the rules' choice and its regret (points
    below the oracle); then every static default ("always X") beside the rules."""
    import numpy as np

    rows, regrets, times = [], {"rules": []}, {"rules": []}
    for s in STRATEGIES:
        regrets[s], times[s] = [], []
    for task in TASKS:
        for n in sorted({k[1] for k in last}):
            seeds = sorted({k[2] for k in last if k[0] == task and k[1] == n and k[4] == "graft"})
            full = [sd for sd in seeds if all((task, n, sd, s, "graft") in last for s in STRATEGIES)]
            if not full:
                continue
            acc = {s: float(np.mean([last[(task, n, sd, s, "graft")]["accuracy"] for sd in full])) for s in STRATEGIES}
            sec = {s: float(np.mean([last[(task, n, sd, s, "graft")]["seconds"] for sd in full])) for s in STRATEGIES}
            oracle = max(acc, key=acc.get)
            chosen = last[(task, n, full[0], "linear_probe", "graft")].get("rule_choice")
            if chosen not in acc:
                continue
            for s in STRATEGIES:
                regrets[s].append((acc[oracle] - acc[s]) * 100)
                times[s].append(sec[s] / sec["finetune_all"])
            regrets["rules"].append((acc[oracle] - acc[chosen]) * 100)
            times["rules"].append(sec[chosen] / sec["finetune_all"])
            rows.append(f"| {task} | {n} | {','.join(map(str, full))} | {oracle} ({acc[oracle]:.3f}) | "
                        f"{chosen} ({acc[chosen]:.3f}) | {(acc[oracle] - acc[chosen]) * 100:.1f} |")
    if not rows:
        return ""
    out = ["Advice (graft's strategies only): the oracle and the rules' choice per task", "",
           "| task | n/class | seeds | oracle (acc) | rules' choice (acc) | regret (points) |", "|---|---|---|---|---|---|",
           *rows, "", "| policy | mean regret (points) | within 1 point | wall time / always finetune_all |",
           "|---|---|---|---|"]
    for name in ("rules", *STRATEGIES):
        r = np.array(regrets[name])
        label = "rules.yaml (default)" if name == "rules" else f"always {name}"
        out.append(f"| {label} | {r.mean():.1f} | {int((r <= 1).sum())}/{len(r)} | {np.mean(times[name]):.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one part (task, size, seed) and append its rows")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--n", type=int, required=True, help="training images per class (10 or 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", default="all", help="comma-separated, or all")
    p.add_argument("--arms", default="graft,reference")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--measurements", default=str(MEASUREMENTS))
    p.set_defaults(func=cmd_run)
    m = sub.add_parser("measure", help="record advise's measurement for result rows that lack one")
    m.add_argument("--results", default=str(RESULTS))
    m.add_argument("--measurements", default=str(MEASUREMENTS))
    m.set_defaults(func=cmd_measure)
    t = sub.add_parser("table", help="print the markdown table of the results so far")
    t.add_argument("--results", default=str(RESULTS))
    t.set_defaults(func=lambda a: print(table(load_rows(Path(a.results)))) or 0)
    args = parser.parse_args(argv)
    if args.command in ("run", "measure") and not MODEL.exists():
        parser.error(f"{MODEL} not found; set GRAFT_SHARED to the folder holding models/ and data/")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
