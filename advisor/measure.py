"""How the pretrained network sees the data: one call from a data set and a model to `EmbeddingFacts`.

    facts = measure("examples/data/cifar_b", "examples/models/cifar_a_cnn.keras")
    facts.facts()   # {'similarity': 0.8, 'similarity_method': 'bn_stats', 'best_cut_depth': 1.0, ...}

`measure` draws the stratified sample, embeds it at every candidate cut in one pass per batch
(`advisor.embed`), measures the domain similarity (`advisor.similarity`; BN statistics by default, a
reference folder or stored profile when given) and scores every cut (`advisor.transfer`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from advisor.convention import ConventionChoice, find_convention
from advisor.embed import (
    DEFAULT_CAP,
    DEFAULT_PER_CLASS,
    IMAGE_EXTENSIONS,
    ImageSample,
    embed,
    sample_dataset,
)
from advisor.similarity import (
    Similarity,
    StatsReference,
    bn_reference,
    load_profile,
    sample_reference,
    similarity,
)
from advisor.transfer import Transferability, transferability
from graft.errors import DatasetError, InputError
from surgery import LayerGraph, layer_graph, load_model


@dataclass
class EmbeddingFacts:
    """The measurements `advise` turns into facts and reports.

    Attributes:
        model: the model's name.
        similarity: the similarity measurement, or None when it could not be made (see `notes`).
        transfer: per-cut scores and the recommended cut, or None (unlabelled or one class).
        sample: images embedded.
        per_class: the per-class sample size asked for; `cap` the cap on the total.
        image_size: `(height, width)` the images were resized to.
        preprocessing: the preprocessing applied.
        seconds: wall time of the whole measurement.
        skipped: unreadable files in the sample, with reasons.
        notes: what was not measured and why.
        forward_rate: images per second of the network's forward pass on this machine (steady
            state, from the embedding pass); `advisor.expect` scales its time estimates by it.
        convention: the pixel convention applied and the evidence (`advisor.convention`).
    """

    model: str
    similarity: Similarity | None
    transfer: Transferability | None
    sample: int
    per_class: int
    cap: int
    image_size: tuple[int, int]
    preprocessing: str
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    forward_rate: float | None = None
    convention: ConventionChoice | None = None

    def facts(self) -> dict:
        """The facts rules may use (None where not measured); see `facts_from_measurement`."""
        return facts_from_measurement(self._parts())

    def _parts(self) -> dict:
        return {"similarity": None if self.similarity is None else self.similarity.to_dict(),
                "transfer": None if self.transfer is None else self.transfer.to_dict(), "sample": self.sample}

    def to_dict(self) -> dict:
        """Everything, for JSON output and the plan's provenance."""
        return {
            "model": self.model,
            "facts": self.facts(),
            **self._parts(),
            "per_class": self.per_class,
            "cap": self.cap,
            "image_size": list(self.image_size),
            "preprocessing": self.preprocessing,
            "seconds": round(self.seconds, 2),
            "forward_rate": None if self.forward_rate is None else round(self.forward_rate, 2),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "notes": list(self.notes),
            "convention": None if self.convention is None else self.convention.to_dict(),
        }


#: Depth bounds (fraction of the network) of the "early" and "late" thirds of the shift profile.
EARLY_DEPTH, LATE_DEPTH = 1 / 3, 2 / 3


def facts_from_measurement(measurement: dict) -> dict:
    """Rule facts from a measurement in its JSON form (`EmbeddingFacts.to_dict()`), so stored
    measurements (bench/results/measurements.jsonl) give exactly the facts `advise` would.

    - `similarity`, `similarity_method`, `similarity_uncertainty`, `similarity_sample`;
    - `shift_early` / `shift_late`: mean shift of the BatchNormalization inputs in the first and last
      third of the network's depth; `shift_ratio` = early / late: above 1 the data departs from the
      source mostly in low-level statistics (colour, contrast, stroke images), below 1 mostly in
      content. A ratio of one network's own shifts, so it needs no calibration across networks;
    - `best_cut_depth`, `best_cut_layer`, `best_cut_score`, `top_cut_score`, `cut_gain`: the per-cut
      leave-one-out probe (`advisor.transfer`);
    - `probe_chance`: accuracy of always guessing the commonest class; `probe_lift`: the best cut's
      probe accuracy as a share of the way from chance to 1 (0 = chance, 1 = every sample right);
    - `probe_sample`: images the probe scored; `probe_lower`: the lower end of the Wilson 95 %
      interval of the best cut's probe accuracy on them (how good the frozen features are, at worst).
    """
    s, t = measurement.get("similarity"), measurement.get("transfer")
    out = {
        "similarity": None if s is None else s["value"],
        "similarity_method": None if s is None else s["method"],
        "similarity_uncertainty": None if s is None else s["uncertainty"],
        "similarity_sample": measurement.get("sample"),
        "shift_early": None, "shift_late": None, "shift_ratio": None,
        "best_cut_depth": None, "best_cut_layer": None, "best_cut_score": None, "top_cut_score": None,
        "cut_gain": None, "probe_chance": None, "probe_lift": None, "probe_sample": None, "probe_lower": None,
    }
    profile = (s or {}).get("profile") or []
    early = [p["shift"] for p in profile if p["depth"] <= EARLY_DEPTH]
    late = [p["shift"] for p in profile if p["depth"] > LATE_DEPTH]
    if early and late:
        out["shift_early"] = round(float(np.mean(early)), 4)
        out["shift_late"] = round(float(np.mean(late)), 4)
        out["shift_ratio"] = round(out["shift_early"] / max(out["shift_late"], 1e-6), 4)
    if t is not None:
        best, top = t["best_score"], t["cuts"][-1]["score"]
        chance = t["chance"]
        out.update(best_cut_depth=t["best_cut_depth"], best_cut_layer=t["best_cut_layer"],
                   best_cut_score=best, top_cut_score=top, cut_gain=round(best - top, 4),
                   probe_chance=chance,
                   probe_lift=round((best - chance) / (1 - chance), 4) if chance < 1 else None)
        n = int(t.get("sample") or 0)
        if n:
            from surgery.probe import wilson_interval

            out.update(probe_sample=n, probe_lower=wilson_interval(round(best * n), n)[0])
    return out


def _reference(source: str | os.PathLike, graph, size: int | None, per_class: int, cap: int,
               seed: int, prep=None) -> StatsReference:
    path = Path(source)
    if path.suffix == ".npz":
        return load_profile(path)
    if not path.is_dir():
        raise InputError(f"Reference {path} is neither a folder of images nor a .npz profile.")
    try:
        sample = sample_dataset(path, per_class=per_class, cap=cap, seed=seed)
    except DatasetError:  # a flat folder of images: one "class"
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"Reference folder {path} holds no images.") from None
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))[:cap]]
        sample = ImageSample(sorted(files), np.zeros(len(files), "int64"), ["reference"],
                             {"reference": len(files)}, seed)
    return sample_reference(embed(graph, sample, size=size, preprocessing=prep), f"reference sample {path}")


def measure(dataset: str | os.PathLike | ImageSample, model: str | os.PathLike | keras.Model | LayerGraph,
            weights: str = "none", per_class: int = DEFAULT_PER_CLASS, cap: int = DEFAULT_CAP,
            size: int | None = None, reference: str | os.PathLike | None = None,
            bootstrap: int = 200, method: str = "ridge_loo", seed: int = 0,
            safe_mode: bool = True, preprocessing: str = "auto") -> EmbeddingFacts:
    """Measure similarity and per-cut transferability of a labelled image folder under a model.

    Args:
        dataset: a folder `root/<class>/<images>` (or an `ImageSample` already drawn).
        model: a `keras.Model` (or its `LayerGraph`), a model file, or a `keras.applications` name.
        weights: for a `keras.applications` name: `none`, `imagenet` or a weights file.
        per_class, cap: sample size per class and in all (bounds the cost on large data sets).
        size: input size for models that accept any size (default 160).
        reference: a folder of source-domain images or a `.npz` profile (`save_profile`); default:
            the model's BatchNormalization statistics (no source data needed).
        bootstrap: resamples for the similarity's uncertainty.
        method: per-cut score, `ridge_loo` (default) or `knn_loo`.
        seed: seed of the sample and the bootstrap.
        safe_mode: load model files with Keras safe mode.
        preprocessing: the pixel convention: `auto` (measured, `advisor.convention`), `model` (the
            model's own layers and name) or a `graft.conventions` name.

    Returns:
        `EmbeddingFacts`.

    Raises:
        DatasetError, ModelLoadError, InputError: bad data set, model or reference.
    """
    start = time.perf_counter()
    if isinstance(model, LayerGraph):  # already built by the caller: one graph per model
        graph = model
    else:
        net = model if isinstance(model, keras.Model) else load_model(model, weights=weights, safe_mode=safe_mode)
        graph = layer_graph(net)
    net = graph.model
    sample = dataset if isinstance(dataset, ImageSample) else sample_dataset(dataset, per_class, cap, seed)
    choice = find_convention(graph, sample, asked=preprocessing, size=size)
    prep = choice.preprocessing(net)
    emb = embed(graph, sample, size=size, preprocessing=prep)
    notes = list(choice.notes)
    sim = None
    if reference is not None:
        sim = similarity(emb, _reference(reference, graph, size, per_class, cap, seed, prep), bootstrap, seed)
    elif emb.stat_kind == "bn_input":
        sim = similarity(emb, bn_reference(graph, emb.stat_layers), bootstrap, seed)
    else:
        notes.append(f"similarity not measured: {net.name} has no BatchNormalization layers to take "
                     "source statistics from; pass a reference folder or profile")
    trans = None
    if len(set(emb.labels.tolist())) >= 2 and emb.images >= 2 * len(set(emb.labels.tolist())):
        trans = transferability(emb, method)
    else:
        notes.append("per-cut transferability not measured: it needs at least 2 classes with 2 images each")
    return EmbeddingFacts(
        model=net.name, similarity=sim, transfer=trans, sample=emb.images, per_class=per_class, cap=cap,
        image_size=emb.image_size, preprocessing=emb.preprocessing, seconds=time.perf_counter() - start,
        skipped=emb.skipped, notes=notes, forward_rate=emb.forward_rate, convention=choice,
    )
