"""The pixel preprocessing a pretrained model expects, found from the model itself.

Models saved with their preprocessing inside (a `Rescaling` or `Normalization` layer near the input,
as in EfficientNet, ConvNeXt, RegNet and graft's own example CNN) take raw 0..255 pixels. The classic
`keras.applications` families (ResNet, VGG, MobileNet, DenseNet, Inception, Xception, NASNet) expect
their `preprocess_input` to run outside; they are recognised by the model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

# Model-name prefixes of the keras.applications families whose preprocessing is outside the model,
# with the module whose `preprocess_input` they use. Longest prefix wins (resnet50v2 vs resnet50).
_FAMILIES = {
    "resnet50v2": "resnet_v2", "resnet101v2": "resnet_v2", "resnet152v2": "resnet_v2",
    "resnet": "resnet", "vgg16": "vgg16", "vgg19": "vgg19",
    "mobilenetv2": "mobilenet_v2", "mobilenet": "mobilenet",
    "densenet": "densenet", "inception_v3": "inception_v3", "inception_resnet_v2": "inception_resnet_v2",
    "xception": "xception", "nasnet": "nasnet",
}
_INSIDE = ("Rescaling", "Normalization")


@dataclass
class Preprocessing:
    """How raw RGB pixels (float32, 0..255, shape `(n, h, w, 3)`) become the model's input.

    Attributes:
        name: `inside the model (rescaling)`, `keras.applications.resnet.preprocess_input`, or
            `none (raw 0..255 pixels)` when nothing was found.
        fn: the function to apply to a batch.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def model_preprocessing(model: keras.Model) -> Preprocessing:
    """Find the preprocessing `model` expects.

    Args:
        model: a Keras model taking RGB images.

    Returns:
        A `Preprocessing`: identity when a Rescaling/Normalization layer sits among the first layers,
        the family's `preprocess_input` for a recognised `keras.applications` model, else identity
        (raw pixels), named so that reports say so.

    Example:
        >>> model_preprocessing(keras.applications.MobileNetV2(weights=None)).name
        'keras.applications.mobilenet_v2.preprocess_input'
    """
    for layer in _first_layers(model, 6):
        if type(layer).__name__ in _INSIDE:
            return Preprocessing(f"inside the model ({layer.name})", _identity)
    name = model.name.lower()
    for prefix in sorted(_FAMILIES, key=len, reverse=True):
        if name.startswith(prefix):
            module = getattr(keras.applications, _FAMILIES[prefix])
            return Preprocessing(f"keras.applications.{_FAMILIES[prefix]}.preprocess_input",
                                 module.preprocess_input)
    return Preprocessing("none (raw 0..255 pixels)", _identity)


def _first_layers(model, count: int) -> list:
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_first_layers(layer, count - len(out)))
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
        if len(out) >= count:
            break
    return out
