"""Size curve (issue 22): test accuracy, wall time, peak memory and advise's expected time of each
transfer strategy as the training set grows from 1,000 to 50,000 images.

    taskset -c 0 .venv/bin/python bench/size_curve.py run --size 1000 --arm linear_probe
    taskset -c 0 .venv/bin/python bench/size_curve.py run --size 50000 --arm finetune_all --epochs 1
    .venv/bin/python bench/size_curve.py table            # the Markdown table of every row so far

Run by hand, never in tests. Data: real CIFAR-10 (`../shared/data/cifar10-images.tar.gz`), extracted
once under `$GRAFT_BENCH_DIR` (default /tmp/graft-bench). Training subsets are stratified and
deterministic: in each class the train/ files sorted by name, shuffled with `random.Random(0)`, the
first SIZE/10 taken (so 1k is inside 5k, inside 25k, inside 50k). Test images: a fixed stratified
2,000 of the 10,000 test images (the first 200 per class in the same order), the same for every row.
The split is hard-linked as WORK/size_curve/cifar10-nSIZE/{train,test}/CLASS/FILE.

Network: MobileNet v1 (ImageNet, `../shared/models/mobilenet_v1_imagenet_notop.keras`) at 64 x 64 px
(CIFAR's 32 px upsampled twice), not graft's 160 px CPU default: one training epoch over 50,000
images at 160 px takes hours on the one core this bench may use; at 64 px about half an hour.

Each size is advised once (`advisor.advise` with the default rules.yaml on the train/ images: the
rules' own choice, case, rule and similarity are recorded in every row of that size); each arm's
plan is then `plan_for(advice, STRATEGY)` (what `advise --strategy` writes) with three edits: the
input size (64 px), the epochs of the phases that train the backbone (`--epochs`, default 2; the
head phase stays the convex fit), and `data.path` (the train/test folder, so accuracy is measured on
the test images). `apply` runs as `python cli.py apply PLAN` in its own process (so its peak memory
is its own), and the row takes `metrics.json`: accuracy, `memory.peak_rss_mib`, `time` (measured
seconds and the plan's expected seconds). Because the epochs and input size are not the ones advise
planned for, the plan's `decision.expected` is recomputed with advise's own formulas
(`advisor.advise.estimate_cost`, `advisor.expect.expect`) for the edited phases and the forward
speed graft measures at 64 px on this machine (`advisor.embed.embed` on 200 of the images); advise's
original estimate (its 160 px plan and epochs) is kept as `advise_expected_s`.

Arms:
- `linear_probe`: the whole base frozen, the head fitted to convergence on bottleneck features.
- `top_third` (`lp_ft_top`): that head, then the top third of the layers fine-tuned.
- `finetune_all`: that head, then every layer fine-tuned (BatchNorm frozen, guarded on a held-out
  fifth, head refit at the end).
- `scratch`: the same network with random weights (`phases[0].weights: random`), every layer
  trained, BatchNorm training (`surgery.bn: follow`), Adam 1e-3 with a cosine schedule, no hold-out.
- `scratch_trial`: `finetune_or_scratch`'s fallback trial (pretrained vs random, every layer, for
  the trial's epochs each); the run stops after it (`stop_after_epochs`), and the row records which
  initialization the trial chose and its two validation accuracies.

Each part appends one JSON row to bench/results/size_curve.jsonl; a part already recorded is skipped
(a row marked `invalid`, with the reason, does not count and is left out of the table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import commit  # noqa: E402

SHARED = Path(os.environ.get("GRAFT_SHARED", ROOT.parent / "shared"))
RESULTS = ROOT / "bench" / "results" / "size_curve.jsonl"
WORK = Path(os.environ.get("GRAFT_BENCH_DIR", Path(tempfile.gettempdir()) / "graft-bench"))
MODEL = SHARED / "models" / "mobilenet_v1_imagenet_notop.keras"
DOMAIN = "cifar10"
INPUT = 64
TEST_PER_CLASS = 200
SEED = 0
ARMS = {"linear_probe": "linear_probe", "top_third": "lp_ft_top", "finetune_all": "finetune_all",
        "scratch": "finetune_all", "scratch_trial": "finetune_or_scratch"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------ data


def cifar_root() -> Path:
    """WORK/cifar10/{train,test}/CLASS/*.jpg, extracted once."""
    root = WORK / "cifar10"
    if not (root / "test").exists():
        with tarfile.open(SHARED / "data" / "cifar10-images.tar.gz") as tar:
            tar.extractall(root, filter="data")
    return root


def _ordered(folder: Path) -> list[str]:
    files = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(SEED).shuffle(files)
    return files


def split_dir(size: int) -> Path:
    """WORK/size_curve/cifar10-nSIZE/{train,test}/CLASS/FILE (hard links): SIZE/10 training images per
    class, TEST_PER_CLASS test images per class; made once."""
    out = WORK / "size_curve" / f"{DOMAIN}-n{size}"
    if (out / ".done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    root = cifar_root()
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    for part, count in (("train", size // len(classes)), ("test", TEST_PER_CLASS)):
        for cls in classes:
            names = _ordered(root / part / cls)[:count]
            if len(names) < count:
                raise SystemExit(f"{root / part / cls} has {len(names)} images; {count} asked")
            (out / part / cls).mkdir(parents=True, exist_ok=True)
            for name in names:
                try:
                    os.link(root / part / cls / name, out / part / cls / name)
                except OSError:
                    shutil.copy2(root / part / cls / name, out / part / cls / name)
    (out / ".done").write_text("")
    return out


# ------------------------------------------------------------------------------------------ plans


def _forward_rate(train: Path) -> float:
    """Images/s of the network's forward pass at INPUT px, as graft measures it (advisor.embed)."""
    from advisor.embed import embed, sample_dataset
    from surgery import layer_graph, load_model

    graph = layer_graph(load_model(str(MODEL), weights="imagenet", safe_mode=True))
    return float(embed(graph, sample_dataset(train, per_class=20, seed=SEED), size=INPUT).forward_rate)


def _edit(plan, arm: str, epochs: int, split: Path) -> None:
    """The bench's edits of advise's plan (module docstring)."""
    from graft.plan import Phase

    plan.data.path = str(split)
    plan.data.input_size = [INPUT, INPUT]
    plan.data.seed = SEED
    if arm == "scratch":
        plan.surgery.bn = "follow"
        plan.training.phases = [Phase(name="scratch", trainable="all", epochs=epochs, learning_rate=1e-3,
                                      weights="random", min_steps=30, schedule="cosine")]
        plan.training.refit_head = False
        plan.data.validation_split = 0.0
        return
    for ph in plan.training.phases:
        if ph.trainable != "head":
            ph.epochs = epochs


def _strategy_dict(plan) -> dict:
    """The plan's phases as a rules-file strategy (for `estimate_cost`)."""
    out = {"phases": [{"trainable": p.trainable, "epochs": p.epochs, "min_steps": p.min_steps}
                      for p in plan.training.phases]}
    if plan.training.fallback is not None:
        out["fallback"] = {"scratch_trial_epochs": plan.training.fallback.scratch_trial_epochs}
    return out


def _reexpect(plan, strategy: str, train_images: int, rate: float, probe: float | None) -> None:
    """decision.expected for the edited phases at the measured INPUT-px speed (advise's formulas)."""
    from advisor.advise import estimate_cost
    from advisor.expect import expect

    held = int(train_images * (1 - plan.data.validation_split))
    cost = estimate_cost(_strategy_dict(plan), held, bool(plan.data.augmentation), 1.0, plan.data.batch_size)
    plan.decision.expected_cost = cost
    plan.decision.expected = expect(strategy, cost["base_forward_passes"], probe, rate).to_dict()


def prepare(size: int) -> dict:
    """Advise once per size; write one plan per arm (for every epochs value asked later, see plan_path)."""
    split = split_dir(size)
    info_path = split / "advice.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    from advisor import advise

    t0 = time.perf_counter()
    advice = advise(split / "train", model=str(MODEL))
    advise_s = time.perf_counter() - t0
    rate = _forward_rate(split / "train")
    import pickle

    (split / "advice.pkl").write_bytes(pickle.dumps(advice))
    d = advice.decision
    info = {"rule_choice": d.strategy, "rule": d.rule, "case": d.case, "runner_up": d.runner_up,
            "similarity": advice.facts.get("similarity"), "probe_score": advice.facts.get("best_cut_score"),
            "probe_lower": advice.facts.get("probe_lower"), "advise_s": round(advise_s, 1),
            "advise_input": advice.plan.data.input_size, "forward_rate_advise": getattr(advice.embedding, "forward_rate", None),
            "forward_rate": round(rate, 1), "rule_expected": advice.plan.decision.expected}
    info_path.write_text(json.dumps(info, indent=1, default=str))
    return info


def plan_path(size: int, arm: str, epochs: int) -> Path:
    """The plan of one part, written from the cached advice."""
    import pickle

    from advisor.advise import plan_for
    from graft.plan import save_plan

    split = split_dir(size)
    out = split / "plans" / f"{arm}-e{epochs}.yaml"
    if out.exists():
        return out
    info = prepare(size)
    advice = pickle.loads((split / "advice.pkl").read_bytes())
    plan = plan_for(advice, ARMS[arm])
    original = dict(plan.decision.expected)
    _edit(plan, arm, epochs, split)
    _reexpect(plan, ARMS[arm], size, info["forward_rate"], info["probe_score"])
    plan.decision.reasons = plan.decision.reasons + [
        f"bench/size_curve.py: {INPUT} px, backbone phases {epochs} epoch(s); advise's own estimate for its "
        f"plan was {original.get('seconds')} s"]
    save_plan(plan, out)
    (out.with_suffix(".advise_expected")).write_text(json.dumps(original))
    return out


# ------------------------------------------------------------------------------------------ runs


def recorded() -> set[tuple]:
    if not RESULTS.exists():
        return set()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["domain"], r["size"], r["arm"], r["epochs"]) for r in rows if not r.get("invalid")}


def _trial(plan_file: Path, run_dir: Path) -> dict:
    """The scratch trial alone: apply stopped after the first epoch; the trial from state.json."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from graft.plan import load_plan\nfrom surgery import run\n"
            f"run(load_plan({str(plan_file)!r}), out_dir={str(run_dir)!r}, stop_after_epochs=1)\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"scratch trial failed:\n{proc.stderr[-4000:]}")
    state = json.loads((run_dir / "state.json").read_text())
    return {"seconds": round(time.perf_counter() - t0, 1), "fallback": state.get("fallback")}


def run_part(size: int, arm: str, epochs: int) -> dict | None:
    if (DOMAIN, size, arm, epochs) in recorded():
        print(f"already recorded: {DOMAIN} {size} {arm} e{epochs}")
        return None
    info = prepare(size)
    plan_file = plan_path(size, arm, epochs)
    run_dir = WORK / "size_curve" / "runs" / f"{DOMAIN}-n{size}-{arm}-e{epochs}"
    shutil.rmtree(run_dir, ignore_errors=True)
    row = {"domain": DOMAIN, "network": MODEL.stem, "input": INPUT, "size": size, "arm": arm,
           "strategy": ARMS[arm], "epochs": epochs, "test_images": TEST_PER_CLASS * 10, **info}
    row["advise_expected_s"] = json.loads(plan_file.with_suffix(".advise_expected").read_text()).get("seconds")
    if arm == "scratch_trial":
        row.update(_trial(plan_file, run_dir))
    else:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file), "--out", str(run_dir)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"apply failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        wall = time.perf_counter() - t0
        m = json.loads((run_dir / "metrics.json").read_text())
        phases = json.loads((run_dir / "state.json").read_text()).get("phases", [])
        row.update({"accuracy": m["accuracy"], "split": m.get("split"), "seconds": m["time"]["seconds"],
                    "expected_s": m["time"]["expected_seconds"], "ratio": m["time"]["ratio"],
                    "process_s": round(wall, 1), "peak_rss_mib": m["memory"]["peak_rss_mib"],
                    "image_cache": m["memory"].get("image_cache"), "features": m["memory"].get("features"),
                    "guard": {k: v for k, v in (m.get("guard") or {}).items() if k != "reason"} or None,
                    "phases": [{k: p.get(k) for k in ("name", "epochs_run", "steps", "seconds", "bottleneck",
                                                        "solver")} for p in phases]})
    row.update({"commit": commit(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
    return row


# ------------------------------------------------------------------------------------------ table


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    """One Markdown line per valid row, ordered by domain, size and arm (a row marked `invalid`, with
    the reason, is kept in the file for the record and left out here)."""
    order = list(ARMS)
    rows = [r for r in rows if not r.get("invalid")]
    out = ["| domain | images | arm | epochs | test acc | seconds | expected s | measured/expected | peak RSS MiB "
           "| rules chose | trial |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: (r["domain"], r["size"], order.index(r["arm"]) if r["arm"] in order else 99,
                                         r["epochs"])):
        fb = r.get("fallback") or {}
        trial = (f"{fb.get('chosen')} (val {fb['val_accuracy']['pretrained']:.3f} pretrained, "
                 f"{fb['val_accuracy']['random']:.3f} random)" if fb.get("val_accuracy") else "-")
        out.append(f"| {r['domain']} | {r['size']:,} | {r['arm']} | {r['epochs']} | {_f(r.get('accuracy'), '.3f')} "
                   f"| {_f(r.get('seconds'), '.0f')} | {_f(r.get('expected_s'), '.0f')} | {_f(r.get('ratio'), '.2f')} "
                   f"| {_f(r.get('peak_rss_mib'), ',.0f')} | {r.get('rule_choice', '-')} ({r.get('rule', '-')}) "
                   f"| {trial} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one part: a size and an arm; appends a row")
    r.add_argument("--size", type=int, required=True, help="training images (a multiple of 10, at most 50000)")
    r.add_argument("--arm", choices=list(ARMS), required=True)
    r.add_argument("--epochs", type=int, default=2, help="epochs of each phase that trains the backbone")
    t = sub.add_parser("table", help="print the Markdown table of bench/results/size_curve.jsonl")
    t.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.cmd == "table":
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        print(table(rows))
        return 0
    row = run_part(args.size, args.arm, args.epochs)
    if row is not None:
        print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
