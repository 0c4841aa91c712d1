"""Validate graft's similarity and per-cut transferability on real data; writes docs/similarity.md's tables.

For each source network - the small CNN pretrained on CIFAR-10 classes A (`examples/pretrain_cifar.py`)
and the ImageNet EfficientNet-Lite0 in `../shared/models/` - and each target domain:

1. **Similarity**: BN-statistics similarity (source-data-free) of a stratified sample, with its
   bootstrap uncertainty; for the CNN also against a reference sample of its real source (CIFAR-A
   training images). Similar targets (CIFAR-10 classes B, natural photos) must score above different
   ones (scikit-learn digits, generated textures); grayscale and inverted CIFAR-B are intermediate
   shifts reported for information.
2. **Calibration**: fits the logistic mapping distance -> [0, 1] (D50 = geometric midpoint between the
   largest similar and the smallest different distance, K such that these two map to 0.7 and 0.3),
   and checks it leave-one-model-out (fit on one network, classify the other's domains).
3. **Cut choice**: per-cut score on the sample (ridge leave-one-out and k-NN leave-one-out) versus
   the actual accuracy of a logistic-regression probe trained on the same sample's standardized
   features and tested on held-out images of the domain: Spearman rank correlation over cuts, and
   the actual accuracy of the recommended cut against the best cut and the top (deepest) cut.

    .venv/bin/python bench/validate_similarity.py                  # ~5-10 min on 2 busy CPU cores
    .venv/bin/python bench/validate_similarity.py --per-class 50 --test-per-class 100 --size 128

Writes bench/results/validate_similarity.json and the tables between the markers in docs/similarity.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # for domains.py; the project root must come first
sys.path.insert(0, str(ROOT))

import domains  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from advisor.embed import embed  # noqa: E402
from advisor.similarity import CALIBRATION, bn_reference, sample_reference, similarity  # noqa: E402
from advisor.transfer import transferability  # noqa: E402
from surgery import layer_graph, load_model  # noqa: E402

CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
EFFNET = ROOT.parent / "shared" / "models" / "efficientnet_lite0_imagenet.keras"
GROUP = {"CIFAR-A (source)": "source", "CIFAR-B": "similar", "CIFAR-B grayscale": "shifted",
         "CIFAR-B inverted": "shifted", "digits": "different", "textures": "different"}
DOC = ROOT / "docs" / "similarity.md"
START, END = "<!-- validation:start -->", "<!-- validation:end -->"


def target_domains(cifar_root: Path, per_class: int, test_per_class: int, seed: int) -> dict:
    """name -> ((x_sample, y_sample), (x_test, y_test)), uint8 images."""
    total = per_class + test_per_class
    out = {}
    xa, ya, _ = domains.cifar(cifar_root, domains.CLASSES_A, "test", total, seed)
    out["CIFAR-A (source)"] = domains.split(xa, ya, per_class, seed)
    xb, yb, _ = domains.cifar(cifar_root, domains.CLASSES_B, "test", total, seed)
    out["CIFAR-B"] = domains.split(xb, yb, per_class, seed)
    out["CIFAR-B grayscale"] = domains.split(domains.grayscale(xb), yb, per_class, seed)
    out["CIFAR-B inverted"] = domains.split(domains.inverted(xb), yb, per_class, seed)
    xd, yd, _ = domains.digits()
    out["digits"] = domains.split(xd, yd, per_class, seed)
    xt, yt, _ = domains.textures(total, seed=seed)
    out["textures"] = domains.split(xt, yt, per_class, seed)
    return out


def probe_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Held-out accuracy of a logistic-regression probe on standardized features (C by 3-fold CV)."""
    scaler = StandardScaler().fit(train)
    a, b = scaler.transform(train), scaler.transform(test)
    best_c, best = 1.0, -1.0
    folds = np.arange(len(y_train)) % 3
    for c in (0.01, 0.1, 1.0):
        accs = []
        for f in range(3):
            m = LogisticRegression(C=c, max_iter=300).fit(a[folds != f], y_train[folds != f])
            accs.append(m.score(a[folds == f], y_train[folds == f]))
        if np.mean(accs) > best:
            best, best_c = float(np.mean(accs)), c
    return float(LogisticRegression(C=best_c, max_iter=500).fit(a, y_train).score(b, y_test))


def run_model(name: str, path: Path, size: int | None, data: dict, bootstrap: int, seed: int,
              reference: np.ndarray | None) -> dict:
    model = load_model(path)
    graph = layer_graph(model)
    result = {"model": name, "file": str(path.relative_to(ROOT.parent)), "domains": {}}
    ref_stats = None
    if reference is not None:
        ref_emb = embed(graph, reference, size=size)
        ref_stats = sample_reference(ref_emb, "CIFAR-A training sample")
    for dom, ((xs, ys), (xt, yt)) in data.items():
        t0 = time.perf_counter()
        emb = embed(graph, xs, labels=ys, size=size)
        test = embed(graph, xt, labels=yt, size=size, cuts=emb.cuts)
        bn = similarity(emb, bn_reference(graph, emb.stat_layers), bootstrap=bootstrap, seed=seed)
        entry = {"group": GROUP[dom], "sample": emb.images, "bn_stats": bn.to_dict()}
        if ref_stats is not None:
            entry["reference"] = similarity(emb, ref_stats, bootstrap=bootstrap, seed=seed).to_dict()
        actual = [probe_accuracy(emb.features[c.name], ys, test.features[c.name], yt) for c in emb.cuts]
        entry["actual_probe"] = [round(a, 4) for a in actual]
        for method in ("ridge_loo", "knn_loo"):
            tr = transferability(emb, method)
            scores = [s.score for s in tr.scores]
            chosen = [c.name for c in emb.cuts].index(tr.best.name)
            entry[method] = {
                **tr.to_dict(),
                "spearman": round(float(spearmanr(scores, actual).statistic), 3),
                "chosen_actual": round(actual[chosen], 4),
                "best_actual": round(max(actual), 4),
                "best_actual_layer": emb.cuts[int(np.argmax(actual))].name,
                "best_actual_depth": round(float(emb.cuts[int(np.argmax(actual))].depth), 3),
                "top_actual": round(actual[-1], 4),
            }
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        result["domains"][dom] = entry
        r = entry["ridge_loo"]
        print(f"  {name:16s} {dom:18s} sim {bn.value:.3f} ± {bn.uncertainty:.3f} (d={bn.distance:.3f})  "
              f"cut {r['best_cut_layer']} ({r['best_cut_depth']:.2f}) actual {r['chosen_actual']:.3f} "
              f"best {r['best_actual']:.3f} top {r['top_actual']:.3f} rho {r['spearman']:+.2f}  "
              f"[{entry['seconds']} s]", flush=True)
    return result


def fit_calibration(points: list[tuple[float, str]]) -> dict:
    """D50 and K from (distance, group) pairs, by maximum margin on the log scale.

    D50 is the geometric midpoint between the largest similar distance and the smallest different one;
    K maps those two edges to 0.7 and 0.3. When the groups overlap, the mean log distances stand in
    for the edges."""
    sim = [np.log(d) for d, g in points if g in ("similar", "source")]
    diff = [np.log(d) for d, g in points if g == "different"]
    ls, ld = max(sim), min(diff)
    if ld <= ls:
        ls, ld = float(np.mean(sim)), float(np.mean(diff))
    return {"d50": round(float(np.exp((ls + ld) / 2)), 4),
            "k": round(float(2 * np.log(7 / 3) / max(ld - ls, 1e-6)), 3)}


def render(results: list[dict], calib: dict, loo: list[dict], args) -> str:
    lines = [START, "",
             f"Measured by `bench/validate_similarity.py --per-class {args.per_class} --test-per-class "
             f"{args.test_per_class} --size {args.size} --seed {args.seed}` "
             f"(bootstrap {args.bootstrap}); EfficientNet-Lite0 at {args.size} px, the CNN at 32 px.", "",
             "### Similarity (BN statistics, source-data-free)", "",
             "| model | target | group | distance | similarity ± sd | 90% interval |",
             "|---|---|---|---:|---:|---|"]
    for r in results:
        for dom, e in r["domains"].items():
            b = e["bn_stats"]
            lines.append(f"| {r['model']} | {dom} | {e['group']} | {b['distance']:.3f} | "
                         f"{b['value']:.3f} ± {b['uncertainty']:.3f} | {b['interval'][0]:.3f}–{b['interval'][1]:.3f} |")
    refs = [(r, d, e) for r in results for d, e in r["domains"].items() if "reference" in e]
    if refs:
        lines += ["", "### Similarity against a reference sample of the source (CIFAR-A training images)", "",
                  "| model | target | distance | similarity ± sd |", "|---|---|---:|---:|"]
        for r, dom, e in refs:
            b = e["reference"]
            lines.append(f"| {r['model']} | {dom} | {b['distance']:.3f} | {b['value']:.3f} ± {b['uncertainty']:.3f} |")
    lines += ["", "### Calibration", "",
              f"Fitted on both models' similar (source, CIFAR-B) and different (digits, textures) targets: "
              f"D50 = {calib['d50']}, K = {calib['k']} (the library uses D50 = "
              f"{CALIBRATION['bn_stats']['d50']}, K = {CALIBRATION['bn_stats']['k']}).", "",
              "Leave-one-model-out (fit on the other model, classify this model's targets at 0.5):", "",
              "| held-out model | D50 | K | similar above 0.5 | different below 0.5 |", "|---|---:|---:|---|---|"]
    for item in loo:
        lines.append(f"| {item['model']} | {item['d50']} | {item['k']} | {item['similar_ok']} | {item['different_ok']} |")
    lines += ["", "### Per-cut score against actual linear-probe accuracy", "",
              "Actual: logistic regression on the sample's standardized features, tested on held-out images. "
              "ρ: Spearman correlation over cuts between the score and the actual accuracy. "
              "Chosen: actual accuracy of the recommended cut; best: of the best cut in hindsight; "
              "top: of the deepest cut.", "",
              "| model | target | method | ρ | chosen cut (depth) | chosen | best (depth) | top |",
              "|---|---|---|---:|---|---:|---:|---:|"]
    for r in results:
        for dom, e in r["domains"].items():
            for method in ("ridge_loo", "knn_loo"):
                m = e[method]
                lines.append(f"| {r['model']} | {dom} | {method} | {m['spearman']:+.2f} | {m['best_cut_layer']} "
                             f"({m['best_cut_depth']:.2f}) | {m['chosen_actual']:.3f} | {m['best_actual']:.3f} "
                             f"({m['best_actual_depth']:.2f}) | {m['top_actual']:.3f} |")
    summary = []
    for method in ("ridge_loo", "knn_loo"):
        rhos = [e[method]["spearman"] for r in results for e in r["domains"].values()]
        gaps = [e[method]["best_actual"] - e[method]["chosen_actual"] for r in results for e in r["domains"].values()]
        tops = [e[method]["chosen_actual"] - e[method]["top_actual"] for r in results for e in r["domains"].values()]
        summary.append(f"| {method} | {np.median(rhos):+.2f} | {np.mean(gaps) * 100:.1f} | {max(gaps) * 100:.1f} | "
                       f"{sum(g <= 0.02 for g in gaps)}/{len(gaps)} | {np.mean(tops) * 100:+.1f} |")
    lines += ["", "| method | median ρ | mean gap to best (points) | worst gap | within 2 points | chosen − top (points) |",
              "|---|---:|---:|---:|---|---:|", *summary, "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="extracted CIFAR-10 folder; default: extract the shared archive")
    ap.add_argument("--per-class", type=int, default=50, help="sample images per class (what advise sees)")
    ap.add_argument("--test-per-class", type=int, default=100, help="held-out images per class for the probe")
    ap.add_argument("--size", type=int, default=128, help="EfficientNet-Lite0 input size")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/similarity.md")
    args = ap.parse_args(argv)
    for path in (CNN, EFFNET):
        if not path.exists():
            raise SystemExit(f"{path} is missing (run examples/pretrain_cifar.py for the CNN).")
    root = domains.cifar_root(args.data)
    data = target_domains(root, args.per_class, args.test_per_class, args.seed)
    xr, _, _ = domains.cifar(root, domains.CLASSES_A, "train", args.per_class, args.seed + 1)
    results = [
        run_model("CIFAR-A CNN", CNN, None, data, args.bootstrap, args.seed, reference=xr),
        run_model("EfficientNet-Lite0", EFFNET, args.size, data, args.bootstrap, args.seed, reference=None),
    ]
    points = {r["model"]: [(e["bn_stats"]["distance"], e["group"]) for e in r["domains"].values()] for r in results}
    calib = fit_calibration([p for ps in points.values() for p in ps])
    loo = []
    for held in points:
        fit = fit_calibration([p for m, ps in points.items() if m != held for p in ps])
        vals = [(1 / (1 + (d / fit["d50"]) ** fit["k"]), g) for d, g in points[held]]
        loo.append({"model": held, **fit,
                    "similar_ok": f"{sum(v > 0.5 for v, g in vals if g in ('similar', 'source'))}/"
                                  f"{sum(g in ('similar', 'source') for _, g in vals)}",
                    "different_ok": f"{sum(v < 0.5 for v, g in vals if g == 'different')}/"
                                    f"{sum(g == 'different' for _, g in vals)}"})
    out = {"args": vars(args), "calibration_fit": calib, "calibration_used": CALIBRATION,
           "leave_one_model_out": loo, "results": results,
           "ordering_holds": {
               r["model"]: min(e["bn_stats"]["value"] for e in r["domains"].values() if e["group"] in ("similar", "source"))
               > max(e["bn_stats"]["value"] for e in r["domains"].values() if e["group"] == "different")
               for r in results}}
    print("similar above different:", out["ordering_holds"])
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "validate_similarity.json").write_text(json.dumps(out, indent=1) + "\n")
    table = render(results, calib, loo, args)
    print(table)
    if not args.no_doc and DOC.exists() and START in DOC.read_text():
        text = DOC.read_text()
        DOC.write_text(text[: text.index(START)] + table + text[text.index(END) + len(END):])
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
