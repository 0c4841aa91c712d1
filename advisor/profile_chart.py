"""The per-depth profile of `EmbeddingFacts`, drawn: a compact terminal chart (rich) and a PNG.

    console.print(ProfileChart(facts))      # in the terminal
    plot_profile(facts, "profile.png")      # matplotlib, written atomically
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from advisor.measure import EmbeddingFacts

_SPARK = "▁▂▃▄▅▆▇█"
_BAR_WIDTH = 24


def _bar(fraction: float, width: int = _BAR_WIDTH) -> str:
    cells = max(0.0, min(1.0, fraction)) * width
    full = int(cells)
    part = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < width else ""
    return ("█" * full + part.strip()).ljust(width)


def shift_sparkline(depths: list[float], shift: list[float], bins: int = 20) -> str:
    """Mean shift per depth bin as block characters (blank where no layer falls in a bin)."""
    if not shift:
        return ""
    top = max(shift) or 1.0
    out = []
    for b in range(bins):
        vals = [s for d, s in zip(depths, shift) if b / bins <= d < (b + 1) / bins or (b == bins - 1 and d == 1.0)]
        out.append(" " if not vals else _SPARK[min(7, int(sum(vals) / len(vals) / top * 7.999))])
    return "".join(out)


class ProfileChart:
    """Renders the similarity line, the shift-by-depth sparkline and the per-cut score bars."""

    def __init__(self, facts: EmbeddingFacts):
        self.facts = facts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        f, s, t = self.facts, self.facts.similarity, self.facts.transfer
        if s is not None:
            yield Text.assemble(
                ("similarity ", "bold"), (f"{s.value:.2f}", "bold cyan"),
                f" ± {s.uncertainty:.2f}  ({s.method}, {s.sample} images, distance {s.distance:.3f})")
            yield Text.assemble(("shift by depth ", "dim"), "0 ", (shift_sparkline(s.depths, s.shift), "magenta"),
                                " 1  ", (f"(max {max(s.shift):.2f} at depth {s.depths[s.shift.index(max(s.shift))]:.2f})", "dim"))
        if t is not None:
            table = Table(box=None, padding=(0, 1), show_edge=False, title_justify="left",
                          title=f"probe accuracy per cut ({t.method}, chance {t.chance:.2f})")
            table.add_column("cut")
            table.add_column("depth", justify="right")
            table.add_column("", no_wrap=True)
            table.add_column("acc", justify="right")
            for c in t.scores:
                mark = " ◀ best" if c.name == t.best.name else ""
                style = "bold green" if mark else ""
                table.add_row(Text(c.name + mark, style=style), f"{c.depth:.2f}", _bar(c.score),
                              f"{c.score:.2f}")
            yield table
        for note in f.notes:
            yield Text(note, style="yellow")


def plot_profile(facts: EmbeddingFacts, path: str | os.PathLike) -> Path:
    """Write a two-panel PNG: channel-statistics shift by depth, and probe accuracy per cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    s, t = facts.similarity, facts.transfer
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    if s is not None:
        axes[0].errorbar(s.depths, s.shift, yerr=s.shift_uncertainty, fmt="o-", ms=3, lw=1)
        axes[0].set_title(f"{facts.model}: similarity {s.value:.2f} ± {s.uncertainty:.2f} ({s.method})")
    axes[0].set_ylabel("shift (mean log(1+d))")
    if t is not None:
        depths = [c.depth for c in t.scores]
        axes[1].errorbar(depths, [c.score for c in t.scores], yerr=[c.stderr for c in t.scores], fmt="o-", ms=3)
        axes[1].axhline(t.chance, color="grey", ls=":", lw=1, label="chance")
        axes[1].plot([t.best.depth], [t.best.score], "r*", ms=12, label=f"recommended: {t.best.name}")
        axes[1].legend(loc="lower right", fontsize=8)
    axes[1].set_ylabel("leave-one-out probe accuracy")
    axes[1].set_xlabel("depth (fraction of the network)")
    axes[1].set_xlim(0, 1.02)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
