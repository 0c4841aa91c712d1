"""The plan drawn as a network: statuses read back from the plan's real surgery, the PNG, and where
`advise` and `apply` put it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import cli
from advisor.rules import load_rules
from advisor.runner_up import runner_up_plan
from graft.plan import (
    DataPlan,
    DecisionRecord,
    HeadPlan,
    ModelSpec,
    OutputPlan,
    Phase,
    Plan,
    SurgeryPlan,
    TrainingPlan,
)
from surgery.plan_drawing import (
    FROZEN,
    HEAD,
    REINIT,
    REMOVED,
    TUNED,
    PlanDiagram,
    plan_network,
    write_plan_drawing,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
HEAD_PHASE = Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3)


def make_plan(phases, cut=None, strategy="linear_probe", runner_up=None, reinitialize=(), facts=None) -> Plan:
    plan = Plan(
        facts=dict(facts or {}),
        decision=DecisionRecord(strategy=strategy, case=1, runner_up=runner_up),
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(cut=cut, head=HeadPlan(classes=5), reinitialize=list(reinitialize)),
        training=TrainingPlan(phases=list(phases)),
        data=DataPlan(path=str(DATA), input_size=[32, 32]),
        outputs=OutputPlan(dir="runs/x"),
    )
    return Plan.from_dict(plan.to_dict())


@pytest.fixture(scope="module")
def model():
    return keras.models.load_model(CNN, compile=False)


def body(net):
    return [b for b in net.blocks if b.name != "new head" and not b.name.startswith("old head")]


def test_linear_probe_keeps_everything_frozen_and_adds_a_head(model):
    net = plan_network(make_plan([HEAD_PHASE]), model)
    assert all(b.status == [FROZEN] for b in body(net))
    assert net.blocks[-1].name == "new head" and net.blocks[-1].status == [HEAD]
    assert net.blocks[-2].name == "old head (predictions)" and net.blocks[-2].status == [REMOVED]
    p = net.params
    assert p["kept"] + p["removed"] == model.count_params()
    assert p["head"] == (128 + 1) * 5 and p["trained_head"] == p["head"]


def test_cut_removes_every_block_after_it(model):
    net = plan_network(make_plan([HEAD_PHASE], cut="block2_pool", strategy="truncate_probe"), model)
    names = [b.name for b in body(net)]
    i = names.index("block2_pool")
    assert all(b.status == [FROZEN] for b in body(net)[: i + 1])
    assert body(net)[i + 1:] and all(b.status == [REMOVED] for b in body(net)[i + 1:])
    assert net.cut == "block2_pool" and 0 < net.cut_depth < 1
    removed = sum(b.params for b in net.blocks if b.status == [REMOVED])
    assert removed == net.params["removed"]


def test_top_third_fine_tunes_only_the_deep_blocks(model):
    phases = [HEAD_PHASE, Phase(name="finetune", trainable="top_third", epochs=1, learning_rate=1e-4)]
    net = plan_network(make_plan(phases, strategy="lp_ft_top"), model)
    second = [b.status[1] for b in body(net)]
    assert second[-1] == TUNED and second[0] == FROZEN
    assert second == sorted(second, key=lambda s: s == TUNED)  # frozen first, then fine-tuned
    assert all(b.status[0] == FROZEN for b in body(net))
    assert net.params["trained_finetune"] > net.params["trained_head"]


def test_all_trainable_and_random_weights_show_as_reinitialized(model):
    phases = [Phase(name="scratch", trainable="all", epochs=1, learning_rate=1e-3, weights="random")]
    net = plan_network(make_plan(phases, strategy="scratch"), model)
    assert all(b.status == [REINIT] for b in body(net) if b.params)
    tuned = plan_network(make_plan([Phase(name="ft", trainable="all", epochs=1, learning_rate=1e-4)]), model)
    assert all(b.status == [TUNED] for b in body(tuned) if b.params)


def test_runner_up_from_the_rules_table_side_by_side(model, tmp_path):
    table = load_rules()
    plan = make_plan([HEAD_PHASE], runner_up="truncate_probe", facts={"best_cut_layer": "block2_pool"})
    alt = runner_up_plan(plan, table)
    assert alt.decision.strategy == "truncate_probe" and alt.surgery.cut == "block2_pool"
    assert [p.trainable for p in alt.training.phases] == [p["trainable"] for p in table.strategies["truncate_probe"]["phases"]]
    nets = [plan_network(plan, model), plan_network(alt, model, "runner-up")]
    png = write_plan_drawing(nets, tmp_path / "plan.png")
    with Image.open(png) as im:
        assert im.width > 900 and im.height > 200
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in rgb[:: 7]}
    for hex_colour in ("#6baed6", "#31a354", "#d9d9d9"):  # frozen, new head, removed
        assert tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)) in colours
    console = Console(file=io.StringIO(), width=120)
    console.print(PlanDiagram(nets[1]))
    text = console.file.getvalue()
    assert "runner-up: truncate_probe" in text and "✂" in text and "removed" in text


def test_advise_writes_the_drawing_next_to_plan_yaml(tmp_path, capsys):
    out = tmp_path / "plans" / "plan.yaml"
    args = ["advise", str(DATA), "--model", str(CNN), "--out", str(out), "--run-dir", str(tmp_path / "run")]
    assert cli.main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    png = tmp_path / "plans" / "plan.png"
    assert data["plan_drawing"]["file"] == str(png) and png.stat().st_size > 10_000
    labels = [n["label"] for n in data["plan_drawing"]["networks"]]
    assert labels[0] == "chosen" and (len(labels) == 2) == bool(data["plan"]["decision"]["runner_up"])
    assert cli.main(args) == 0
    assert "Plan drawn in" in capsys.readouterr().out


def test_apply_report_contains_the_drawing(tmp_path):
    from surgery import run

    plan = make_plan([Phase(name="head", trainable="head", epochs=2, learning_rate=3e-3)], runner_up="lp_ft_top")
    plan.provenance.rules = str(ROOT / "rules.yaml")
    plan.outputs.dir = str(tmp_path / "run")
    plan.data.validation_split, plan.data.test_split = 0.2, 0.2
    result = run(plan)
    png = result.run_dir / "plan.png"
    with Image.open(png) as im:
        assert im.width > 900  # the chosen plan and the runner-up side by side
    page = (result.run_dir / "report.html").read_text()
    assert "The plan, drawn" in page and "alt='the plan drawn as a network' src='data:image/png;base64," in page
