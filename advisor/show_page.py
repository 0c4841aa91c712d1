"""`inspect --show`'s output: PNG pictures and one HTML page that links them, from a `DataView`.

    report = write_show(look(model, "data/"), "show/")
    report.page          # show/index.html
    report.files         # every file written, the page first

Every file is written atomically (`graft.atomic`); matplotlib draws on `Figure` objects with the Agg
canvas (no pyplot state). The page is self-contained apart from the PNGs beside it, which it links by
relative path, so the folder can be moved or zipped as a whole.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from advisor.inspect_show import DataView
from graft.atomic import atomic_path, write_json, write_text
from graft.errors import InputError

_CMAP = "tab10"


@dataclass
class ShowReport:
    """What `write_show` wrote.

    Attributes:
        out_dir: the folder.
        page: the HTML page.
        files: every file written (the page first), paths inside `out_dir`.
        numbers: the per-depth numbers, the sample and the timings (what `--json` prints).
    """

    out_dir: Path
    page: Path
    files: list[Path] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "page": str(self.page), "files": [str(f) for f in self.files],
                **self.numbers}


def _save(fig: Figure, path: Path, dpi: int = 80) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.astype("float32")
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _mosaic(tiles: list[list[np.ndarray | None]], side: int, pad: int = 2) -> np.ndarray:
    """Tiles (H x W x 3 floats 0..1, or None) laid out in rows on a white canvas, each resized to `side`."""
    from PIL import Image

    rows, cols = len(tiles), max(len(r) for r in tiles)
    canvas = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad, 3), "float32")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile is None:
                continue
            img = Image.fromarray((np.clip(tile, 0, 1) * 255).astype("uint8"))
            img = img.resize((side, side), Image.NEAREST)
            y, x = pad + r * (side + pad), pad + c * (side + pad)
            canvas[y:y + side, x:x + side] = np.asarray(img, "float32") / 255.0
    return canvas


def _gray_to_rgb(a: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[cmap](_unit(a))[..., :3]


def _mosaic_figure(canvas: np.ndarray, title: str, row_labels: list[str], col_labels: list[str] | None,
                   side: int, pad: int = 2, scale: float = 0.011) -> Figure:
    h, w = canvas.shape[:2]
    longest = max((len(line) for label in row_labels for line in label.splitlines()), default=4)
    left = 0.2 + 0.06 * longest  # room for the row labels at font size 6
    fig = Figure(figsize=(w * scale + left + 0.2, h * scale + 0.6))
    ax = fig.add_axes((left / (w * scale + left + 0.2), 0.02, w * scale / (w * scale + left + 0.2),
                       h * scale / (h * scale + 0.6)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([(side + pad) * c + pad + side / 2 for c in range(len(col_labels or []))])
    ax.set_xticklabels(col_labels or [], fontsize=6)
    ax.xaxis.tick_top()
    ax.set_yticks([(side + pad) * r + pad + side / 2 for r in range(len(row_labels))])
    ax.set_yticklabels(row_labels, fontsize=6)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=8, x=0.01, ha="left", y=0.995, va="top")
    return fig


def filters_figure(kernel: np.ndarray, title: str, limit: int = 64) -> Figure:
    """The first convolution's filters as a grid: RGB when it reads 3 channels, else its first channel."""
    kh, kw, cin, n = kernel.shape
    n = min(n, limit)
    cols = min(16, n)
    tiles: list[list[np.ndarray | None]] = [[] for _ in range(int(np.ceil(n / cols)))]
    for i in range(n):
        k = kernel[:, :, :, i]
        tiles[i // cols].append(_unit(k) if cin == 3 else np.repeat(_unit(k[:, :, :1]), 3, axis=-1))
    side = 28
    return _mosaic_figure(_mosaic(tiles, side), title, [f"{r * cols}–" for r in range(len(tiles))], None, side,
                          scale=0.02)


def feature_maps_figure(view: DataView, image: int) -> Figure:
    """One sample image and its feature maps at the spatial depths (rows), a few channels each."""
    side = 64
    tiles, labels, cols = [], [], ["image"]
    for d in view.spatial:
        maps = d.maps[image]
        tiles.append([view.pixels[image] / 255.0] + [_gray_to_rgb(maps[:, :, j]) for j in range(maps.shape[-1])])
        labels.append(f"{d.cut.name}\ndepth {d.cut.depth:.2f}")
    cols += [""] * (max(len(t) for t in tiles) - 1)
    label = view.class_names[int(view.labels[image])]
    return _mosaic_figure(_mosaic(tiles, side), f"{view.paths[image].name} ({label}): the most variable channels, early to late "
                          "(bright = strong response)", labels, cols, side, scale=0.016)


def _crop(img: np.ndarray, where: tuple[float, float], side: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = max(4, min(side, h, w))
    r = int(where[0] * h) - side // 2
    c = int(where[1] * w) - side // 2
    r = min(max(0, r), h - side)
    c = min(max(0, c), w - side)
    return img[r:r + side, c:c + side]


def crop_side(view: DataView, index: int) -> int:
    """The side of the crops at one depth: three strides of the feature map, at least a quarter image."""
    d = view.spatial[index]
    h = view.image_size[0]
    fmap_side = d.maps[view.feature_images[0]].shape[0] if view.feature_images else 1
    stride = max(1, h // max(1, fmap_side))
    return int(min(h, max(h // 4, 3 * stride)))


def top_images_figure(view: DataView, index: int) -> Figure:
    """Per sampled channel at one depth, the images that excite it most, cropped around the response."""
    d = view.spatial[index]
    side = crop_side(view, index)
    tiles, labels = [], []
    for t in d.tops:
        tiles.append([_crop(view.pixels[img], where, side) / 255.0 for img, where in zip(t.images, t.where)])
        classes = [view.class_names[int(view.labels[img])][:9] for img in t.images]
        labels.append(f"channel {t.channel}\n" + ", ".join(classes[:3]) + ("\n" + ", ".join(classes[3:]) if classes[3:] else ""))
    cols = [f"#{j + 1}" for j in range(max(len(t) for t in tiles))]
    return _mosaic_figure(_mosaic(tiles, 72), f"{d.cut.name}: top images per channel ({side}px crops around the "
                          "strongest response)", labels, cols, 72, scale=0.016)


def map_figure(view: DataView, index: int) -> Figure:
    """The 2-D PCA map of the pooled features at one depth, coloured by class."""
    d = view.depths[index]
    fig = Figure(figsize=(3.2, 3.0))
    ax = fig.add_subplot(1, 1, 1)
    n = len(view.class_names)
    colors = [_color(k, n) for k in view.labels]
    ax.scatter(d.coords[:, 0], d.coords[:, 1], c=colors, s=6, alpha=0.75, linewidths=0)
    probe = "n/a" if d.probe is None else f"{d.probe:.2f}"
    ax.set_title(f"{d.cut.name}\ndepth {d.cut.depth:.2f}, probe {probe}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ev = d.explained or (0.0, 0.0)
    ax.set_xlabel(f"PC1 {ev[0]:.0%}", fontsize=7)
    ax.set_ylabel(f"PC2 {ev[1]:.0%}", fontsize=7)
    fig.tight_layout()
    return fig


def _color(k: int, n: int):
    from matplotlib import colormaps

    cmap = colormaps[_CMAP if n <= 10 else "tab20"]
    return cmap(int(k) % cmap.N)


def legend_figure(view: DataView) -> Figure:
    """The class colours of the maps."""
    n = len(view.class_names)
    fig = Figure(figsize=(min(12, 1.6 * n), 0.45))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    for k, name in enumerate(view.class_names):
        ax.scatter([], [], color=_color(k, n), label=name, s=25)
    ax.legend(loc="center", ncol=min(n, 10), frameon=False, fontsize=8)
    return fig


def profile_figure(view: DataView) -> Figure:
    """Probe accuracy and BatchNorm shift against depth: separability and domain shift in one chart."""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    xs = [d.cut.depth for d in view.depths if d.probe is not None]
    ys = [d.probe for d in view.depths if d.probe is not None]
    if xs:
        ax.plot(xs, ys, "o-", color="tab:blue", label="linear-probe accuracy (leave-one-out)")
        if view.transfer is not None:
            ax.axhline(view.transfer.chance, color="tab:blue", ls=":", lw=1, label="chance")
            ax.axvline(view.transfer.best.depth, color="tab:green", ls="--", lw=1,
                       label=f"advised cut {view.transfer.best.name}")
    ax.set_xlabel("depth (0 = input, 1 = output)")
    ax.set_ylabel("probe accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1.02)
    if view.similarity is not None:
        ax2 = ax.twinx()
        ax2.plot(view.similarity.depths, view.similarity.shift, color="tab:red", lw=1, alpha=0.8,
                 label="BatchNorm shift (0 = as in pretraining)")
        ax2.set_ylabel("shift", color="tab:red")
        ax2.set_ylim(bottom=0)
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
              frameon=False)
    fig.subplots_adjust(left=0.08, right=0.92, top=0.95, bottom=0.36)
    return fig


def _e(x) -> str:
    return html.escape(str(x), quote=True)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}
.maps{display:flex;flex-wrap:wrap;gap:.6em}.maps figure{margin:0;border:1px solid #eee;padding:.3em}
figcaption{font-size:.8em;color:#444;max-width:260px}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"""


def _layers_table(view: DataView) -> str:
    rows = ["<table><tr><th>#</th><th>layer</th><th>type</th><th>output shape</th><th>params</th>"
            "<th>formula</th></tr>"]
    for i, r in enumerate(view.layers):
        rows.append(f"<tr><td class='num'>{i}</td><td>{_e(r.name)}</td><td>{_e(r.kind)}</td>"
                    f"<td>{_e(tuple(r.output_shape))}</td><td class='num'>{r.params:,}</td><td>{_e(r.formula)}</td></tr>")
    total = sum(r.params for r in view.layers)
    rows.append(f"<tr><th colspan='4'>total</th><th class='num'>{total:,}</th><th></th></tr></table>")
    return "\n".join(rows)


def _depth_table(view: DataView) -> str:
    rows = ["<table><tr><th>depth</th><th>layer</th><th>output shape</th><th>probe accuracy</th>"
            "<th>BN shift</th><th>BN layer</th></tr>"]
    best = view.transfer.best.name if view.transfer is not None else None
    for d in view.depths:
        probe = "n/a" if d.probe is None else f"{d.probe:.3f} ± {d.probe_stderr:.3f}"
        shift = "n/a" if d.shift is None else f"{d.shift:.3f}"
        mark = " <b>(advised cut)</b>" if d.cut.name == best else ""
        rows.append(f"<tr><td class='num'>{d.cut.depth:.2f}</td><td>{_e(d.cut.name)}{mark}</td>"
                    f"<td>{_e(tuple(d.cut.shape))}</td><td class='num'>{probe}</td><td class='num'>{shift}</td>"
                    f"<td>{_e(d.shift_layer or '')}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _check_out_dir(out_dir: Path, view: DataView) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder for the page and its pictures")
    for source in (view.dataset, view.source):
        try:
            src = Path(source).resolve()
        except (OSError, ValueError):
            continue
        if src.exists() and (out_dir.resolve() == src or src in out_dir.resolve().parents and src.is_dir()):
            raise InputError(f"--out {out_dir} is inside an input ({source}); choose another folder")


def write_show(view: DataView, out_dir: str | os.PathLike) -> ShowReport:
    """Draw a `DataView` into `out_dir`: PNGs and `index.html` linking them, plus `show.json`.

    Args:
        view: what `advisor.inspect_show.look` measured.
        out_dir: the folder to write (created; files of an earlier page with the same names are
            replaced, each atomically).

    Returns:
        `ShowReport`: the page, every file, and the numbers.

    Raises:
        InputError: `out_dir` is a file or lies inside the data set or is the model.
    """
    import time

    start = time.perf_counter()
    out = Path(out_dir)
    _check_out_dir(out, view)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    parts: list[str] = []
    add = parts.append

    add("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
    add(f"<title>graft inspect: {_e(view.model)} on {_e(Path(view.dataset).name)}</title><style>{_CSS}</style></head><body>")
    add(f"<h1>What {_e(view.model)} sees on {_e(Path(view.dataset).name)}</h1>")
    counts = np.bincount(view.labels, minlength=len(view.class_names))
    add(f"<p>Model <code>{_e(view.source)}</code>; data set <code>{_e(view.dataset)}</code>: a stratified sample "
        f"of {len(view.paths):,} images ({len(view.class_names)} classes, {int(counts.min())}–{int(counts.max())} "
        f"per class), resized to {view.image_size[0]}×{view.image_size[1]}, preprocessing "
        f"{_e(view.preprocessing)}.</p>")
    t, s = view.transfer, view.similarity
    facts = []
    if t is not None:
        facts.append(f"advised cut <b>{_e(t.best.name)}</b> (depth {t.best.depth:.2f}, probe {t.best.score:.3f}; "
                     f"top {t.scores[-1].score:.3f}; chance {t.chance:.3f})")
    if s is not None:
        facts.append(f"similarity to the pretraining domain {s.value:.2f} ± {s.uncertainty:.2f} ({_e(s.method)})")
    if facts:
        add("<p>" + "; ".join(facts) + ".</p>")
    for note in view.notes:
        add(f"<p class='muted'>note: {_e(note)}</p>")
    add("<p>Sections: <a href='#separability'>separability by depth</a> · <a href='#filters'>first-layer filters</a>"
        " · <a href='#maps'>feature maps</a> · <a href='#top'>what excites a channel</a> · "
        "<a href='#layers'>layers and parameters</a></p>")

    add("<h2 id='separability'>Separability by depth</h2>")
    add("<p>Each cut's pooled (global-average) features of the sample, standardized as the probe sees them, "
        "projected on their two principal components and coloured by class. Next to each map: the "
        "leave-one-out accuracy of the linear probe <code>advise</code> scores at that cut, and the BatchNorm shift "
        "(how far the data moves the network's channel statistics from its pretraining statistics; 0 = "
        "unchanged) at the deepest BN layer up to that cut.</p>")
    if view.depths:
        files.append(_save(profile_figure(view), out / "profile.png", dpi=90))
        add("<img alt='probe accuracy and shift by depth' src='profile.png'>")
        files.append(_save(legend_figure(view), out / "classes.png", dpi=90))
        add("<p><img alt='class colours' src='classes.png'></p><div class='maps'>")
        for i, d in enumerate(view.depths):
            if d.coords is None:
                continue
            name = f"map_{i:02d}.png"
            files.append(_save(map_figure(view, i), out / name))
            probe = "n/a" if d.probe is None else f"{d.probe:.3f}"
            shift = "n/a" if d.shift is None else f"{d.shift:.3f}"
            add(f"<figure><img alt='2-D map at {_e(d.cut.name)}' src='{name}'><figcaption>depth {d.cut.depth:.2f}, "
                f"<b>{_e(d.cut.name)}</b> {_e(tuple(d.cut.shape))}<br>probe accuracy {probe}, shift {shift}"
                f"</figcaption></figure>")
        add("</div>")
    add(_depth_table(view))

    add("<h2 id='filters'>First-layer filters</h2>")
    if view.filters is not None:
        files.append(_save(filters_figure(view.filters, f"{view.filters_layer}: {view.filters.shape[-1]} filters "
                                          f"{view.filters.shape[0]}×{view.filters.shape[1]}×{view.filters.shape[2]}"),
                           out / "filters.png", dpi=90))
        add(f"<p>The kernels of <code>{_e(view.filters_layer)}</code>, each scaled to its own range "
            "(RGB when the layer reads 3 channels). Edge and colour detectors are what a well-trained first "
            "layer looks like; noise means untrained weights.</p><img alt='first-layer filters' src='filters.png'>")
    else:
        add(f"<p class='muted'>No filter picture: {_e(view.filters_note)}.</p>")

    add("<h2 id='maps'>Feature maps</h2>")
    add("<p>A few sample images and, at an early, a middle and a late cut, the channels that vary most over "
        "the sample (bright = strong response). Early maps keep the image's layout; late ones are coarse and "
        "respond to parts and objects.</p>")
    for img in view.feature_images:
        name = f"featuremaps_{img:04d}.png"
        files.append(_save(feature_maps_figure(view, img), out / name))
        add(f"<p><img alt='feature maps of {_e(view.paths[img].name)}' src='{name}'></p>")

    add("<h2 id='top'>What excites a channel</h2>")
    add("<p>For the channels that vary most over the sample, the sample images with the highest pooled "
        "response (after Zeiler &amp; Fergus), each cropped around the location of its strongest response. "
        "The class under each crop shows whether a channel is tied to a class or to a texture shared across classes.</p>")
    for i, d in enumerate(view.spatial):
        name = f"top_{i:02d}.png"
        files.append(_save(top_images_figure(view, i), out / name))
        add(f"<h3>{_e(d.cut.name)} (depth {d.cut.depth:.2f}, {_e(tuple(d.cut.shape))})</h3>"
            f"<img alt='top images at {_e(d.cut.name)}' src='{name}'>")

    add("<h2 id='layers'>Layers and parameters</h2>")
    add("<p>Every layer's output shape and parameter count, with the formula: a convolution has "
        "(kh·kw·cin + 1)·filters parameters, a dense layer (in + 1)·out, a depthwise convolution "
        "(kh·kw + 1)·cin, a BatchNormalization 4·c (2·c of them moving statistics, not trained).</p>")
    add(_layers_table(view))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in view.seconds.items())
    add(f"<p class='muted'>Measured in {sum(view.seconds.values()):.1f} s ({_e(timing)}). "
        "Written by <code>python cli.py inspect MODEL --show DATASET</code>.</p>")
    add("</body></html>\n")
    page = write_text(out / "index.html", "\n".join(parts))
    numbers = show_numbers(view)
    numbers["seconds"]["page"] = round(time.perf_counter() - start, 2)
    files = [page, *files]
    numbers_file = out / "show.json"
    files.append(numbers_file)
    report = ShowReport(out, page, files, numbers)
    write_json(numbers_file, report.to_dict())
    return report


def show_numbers(view: DataView) -> dict:
    """The numbers of a `DataView` (what `--json` and `show.json` hold besides the file list)."""
    t, s = view.transfer, view.similarity
    return {
        "model": view.model, "source": view.source, "dataset": view.dataset, "sample": len(view.paths),
        "classes": list(view.class_names), "image_size": list(view.image_size), "preprocessing": view.preprocessing,
        "advised_cut": None if t is None else t.best.name, "chance": None if t is None else round(t.chance, 4),
        "similarity": None if s is None else round(s.value, 4),
        "first_layer": view.filters_layer,
        "depths": [d.to_dict() for d in view.depths],
        "spatial_depths": [d.cut.name for d in view.spatial],
        "layers": [r.to_dict() for r in view.layers],
        "params": int(sum(r.params for r in view.layers)),
        "seconds": {k: round(v, 2) for k, v in view.seconds.items()},
        "notes": list(view.notes),
        "convention": dict(view.convention),
    }
