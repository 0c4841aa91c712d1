"""The model zoo every surgery test runs over: one factory per kind of graph.

Each factory returns a fresh, built model with deterministic weights. `keras.applications` models are
built with `weights=None` (nothing is downloaded) at small input sizes to keep the suite fast.
"""

from __future__ import annotations

import keras
from keras import layers


def classic_cnn() -> keras.Model:
    """The classic demonstration network: 3 x (Conv2D + MaxPooling2D), Flatten, Dense 500, Dense 10."""
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
            layers.MaxPooling2D(name="pool3"),
            layers.Flatten(name="flatten"),
            layers.Dense(500, activation="relu", name="fc1"),
            layers.Dense(10, activation="softmax", name="predictions"),
        ],
        name="classic_cnn",
    )


def nested_backbone() -> keras.Model:
    """A backbone inside a model, as in the Keras transfer-learning guide (called training=False)."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="bb_conv1")(inputs)
    x = layers.BatchNormalization(name="bb_bn1")(x)
    x = layers.ReLU(name="bb_relu1")(x)
    y = layers.Conv2D(8, 3, padding="same", name="bb_conv2")(x)
    y = layers.BatchNormalization(name="bb_bn2")(y)
    x = layers.Add(name="bb_add")([x, y])
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="bb_conv3")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    outer_in = keras.Input((32, 32, 3), name="outer_input")
    h = layers.Rescaling(1 / 255.0, name="scale")(outer_in)
    h = backbone(h, training=False)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    h = layers.Dropout(0.2, name="top_dropout")(h)
    out = layers.Dense(5, activation="softmax", name="predictions")(h)
    return keras.Model(outer_in, out, name="nested")


def nested_sequential() -> keras.Model:
    """A Functional backbone inside a Sequential."""
    backbone = classic_cnn()
    base = keras.Model(backbone.inputs, backbone.get_layer("pool3").output, name="cnn_base")
    return keras.Sequential(
        [keras.Input((32, 32, 3)), base, layers.GlobalAveragePooling2D(name="gap"),
         layers.Dense(3, activation="softmax", name="predictions")],
        name="nested_sequential",
    )


def shared_layer() -> keras.Model:
    """One convolution applied to two branches (shared weights), plus a raw keras.ops node."""
    inputs = keras.Input((16, 16, 3), name="image")
    shared = layers.Conv2D(8, 3, padding="same", name="shared_conv")
    a = shared(inputs)
    b = shared(layers.AveragePooling2D(1, name="identity_pool")(inputs))
    x = keras.ops.add(a, b)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="merge_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(4, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, out, name="shared")


def two_inputs() -> keras.Model:
    """Two image inputs, separate stems, concatenated trunk, two outputs."""
    a_in = keras.Input((16, 16, 3), name="left")
    b_in = keras.Input((16, 16, 1), name="right")
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="left_conv")(a_in)
    b = layers.Conv2D(8, 3, padding="same", activation="relu", name="right_conv")(b_in)
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="trunk_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(16, activation="relu", name="trunk_dense")(x)
    out1 = layers.Dense(3, activation="softmax", name="class_out")(x)
    out2 = layers.Dense(1, name="score_out")(x)
    return keras.Model([a_in, b_in], [out1, out2], name="two_inputs")


def _app(fn, size: int):
    def factory() -> keras.Model:
        return fn(weights=None, input_shape=(size, size, 3), classes=10)

    factory.__name__ = fn.__name__.lower()
    return factory


SMALL = {
    "classic_cnn": classic_cnn,
    "nested_backbone": nested_backbone,
    "nested_sequential": nested_sequential,
    "shared_layer": shared_layer,
    "two_inputs": two_inputs,
}

APPLICATIONS = {
    "resnet50": _app(keras.applications.ResNet50, 64),
    "mobilenetv2": _app(keras.applications.MobileNetV2, 64),
    "mobilenetv3small": _app(keras.applications.MobileNetV3Small, 64),
    "efficientnetb0": _app(keras.applications.EfficientNetB0, 64),
    "densenet121": _app(keras.applications.DenseNet121, 64),
    "vgg16": _app(keras.applications.VGG16, 64),
}

ZOO = {**SMALL, **APPLICATIONS}
