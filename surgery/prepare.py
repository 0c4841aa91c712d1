"""From a plan to the model `apply` trains: load, preprocessing, surgery, and trainable regions.

`prepare_model(plan)` loads the network the plan names, puts the preprocessing a `keras.applications`
family expects in front of it (as built-in layers, so the saved model loads in safe mode), cuts it
where the plan says, attaches the new head (layers named `head_*`) and reinitializes what the plan
lists. `set_phase_trainable` then marks, in place, which layers a training phase updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from graft.conventions import CONVENTIONS, convention_layers
from graft.errors import InputError, PlanError
from surgery.graph import LayerGraph, layer_graph
from surgery.head import find_head, replace_head
from surgery.load import is_model_file, load_model
from surgery.locate import locate, nearest_cut_by_depth
from surgery.reinit import reinitialize

#: The `preprocess_input` mode of each keras.applications module whose preprocessing sits outside
#: the model (`graft.preprocessing` finds the module from the model's name).
_MODES = {"resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe", "densenet": "torch", "resnet_v2": "tf",
          "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf", "inception_resnet_v2": "tf",
          "xception": "tf", "nasnet": "tf"}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype="float32")
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype="float32")
#: Fraction of the depth that stays frozen for each depth-named trainable region.
DEPTH_REGIONS = {"top_third": 2 / 3, "top_half": 1 / 2}


@dataclass
class Prepared:
    """The edited model and what `apply` needs to know about it.

    Attributes:
        model: the full model (backbone + new head), single input and output.
        head: call ids of the new head's layers, in order.
        features: call id of the backbone's last layer (what feeds the head).
        preprocessing: how raw 0..255 pixels become the backbone's input (words, for the report).
        notes: things the report should mention (e.g. layers reinitialized).
        graph: `model`'s layer graph, built once when the model is made and handed to every step
            that reads the model's structure (a new model, after any edit, comes with a new one).
    """

    model: keras.Model
    head: list[str]
    features: str
    preprocessing: str
    notes: list[str] = field(default_factory=list)
    graph: LayerGraph | None = field(default=None, repr=False)

    def layer_graph(self) -> LayerGraph:
        """The graph of `model`: the one handed along, rebuilt only if `model` was swapped."""
        if self.graph is None or self.graph.model is not self.model:
            self.graph = layer_graph(self.model)
        return self.graph


def _preprocessing_mode(found: str) -> str | None:
    """The mode of `graft.preprocessing`'s answer `keras.applications.<module>.preprocess_input`."""
    if not found.startswith("keras.applications."):
        return None
    return _MODES.get(found.split(".")[2])


def _preprocessing_layers(mode: str) -> list[keras.layers.Layer]:
    """Built-in layers equal to `keras.applications.<family>.preprocess_input` for `mode`."""
    if mode == "tf":  # [0, 255] -> [-1, 1]
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="graft_preprocess")]
    if mode == "torch":  # [0, 1], then ImageNet mean/std
        return [keras.layers.Rescaling(1 / 255.0, name="graft_preprocess_scale"),
                keras.layers.Normalization(mean=_IMAGENET_MEAN, variance=_IMAGENET_STD ** 2,
                                           name="graft_preprocess")]
    # caffe: RGB -> BGR, minus the ImageNet mean; a frozen 1x1 convolution does both exactly.
    conv = keras.layers.Conv2D(3, 1, name="graft_preprocess", trainable=False)
    conv.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out, src in enumerate((2, 1, 0)):
        kernel[0, 0, src, out] = 1.0
    conv.set_weights([kernel, -_CAFFE_MEAN_BGR])
    return [conv]


def with_preprocessing(model: keras.Model) -> tuple[keras.Model, str]:
    """The model with its family's preprocessing in front, when it lives outside the model.

    Returns:
        (model, description). Models that carry their own preprocessing (a Rescaling or
        Normalization layer) come back unchanged.
    """
    from graft.preprocessing import model_preprocessing

    found = model_preprocessing(model).name
    mode = _preprocessing_mode(found)
    if mode is None:
        return model, found
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for layer in _preprocessing_layers(mode):
        layer.trainable = False
        x = layer(x)
    wrapped = keras.Model(inputs, model(x), name=f"{model.name}_preprocessed")
    return wrapped, f"graft_preprocess layers ({mode} mode, as keras.applications preprocess_input)"


def with_convention(model: keras.Model, name: str) -> tuple[keras.Model, str]:
    """The model with the pixel convention `name` (`graft.conventions`) in front as frozen layers, so
    that it takes raw 0..255 pixels; `raw` leaves it unchanged. Returns (model, description)."""
    layers = convention_layers(name, int(model.input_shape[-1] or 3))
    if not layers:
        return model, f"none (the plan says data.preprocessing: raw; {CONVENTIONS[name].description})"
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    wrapped = keras.Model(inputs, model(x), name=f"{model.name}_preprocessed")
    return wrapped, f"graft_preprocess layers ({name}: {CONVENTIONS[name].description})"


def load_backbone(plan, safe_mode: bool | None = None) -> keras.Model:
    """Load the plan's model: a file, or a keras.applications name built for the plan's input."""
    source = plan.model.source
    safe = plan.model.safe_mode if safe_mode is None else safe_mode
    if is_model_file(source):
        return load_model(source, safe_mode=safe)
    size = plan.model.input_size or plan.data.input_size
    return load_model(source, weights=plan.model.weights, safe_mode=safe,
                      input_shape=(int(size[0]), int(size[1]), int(plan.data.channels)))


def _prepared(model: keras.Model, preprocessing: str, notes: list[str]) -> Prepared:
    graph = layer_graph(model)  # the one graph of this model state
    info = find_head(graph)
    return Prepared(model=model, head=list(info.layers), features=info.features.name,
                    preprocessing=preprocessing, notes=notes, graph=graph)


def _check_input(model: keras.Model, plan) -> None:
    shape = model.input_shape
    if isinstance(shape, list):
        raise InputError(f"model {model.name!r} has {len(shape)} inputs; apply trains single-input image models.")
    h, w, c = shape[1:4] if len(shape) == 4 else (None, None, None)
    if len(shape) != 4:
        raise InputError(f"model {model.name!r} takes inputs of shape {shape}; apply needs images (batch, h, w, c).")
    want = tuple(plan.data.input_size)
    if (h, w) != (None, None) and (h, w) != want:
        raise PlanError(f"data.input_size is {list(want)} but model {model.name!r} takes {h}x{w} images; "
                        f"set data.input_size: [{h}, {w}] in the plan.")
    if c is not None and c != plan.data.channels:
        raise PlanError(f"data.channels is {plan.data.channels} but model {model.name!r} takes {c} channels; "
                        f"set data.channels: {c} in the plan.")


def prepare_model(plan, safe_mode: bool | None = None,
                  backbone: keras.Model | LayerGraph | None = None) -> Prepared:
    """Load the model the plan names and do its surgery.

    Args:
        plan: an `graft.plan.Plan`.
        safe_mode: override `plan.model.safe_mode`.
        backbone: an already loaded model (or its `LayerGraph`, which then is not built again) to use
            instead of loading `plan.model.source`.

    Returns:
        `Prepared`: the model with preprocessing, cut and new head, and the head's layer ids.

    Raises:
        ModelLoadError, InvalidCutError, LayerNotFoundError, PlanError: the plan does not fit the model.
    """
    graph = backbone if isinstance(backbone, LayerGraph) else None
    model = graph.model if graph is not None else backbone if backbone is not None else load_backbone(plan, safe_mode)
    _check_input(model, plan)
    notes: list[str] = []
    if plan.data.preprocessing == "model":
        model, pre = with_preprocessing(model)
    elif plan.data.preprocessing in CONVENTIONS:
        model, pre = with_convention(model, plan.data.preprocessing)
    else:
        pre = "none (the plan says data.preprocessing: none; raw 0..255 pixels)"
    head = plan.surgery.head
    source = graph if graph is not None and graph.model is model else model
    model = replace_head(source, classes=head.classes, pooling=head.pooling, hidden=head.hidden,
                         dropout=head.dropout, activation=head.activation, at=plan.surgery.cut)
    if plan.surgery.reinitialize:
        model = reinitialize(model, layers=plan.surgery.reinitialize, seed=plan.data.seed)
        notes.append(f"reinitialized: {', '.join(plan.surgery.reinitialize)}")
    return _prepared(model, pre, notes)


def scratch(prepared: Prepared, seed: int = 0) -> Prepared:
    """The same architecture with every backbone layer reinitialized (training from scratch)."""
    graph = prepared.layer_graph()
    backbone = [cid for cid in graph.order if cid not in prepared.head and graph.calls[cid].is_layer
                and not graph.calls[cid].name.startswith("graft_preprocess")
                and graph.calls[cid].op.weights]
    model = reinitialize(prepared.model, layers=backbone, seed=seed) if backbone else prepared.model
    return _prepared(model, prepared.preprocessing, prepared.notes + ["backbone reinitialized (scratch)"])


def trainable_region(graph: LayerGraph, head: list[str], trainable: str) -> set[str]:
    """Call ids of the backbone layers a phase trains (the head always trains).

    `head`: none; `all` and `from_cut`: every backbone layer (after a cut, the backbone is what was
    kept); `top_third` / `top_half`: the layers after the cut point nearest to 2/3 / 1/2 of the
    depth; `from:LAYER`: the layers after LAYER.
    """
    layers = [cid for cid in graph.order if graph.calls[cid].is_layer and cid not in head
              and not graph.calls[cid].name.startswith("graft_preprocess")]
    if trainable == "head":
        return set()
    if trainable in ("all", "from_cut"):
        return set(layers)
    if trainable in DEPTH_REGIONS:
        below = graph.ancestors([nearest_cut_by_depth(graph, DEPTH_REGIONS[trainable]).name])
    elif trainable.startswith("from:"):
        below = graph.ancestors([locate(graph, trainable[5:])])
    else:
        raise PlanError(f"trainable is {trainable!r}; expected head, all, top_third, top_half, from_cut or from:LAYER")
    return set(layers) - below


def set_phase_trainable(prepared: Prepared, trainable: str, bn: str) -> dict[str, int]:
    """Mark, in place, what a phase trains; returns counts for the report.

    BatchNormalization follows `bn`: `freeze` keeps every BN layer frozen (inference mode, its
    statistics fixed), `follow` lets BN layers in the trainable region train, `train` makes every
    backbone BN layer train outside head-only phases.
    """
    model = prepared.model
    graph = prepared.layer_graph()
    region = trainable_region(graph, prepared.head, trainable)
    model.trainable = True  # containers on; each layer below decides for itself
    counts = {"trainable_layers": 0, "frozen_layers": 0}
    for cid in graph.order:
        call = graph.calls[cid]
        if not call.is_layer:
            continue
        layer = call.op
        on = cid in prepared.head or cid in region
        if isinstance(layer, keras.layers.BatchNormalization):
            on = {"freeze": False, "follow": on, "train": trainable != "head"}[bn]
        if call.name.startswith("graft_preprocess"):
            on = False
        layer.trainable = on
        if layer.weights:
            counts["trainable_layers" if on else "frozen_layers"] += 1
    return counts


def to_mixed_precision(prepared: Prepared) -> Prepared:
    """The same model with every layer computing in float16 (variables stay float32), except the
    output layer, which keeps float32 so the softmax does not lose small probabilities.

    A loaded model keeps the dtype policy it was saved with, so a global `mixed_float16` policy
    would only reach the new head; the model is therefore cloned layer by layer with the policy in
    each layer's config, and the weights are copied over.
    """
    model = prepared.model
    last = model.layers[-1].name

    def clone(layer):
        config = layer.get_config()
        if layer.name != last and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "mixed_float16"
        return layer.__class__.from_config(config)

    mixed = keras.models.clone_model(model, clone_function=clone)
    mixed.set_weights(model.get_weights())
    return _prepared(mixed, prepared.preprocessing, prepared.notes + ["mixed precision (float16 compute)"])
