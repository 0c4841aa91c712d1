"""Which pixel convention a network expects, found by measurement rather than by the model's name.

A network that does not carry its preprocessing inside expects raw 0..255 pixels mapped one of a few
ways (`graft.conventions`: `raw`, `unit`, `tf`, `torch`, `caffe`). Feeding the wrong one silently
ruins every measurement and the training after it, and a model's name (`mobilenet_1.00_224`) is not
evidence: a user's re-saved copy is called whatever they called it. So every candidate is tried on a
small sample of the user's own images, and the network's own weights say which fits:

- **`bn_fit`** (a network with BatchNormalization): the first `BN_LAYERS` BatchNormalization layers
  store the running mean and variance of their input over the pretraining data. Under each candidate
  the sample's channel statistics (m, s2) at those inputs are compared with the stored ones (mu, v)
  by the Gaussian Kullback-Leibler divergence per channel,

      KL_c = 0.5 * (log(v / s2) + (s2 + (m - mu)^2) / v - 1)     (both variances + the layer's epsilon)

  and the score is the mean over channels and layers of `log(1 + KL_c)` (the log keeps a few dead or
  near-constant channels from dominating). Lower is better; 0 is a perfect fit. The first layers are
  nearly linear in the pixels, so a wrong scale moves them by orders of magnitude and a wrong offset
  or channel order by a clear margin, even on data far from the pretraining domain.
- **`probe`** (a network without BatchNormalization, which stores no statistics): the leave-one-out
  accuracy of a ridge probe (`advisor.transfer`) on the sample's pooled features at the middle and the
  last candidate cut, under each candidate. Higher is better. It needs labels (two classes or more) and
  is a weak signal: a ReLU network is nearly indifferent to the input's scale, so `raw` and `unit`
  can tie, and on bench/preprocessing.py's small CNNs it is right about half the time with margins
  far inside its noise. `confident` says whether the best beat the runner-up by `PROBE_MARGIN`
  (0.1, about two standard errors); below it the report says it is unsure and asks for
  `--preprocessing`.

A `Rescaling` or `Normalization` layer among the first layers is honoured (the network takes raw
pixels); the measurement still runs, and a note says so when it fits another convention better.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from advisor.embed import (
    ImageSample,
    batchnorm_layers,
    candidate_cuts,
    embed,
    embedding_model,
    input_channels,
    input_size,
    load_images,
)
from advisor.transfer import ridge_loo_correct
from graft.conventions import CONVENTIONS, apply_convention
from graft.errors import InputError
from graft.preprocessing import Preprocessing, model_preprocessing
from surgery import LayerGraph, layer_graph

#: What a user may ask for: measure (`auto`), the model's own layers and name (`model`), or a convention.
CHOICES = ("auto", "model", *CONVENTIONS)
BN_LAYERS = 4
SAMPLE = 64
PROBE_SAMPLE = 120
#: Margins below which a measured choice is reported as unsure (docs/conventions.md): `bn_fit`, the
#: runner-up's score over the best's (how many times worse it fits); `probe`, the best's accuracy minus
#: the runner-up's. One leave-one-out accuracy on `PROBE_SAMPLE` images has a standard error of about
#: 0.045, so a difference under 0.1 (about two of them) is noise: on the small CNNs of
#: bench/preprocessing.py the probe's margins are 0.01-0.03 and wrong as often as right.
BN_MARGIN = 1.5
PROBE_MARGIN = 0.1
_INSIDE = ("Rescaling", "Normalization")


@dataclass
class ConventionChoice:
    """The convention a network is fed, and the evidence.

    Attributes:
        convention: what is applied: a `graft.conventions` name, or `model` (the model's own layers
            and name decide, as `graft.preprocessing` does).
        asked: what the user asked for (`auto`, `model` or a convention).
        method: `bn_fit`, `probe`, or `none` (not measured).
        scores: candidate -> score (`bn_fit`: lower is better; `probe`: higher is better).
        best: the best-scoring candidate (None when not measured).
        margin: how far the runner-up is behind the best: `bn_fit`, the ratio runner-up / best (>= 1);
            `probe`, the difference of accuracies.
        confident: whether the margin clears `BN_MARGIN` / `PROBE_MARGIN`.
        inside: the Rescaling/Normalization layer among the first layers, if any.
        name_says: what the model's name alone would give (a convention, or None); shown, never used
            by `auto`.
        sample: images measured.
        notes: warnings for the report (disagreements, what could not be measured).
    """

    convention: str
    asked: str
    method: str = "none"
    scores: dict[str, float] = field(default_factory=dict)
    best: str | None = None
    margin: float | None = None
    confident: bool = False
    inside: str | None = None
    name_says: str | None = None
    sample: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain data, as the plan's `data.preprocessing_evidence` holds it."""
        return {"convention": self.convention, "asked": self.asked, "method": self.method,
                "scores": {k: round(float(v), 4) for k, v in self.scores.items()}, "best": self.best,
                "margin": None if self.margin is None else round(float(self.margin), 4),
                "confident": self.confident, "inside": self.inside, "name_says": self.name_says,
                "sample": self.sample, "notes": list(self.notes)}

    def preprocessing(self, model: keras.Model) -> Preprocessing:
        """The `Preprocessing` that `advisor.embed.embed` applies for this choice."""
        if self.convention == "model" or (self.convention == "raw" and self.inside is not None):
            return model_preprocessing(model)  # raw pixels into the model's own layer, named as such
        return convention_preprocessing(self.convention)


def convention_preprocessing(name: str) -> Preprocessing:
    """A named convention as a `Preprocessing` (for `advisor.embed.embed`)."""
    return Preprocessing(f"{name}: {CONVENTIONS[name].description}", lambda x: apply_convention(name, x))


def check_choice(value: str) -> str:
    """`value` if it is one of `CHOICES`, else `InputError` listing them."""
    if value not in CHOICES:
        raise InputError(f"preprocessing {value!r} is not one of {', '.join(CHOICES)}")
    return value


def inside_layer(model: keras.Model) -> str | None:
    """The name of a Rescaling/Normalization layer among the model's first layers, or None."""
    from graft.preprocessing import _first_layers

    for layer in _first_layers(model, 6):
        if type(layer).__name__ in _INSIDE:
            return layer.name
    return None


def name_convention(model: keras.Model) -> str | None:
    """The convention the model's name implies (a `keras.applications` family), or None."""
    from surgery.prepare import _preprocessing_mode

    return _preprocessing_mode(model_preprocessing(model).name)


def bn_fit_scores(graph: LayerGraph, images: np.ndarray, layers: int = BN_LAYERS,
                  batch_size: int = 32) -> dict[str, float]:
    """Mean `log(1 + KL)` between the sample's statistics at the first `layers` BatchNormalization
    inputs and the stored running statistics, per convention (lower fits better); {} without BN."""
    bns = batchnorm_layers(graph)[:layers]
    if not bns:
        return {}
    net = embedding_model(graph, [], [graph.calls[b].inputs[0] for b in bns])
    scores = {}
    for name in CONVENTIONS:
        sums = None
        for s in range(0, len(images), batch_size):
            y = net.predict_on_batch(apply_convention(name, images[s:s + batch_size]))
            y = [np.asarray(v, "float64").sum(axis=0) for v in (y if isinstance(y, (list, tuple)) else [y])]
            sums = y if sums is None else [a + b for a, b in zip(sums, y)]
        per_layer = []
        for b, total in zip(bns, sums):
            op = graph.calls[b].op
            half = total.shape[0] // 2
            m, sq = total[:half] / len(images), total[half:] / len(images)
            eps = float(op.epsilon)
            s2 = np.maximum(sq - m**2, 0.0) + eps
            mu = np.asarray(op.moving_mean, "float64")
            v = np.asarray(op.moving_variance, "float64") + eps
            kl = 0.5 * (np.log(v / s2) + (s2 + (m - mu) ** 2) / v - 1.0)
            per_layer.append(float(np.mean(np.log1p(np.maximum(kl, 0.0)))))
        scores[name] = float(np.mean(per_layer))
    return scores


def probe_scores(graph: LayerGraph, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out ridge-probe accuracy at the middle and last candidate cut, per convention
    (higher is better); {} when the labels cannot score a probe."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2 or len(labels) < 2 * len(classes):
        return {}
    y = np.searchsorted(classes, labels)
    cuts = candidate_cuts(graph)
    cuts = [cuts[len(cuts) // 2], cuts[-1]] if len(cuts) > 1 else cuts
    scores = {}
    for name in CONVENTIONS:
        emb = embed(graph, images, labels=y, preprocessing=convention_preprocessing(name), cuts=cuts)
        scores[name] = float(np.mean([ridge_loo_correct(emb.features[c.name], y, len(classes)).mean()
                                      for c in cuts]))
    return scores


def sample_images(graph: LayerGraph, sample: ImageSample, size: int | None = None,
                  count: int = SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` images of the sample spread over its classes, read at the model's input size
    and channels (raw 0..255), with their labels."""
    idx = np.unique(np.linspace(0, len(sample) - 1, min(count, len(sample))).round().astype(int))
    x, kept, _ = load_images([sample.paths[i] for i in idx], input_size(graph.model, size),
                             input_channels(graph.model))
    return x, sample.labels[idx][kept]


def find_convention(model: keras.Model | LayerGraph, sample: ImageSample | np.ndarray,
                    labels: np.ndarray | None = None, asked: str = "auto",
                    size: int | None = None) -> ConventionChoice:
    """Measure which convention the network fits on a sample of the user's images, and decide.

    Args:
        model: the network (or its `LayerGraph`).
        sample: an `ImageSample` (files) or raw pixels `(n, h, w, c)` 0..255 at the model's input.
        labels: class per image, for an array sample (the probe of a network without BN needs them).
        asked: `auto` (measure), `model` (the model's own layers and name) or a convention name.
        size: input size for models that take any size (default 160, as `advisor.embed`).

    Returns:
        `ConventionChoice`: under `auto`, `raw` when a Rescaling/Normalization layer is inside, else
        the best-scoring convention; when nothing can be measured, `model`.

    Raises:
        InputError: `asked` is not one of `CHOICES`.

    Example:
        >>> find_convention(mobilenet, sample_dataset("examples/data/cifar_b")).convention
        'tf'
    """
    check_choice(asked)
    graph = model if isinstance(model, LayerGraph) else layer_graph(model)
    net = graph.model
    if isinstance(sample, ImageSample):
        images, labels = sample_images(graph, sample, size, PROBE_SAMPLE if not batchnorm_layers(graph) else SAMPLE)
    else:
        images = np.asarray(sample, dtype="float32")
    out = ConventionChoice(convention="model", asked=asked, inside=inside_layer(net), name_says=name_convention(net),
                           sample=len(images))
    scores, method = bn_fit_scores(graph, images), "bn_fit"
    if not scores and labels is not None and len(images):
        scores, method = probe_scores(graph, images, labels), "probe"
    if scores:
        lower = method == "bn_fit"
        ranked = sorted(scores, key=lambda k: scores[k] if lower else -scores[k])
        out.method, out.scores, out.best = method, scores, ranked[0]
        if len(ranked) > 1:
            first, second = scores[ranked[0]], scores[ranked[1]]
            out.margin = second / max(first, 1e-9) if lower else first - second
        out.confident = out.margin is not None and out.margin >= (BN_MARGIN if lower else PROBE_MARGIN)
    _decide(out)
    return out


def _decide(out: ConventionChoice) -> None:
    best, asked = out.best, out.asked
    fits = (f"the measurement ({out.method}, {out.sample} images) fits {best} best"
            f"{'' if out.margin is None else f', margin {out.margin:.3f}'}")
    if asked in CONVENTIONS:
        out.convention = asked
        if best is not None and best != asked and out.confident:
            out.notes.append(f"preprocessing {asked} as asked, but {fits}")
        return
    if asked == "model":
        return
    if out.inside is not None:
        out.convention = "raw"
        if best is not None and best != "raw":
            out.notes.append(f"the model has its preprocessing inside (layer {out.inside}), so it is fed raw "
                             f"pixels, but {fits}; check the layer, or pass --preprocessing {best}")
        return
    if best is None:
        out.notes.append("the pixel convention could not be measured (no BatchNormalization statistics and no "
                         "labelled sample to probe); the model's own layers and name decide "
                         f"({out.name_says or 'raw pixels'}); pass --preprocessing to say it")
        return
    out.convention = best
    if not out.confident:
        out.notes.append(f"unsure of the pixel convention: {fits} (below the {out.method} margin "
                         f"{BN_MARGIN if out.method == 'bn_fit' else PROBE_MARGIN}); pass --preprocessing if you know it")
    if out.name_says is not None and out.name_says != best:
        out.notes.append(f"the model's name suggests the {out.name_says} convention; {fits}, and that is used")
