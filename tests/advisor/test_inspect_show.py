"""`inspect --show`: the page and pictures of what each depth sees, on the bundled CNN and example data.

Real forward passes of the bundled CIFAR-A CNN over a small stratified sample of the bundled CIFAR-B
images; the files are checked as a browser would need them (sizes, non-blank pixels, every link
resolving) without a browser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli
from advisor.embed import candidate_cuts
from advisor.inspect_show import look
from advisor.show_page import write_show
from surgery import layer_graph, load_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    out = tmp_path_factory.mktemp("show")
    view = look(str(CNN), str(DATA), per_class=12, cap=1000)
    return view, write_show(view, out)


def links(page: Path) -> list[str]:
    return re.findall(r"""(?:href|src)=['"]([^'"]+)['"]""", page.read_text())


def test_every_link_resolves_to_a_file_in_the_folder(shown):
    _, report = shown
    targets = links(report.page)
    files = [t for t in targets if not t.startswith("#")]
    assert len(files) >= 8
    for target in files:
        path = (report.out_dir / target).resolve()
        assert path.is_file() and report.out_dir.resolve() in path.parents, target
    anchors = {t[1:] for t in targets if t.startswith("#")}
    ids = set(re.findall(r"id='([^']+)'", report.page.read_text()))
    assert anchors <= ids
    assert {p.name for p in report.files} == {p.name for p in report.out_dir.iterdir()}


def test_pictures_are_real_images_with_content(shown):
    _, report = shown
    pngs = [p for p in report.files if p.suffix == ".png"]
    names = {p.name for p in pngs}
    assert {"filters.png", "profile.png", "classes.png"} <= names
    assert any(n.startswith("featuremaps_") for n in names) and any(n.startswith("top_") for n in names)
    assert any(n.startswith("map_") for n in names)
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 150 and im.height >= 30, png.name
            pixels = np.asarray(im.convert("L"), dtype="float32")
        assert pixels.std() > 5 and (pixels < 200).mean() > 0.005, f"{png.name} is blank"
        assert png.stat().st_size < 300_000


def test_numbers_are_advise_s(shown):
    view, report = shown
    graph = layer_graph(load_model(str(CNN)))
    assert [d.cut.name for d in view.depths] == [c.name for c in candidate_cuts(graph)]
    assert len(view.paths) == 60 and np.bincount(view.labels).tolist() == [12] * 5
    for d in view.depths:
        assert 0.0 <= d.probe <= 1.0 and d.shift >= 0.0
    assert view.transfer.best.name in [d.cut.name for d in view.depths]
    assert view.filters.shape == (3, 3, 3, 32) and view.filters_layer == "block1_conv1"
    assert [d.cut.depth for d in view.spatial] == sorted(d.cut.depth for d in view.spatial) and len(view.spatial) == 3
    for depth in view.spatial:
        for top in depth.tops:  # strongest first, and every top image is in the sample
            assert top.values == sorted(top.values, reverse=True) and all(0 <= w[0] <= 1 for w in top.where)
    page = report.page.read_text()
    assert "(3*3*3)*32 = 864" in page and "probe accuracy" in page
    saved = json.loads((report.out_dir / "show.json").read_text())
    assert saved["params"] == load_model(str(CNN)).count_params()
    assert [d["layer"] for d in saved["depths"]] == [d.cut.name for d in view.depths]


def test_cli_show_json_lists_files_and_numbers(tmp_path, capsys):
    out = tmp_path / "page"
    code = cli.main(["inspect", str(CNN), "--show", str(DATA), "--out", str(out), "--per-class", "6", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["page"] == str(out / "index.html") and data["sample"] == 30
    assert all(Path(f).is_file() for f in data["files"]) and len(data["files"]) >= 10
    assert {"probe_accuracy", "shift", "layer", "depth"} <= set(data["depths"][0])
    assert data["layers"][1]["formula"]


def test_cli_show_prints_summary_with_page_path(tmp_path, capsys):
    out = tmp_path / "page"
    assert cli.main(["inspect", str(CNN), "--show", str(DATA), "--out", str(out), "--per-class", "4"]) == 0
    text = capsys.readouterr().out
    # the terminal may wrap a long path (rich breaks it at the console width): compare unwrapped
    assert "What each depth separates" in text and str(out / "index.html") in text.replace("\n", "")


def test_grayscale_data_into_an_rgb_network(tmp_path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(["stripes", "spots"]):
        (tmp_path / "gray" / name).mkdir(parents=True)
        for i in range(8):
            img = np.zeros((40, 40), "uint8")
            if k == 0:
                img[:, ::4] = 255
            else:
                img[rng.integers(0, 40, 30), rng.integers(0, 40, 30)] = 255
            Image.fromarray(img, mode="L").save(tmp_path / "gray" / name / f"{i}.png")
    view = look(str(CNN), str(tmp_path / "gray"))
    assert view.pixels.shape == (16, 32, 32, 3) and view.depths[-1].probe is not None
    report = write_show(view, tmp_path / "out")
    assert report.page.is_file()


def test_bad_input_exits_2_with_one_message(tmp_path, capsys):
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    cases = [
        (["inspect", str(CNN), "--show", str(tmp_path / "missing")], "does not exist"),
        (["inspect", str(not_a_model), "--show", str(DATA)], "Cannot load model file"),
        (["inspect", str(CNN), "--show", str(DATA), "--out", str(DATA / "dog")], "inside an input"),
        (["inspect", str(CNN), "--show", str(DATA), "--cap", "0"], "positive integer"),
    ]
    for args, needle in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("graft: error:") and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (DATA / "dog" / "index.html").exists()


@pytest.mark.parametrize("factory", ["classic_cnn", "nested_backbone"])
def test_any_model_inspect_reads(factory, tmp_path):
    import zoo

    path = tmp_path / f"{factory}.keras"
    getattr(zoo, factory)().save(path)
    view = look(str(path), str(DATA), per_class=6)
    report = write_show(view, tmp_path / "out")
    assert view.filters is not None and len(view.spatial) >= 1 and report.page.is_file()
    if factory == "classic_cnn":  # no BatchNormalization: no shift, and the page says why
        assert all(d.shift is None for d in view.depths) and "no BatchNormalization" in report.page.read_text()
    else:  # the backbone is nested: its layers are inlined, its BN layers give the shift
        assert any(d.cut.name.startswith("backbone/") for d in view.depths)
        assert view.depths[-1].shift is not None


def test_a_keras_applications_name_at_a_small_size(tmp_path, capsys):
    code = cli.main(["inspect", "mobilenetv2", "--weights", "none", "--input-size", "64", "--show", str(DATA),
                     "--per-class", "4", "--out", str(tmp_path / "page"), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["image_size"] == [64, 64] and data["first_layer"] == "Conv1" and data["sample"] == 20
