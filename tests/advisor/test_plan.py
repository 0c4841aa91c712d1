"""The plan file (graft/plan.py): exact round trip, validation with `FILE:LINE:` messages, the
upgrade from plan_version 0, and atomic saving.

The plans are real: one is made by `advisor.advise` on the bundled cifar_b data set (with a stated
similarity, so no model is loaded), then dumped, edited as text the way a user would edit the file,
and loaded back. No mocks, except one injected failure of the final rename in the atomic write.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import yaml
from conftest import ROOT

from graft.errors import InputError, PlanError
from graft.plan import (
    PLAN_VERSION,
    Fallback,
    Phase,
    Plan,
    dump_plan,
    load_plan,
    save_plan,
    upgrade,
    validate,
)

DATA = ROOT / "examples" / "data" / "cifar_b"


@pytest.fixture(scope="module")
def advised() -> Plan:
    from advisor.advise import advise

    return advise(DATA, similarity=0.8).plan


@pytest.fixture
def plan(advised) -> Plan:
    return copy.deepcopy(advised)


@pytest.fixture
def text(advised) -> str:
    return dump_plan(advised)


def edit(text: str, section: str, old: str, new: str) -> tuple[str, int]:
    """Replace the first line equal to `old` from the top-level line `section` (e.g. "training:")
    on by `new` (which may span lines); return the new text and the 1-based line of the edit."""
    lines = text.split("\n")
    start = lines.index(section)
    for i in range(start, len(lines)):
        if lines[i] == old:
            lines[i] = new
            return "\n".join(lines), i + 1
    raise AssertionError(f"{old!r} is not in section {section!r}")


def plan_error(text: str, name: str = "plan.yaml") -> str:
    with pytest.raises(PlanError) as info:
        load_plan(name, text=text)
    return str(info.value)


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_of_an_advised_plan_is_exact(advised, text):
    loaded = load_plan(text=text)
    assert loaded == advised
    assert dump_plan(loaded) == text
    assert loaded.plan_version == PLAN_VERSION
    assert loaded.decision.strategy == "truncate_probe"
    assert loaded.data.path == str(DATA)
    # plain YAML: anyone can read it without graft
    assert yaml.safe_load(text)["training"]["phases"][0]["trainable"] == "head"


def test_round_trip_of_every_optional_field(plan):
    plan.surgery.cut = "block2_pool"
    plan.surgery.reinitialize = ["block3_conv1"]
    plan.surgery.head.hidden = [128, 64]
    plan.training.fallback = Fallback(scratch_trial_epochs=3, margin=0.02)
    plan.training.class_weights = "balanced"
    plan.training.distribution = "mirrored"
    plan.training.mixed_precision = "on"
    plan.training.jit_compile = "off"
    plan.training.bottleneck = "off"
    plan.training.phases = [
        Phase(name="head", trainable="head", epochs=3, learning_rate=1e-3, early_stopping_patience=2),
        *(Phase(name=f"ft_{t.replace(':', '_')}", trainable=t, epochs=2, optimizer="sgd", learning_rate=1e-5,
                backbone_learning_rate=3e-6, weights="random")
          for t in ("all", "top_third", "top_half", "from_cut", "from:block2_pool")),
    ]
    plan.provenance.overrides = {"small_dataset": 100, "similar": 0.25}
    plan.data.augmentation = {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1, "contrast": 0.2,
                              "translation": 0.1}
    plan.data.channels, plan.data.channel_mode = 1, "rgb_to_gray"
    plan.data.preprocessing = "none"
    plan.model.safe_mode = False
    text = dump_plan(plan)
    loaded = load_plan(text=text)
    assert loaded == plan
    assert dump_plan(loaded) == text
    assert loaded.training.phases[-1].backbone_learning_rate == 3e-6
    assert loaded.training.fallback == Fallback(3, 0.02)


def test_to_dict_follows_the_schema_order(plan):
    assert list(plan.to_dict()) == [f.name for f in dataclasses.fields(Plan)]
    assert list(plan.to_dict()["training"]["phases"][0]) == [f.name for f in dataclasses.fields(Phase)]


def test_from_dict_without_a_yaml_document(plan):
    assert Plan.from_dict(plan.to_dict()) == plan
    data = plan.to_dict()
    data["surgery"]["bn"] = "frozen"
    with pytest.raises(PlanError, match=r"^plan:1: 'surgery.bn' is 'frozen'.*did you mean 'freeze'"):
        Plan.from_dict(data)


# ------------------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize("section, old, new, message", [
    ("surgery:", "    pooling: avg", "    poolng: avg", "unknown key 'poolng' in surgery.head; did you mean 'pooling'?"),
    ("training:", "    learning_rate: 0.001", "    learnig_rate: 0.001",
     "unknown key 'learnig_rate' in training.phases.0; did you mean 'learning_rate'?"),
    ("data:", "  batch_size: 32", "  batch_sise: 32", "unknown key 'batch_sise' in data; did you mean 'batch_size'?"),
    ("training:", "training:", "trainig:", "unknown key 'trainig' in plan; did you mean 'training'?"),
])
def test_unknown_key_names_the_line_and_the_close_key(text, section, old, new, message):
    text, line = edit(text, section, old, new)
    assert plan_error(text) == f"plan.yaml:{line}: {message}"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(text):
    text, line = edit(text, "data:", "  seed: 0", "  seed: 0\n  zzz: 1")
    msg = plan_error(text)
    assert msg.startswith(f"plan.yaml:{line + 1}: unknown key 'zzz' in data (allowed: path, input_size,")
    assert "skip_corrupt)" in msg


# ------------------------------------------------------------------------------------------ types


@pytest.mark.parametrize("section, old, new, message", [
    ("training:", "    epochs: 30", "    epochs: five", "'training.phases.0.epochs' must be an integer, not 'five'"),
    ("training:", "    epochs: 30", "    epochs: true", "'training.phases.0.epochs' must be an integer, not True"),
    ("training:", "    epochs: 30", "    epochs: 1.5", "'training.phases.0.epochs' must be an integer, not 1.5"),
    ("training:", "    learning_rate: 0.001", "    learning_rate: fast",
     "'training.phases.0.learning_rate' must be a number, not 'fast'"),
    ("model:", "  safe_mode: true", "  safe_mode: 1", "'model.safe_mode' must be true or false, not 1"),
    ("outputs:", "  dir: runs/cifar_b-truncate_probe", "  dir: [runs]", "'outputs.dir' must be a string, not ['runs']"),
    ("surgery:", "    hidden: []", "    hidden: 128", "'surgery.head.hidden' must be a list of integers, not 128"),
    ("surgery:", "    hidden: []", "    hidden: [128, wide]", "'surgery.head.hidden.1' must be an integer, not 'wide'"),
    ("model:", "  weights: imagenet", "  weights: 3", "'model.weights' must be a string, not 3"),
    ("training:", "  fallback: null", "  fallback: {scratch_trial_epochs: 2, margin: x}",
     "'training.fallback.margin' must be a number, not 'x'"),
    ("training:", "  fallback: null", "  fallback: 3", "'training.fallback' must be a mapping, not int"),
    ("surgery:", "  reinitialize: []", "  reinitialize: conv1", "'surgery.reinitialize' must be a list of strings"),
])
def test_wrong_types_name_the_line(text, section, old, new, message):
    text, line = edit(text, section, old, new)
    msg = plan_error(text)
    assert msg.startswith(f"plan.yaml:{line}: ")
    assert message in msg


def test_wrong_type_of_a_list_item_names_the_item_line(text):
    text, line = edit(text, "data:", "  - 160", "  - big")
    assert plan_error(text) == f"plan.yaml:{line}: 'data.input_size.0' must be an integer, not 'big'"


# ------------------------------------------------------------------------------------------ values


@pytest.mark.parametrize("section, old, new, message", [
    ("surgery:", "  bn: freeze", "  bn: froze",
     "'surgery.bn' is 'froze'; expected one of freeze, follow, train; did you mean 'freeze'?"),
    ("surgery:", "    pooling: avg", "    pooling: mean", "'surgery.head.pooling' is 'mean'; expected one of avg, max, flatten"),
    ("surgery:", "    classes: 5", "    classes: 1", "surgery.head.classes must be at least 2"),
    ("surgery:", "    dropout: 0.2", "    dropout: 1.0", "surgery.head.dropout must be in [0, 1)"),
    ("training:", "    trainable: head", "    trainable: top_quarter",
     "trainable is 'top_quarter'; expected head, all, top_third, top_half, from_cut or from:LAYER"),
    ("training:", "    trainable: head", "    trainable: 'from:'", "trainable is 'from:'; expected head, all,"),
    ("training:", "    epochs: 30", "    epochs: 0", "epochs must be at least 1"),
    ("training:", "    learning_rate: 0.001", "    learning_rate: 0", "learning_rate must be positive"),
    ("training:", "    backbone_learning_rate: null", "    backbone_learning_rate: -1.0e-05",
     "backbone_learning_rate must be positive"),
    ("training:", "    optimizer: adam", "    optimizer: lion",
     "'training.phases.0.optimizer' is 'lion'; expected one of adam, adamw, sgd, rmsprop"),
    ("training:", "    weights: pretrained", "    weights: imagenet",
     "'training.phases.0.weights' is 'imagenet'; expected one of pretrained, random"),
    ("training:", "  class_weights: none", "  class_weights: balance",
     "'training.class_weights' is 'balance'; expected one of none, balanced; did you mean 'balanced'?"),
    ("training:", "  bottleneck: auto", "  bottleneck: yes please",
     "'training.bottleneck' is 'yes please'; expected one of auto, on, off"),
    ("training:", "  mixed_precision: auto", "  mixed_precision: bf16", "'training.mixed_precision' is 'bf16'"),
    ("training:", "  jit_compile: auto", "  jit_compile: xla", "'training.jit_compile' is 'xla'"),
    ("training:", "  distribution: none", "  distribution: mirror",
     "'training.distribution' is 'mirror'; expected one of none, mirrored, data_parallel, multi_worker; did you mean 'mirrored'?"),
    ("model:", "  source: mobilenetv2", "  source: ''", "model.source is empty"),
    ("data:", "  path: " + str(DATA), "  path: ''", "data.path is empty"),
    ("data:", "  channels: 3", "  channels: 2", "'data.channels' is 2; expected one of 1, 3"),
    ("data:", "  channel_mode: keep", "  channel_mode: gray", "'data.channel_mode' is 'gray'; expected one of keep,"),
    ("data:", "  preprocessing: model", "  preprocessing: pytorch",
     "'data.preprocessing' is 'pytorch'; expected one of model, none, raw, unit, tf, torch, caffe"),
    ("data:", "  validation_split: 0.0", "  validation_split: 1.0", "data.validation_split must be in [0, 1)"),
    ("data:", "  batch_size: 32", "  batch_size: 0", "data.batch_size must be at least 1"),
    ("data:", "    flip: horizontal", "    flipp: horizontal",
     "'data.augmentation.flipp' is 'flipp'; expected one of flip, rotation, zoom, contrast, translation; did you mean 'flip'?"),
])
def test_invalid_values_name_the_line(text, section, old, new, message):
    text, line = edit(text, section, old, new)
    msg = plan_error(text)
    assert msg.startswith(f"plan.yaml:{line}: ")
    assert message in msg


def test_splits_must_leave_training_data(text):
    text, _ = edit(text, "data:", "  validation_split: 0.0", "  validation_split: 0.5")
    text, line = edit(text, "data:", "  test_split: 0.0", "  test_split: 0.5")
    assert plan_error(text) == (f"plan.yaml:{line}: data.validation_split + data.test_split must leave "
                                "training data")


def test_advised_plan_trains_on_every_image_and_floors_fine_tuning_steps(advised):
    assert advised.data.validation_split == 0.0 and advised.data.test_split == 0.0
    assert advised.training.phases[0].solver == "auto"


@pytest.mark.parametrize("key, value, message", [
    ("schedule", "cosin", "'training.phases.0.schedule' is 'cosin'; expected one of constant, cosine; did you mean 'cosine'?"),
    ("solver", "lbfgs", "'training.phases.0.solver' is 'lbfgs'; expected one of auto, convex, gradient"),
    ("min_steps", 0, "min_steps must be at least 1 (or null for no floor)"),
])
def test_new_phase_fields_are_checked(plan, key, value, message):
    setattr(plan.training.phases[0], key, value)
    assert message in plan_error(dump_plan(plan))


def test_input_size_must_be_two_sides(text):
    lines = text.split("\n")
    start = lines.index("data:")
    i = lines.index("  input_size:", start)
    assert lines[i + 1:i + 3] == ["  - 160", "  - 160"]
    lines[i + 1:i + 3] = ["  - 4", "  - 4"]
    assert plan_error("\n".join(lines)) == (f"plan.yaml:{i + 1}: data.input_size must be [height, width], "
                                           "each at least 8")


def test_no_phases(plan):
    plan.training.phases = []
    text = dump_plan(plan)
    line = text.split("\n").index("  phases: []") + 1
    assert plan_error(text) == f"plan.yaml:{line}: training.phases is empty; a plan trains at least one phase"


def test_a_phase_name_used_twice(text):
    text, line = edit(text, "training:", "    weights: pretrained",
                      "    weights: pretrained\n  - name: head\n    trainable: all")
    assert plan_error(text) == f"plan.yaml:{line + 1}: phase name 'head' is used twice"


@pytest.mark.parametrize("trainable", ["head", "all", "top_third", "top_half", "from_cut", "from:block2_pool"])
def test_every_trainable_value_is_accepted(text, trainable):
    text, _ = edit(text, "training:", "    trainable: head", f"    trainable: '{trainable}'")
    assert load_plan(text=text).training.phases[0].trainable == trainable


def test_validate_checks_a_plan_built_in_code(plan):
    validate(plan)
    plan.training.phases[0].trainable = "top"
    with pytest.raises(PlanError, match=r"^plan:1: trainable is 'top'"):
        validate(plan)
    with pytest.raises(PlanError, match="model.source is empty"):
        validate(Plan())


# ------------------------------------------------------------------------------------------ versions


def test_missing_plan_version(text):
    text = text.replace("plan_version: 1\n", "", 1)
    assert plan_error(text) == ("plan.yaml:1: plan_version is missing; a plan written by graft starts with "
                                "'plan_version: 1'")


def test_newer_plan_version_names_the_line(text):
    text = "# written by a newer graft\n\n" + text.replace("plan_version: 1\n", "plan_version: 2\n", 1)
    assert plan_error(text) == "plan.yaml:3: plan_version 2 is newer than this graft reads (1); upgrade graft"


@pytest.mark.parametrize("value, message", [
    ("'1'", "plan_version must be an integer, not '1'"),
    ("true", "plan_version must be an integer, not True"),
    ("-1", "no upgrade from plan_version -1"),
])
def test_bad_plan_versions(text, value, message):
    assert plan_error(text.replace("plan_version: 1\n", f"plan_version: {value}\n", 1)) == f"plan.yaml:1: {message}"


def version_0(plan: Plan, **training) -> dict:
    """The plan as a pre-release (version 0) draft: flat training settings instead of phases."""
    data = plan.to_dict()
    data["plan_version"] = 0
    data["training"] = {"class_weights": "balanced", **training}
    return data


def test_version_0_with_fine_tuning_upgrades_to_two_phases(plan):
    data = version_0(plan, head_epochs=7, learning_rate=0.01, finetune_epochs=3, finetune_learning_rate=1e-5,
                     unfreeze="top_half")
    text = yaml.safe_dump(data, sort_keys=False)
    loaded = load_plan("old.yaml", text=text)
    assert loaded.plan_version == 1
    assert [(p.name, p.trainable, p.epochs, p.learning_rate) for p in loaded.training.phases] == [
        ("head", "head", 7, 0.01), ("finetune", "top_half", 3, 1e-5)]
    assert loaded.training.class_weights == "balanced"  # other training settings are kept
    assert loaded.surgery == plan.surgery and loaded.data == plan.data
    # saved again, it is a version 1 plan that round-trips
    assert load_plan(text=dump_plan(loaded)) == loaded
    assert "plan_version: 1\n" in dump_plan(loaded)


def test_version_0_defaults(plan):
    loaded = Plan.from_dict(version_0(plan))
    assert [(p.name, p.trainable, p.epochs, p.learning_rate) for p in loaded.training.phases] == [
        ("head", "head", 5, 1e-3)]
    with_ft = Plan.from_dict(version_0(plan, finetune_epochs=4))
    assert with_ft.training.phases[1] == Phase(name="finetune", trainable="all", epochs=4, learning_rate=1e-4)


def test_version_0_errors_still_name_the_line(plan):
    text = yaml.safe_dump(version_0(plan, head_epochs=2, unfreez="all"), sort_keys=False)
    line = text.split("\n").index("  unfreez: all") + 1
    assert plan_error(text, "old.yaml").startswith(f"old.yaml:{line}: unknown key 'unfreez' in training")


def test_upgrade_does_not_touch_a_current_plan(plan):
    data = plan.to_dict()
    assert upgrade(copy.deepcopy(data)) == data


# ------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_empty_plan(tmp_path, content):
    path = tmp_path / "plan.yaml"
    path.write_text(content)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == f"{path}:1: the plan is empty"
    assert plan_error(content, "x.yaml") == "x.yaml:1: the plan is empty"


def test_missing_plan_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert str(info.value) == (f"{path}: no such plan file; write one with "
                               f"`python cli.py advise DATASET --out {path}`")
    with pytest.raises(PlanError, match="no such plan file"):
        load_plan(tmp_path)  # a folder is not a plan file
    assert isinstance(info.value, InputError)  # the CLI's exit code 2


@pytest.mark.parametrize("content, message", [
    ("- plan_version: 1\n", "plan.yaml:1: a plan must be a mapping of sections"),
    ("plan_version: 1\nmodel: [\n", "plan.yaml:3: not valid YAML"),
    ("plan_version: 1\nplan_version: 1\n", "plan.yaml:2: duplicate key 'plan_version'"),
    ("plan_version: 1\nmodel: !!python/name:os.system ''\n", "plan.yaml:2: not valid YAML"),
])
def test_not_a_plan(content, message):
    assert plan_error(content).startswith(message)


def test_save_plan_writes_atomically_with_a_header(tmp_path, plan):
    path = tmp_path / "sub" / "plan.yaml"
    assert save_plan(plan, path) == path
    assert os.listdir(tmp_path / "sub") == ["plan.yaml"]  # no temporary file left
    text = path.read_text(encoding="utf-8")
    header = text.split("\n")[:3]
    assert header == ["# graft transfer plan - edit freely, then run:", f"#   python cli.py apply {path}",
                      "# Every field is described in docs/plan.md."]
    assert text.endswith(dump_plan(plan))
    assert load_plan(path) == plan
    # errors in a saved file name the file and the line below the header
    edited, line = edit(text, "surgery:", "  bn: freeze", "  bn: fro")
    path.write_text(edited, encoding="utf-8")
    with pytest.raises(PlanError, match=rf"^{path}:{line}: 'surgery.bn' is 'fro'"):
        load_plan(path)


def test_save_plan_replaces_an_existing_file(tmp_path, plan):
    path = tmp_path / "plan.yaml"
    path.write_text("old content\n")
    save_plan(plan, path)
    assert load_plan(path) == plan
    assert sorted(os.listdir(tmp_path)) == ["plan.yaml"]


def test_a_failed_save_leaves_the_old_file_and_no_partial_file(tmp_path, plan, monkeypatch):
    path = tmp_path / "plan.yaml"
    path.write_text("old content\n")
    # a value YAML cannot represent fails before anything is written
    bad = copy.deepcopy(plan)
    bad.facts["oops"] = object()
    with pytest.raises(yaml.YAMLError):
        save_plan(bad, path)
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["plan.yaml"]

    # a failure at the final rename (disk full, interrupted...) leaves the old file, no temp file
    def fail(src, dst):
        raise OSError("injected failure")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="injected"):
        save_plan(plan, path)
    monkeypatch.undo()
    assert path.read_text() == "old content\n"
    assert os.listdir(tmp_path) == ["plan.yaml"]


@pytest.mark.parametrize("tagged", ["model: !!python/object:os.system {}", "model: !!set {a: null}",
                                    "model: !custom [1, 2]"])
def test_tags_on_mappings_and_lists_are_refused_with_the_line(tagged):
    text = "plan_version: 1\n" + tagged + "\n"
    with pytest.raises(PlanError, match=r"^plan.yaml:2: the tag .* is not allowed"):
        load_plan("plan.yaml", text=text)
