"""Parameter formulas: each one gives exactly `layer.count_params()`, and the rows add up to the model."""

from __future__ import annotations

import json

import keras
import pytest
from keras import layers
from zoo import classic_cnn, nested_backbone, shared_layer

import cli
from surgery import layer_graph
from surgery.layer_table import layer_rows, param_formula


def built(layer, shape):
    layer.build(shape)
    return layer


CASES = [
    (lambda: built(layers.Conv2D(8, 3), (None, 16, 16, 5)), "(3*3*5 + 1)*8 = 368"),
    (lambda: built(layers.Conv2D(8, (3, 1), use_bias=False), (None, 16, 16, 5)), "(3*1*5)*8 = 120"),
    (lambda: built(layers.Conv2D(8, 3, groups=2), (None, 16, 16, 4)), "(3*3*4/2 + 1)*8 = 152"),
    (lambda: built(layers.Conv1D(6, 5), (None, 20, 3)), "(5*3 + 1)*6 = 96"),
    (lambda: built(layers.Conv2DTranspose(4, 3), (None, 8, 8, 6)), "(3*3*6 + 1)*4 = 220"),
    (lambda: built(layers.Dense(10), (None, 500)), "(500 + 1)*10 = 5,010"),
    (lambda: built(layers.DepthwiseConv2D(3, depth_multiplier=2), (None, 8, 8, 6)), "(3*3 + 1)*6*2 = 120"),
    (lambda: built(layers.SeparableConv2D(16, 3), (None, 8, 8, 6)), "3*3*6*1 + (6*1 + 1)*16 = 166"),
    (lambda: built(layers.BatchNormalization(), (None, 8, 8, 32)), "4*32 = 128"),
    (lambda: built(layers.BatchNormalization(center=False), (None, 8, 8, 32)), "3*32 = 96"),
    (lambda: built(layers.LayerNormalization(), (None, 7, 12)), "2*12 = 24"),
    (lambda: built(layers.Embedding(50, 4), (None, 3)), "50*4 = 200"),
    (lambda: layers.MaxPooling2D(), "no weights"),
]


@pytest.mark.parametrize("make,expected", CASES, ids=[c[1] for c in CASES])
def test_formula_gives_count_params(make, expected):
    layer = make()
    formula, count = param_formula(layer)
    assert formula.startswith(expected)
    assert count == (layer.count_params() if layer.built else 0)


@pytest.mark.parametrize("factory", [classic_cnn, nested_backbone, shared_layer])
def test_rows_add_up_to_the_model(factory):
    model = factory()
    rows = layer_rows(layer_graph(model))
    assert sum(r.params for r in rows) == model.count_params()
    for row in rows:
        if row.params:
            assert row.formula.replace(",", "").split(" = ")[1].split(" ")[0] == str(row.params)


def test_mobilenet_depthwise_and_bn_rows():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3))
    rows = {r.name: r for r in layer_rows(layer_graph(model))}
    assert rows["Conv1"].formula == "(3*3*3)*32 = 864" and rows["Conv1"].output_shape == (None, 32, 32, 32)
    assert rows["expanded_conv_depthwise"].formula == "(3*3)*32*1 = 288"
    assert rows["bn_Conv1"].formula.startswith("4*32 = 128")
    assert sum(r.params for r in rows.values()) == model.count_params()


def test_inspect_without_show_lists_layers_with_formulas(tmp_path, capsys):
    path = tmp_path / "classic.keras"
    classic_cnn().save(path)
    assert cli.main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in data["layers"]}
    assert by_name["conv2"]["formula"] == "(3*3*16 + 1)*32 = 4,640" and by_name["conv2"]["params"] == 4640
    assert by_name["fc1"]["formula"] == "(1024 + 1)*500 = 512,500"
    assert by_name["conv2"]["output_shape"] == [None, 16, 16, 32]
    assert cli.main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Layers" in text and "(3*3*16 + 1)*32" in text
