"""`advisor.advise` and `python cli.py advise` on the bundled data set and model.

Real computation throughout: `examples/data/cifar_b` (5 classes x 60 images of 32 px) is scanned,
`examples/models/cifar_a_cnn.keras` (a small CNN pretrained on five other CIFAR-10 classes) is
loaded and the data embedded under it (once per module: it takes a few seconds), the shipped
rules decide, and the CLI runs (in this process through `cli.main`, once in a child process). No mocks.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from rich.console import Console

from advisor.advise import Advice, advise, estimate_cost
from advisor.rules import DEFAULT_RULES, load_rules
from graft.errors import DatasetError, InputError, RulesError
from graft.plan import PLAN_VERSION, dump_plan, load_plan

DATA = ROOT / "examples" / "data" / "cifar_b"
MODEL = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
STRATEGY_RULES = 12  # rules in the shipped strategy table
MODIFIER_RULES = 7


@pytest.fixture(scope="module")
def similar() -> Advice:
    return advise(DATA, similarity=0.8)


@pytest.fixture(scope="module")
def unknown() -> Advice:
    return advise(DATA)


@pytest.fixture(scope="module")
def measured() -> Advice:
    return advise(DATA, model=MODEL)


def cli(*args: str, cwd=ROOT, child: bool = False) -> subprocess.CompletedProcess:
    """`python cli.py advise ARGS` in `cwd`: in a child process (`child`), else in this process through
    `cli.main` with stdout and stderr captured (the same code path after the interpreter starts,
    without paying TensorFlow's import for every call)."""
    argv = ["advise", *map(str, args)]
    if child:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], cwd=cwd,
                              capture_output=True, text=True, timeout=300, env=env)
    import contextlib

    import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_module.main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI's one-line error: exit code 2, one stderr line starting `graft: error:`."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graft: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ library


def test_stated_similarity_gives_a_probe_at_the_best_cut(similar):
    d = similar.decision
    assert (d.strategy, d.case, d.rule, d.runner_up) == ("truncate_probe", 1, "small_similar", "lp_ft_top")
    assert similar.facts["similarity"] == 0.8
    assert similar.facts["similarity_method"] == "user"
    assert similar.model is None and similar.embedding is None
    # the data set facts are the real ones
    f = similar.facts
    assert (f["images"], f["classes"], f["images_per_class_min"], f["median_width"], f["median_height"]) == (
        300, 5, 60, 32, 32)
    assert f["imbalance_ratio"] == 1.0 and f["corrupt_files"] == 0
    assert similar.dataset.per_class == {c: 60 for c in ("dog", "frog", "horse", "ship", "truck")}


def test_plan_of_the_stated_similarity(similar):
    plan = similar.plan
    assert plan.plan_version == PLAN_VERSION
    assert plan.decision.strategy == "truncate_probe" and plan.decision.rule == "small_similar"
    assert plan.decision.similarity == {"value": 0.8, "method": "user", "uncertainty": None}
    assert plan.decision.reasons[0].startswith("Case 1, small and similar: 300 images (< 10000)")
    assert "similarity 0.80 >= 0.5" in plan.decision.reasons[0]
    # 60 images per class < augment_below: the augmentation modifier applied, and its reason is kept
    assert plan.data.augmentation == {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1}
    assert any("random flips" in r for r in plan.decision.reasons[1:])
    assert [(p.name, p.trainable, p.epochs, p.solver) for p in plan.training.phases] == [
        ("head", "head", 30, "auto")]
    assert plan.surgery.head.classes == 5 and plan.surgery.cut is None
    # no model given: the plan names MobileNetV2 on ImageNet, at 160 px without a GPU
    assert (plan.model.source, plan.model.weights, plan.model.input_size) == ("mobilenetv2", "imagenet", None)
    assert plan.data.input_size == ([224, 224] if similar.facts["gpu"] else [160, 160])
    # nothing held out: every labelled image trains the final model
    assert (plan.data.validation_split, plan.data.test_split) == (0.0, 0.0)
    assert plan.data.path == str(DATA)
    assert plan.outputs.dir == "runs/cifar_b-truncate_probe"
    assert plan.provenance.rules == str(DEFAULT_RULES) and plan.provenance.rules_version == 1
    assert len(plan.provenance.rules_sha256) == 64 and len(plan.provenance.dataset_fingerprint) == 64
    assert plan.provenance.tool.startswith("graft ")


def test_expected_costs_follow_the_strategies(similar):
    plan, table = similar.plan, similar.rules
    assert plan.decision.expected_cost == estimate_cost(table.strategies["truncate_probe"], 300, True)
    assert plan.decision.runner_up_cost == estimate_cost(table.strategies["lp_ft_top"], 300, True)
    # the frozen head is fitted on features computed once, augmentation or not: one pass over 300 images
    assert plan.decision.expected_cost == {"base_forward_passes": 300, "epochs": 1}
    # then the top third trains for 10 epochs (10 batches each, above the 30-step floor): 300 + 10 x 300 x 5/3
    assert plan.decision.runner_up_cost == {"base_forward_passes": 300 + 5000, "epochs": 11}


def test_min_steps_raise_the_epochs_of_small_data_sets():
    strategy = {"phases": [{"trainable": "all", "epochs": 10, "min_steps": 60}]}
    assert estimate_cost(strategy, 60, False)["epochs"] == 30        # 2 steps an epoch
    assert estimate_cost(strategy, 6400, False)["epochs"] == 10      # 200 steps an epoch


def test_advised_plan_round_trips(similar):
    text = dump_plan(similar.plan)
    assert load_plan(text=text) == similar.plan
    assert dump_plan(load_plan(text=text)) == text


def test_no_model_and_no_similarity_says_so(unknown):
    d = unknown.decision
    assert (d.strategy, d.case, d.rule, d.runner_up) == ("lp_ft_top", 0, "small_similarity_unknown", "linear_probe")
    assert unknown.facts["similarity"] is None
    sim = unknown.plan.decision.similarity
    assert sim["value"] is None
    assert sim["note"] == "similarity unknown; handled by rule 'small_similarity_unknown'"
    assert "similarity unknown" in unknown.plan.decision.reasons[0]
    assert [(p.name, p.trainable) for p in unknown.plan.training.phases] == [("head", "head"),
                                                                              ("finetune", "top_third")]
    # the note survives the plan file
    assert load_plan(text=dump_plan(unknown.plan)).decision.similarity == sim


def test_trace_covers_every_rule_with_its_conditions(unknown):
    trace = unknown.decision.trace
    assert [t.table for t in trace] == ["strategy"] * STRATEGY_RULES + ["modifier"] * MODIFIER_RULES
    for t in trace:
        assert t.line > 0
        assert t.conditions, t.name
        assert t.matched == all(c.passed for c in t.conditions)
    sim_conditions = [c for t in trace for c in t.conditions if c.fact == "similarity"]
    assert sim_conditions and all(c.actual is None for c in sim_conditions)
    winner = next(t for t in trace if t.name == unknown.decision.rule)
    assert winner.matched


@pytest.mark.parametrize("overrides, strategy, rule", [
    ({"small_dataset": 100}, "finetune_all", "large_similar"),
    ({"similar": 0.9}, "lp_ft", "small_different"),
    ({"very_few_per_class": 100}, "linear_probe", "too_few_per_class"),
])
def test_overrides_change_the_decision(overrides, strategy, rule):
    advice = advise(DATA, overrides=overrides, similarity=0.8)
    assert (advice.decision.strategy, advice.decision.rule) == (strategy, rule)
    assert advice.plan.provenance.overrides == overrides
    assert advice.rules.overrides == overrides
    assert load_plan(text=dump_plan(advice.plan)) == advice.plan


def test_overrides_are_checked():
    with pytest.raises(RulesError, match="no threshold named 'small_datset'.*did you mean 'small_dataset'"):
        advise(DATA, overrides={"small_datset": 5000})
    with pytest.raises(RulesError, match="a threshold must be a number"):
        advise(DATA, overrides={"small_dataset": "many"})


def test_a_loaded_rule_table_can_be_passed(similar):
    advice = advise(DATA, rules=load_rules(overrides={"similar": 0.9}), similarity=0.8)
    assert advice.decision.strategy == "lp_ft"


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", float("nan")])
def test_similarity_must_be_in_0_1(value):
    with pytest.raises(InputError, match="similarity must be a number in \\[0, 1\\]"):
        advise(DATA, similarity=value)


def test_missing_data_set_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        advise(tmp_path / "nope", similarity=0.8)


@pytest.mark.backends
def test_model_gives_measured_similarity(measured):
    f = measured.facts
    assert f["similarity_method"] == "bn_stats"
    assert 0 <= f["similarity"] <= 1
    assert f["similarity_uncertainty"] is not None and f["similarity_sample"] > 0
    assert 0 < f["best_cut_depth"] <= 1
    assert measured.embedding is not None
    assert measured.plan.decision.similarity == {"value": f["similarity"], "method": "bn_stats",
                                                 "uncertainty": f["similarity_uncertainty"]}
    assert "note" not in measured.plan.decision.similarity


@pytest.mark.backends
def test_model_facts_reach_the_plan(measured):
    m = measured.model
    assert (m.name, m.input_size, m.channels, m.has_batchnorm) == ("cifar_a_cnn", (32, 32), 3, True)
    assert measured.facts["model_layers"] == m.layers and measured.facts["model_input_size"] == 32
    assert measured.facts["input_ratio"] == 1.0
    plan = measured.plan
    assert plan.model.source == str(MODEL) and plan.model.weights == "file"
    assert plan.model.input_size == [32, 32] and plan.data.input_size == [32, 32]
    assert plan.surgery.bn == "freeze"  # the model has BatchNormalization
    # a measured probe decides a small data set: a probe at the best cut when its 95 % lower bound
    # clears probe_enough, else guarded fine-tuning of every layer (evidence too thin)
    f = measured.facts
    assert f["probe_sample"] > 0 and 0 <= f["probe_lower"] <= f["best_cut_score"]
    enough = f["probe_lower"] >= measured.rules.thresholds["probe_enough"].value
    assert (measured.decision.rule, measured.decision.strategy, measured.decision.case) == (
        ("small_probe_enough", "truncate_probe", 0) if enough else ("small_thin_evidence", "lp_ft_cut", 0))
    if plan.surgery.cut is not None:
        assert plan.surgery.cut == measured.facts["best_cut_layer"]
    assert load_plan(text=dump_plan(plan)) == plan


def test_relative_paths_become_absolute_in_the_plan(monkeypatch):
    monkeypatch.chdir(ROOT)
    advice = advise("examples/data/cifar_b", model="examples/models/cifar_a_cnn.keras", measure=False,
                    similarity=0.8)
    # the plan works from any directory: both paths are absolute
    assert advice.plan.model.source == str(MODEL)
    assert advice.plan.data.path == str(DATA)
    assert advice.embedding is None and advice.facts["similarity_method"] == "user"
    assert advice.facts["model_input_size"] == 32  # the model was still loaded and described


def test_advice_to_dict_is_json(measured):
    data = json.loads(json.dumps(measured.to_dict()))
    assert data["similarity"]["method"] == "bn_stats"
    assert data["model"]["input_size"] == [32, 32]
    assert data["embedding"]["similarity"] is not None
    assert data["plan"]["decision"]["strategy"] == data["decision"]["strategy"] == measured.decision.strategy


# ------------------------------------------------------------------------------------------ CLI


def test_cli_writes_a_plan_and_json(tmp_path):
    out = tmp_path / "plans" / "plan.yaml"
    out.parent.mkdir()
    out.write_text("an older plan\n")
    proc = cli(DATA, "--similarity", "0.8", "--set", "augment_below=10", "--out", out, "--json", cwd=tmp_path,
               child=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # the existing file was replaced, with no temporary file left; the plan's drawing is beside it
    assert sorted(os.listdir(out.parent)) == ["plan.png", "plan.yaml"]
    plan = load_plan(out)
    assert plan.decision.strategy == "truncate_probe"
    assert plan.provenance.overrides == {"augment_below": 10}
    assert plan.data.augmentation == {}  # 60 images per class is no longer < augment_below
    assert out.read_text().startswith("# graft transfer plan")
    assert data["plan_file"] == str(out)
    assert data["plan"] == plan.to_dict()
    decision = data["decision"]
    assert decision["strategy"] == "truncate_probe" and decision["rule"] == "small_similar"
    trace = decision["trace"]
    assert len(trace) == STRATEGY_RULES + MODIFIER_RULES
    for rule in trace:
        assert {"table", "name", "line", "matched", "conditions"} <= set(rule)
        assert rule["conditions"]
        for c in rule["conditions"]:
            assert {"fact", "op", "actual", "passed", "text"} <= set(c)
    assert data["facts"]["similarity"] == 0.8
    assert data["rules"]["overrides"] == {"augment_below": 10}


def test_cli_human_output(tmp_path):
    proc = cli(DATA, "--out", "plan.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lp_ft_top" in proc.stdout and "small_similarity_unknown" in proc.stdout
    assert "Plan written to plan.yaml. Run it with: python cli.py apply plan.yaml" in proc.stdout
    assert load_plan(tmp_path / "plan.yaml").decision.strategy == "lp_ft_top"


def test_cli_missing_data_set_leaves_an_existing_plan(tmp_path):
    out = tmp_path / "plan.yaml"
    out.write_text("keep me\n")
    line = error_line(cli(tmp_path / "nope", "--out", out, cwd=tmp_path))
    assert "does not exist" in line and "nope" in line
    assert out.read_text() == "keep me\n"
    assert os.listdir(tmp_path) == ["plan.yaml"]


def test_cli_unknown_threshold(tmp_path):
    line = error_line(cli(DATA, "--set", "nosuch=1", "--out", tmp_path / "plan.yaml"))
    assert line.startswith("graft: error: --set nosuch=...: no threshold named 'nosuch'")
    line = error_line(cli(DATA, "--set", "small_datset=5000", "--out", tmp_path / "plan.yaml"))
    assert line.endswith("did you mean 'small_dataset'?")
    assert not (tmp_path / "plan.yaml").exists()


def test_cli_similarity_out_of_range(tmp_path):
    line = error_line(cli(DATA, "--similarity", "2", "--out", tmp_path / "plan.yaml"))
    assert "--similarity 2.0: must be between 0 and 1" in line
    assert not (tmp_path / "plan.yaml").exists()


def test_cli_rules_file_with_a_misspelled_fact(tmp_path):
    text = DEFAULT_RULES.read_text(encoding="utf-8")
    good = "images_per_class_min: {lt: very_few_per_class}"
    assert text.count(good) == 1
    line_no = text[:text.index(good)].count("\n") + 1
    rules = tmp_path / "my_rules.yaml"
    rules.write_text(text.replace(good, good.replace("images_per_class_min", "images_per_clas_min")))
    out = tmp_path / "plan.yaml"
    out.write_text("keep me\n")
    line = error_line(cli(DATA, "--rules", rules, "--out", out, cwd=tmp_path))
    assert line == (f"graft: error: {rules}:{line_no}: unknown fact 'images_per_clas_min'; "
                    "did you mean 'images_per_class_min'?")
    assert out.read_text() == "keep me\n"
    assert sorted(os.listdir(tmp_path)) == ["my_rules.yaml", "plan.yaml"]


def test_cli_out_must_not_be_a_folder(tmp_path):
    line = error_line(cli(DATA, "--similarity", "0.8", "--out", tmp_path))
    assert "is a folder" in line


def test_strategy_can_be_forced_and_the_rules_choice_is_kept():
    advice = advise(DATA, similarity=0.8, strategy="lp_ft")
    d, plan = advice.decision, advice.plan
    assert (d.strategy, d.rule, d.runner_up) == ("lp_ft", "forced", "truncate_probe")
    assert plan.decision.strategy == "lp_ft" and plan.decision.reasons[0].startswith(
        "Strategy lp_ft was forced (--strategy); the rules chose truncate_probe (rule small_similar, case 1)")
    assert [(p.trainable, p.min_steps) for p in plan.training.phases] == [("head", 300), ("all", 30)]
    assert plan.outputs.dir == "runs/cifar_b-lp_ft"
    with pytest.raises(InputError, match="'lp_fit' is not a strategy .*did you mean 'lp_ft'"):
        advise(DATA, similarity=0.8, strategy="lp_fit")


def test_cli_strategy_forces_the_plan_and_a_bad_name_exits_2(tmp_path):
    proc = cli(DATA, "--similarity", "0.8", "--strategy", "finetune_all", "--out", tmp_path / "plan.yaml",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_plan(tmp_path / "plan.yaml").decision.strategy == "finetune_all"
    line = error_line(cli(DATA, "--strategy", "linear", "--out", tmp_path / "other.yaml", cwd=tmp_path))
    assert "'linear' is not a strategy" in line and "linear_probe" in line
    assert not (tmp_path / "other.yaml").exists()


def test_cli_trial_races_and_bad_trial_options_exit_2(tmp_path):
    out = tmp_path / "plan.yaml"
    proc = cli(DATA, "--model", MODEL, "--trial", "15", "--trial-candidates", "linear_probe,truncate_probe",
               "--set", "probe_enough=0.3", "--out", out, "--json", cwd=tmp_path)  # the rules choose a probe
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {e["strategy"] for e in data["trial"]["entries"]} >= {"linear_probe", "truncate_probe"}
    assert load_plan(out).decision.strategy == data["trial"]["winner"]
    assert data["trial"]["reason"] in " ".join(load_plan(out).decision.reasons)
    assert "--model" in error_line(cli(DATA, "--trial", "10", "--out", tmp_path / "a.yaml", cwd=tmp_path))
    assert "positive" in error_line(cli(DATA, "--model", MODEL, "--trial", "-3", "--out", tmp_path / "b.yaml",
                                        cwd=tmp_path))
    assert "not strategies" in error_line(cli(DATA, "--model", MODEL, "--trial", "5", "--trial-candidates", "nope",
                                              "--out", tmp_path / "c.yaml", cwd=tmp_path))
    assert "with --trial" in error_line(cli(DATA, "--trial-candidates", "lp_ft", "--out", tmp_path / "d.yaml",
                                            cwd=tmp_path))
    assert not any((tmp_path / n).exists() for n in ("a.yaml", "b.yaml", "c.yaml", "d.yaml"))


def test_plan_and_json_carry_the_expected_accuracy_and_time_of_winner_and_runner_up(measured):
    d = measured.plan.decision
    assert d.expected["strategy"] == d.strategy and d.runner_up_expected["strategy"] == d.runner_up
    lo, hi = d.expected["accuracy"]
    probe = measured.facts["best_cut_score"]
    assert 0 <= lo <= probe <= hi <= 1
    # the probe and guarded fine-tuning are each other's runner-up; the probe is the faster
    assert d.expected["seconds"] > 0
    assert (d.runner_up_expected["seconds"] > d.expected["seconds"]) == (d.strategy == "truncate_probe")
    # whether a race would pay follows from the two ranges, and says what a round costs
    (lo2, hi2), hint = d.runner_up_expected["accuracy"], [r for r in d.reasons if r.startswith("A trial would")]
    assert len(hint) == 1
    assert hint[0].startswith("A trial would pay" if lo <= hi2 and lo2 <= hi else "A trial would not pay")
    assert "one round: about" in hint[0] or "not pay" in hint[0]
    assert "measured here" in d.expected["basis"]
    from advisor.render import decision_panel

    buf = io.StringIO()
    Console(file=buf, width=120).print(decision_panel(measured.decision, measured.plan))
    text = buf.getvalue()
    assert f"Expected: {d.strategy}: test accuracy {lo:.2f}-{hi:.2f}" in text
    assert f"Runner-up: {d.runner_up}: test accuracy" in text
