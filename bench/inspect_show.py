"""Wall time of `python cli.py inspect MODEL --show DATASET` with EfficientNet-Lite0 on 1,000 images.

Runs the command as a user does (a fresh process: Python, TensorFlow and the model load included),
`--repeats` times, on a stratified sample of `--images` images of a class-per-folder data set (default:
CIFAR-10's test split, 10 classes x 100, extracted from ../shared/data/cifar10-images.tar.gz), and
reads the per-step seconds the page records in show.json.

    .venv/bin/python bench/inspect_show.py [--data /tmp/cifar10/test] [--images 1000] [--repeats 1]

Writes bench/results/inspect_show.json. The machine's 2 CPUs may be shared with other jobs; the
load average at the start and the end is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "efficientnet_lite0_imagenet.keras"


def cifar_test(target: Path) -> Path:
    """CIFAR-10's test split as JPEG folders under `target` (extracted once)."""
    folder = target / "test"
    if not folder.is_dir():
        with tarfile.open(SHARED / "data" / "cifar10-images.tar.gz") as tar:
            tar.extractall(target, members=[m for m in tar.getmembers() if m.name.startswith("test/")],
                           filter="data")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--data", default=None, help="class-per-folder data set (default: CIFAR-10 test split)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "inspect_show.json"))
    args = ap.parse_args()
    data = Path(args.data) if args.data else cifar_test(Path(tempfile.gettempdir()) / "graft_bench_cifar10")
    classes = sum(1 for p in data.iterdir() if p.is_dir())
    runs = []
    for i in range(args.repeats):
        page = Path(tempfile.mkdtemp(prefix="inspect_show_"))
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "inspect", args.model, "--show", str(data),
                               "--out", str(page), "--cap", str(args.images),
                               "--per-class", str(-(-args.images // classes)), "--json"],
                              capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"inspect --show failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        report = json.loads(proc.stdout)
        runs.append({"wall_seconds": round(wall, 1), "inside_seconds": report["seconds"],
                     "images": report["sample"], "depths": len(report["depths"]), "files": len(report["files"]),
                     "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)})
        print(f"run {i + 1}: {wall:.1f} s wall for {report['sample']} images "
              f"({', '.join(f'{k} {v:.1f}' for k, v in report['seconds'].items())}); page {report['page']}")
    result = {"model": Path(args.model).name, "data": str(data), "cpus": os.cpu_count(), "runs": runs,
              "command": "python cli.py inspect MODEL --show DATA --cap N --per-class N/classes --json"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
