"""Domain similarity in [0, 1]: how far the data moves the network's channel statistics.

A network trained on a domain carries a summary of it: every BatchNormalization layer keeps the
running mean and variance of its input over the training data. Pushing the new data through the
network and measuring, layer by layer, how far its channel statistics land from those running
statistics gives a **shift profile** over depth, with no access to the pretraining data
(`method="bn_stats"`). Given a reference sample of the source domain, or a profile stored from one
(`save_profile`), the same distance is taken against the reference's statistics instead
(`method="reference"`).

Distance, per channel c with data statistics (m, s) and reference statistics (mu, sigma):

    d_c = ((m - mu)^2 + (s - sigma)^2) / sigma^2        (squared 2-Wasserstein distance between the
                                                          Gaussians, in units of the source variance)

and per layer `shift = mean_c log(1 + d_c)` (the log keeps a few dead or near-constant channels from
dominating). The data set's distance is the mean shift over layers, and the similarity is the
calibrated logistic `1 / (1 + (distance / D50) ** K)`; `D50` and `K` were fitted on real data by
`bench/validate_similarity.py` (docs/similarity.md). The uncertainty is the bootstrap standard
deviation over the sampled images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from advisor.embed import Embeddings
from graft.errors import InputError
from surgery import LayerGraph

# Calibration of the [0, 1] mapping, fitted by bench/validate_similarity.py (see docs/similarity.md):
# D50 is the distance that maps to 0.5, K the steepness.
CALIBRATION = {
    "bn_stats": {"d50": 0.173, "k": 5.8},
    "reference": {"d50": 0.173, "k": 5.8},
}
BOOTSTRAP = 200


@dataclass
class StatsReference:
    """Per-layer channel statistics of the source domain.

    Attributes:
        layers: layer (call id) names, in the order of `Embeddings.stat_layers`.
        mean, var: layer -> per-channel mean and variance.
        source: `batchnorm running statistics` or where the reference sample came from.
        method: `bn_stats` or `reference`.
        images: images the statistics came from (0 for BN running statistics).
    """

    layers: list[str]
    mean: dict[str, np.ndarray]
    var: dict[str, np.ndarray]
    source: str
    method: str
    images: int = 0


@dataclass
class Similarity:
    """A similarity measurement.

    Attributes:
        value: similarity in [0, 1] (1: the statistics of the reference domain).
        uncertainty: bootstrap standard deviation of `value`.
        interval: 5th and 95th bootstrap percentiles of `value`.
        distance: the mean per-layer shift the value was mapped from.
        method: `bn_stats` or `reference`.
        source: what the data was compared with.
        sample: images measured.
        depths, layers, shift: the per-layer shift profile (depth 0..1, call id, shift).
        shift_uncertainty: bootstrap standard deviation of each layer's shift.
    """

    value: float
    uncertainty: float
    interval: tuple[float, float]
    distance: float
    method: str
    source: str
    sample: int
    depths: list[float] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    shift: list[float] = field(default_factory=list)
    shift_uncertainty: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "value": round(self.value, 4),
            "uncertainty": round(self.uncertainty, 4),
            "interval": [round(v, 4) for v in self.interval],
            "distance": round(self.distance, 4),
            "method": self.method,
            "source": self.source,
            "sample": self.sample,
            "profile": [
                {"layer": n, "depth": round(d, 4), "shift": round(s, 4), "uncertainty": round(u, 4)}
                for n, d, s, u in zip(self.layers, self.depths, self.shift, self.shift_uncertainty)
            ],
        }


def bn_reference(graph: LayerGraph, layers: list[str]) -> StatsReference:
    """The running statistics of the given BatchNormalization calls, as a source reference.

    Raises:
        InputError: no layers given (the model has no BatchNormalization).
    """
    if not layers:
        raise InputError(
            f"Model {graph.model.name!r} has no BatchNormalization layers, so there are no source "
            "statistics inside it; pass a reference sample of the source domain (--reference DIR) "
            "or a stored profile (.npz) instead."
        )
    mean, var = {}, {}
    for name in layers:
        op = graph.calls[name].op
        mean[name] = np.asarray(op.moving_mean, dtype="float64")
        var[name] = np.asarray(op.moving_variance, dtype="float64")
    return StatsReference(list(layers), mean, var, "batchnorm running statistics", "bn_stats")


def sample_reference(emb: Embeddings, source: str = "reference sample") -> StatsReference:
    """Channel statistics of a reference sample, taken where `emb` took them."""
    mean, var = {}, {}
    for name in emb.stat_layers:
        m = emb.stat_mean[name].astype("float64")
        mu = m.mean(axis=0)
        mean[name] = mu
        var[name] = np.maximum(emb.stat_sqmean[name].astype("float64").mean(axis=0) - mu**2, 0.0)
    return StatsReference(list(emb.stat_layers), mean, var, source, "reference", images=emb.images)


def save_profile(ref: StatsReference, path: str | Path, model_name: str = "") -> Path:
    """Store a reference profile as `.npz` (per layer mean and variance), written atomically."""
    path = Path(path)
    arrays = {"__layers__": np.asarray(ref.layers), "__meta__": np.asarray(
        [ref.source, ref.method, str(ref.images), model_name])}
    for i, name in enumerate(ref.layers):
        arrays[f"mean_{i}"] = ref.mean[name]
        arrays[f"var_{i}"] = ref.var[name]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_profile(path: str | Path) -> StatsReference:
    """Load a profile written by `save_profile`.

    Raises:
        InputError: a missing file or one that is not a graft profile.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Reference profile {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            layers = [str(x) for x in z["__layers__"]]
            source, _, images, model_name = (str(x) for x in z["__meta__"])
            mean = {n: z[f"mean_{i}"] for i, n in enumerate(layers)}
            var = {n: z[f"var_{i}"] for i, n in enumerate(layers)}
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"{path} is not a graft reference profile ({exc}); write one with "
                         "advisor.similarity.save_profile.") from None
    return StatsReference(layers, mean, var, f"{path.name} ({source}, model {model_name or '?'})",
                          "reference", int(images))


def calibrated(distance, method: str = "bn_stats"):
    """Map a distance (scalar or array) to [0, 1] with the fitted logistic for `method`."""
    c = CALIBRATION[method]
    d = np.maximum(np.asarray(distance, dtype="float64"), 1e-12)
    return 1.0 / (1.0 + (d / c["d50"]) ** c["k"])


def _layer_shifts(mean: np.ndarray, sqmean: np.ndarray, ref_mu: np.ndarray, ref_var: np.ndarray,
                  segments: np.ndarray, n_layers: int) -> np.ndarray:
    """Per-layer shifts for rows of (dataset mean, dataset mean square) over all channels."""
    var = np.maximum(sqmean - mean**2, 0.0)
    eps = 1e-3 * ref_var.mean() + 1e-12
    d = ((mean - ref_mu) ** 2 + (np.sqrt(var) - np.sqrt(ref_var)) ** 2) / (ref_var + eps)
    logd = np.log1p(d)
    counts = np.bincount(segments, minlength=n_layers)
    out = np.zeros((logd.shape[0], n_layers))
    for row in range(logd.shape[0]):
        out[row] = np.bincount(segments, weights=logd[row], minlength=n_layers) / counts
    return out


def similarity(emb: Embeddings, reference: StatsReference, bootstrap: int = BOOTSTRAP,
               seed: int = 0) -> Similarity:
    """Similarity of the embedded sample to a reference, with a bootstrap uncertainty.

    Args:
        emb: embeddings of the data set's sample (`advisor.embed.embed`).
        reference: `bn_reference(...)`, `sample_reference(...)` or `load_profile(...)`.
        bootstrap: resamples of the images for the uncertainty (0: none).
        seed: seed of the resampling.

    Returns:
        `Similarity`.

    Raises:
        InputError: the reference does not cover the layers the sample was measured at.

    Example:
        >>> emb = embed(model, sample_dataset("examples/data/cifar_b"))
        >>> similarity(emb, bn_reference(layer_graph(model), emb.stat_layers)).value
    """
    layers = [n for n in emb.stat_layers if n in reference.mean]
    missing = [n for n in emb.stat_layers if n not in reference.mean]
    if not layers or len(missing) > len(emb.stat_layers) // 2:
        raise InputError(
            f"The reference ({reference.source}) has statistics for {len(layers)} of the "
            f"{len(emb.stat_layers)} layers measured (missing e.g. {missing[:3]}); was it made with "
            "the same model?"
        )
    for n in layers:
        if reference.mean[n].shape[-1] != emb.stat_mean[n].shape[-1]:
            raise InputError(f"The reference's layer {n!r} has {reference.mean[n].shape[-1]} channels; "
                             f"the model's has {emb.stat_mean[n].shape[-1]}. Was it made with the same model?")
    m = np.concatenate([emb.stat_mean[n] for n in layers], axis=1).astype("float64")
    sq = np.concatenate([emb.stat_sqmean[n] for n in layers], axis=1).astype("float64")
    mu = np.concatenate([reference.mean[n] for n in layers])
    var = np.concatenate([reference.var[n] for n in layers])
    segments = np.concatenate([np.full(emb.stat_mean[n].shape[1], i) for i, n in enumerate(layers)])
    n = m.shape[0]

    point = _layer_shifts(m.mean(0, keepdims=True), sq.mean(0, keepdims=True), mu, var, segments,
                          len(layers))[0]
    distance = float(point.mean())
    value = float(calibrated(distance, reference.method))
    if bootstrap and n > 1:
        rng = np.random.default_rng(seed)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap) / n
        boot = _layer_shifts(w @ m, w @ sq, mu, var, segments, len(layers))
        values = calibrated(boot.mean(axis=1), reference.method)
        unc, interval = float(values.std()), (float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95)))
        shift_unc = boot.std(axis=0)
    else:
        unc, interval, shift_unc = 0.0, (value, value), np.zeros(len(layers))
    depth_of = dict(zip(emb.stat_layers, emb.stat_depths))
    return Similarity(
        value=value, uncertainty=unc, interval=interval, distance=distance, method=reference.method,
        source=reference.source, sample=n, depths=[depth_of[x] for x in layers], layers=layers,
        shift=[float(v) for v in point], shift_uncertainty=[float(v) for v in shift_unc],
    )
