"""The network's stages: the cut points worth scoring, measuring and drawing.

The advisor embeds images at these cuts (`advisor.embed`); the plan drawing groups layers into
blocks that end at them (`surgery.plan_drawing`). Both read them from one `LayerGraph`.
"""

from __future__ import annotations

import numpy as np

from graft.errors import InputError
from surgery.graph import CutPoint, LayerGraph


def candidate_cuts(graph: LayerGraph, max_cuts: int = 24) -> list[CutPoint]:
    """The cut points worth scoring: the end of each run of same-width layers, up to the features.

    Consecutive cut points with the same channel count (conv, its BN, its activation, a pooling) are
    one stage of the network; only the last of each run is kept, since it is what the next stage
    reads. Cuts after the last spatial feature map (the classification head) and the input
    preprocessing (3 channels) are left out. More than `max_cuts` are thinned evenly, keeping the last.

    Raises:
        InputError: the model has no spatial cut point.
    """
    cuts = graph.cut_points()
    spatial = [i for i, c in enumerate(cuts) if len(c.shape) == 4]
    if not spatial:
        raise InputError(f"Model {graph.model.name!r} has no spatial feature map to embed images with.")
    body = [c for c in cuts[: spatial[-1] + 1] if len(c.shape) == 4 and c.shape[-1] not in (1, 3)]
    kept = [c for i, c in enumerate(body) if i + 1 == len(body) or body[i + 1].shape[-1] != c.shape[-1]]
    if len(kept) > max_cuts:
        idx = np.unique(np.round(np.linspace(0, len(kept) - 1, max_cuts)).astype(int))
        kept = [kept[i] for i in idx]
    return kept
