"""Does `advise --trial` pay for its time? Run the trial on the bench's splits and record its pick.

For each (task, n, seed) split of bench/transfer.py, `advise` runs on the training images, then
`advisor.trial.race` with the given budget. The row records the rules' choice, the trial's winner,
the race and its seconds; bench/advice.py then scores "rules + trial" with the test accuracy each
strategy really reached on that split (bench/results/transfer.jsonl) and charges the trial's seconds
on top of the chosen strategy's run.

    python bench/trial.py --task dtd_textures --n 10 --seed 0 --budget 60
    python bench/trial.py --all --n 10 --seed 0 --budget 60      # every task
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import commit  # noqa: E402
from bench.transfer import MODEL, TASKS, split_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRIALS = ROOT / "bench" / "results" / "trial.jsonl"


def one(task: str, n: int, seed: int, budget: float, out: Path) -> dict:
    from advisor import advise
    from advisor.trial import race

    split = split_dir(task, n, seed)
    t0 = time.perf_counter()
    advice = advise(split / "train", model=str(MODEL))
    advise_s = time.perf_counter() - t0
    trial = race(advice, budget)
    row = {"task": task, "n": n, "seed": seed, "budget": budget, "rules_choice": advice.decision.strategy,
           "runner_up": advice.decision.runner_up, "winner": trial.winner, "switched": trial.switched,
           "seconds": round(trial.seconds, 1), "advise_s": round(advise_s, 1), "trial": trial.to_dict(),
           "commit": commit(), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(f"{task} n={n} seed={seed}: rules {row['rules_choice']}, trial {row['winner']} "
          f"({'switched' if row['switched'] else 'kept'}) in {row['seconds']:.0f} s", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--all", action="store_true", help="every task")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--out", default=str(TRIALS))
    args = parser.parse_args(argv)
    if not MODEL.exists():
        parser.error(f"{MODEL} not found; set GRAFT_SHARED to the folder holding models/ and data/")
    if not args.all and not args.task:
        parser.error("give --task or --all")
    for task in (TASKS if args.all else (args.task,)):
        one(task, args.n, args.seed, args.budget, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
