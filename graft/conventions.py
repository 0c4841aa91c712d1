"""Pixel conventions: the named ways a network may expect raw 0..255 pixels to be mapped.

Each convention is an optional RGB -> BGR swap followed by a per-channel affine map `x * scale +
offset`. The table is data, shared by both halves: `advisor.convention` measures which one a network
fits and records its name in the plan; `surgery.prepare` puts the named map in front of the network
(frozen built-in layers), so the saved model always takes raw 0..255 pixels.

| name    | what the network's input is                                   | as in                         |
|---------|---------------------------------------------------------------|-------------------------------|
| `raw`   | x (0..255)                                                    | models with `Rescaling` inside |
| `unit`  | x / 255 (0..1)                                                | many hand-written models      |
| `tf`    | x / 127.5 - 1 (-1..1)                                         | MobileNet, Inception, Xception |
| `torch` | (x / 255 - mean) / std, ImageNet mean/std, RGB                | DenseNet, torchvision ports   |
| `caffe` | RGB -> BGR, x - ImageNet BGR means                            | ResNet50 (v1), VGG            |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


@dataclass(frozen=True)
class Convention:
    """One pixel convention: `bgr` swaps the channel order first, then `x * scale + offset` per channel
    (in the network's channel order)."""

    name: str
    description: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    bgr: bool = False

    def coefficients(self, channels: int = 3) -> tuple[np.ndarray, np.ndarray, bool]:
        """`(scale, offset, swap)` for a network taking `channels` (1 or 3) channels; one channel
        takes the mean of the three (a gray image has no order to swap)."""
        scale, offset = np.asarray(self.scale, "float64"), np.asarray(self.offset, "float64")
        if channels == 1:
            return scale.mean(keepdims=True), offset.mean(keepdims=True), False
        return scale, offset, self.bgr


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("raw", "raw pixels 0..255", (1.0,) * 3, (0.0,) * 3),
    Convention("unit", "x / 255 (0..1)", (1 / 255,) * 3, (0.0,) * 3),
    Convention("tf", "x / 127.5 - 1 (-1..1)", (1 / 127.5,) * 3, (-1.0,) * 3),
    Convention("torch", "(x / 255 - ImageNet mean) / ImageNet std, RGB",
               tuple(1 / (255 * _STD)), tuple(-_MEAN / _STD)),
    Convention("caffe", "RGB -> BGR, minus the ImageNet BGR means", (1.0,) * 3, tuple(-_CAFFE_MEAN_BGR), bgr=True),
)}


def apply_convention(name: str, x: np.ndarray) -> np.ndarray:
    """Map raw pixels `x` (float, 0..255, `(..., channels)`) by the convention `name`.

    Example:
        >>> apply_convention("tf", np.array([[0.0, 127.5, 255.0]]))
        array([[-1.,  0.,  1.]], dtype=float32)
    """
    x = np.asarray(x, dtype="float32")
    scale, offset, swap = CONVENTIONS[name].coefficients(x.shape[-1])
    if swap:
        x = x[..., ::-1]
    return (x * scale.astype("float32") + offset.astype("float32")).astype("float32")


def convention_layers(name: str, channels: int = 3) -> list:
    """Built-in Keras layers (frozen, named `graft_preprocess*`) equal to `apply_convention(name, .)`;
    none for `raw`. A uniform map is a `Rescaling`; a per-channel one (and the BGR swap) a frozen 1x1
    convolution, exact and loadable in safe mode."""
    import keras

    conv = CONVENTIONS[name]
    if name == "raw":
        return []
    scale, offset, swap = conv.coefficients(channels)
    if not swap and np.ptp(scale) == 0 and np.ptp(offset) == 0:
        layer = keras.layers.Rescaling(float(scale[0]), offset=float(offset[0]), name="graft_preprocess")
    else:
        layer = keras.layers.Conv2D(channels, 1, name="graft_preprocess")
        layer.build((None, None, None, channels))
        kernel = np.zeros((1, 1, channels, channels), dtype="float32")
        for out in range(channels):
            kernel[0, 0, channels - 1 - out if swap else out, out] = scale[out]
        layer.set_weights([kernel, offset.astype("float32")])
    layer.trainable = False
    return [layer]
