"""The facts rules may use: their names, types, units and where they come from.

Facts are plain values in a dict (`{"images": 2000, "similarity": 0.71, ...}`). A fact is `None` when it
is unknown (no model given, or a measurement failed); rules test that with `known: false`.
This registry is what the rules loader checks fact names against, what the gap check samples, and
what `docs/rules.md` documents.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FactSpec:
    """One fact.

    Attributes:
        name: the name rules use.
        kind: `int`, `float`, `bool` or `str`.
        unit: unit or range, for the docs and the report.
        doc: what it means.
        source: which step measures it (`dataset`, `model`, `embedding`, `user`, `machine`).
        nullable: whether it can be unknown (`None`).
        values: the possible values of a `str` fact.
    """

    name: str
    kind: str
    unit: str
    doc: str
    source: str
    nullable: bool = False
    values: tuple[str, ...] = ()


FACTS: dict[str, FactSpec] = {f.name: f for f in [
    FactSpec("images", "int", "images", "labelled images found (all splits)", "dataset"),
    FactSpec("classes", "int", "classes", "class folders with at least one image", "dataset"),
    FactSpec("images_per_class_min", "int", "images", "images in the smallest class", "dataset"),
    FactSpec("images_per_class_median", "float", "images", "median images per class", "dataset"),
    FactSpec("imbalance_ratio", "float", ">= 1", "largest class / smallest class", "dataset"),
    FactSpec("grayscale_fraction", "float", "0..1", "share of sampled images with one channel", "dataset"),
    FactSpec("median_width", "int", "pixels", "median width of sampled images", "dataset"),
    FactSpec("median_height", "int", "pixels", "median height of sampled images", "dataset"),
    FactSpec("corrupt_files", "int", "files", "files that could not be decoded (in the sample)", "dataset"),
    FactSpec("similarity", "float", "0..1", "domain similarity to the pretraining data (1 = same domain); "
             "measured from embeddings (`--model`) or stated (`--similarity`)", "embedding", nullable=True),
    FactSpec("similarity_method", "str", "-", "how similarity was obtained", "embedding",
             values=("bn_stats", "reference", "user", "unknown")),
    FactSpec("similarity_uncertainty", "float", "0..1", "bootstrap standard deviation of similarity",
             "embedding", nullable=True),
    FactSpec("best_cut_depth", "float", "0..1", "depth (fraction of the network) of the cut whose features "
             "transfer best by a label-aware probe", "embedding", nullable=True),
    FactSpec("top_cut_gain", "float", "accuracy points", "probe accuracy of the best cut minus that of the "
             "top cut (0 when the top is best)", "embedding", nullable=True),
    FactSpec("shift_early", "float", ">= 0", "mean shift of the BatchNormalization inputs in the first third of "
             "the network's depth (low-level statistics: colour, contrast, strokes)", "embedding", nullable=True),
    FactSpec("shift_late", "float", ">= 0", "mean shift of the BatchNormalization inputs in the last third of "
             "the network's depth (content: object parts, scenes)", "embedding", nullable=True),
    FactSpec("shift_ratio", "float", "ratio", "shift_early / shift_late: above 1 the data departs from the "
             "source mostly in low-level statistics, below 1 mostly in content", "embedding", nullable=True),
    FactSpec("best_cut_score", "float", "0..1", "leave-one-out probe accuracy of the best cut on the sample",
             "embedding", nullable=True),
    FactSpec("probe_lift", "float", "0..1", "the best cut's probe accuracy from chance (0) to perfect (1): "
             "(score - chance) / (1 - chance)", "embedding", nullable=True),
    FactSpec("probe_sample", "int", "images", "images the leave-one-out probe scored (the measurement's sample)",
             "embedding", nullable=True),
    FactSpec("probe_lower", "float", "0..1", "lower end of the Wilson 95 % interval of the best cut's probe "
             "accuracy on the sample: how well the frozen features classify this data, at worst", "embedding",
             nullable=True),
    FactSpec("model_layers", "int", "layers", "layers in the pretrained network", "model", nullable=True),
    FactSpec("model_has_batchnorm", "bool", "-", "the network has BatchNormalization layers", "model",
             nullable=True),
    FactSpec("model_input_size", "int", "pixels", "the network's input side (smaller of height and width)",
             "model", nullable=True),
    FactSpec("model_channels", "int", "channels", "channels the network takes (3 = RGB)", "model",
             nullable=True),
    FactSpec("input_ratio", "float", "ratio", "median image side / model input side", "model", nullable=True),
    FactSpec("gpu", "bool", "-", "a GPU is visible to the Keras backend", "machine"),
]}


def fact_names() -> list[str]:
    """All fact names, in registry order."""
    return list(FACTS)


def derived(facts: dict) -> dict:
    """Fill the facts computed from others (`input_ratio`) and default every missing one to unknown."""
    out = {name: facts.get(name) for name in FACTS}
    out.update({k: v for k, v in facts.items() if k not in out})
    if out.get("input_ratio") is None and out.get("model_input_size"):
        w, h = out.get("median_width"), out.get("median_height")
        if w and h:
            out["input_ratio"] = round(min(w, h) / out["model_input_size"], 4)
    if out.get("similarity_method") is None:
        out["similarity_method"] = "unknown" if out.get("similarity") is None else "user"
    if out.get("gpu") is None:
        out["gpu"] = False
    return out
