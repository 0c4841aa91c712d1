"""The plan drawn as a network: blocks along the depth, coloured by what each training phase does.

    net = plan_network(plan)                      # -> PlanNetwork (data; the surgery is really done)
    write_plan_drawing([net, plan_network(runner_up)], "plan.png")
    console.print(PlanDiagram(net))               # the same picture in the terminal

In the spirit of the four-case diagrams of transfer-learning courses: the pretrained network is a row
of blocks from the input to the output; blocks below the plan's cut (and the old classifier) are
**removed**, the rest are **frozen** or **fine-tuned** in each phase (one row per phase),
**reinitialized** where the plan starts them from random weights, and the **new head** closes the
row. The statuses are not guessed from the plan's words: `plan_network` runs the plan's own surgery
(`surgery.prepare.prepare_model`) and each phase's `set_phase_trainable` on a copy, and reads the
layers' trainable flags, so the picture is what `apply` trains.

The drawing belongs to surgery because `surgery.run` writes it into the run directory (the report
shows it). The runner-up is a rule-table answer and surgery never reads rules, so the runner-up
comes in as a plan: passed by the caller (`runner_up=`), or, when none is passed, from the finder
the layer above registered in `graft.runner_up` (`advisor.runner_up` registers its
`runner_up_plan`, which reads the plan's rules file, when `advisor` is imported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from graft.atomic import atomic_path
from graft.errors import GraftError
from graft.plan import Plan
from graft.runner_up import find as find_runner_up
from surgery.graph import LayerGraph, layer_graph
from surgery.head import find_head
from surgery.load import is_model_file, load_model
from surgery.locate import nearest_cut_by_depth
from surgery.prepare import DEPTH_REGIONS, load_backbone, prepare_model, set_phase_trainable
from surgery.stages import candidate_cuts

REMOVED, FROZEN, TUNED, REINIT, HEAD = "removed", "frozen", "fine-tuned", "reinitialized", "new head"
COLORS = {REMOVED: "#d9d9d9", FROZEN: "#6baed6", TUNED: "#fd8d3c", REINIT: "#e7298a", HEAD: "#31a354"}
_RICH = {REMOVED: "grey50", FROZEN: "blue", TUNED: "dark_orange", REINIT: "magenta", HEAD: "green"}
MAX_BLOCKS = 24


@dataclass
class Block:
    """A run of consecutive layers drawn as one box.

    Attributes:
        name: the block's last layer (a cut point of the pretrained network, or `new head`).
        layers: layers in the block; `params` their parameters.
        channels: channels of the block's output (for the box height), None when not an image map.
        depth: depth of the block's end in the pretrained network, 0..1 (1 for the head).
        status: one status per phase: removed, frozen, fine-tuned, reinitialized or new head.
    """

    name: str
    layers: int
    params: int
    channels: int | None
    depth: float
    status: list[str]


@dataclass
class PlanNetwork:
    """A plan, as the network it trains.

    Attributes:
        strategy: the plan's strategy; `case` its case; `label` `chosen` or `runner-up`.
        model: the pretrained model's name.
        phases: `name (trainable)` of each phase.
        blocks: the pretrained network's blocks, then the new head.
        cut: the cut layer (None: the whole base is kept); `cut_depth` its depth.
        params: `kept`, `removed`, `head`, and `trained_<phase>` parameter counts.
        bn: the plan's BatchNormalization policy.
        notes: what the boxes cannot say (fallback trial, BN layers kept frozen).
    """

    strategy: str
    case: int
    label: str
    model: str
    phases: list[str]
    blocks: list[Block]
    cut: str | None
    cut_depth: float | None
    params: dict[str, int]
    bn: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "case": self.case, "label": self.label, "model": self.model,
                "phases": list(self.phases), "cut": self.cut, "cut_depth": self.cut_depth,
                "params": dict(self.params), "bn": self.bn, "notes": list(self.notes),
                "blocks": [{"name": b.name, "layers": b.layers, "params": b.params, "depth": round(b.depth, 4),
                            "status": list(b.status)} for b in self.blocks]}


def _load(plan: Plan, safe_mode: bool | None) -> keras.Model:
    """The plan's pretrained model; a keras.applications name is built without downloading weights
    (the drawing needs the architecture only)."""
    if is_model_file(plan.model.source):
        return load_backbone(plan, safe_mode)
    size = plan.model.input_size or plan.data.input_size
    return load_model(plan.model.source, weights="none",
                      input_shape=(int(size[0]), int(size[1]), int(plan.data.channels)))


def plan_network(plan: Plan, backbone: keras.Model | LayerGraph | None = None, label: str = "chosen",
                 safe_mode: bool | None = None) -> PlanNetwork:
    """Do the plan's surgery on a copy and read, per phase, what is removed, frozen or trained.

    Args:
        plan: the plan.
        backbone: the pretrained model or its `LayerGraph`, when already loaded (else loaded from
            `plan.model`).
        label: `chosen` or `runner-up` (shown in the title).
        safe_mode: override `plan.model.safe_mode` when loading a model file.

    Returns:
        `PlanNetwork`.

    Raises:
        ModelLoadError, InvalidCutError, PlanError: the plan does not fit the model.
    """
    loaded = backbone if backbone is not None else _load(plan, safe_mode)
    graph = loaded if isinstance(loaded, LayerGraph) else layer_graph(loaded)
    original = graph.model
    prepared = prepare_model(plan, backbone=graph)
    pgraph = prepared.layer_graph()
    by_name = {c.name: c for c in pgraph.calls.values() if c.is_layer}
    old_head = set(find_head(graph).layers)
    reinit = set(plan.surgery.reinitialize)
    depths = graph.depths()

    body, head_old = _block_groups(plan, graph, pgraph, old_head)
    statuses, trained = _phase_statuses(plan, prepared, by_name, reinit)
    n_phases = len(plan.training.phases)
    blocks, kept, removed = _body_blocks(graph, body, by_name, statuses, n_phases, depths)
    if head_old:
        p = sum(sum(_size(w.shape) for w in graph.calls[c].op.weights) for c in head_old if graph.calls[c].is_layer)
        removed += p
        blocks.append(Block(f"old head ({head_old[-1]})", len(head_old), p, None, 1.0, [REMOVED] * n_phases))
    head_params = sum(sum(_size(w.shape) for w in pgraph.calls[c].op.weights) for c in prepared.head
                      if pgraph.calls[c].is_layer)
    blocks.append(Block("new head", len(prepared.head), head_params, None, 1.0, [HEAD] * n_phases))
    notes = []
    if plan.surgery.bn == "freeze":
        notes.append("BatchNormalization layers stay frozen in every phase (bn: freeze)")
    if plan.training.fallback is not None:
        notes.append("a short trial first compares pretrained and random initialization (fallback)")
    cut_depth = depths.get(plan.surgery.cut) if plan.surgery.cut else None
    return PlanNetwork(
        strategy=plan.decision.strategy or "plan", case=int(plan.decision.case or 0), label=label,
        model=original.name, phases=[f"{ph.name} ({ph.trainable})" for ph in plan.training.phases],
        blocks=blocks, cut=plan.surgery.cut, cut_depth=cut_depth,
        params={"kept": int(kept), "removed": int(removed), "head": int(head_params), **trained},
        bn=plan.surgery.bn, notes=notes)


def _block_groups(plan: Plan, graph: LayerGraph, pgraph: LayerGraph, old_head: set[str]):
    """The backbone's calls grouped into blocks (`body`), and the old head's calls (`head_old`)."""
    # Block ends: the network's stages (advise's candidate cuts), the plan's cut, where the trainable
    # regions begin, and the last feature map; the old head is one block.
    try:
        ends = [c.name for c in candidate_cuts(graph, MAX_BLOCKS)]
    except Exception:  # noqa: BLE001 - a network without a spatial map: cut points alone
        ends = [c.name for c in graph.cut_points()][:MAX_BLOCKS]
    features = find_head(graph).features.name
    extra = [features] + ([plan.surgery.cut] if plan.surgery.cut else [])
    for ph in plan.training.phases:
        if ph.trainable in DEPTH_REGIONS:
            extra.append(nearest_cut_by_depth(pgraph, DEPTH_REGIONS[ph.trainable]).name)
        elif ph.trainable.startswith("from:"):
            extra.append(ph.trainable[5:])
    ends_set = {e for e in ends + extra if e in graph.calls}
    groups: list[list[str]] = [[]]
    for cid in graph.order:
        groups[-1].append(cid)
        if cid in ends_set or cid == features:
            groups.append([])
    body = [g for g in groups if g and not set(g) <= old_head]
    head_old = [cid for g in groups for cid in g if cid in old_head]
    return body, head_old


def _phase_statuses(plan: Plan, prepared, by_name: dict, reinit: set[str]):
    """Per kept layer, its status in each phase (read back from `set_phase_trainable`), and the
    parameters each phase trains."""
    statuses: dict[str, list[str]] = {}
    trained: dict[str, int] = {}
    random_from = next((i for i, ph in enumerate(plan.training.phases) if ph.weights == "random"), None)
    for i, ph in enumerate(plan.training.phases):
        set_phase_trainable(prepared, ph.trainable, plan.surgery.bn)
        trained[f"trained_{ph.name}"] = int(sum(_size(v.shape) for v in prepared.model.trainable_weights))
        for name, call in by_name.items():
            layer = call.op
            on = bool(layer.trainable) and bool(layer.weights)
            if name in reinit or (random_from is not None and i >= random_from and name not in prepared.head):
                s = REINIT if layer.weights else (TUNED if on else FROZEN)
            else:
                s = TUNED if on else FROZEN
            statuses.setdefault(name, []).append(s)
    return statuses, trained


def _body_blocks(graph: LayerGraph, body: list[list[str]], by_name: dict, statuses: dict, n_phases: int,
                 depths: dict) -> tuple[list[Block], int, int]:
    """One `Block` per group, with the status most of its parameters have in each phase; and the
    parameters kept and removed."""
    blocks: list[Block] = []
    kept = removed = 0
    for g in body:
        layers = 0
        for cid in g:
            call = graph.calls[cid]
            if not call.is_layer:
                continue
            layers += 1
            p = sum(_size(w.shape) for w in call.op.weights)
            if call.name in by_name:
                kept += p
            else:
                removed += p
        per_phase = []
        for i in range(n_phases):
            params_by: dict[str, float] = {}
            for cid in g:
                call = graph.calls[cid]
                if not call.is_layer:
                    continue
                p = sum(_size(w.shape) for w in call.op.weights)
                bn = isinstance(call.op, keras.layers.BatchNormalization)
                s = statuses[call.name][i] if call.name in by_name else REMOVED
                # BN statistics follow the plan's bn policy; the box shows what the other layers do
                params_by[s] = params_by.get(s, 0) + (0 if bn and s in (FROZEN, TUNED) else p) + 1e-6
            per_phase.append(max(params_by, key=params_by.get) if params_by else REMOVED)
        shape = graph.output_shape(g[-1])
        blocks.append(Block(g[-1], layers, sum(sum(_size(w.shape) for w in graph.calls[c].op.weights)
                                               for c in g if graph.calls[c].is_layer),
                            int(shape[-1]) if len(shape) == 4 and shape[-1] else None, depths[g[-1]], per_phase))
    return blocks, kept, removed


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _draw(ax, net: PlanNetwork) -> None:
    n = len(net.blocks)
    rows = len(net.phases) or 1
    max_ch = max((b.channels or 0) for b in net.blocks) or 1
    gap = 0.15
    for r in range(rows):
        y0 = (rows - 1 - r) * 1.4
        ax.text(-0.3, y0 + 0.5, f"phase {r + 1}\n{net.phases[r] if net.phases else ''}", ha="right", va="center",
                fontsize=7)
        for i, b in enumerate(net.blocks):
            frac = 0.45 + 0.55 * ((b.channels or max_ch) / max_ch) ** 0.5
            h = frac
            s = b.status[r] if b.status else FROZEN
            ax.add_patch(Rectangle((i + gap / 2, y0 + (1 - h) / 2), 1 - gap, h, facecolor=COLORS[s],
                                   edgecolor="#555", lw=0.5, hatch="//" if s == REMOVED else None))
    top = (rows - 1) * 1.4 + 1.0
    for i, b in enumerate(net.blocks):
        ax.text(i + 0.5, -0.15, f"{b.name[:22]}\n{_fmt_params(b.params)}", rotation=90, ha="center", va="top",
                fontsize=6)
    if net.cut is not None:
        idx = next((i for i, b in enumerate(net.blocks) if b.name == net.cut), None)
        if idx is not None:
            ax.plot([idx + 1, idx + 1], [-0.05, top + 0.1], color="#d62728", ls="--", lw=1.2)
            ax.text(idx + 1, top + 0.1, f"cut: {net.cut} (depth {net.cut_depth or 0:.2f})", color="#d62728",
                    fontsize=7, ha="center", va="bottom")
    ax.set_xlim(-0.1, n + 0.1)
    ax.set_ylim(-2.7, top + 0.6)
    ax.axis("off")
    p = net.params
    trained = ", ".join(f"{k[8:]} {_fmt_params(v)}" for k, v in p.items() if k.startswith("trained_"))
    case = f", case {net.case}" if net.case else ""
    ax.set_title(f"{net.label}: {net.strategy}{case} on {net.model}\nkept {_fmt_params(p['kept'])}, removed "
                 f"{_fmt_params(p['removed'])}, new head {_fmt_params(p['head'])}; trained per phase: {trained}",
                 fontsize=8)


def plan_figure(networks: list[PlanNetwork]) -> Figure:
    """The networks side by side (the chosen plan, then the runner-up), with one legend."""
    widths = [max(6.0, 0.32 * len(n.blocks) + 1.8) for n in networks]
    rows = max(len(n.phases) for n in networks)
    fig = Figure(figsize=(sum(widths), 2.2 + 0.9 * rows))
    axes = fig.subplots(1, len(networks), squeeze=False, width_ratios=widths)[0]
    for ax, net in zip(axes, networks):
        _draw(ax, net)
    handles = [Patch(facecolor=c, edgecolor="#555", label=s, hatch="//" if s == REMOVED else None)
               for s, c in COLORS.items()]
    notes = sorted({note for n in networks for note in n.notes})
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    if notes:
        fig.text(0.5, 0.075, "; ".join(notes), ha="center", fontsize=6.5, color="#444")
    fig.subplots_adjust(left=0.09, right=0.99, top=0.84, bottom=0.12, wspace=0.25)
    return fig


def write_plan_drawing(networks: list[PlanNetwork], path: str | os.PathLike, dpi: int = 90) -> Path:
    """Draw the networks side by side into a PNG at `path`, written atomically."""
    fig = plan_figure(networks)
    FigureCanvasAgg(fig)
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return target


def draw_plan(plan: Plan, path: str | os.PathLike, runner_up: Plan | None = None,
              backbone: keras.Model | LayerGraph | None = None,
              safe_mode: bool | None = None) -> tuple[Path, list[PlanNetwork]]:
    """The plan and its runner-up, drawn side by side into `path`.

    Args:
        plan: the chosen plan.
        path: the PNG to write (atomically).
        runner_up: the runner-up's plan (`advisor.runner_up.runner_up_plan`); default: what the
            registered finder gives (`graft.runner_up.find`), else the plan is drawn alone.
        backbone: the pretrained model (or its `LayerGraph`), when already loaded.
        safe_mode: override `plan.model.safe_mode` when loading a model file.

    Returns:
        The PNG's path and the networks drawn.
    """
    original = backbone if backbone is not None else _load(plan, safe_mode)
    graph = original if isinstance(original, LayerGraph) else layer_graph(original)  # one graph for both
    nets = [plan_network(plan, graph, "chosen")]
    alt = runner_up if runner_up is not None else find_runner_up(plan)
    if alt is not None:
        nets.append(plan_network(alt, graph, "runner-up"))
    return write_plan_drawing(nets, path), nets


class PlanDiagram:
    """The plan drawing in the terminal: one line of coloured blocks per phase."""

    def __init__(self, network: PlanNetwork):
        self.network = network

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        net = self.network
        yield Text.assemble((f"{net.label}: {net.strategy}", "bold"), f" on {net.model}, input → output; cut: "
                            f"{net.cut or 'none (whole base kept)'}")
        width = max(len(p) for p in net.phases) if net.phases else 5
        for r, phase in enumerate(net.phases):
            line = Text(phase.ljust(width) + "  ")
            for b in net.blocks:
                s = b.status[r]
                line.append("▚▚" if s == REMOVED else "██", style=_RICH[s])
                if net.cut is not None and b.name == net.cut:
                    line.append("✂", style="red")
            yield line
        legend = Text(" " * (width + 2))
        for s, style in _RICH.items():
            legend.append("██", style=style)
            legend.append(f" {s}  ")
        yield legend
        p = net.params
        yield Text(" " * (width + 2) + f"kept {_fmt_params(p['kept'])}, removed {_fmt_params(p['removed'])}, "
                   f"new head {_fmt_params(p['head'])} parameters")


def draw_into_run(plan: Plan, run_dir: str | os.PathLike, safe_mode: bool | None = None,
                  runner_up: Plan | None = None) -> tuple[Path | None, str]:
    """`apply`'s drawing: `RUN_DIR/plan.png`, beside the runner-up (`draw_plan`).

    Returns:
        `(path, "")`, or `(None, why)` when the plan cannot be drawn; a drawing never fails a run.
    """
    try:
        path, _ = draw_plan(plan, Path(run_dir) / "plan.png", runner_up=runner_up, safe_mode=safe_mode)
    except (GraftError, ValueError, TypeError) as exc:
        return None, f"the plan could not be drawn ({type(exc).__name__}: {exc})"
    return path, ""
