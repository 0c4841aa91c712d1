"""The plan: everything `apply` needs, as dataclasses, to and from `plan.yaml`.

Every field is documented in docs/plan.md. Loading checks every key against the schema (unknown keys
and wrong types are `PlanError`s naming the YAML line), upgrades old `plan_version`s step by step,
and `dump_plan(load_plan(text))` gives back the same data (exact round trip).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from graft.conventions import CONVENTIONS
from graft.errors import InputError, PlanError
from graft.yamlio import YamlDoc, dump_yaml, load_yaml, write_yaml

PLAN_VERSION = 1
TRAINABLE_HELP = "head, all, top_third, top_half, from_cut or from:LAYER"
POOLING = ("avg", "max", "flatten")
BN_POLICIES = ("freeze", "follow", "train")
CLASS_WEIGHTS = ("none", "balanced")
CHANNEL_MODES = ("keep", "gray_to_rgb", "rgb_to_gray")
AUTO = ("auto", "on", "off")
SCHEDULES = ("constant", "cosine")
SOLVERS = ("auto", "convex", "gradient")
#: `mirrored`: TensorFlow; `data_parallel`: JAX; `multi_worker` is accepted and refused by `apply`
#: with what to use instead (surgery/distribute.py).
DISTRIBUTION = ("none", "mirrored", "data_parallel", "multi_worker")
#: `model`: the model's own layers and name decide; `none`: raw pixels (older plans); or a convention.
PREPROCESSING = ("model", "none", *CONVENTIONS)


@dataclass
class Provenance:
    tool: str = ""
    rules: str = ""
    rules_version: int = 0
    rules_sha256: str = ""
    overrides: dict = field(default_factory=dict)
    dataset: str = ""
    dataset_fingerprint: str = ""
    created: str = ""


@dataclass
class DecisionRecord:
    strategy: str = ""
    case: int = 0
    rule: str = ""
    reasons: list[str] = field(default_factory=list)
    runner_up: str | None = None
    expected_cost: dict = field(default_factory=dict)
    runner_up_cost: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    runner_up_expected: dict = field(default_factory=dict)
    also_matched: list[str] = field(default_factory=list)
    similarity: dict = field(default_factory=dict)


@dataclass
class ModelSpec:
    source: str = ""
    weights: str = "none"
    input_size: list[int] | None = None
    safe_mode: bool = True


@dataclass
class HeadPlan:
    classes: int = 2
    pooling: str = "avg"
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.2
    activation: str = "softmax"


@dataclass
class SurgeryPlan:
    cut: str | None = None
    bn: str = "freeze"
    reinitialize: list[str] = field(default_factory=list)
    head: HeadPlan = field(default_factory=HeadPlan)


@dataclass
class Phase:
    name: str = "head"
    trainable: str = "head"
    epochs: int = 1
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    backbone_learning_rate: float | None = None
    early_stopping_patience: int | None = None
    weights: str = "pretrained"
    min_steps: int | None = None
    schedule: str = "constant"
    solver: str = "auto"


@dataclass
class Fallback:
    scratch_trial_epochs: int = 2
    margin: float = 0.01


@dataclass
class TrainingPlan:
    phases: list[Phase] = field(default_factory=list)
    class_weights: str = "none"
    fallback: Fallback | None = None
    bottleneck: str = "auto"
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    distribution: str = "none"
    refit_head: bool = False


@dataclass
class DataPlan:
    path: str = ""
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    channels: int = 3
    channel_mode: str = "keep"
    preprocessing: str = "model"
    preprocessing_evidence: dict = field(default_factory=dict)
    augmentation: dict = field(default_factory=dict)
    validation_split: float = 0.2
    test_split: float = 0.1
    batch_size: int = 32
    seed: int = 0
    skip_corrupt: bool = True


@dataclass
class OutputPlan:
    dir: str = "runs/graft"


@dataclass
class Plan:
    """A transfer plan (`plan.yaml`); see docs/plan.md for every field."""

    plan_version: int = PLAN_VERSION
    provenance: Provenance = field(default_factory=Provenance)
    facts: dict = field(default_factory=dict)
    decision: DecisionRecord = field(default_factory=DecisionRecord)
    model: ModelSpec = field(default_factory=ModelSpec)
    surgery: SurgeryPlan = field(default_factory=SurgeryPlan)
    training: TrainingPlan = field(default_factory=TrainingPlan)
    data: DataPlan = field(default_factory=DataPlan)
    outputs: OutputPlan = field(default_factory=OutputPlan)

    def to_dict(self) -> dict:
        """Plain data in schema order (what `plan.yaml` holds)."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, doc: YamlDoc | None = None) -> Plan:
        """Build and validate a plan from plain data (upgrading old versions); errors name the line
        when `doc` is given."""
        data = upgrade(copy.deepcopy(data), doc)
        plan = _from(cls, data, (), doc or YamlDoc(data, "plan", {}))
        validate(plan, doc)
        return plan


# ------------------------------------------------------------------------------------------ conversion


def _to_dict(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(item)
        return f"a list of {plural}" if plural else f"a list (of {_type_name(item)})"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fail(doc: YamlDoc, path: tuple, message: str):
    raise PlanError(f"{doc.where(path)}: {message}")


def _from(tp, value, path: tuple, doc: YamlDoc):
    dotted = ".".join(map(str, path)) or "plan"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _from(inner[0], value, path, doc)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(doc, path, f"'{dotted}' must be a mapping, not {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for key in value:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(names)})"
                _fail(doc, path + (key,), f"unknown key '{key}' in {dotted}{hint}")
        kwargs = {k: _from(hints[k], v, path + (k,), doc) for k, v in value.items()}
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            _fail(doc, path, f"'{dotted}' must be {_type_name(tp)}, not {value!r}")
        (item,) = typing.get_args(tp)
        return [_from(item, v, path + (i,), doc) for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(doc, path, f"'{dotted}' must be a number, not {value!r}")
        try:  # NaN, inf or an integer beyond float range would reach the optimizer unnoticed
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            _fail(doc, path, f"'{dotted}' must be a finite number, not {str(value)[:40]}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(doc, path, f"'{dotted}' must be an integer, not {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(doc, path, f"'{dotted}' must be true or false, not {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(doc, path, f"'{dotted}' must be a string, not {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            _fail(doc, path, f"'{dotted}' must be a mapping, not {value!r}")
        return value
    raise AssertionError(tp)


def _choice(doc, path, value, choices):
    if value not in choices:
        names = [str(c) for c in choices]  # choices may be numbers (data.channels)
        close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        _fail(doc, path, f"'{'.'.join(map(str, path))}' is {value!r}; expected one of {', '.join(names)}{hint}")


def validate(plan: Plan, doc: YamlDoc | None = None) -> None:
    """Check values the types alone do not (choices, ranges); raises PlanError with the line."""
    doc = doc or YamlDoc(plan.to_dict(), "plan", {})
    if plan.plan_version != PLAN_VERSION:
        _fail(doc, ("plan_version",), f"plan_version {plan.plan_version} is not supported (this graft writes "
                                      f"{PLAN_VERSION})")
    if not plan.model.source:
        _fail(doc, ("model", "source"), "model.source is empty; give a .keras/.h5 path or a keras.applications name")
    if not plan.data.path:
        _fail(doc, ("data", "path"), "data.path is empty; give the data set folder")
    _choice(doc, ("surgery", "bn"), plan.surgery.bn, BN_POLICIES)
    _choice(doc, ("surgery", "head", "pooling"), plan.surgery.head.pooling, POOLING)
    if plan.surgery.head.classes < 2:
        _fail(doc, ("surgery", "head", "classes"), "surgery.head.classes must be at least 2")
    if not 0 <= plan.surgery.head.dropout < 1:
        _fail(doc, ("surgery", "head", "dropout"), "surgery.head.dropout must be in [0, 1)")
    _choice(doc, ("training", "class_weights"), plan.training.class_weights, CLASS_WEIGHTS)
    for key in ("bottleneck", "mixed_precision", "jit_compile"):
        _choice(doc, ("training", key), getattr(plan.training, key), AUTO)
    _choice(doc, ("training", "distribution"), plan.training.distribution, DISTRIBUTION)
    if not plan.training.phases:
        _fail(doc, ("training", "phases"), "training.phases is empty; a plan trains at least one phase")
    names = set()
    for i, ph in enumerate(plan.training.phases):
        p = ("training", "phases", i)
        if ph.name in names:
            _fail(doc, p + ("name",), f"phase name '{ph.name}' is used twice")
        names.add(ph.name)
        t = ph.trainable
        if not (t in ("head", "all", "top_third", "top_half", "from_cut") or (t.startswith("from:") and t[5:])):
            _fail(doc, p + ("trainable",), f"trainable is {t!r}; expected {TRAINABLE_HELP}")
        if ph.epochs < 1:
            _fail(doc, p + ("epochs",), "epochs must be at least 1")
        for key in ("learning_rate", "backbone_learning_rate"):
            v = getattr(ph, key)
            if v is not None and not v > 0:
                _fail(doc, p + (key,), f"{key} must be positive")
        _choice(doc, p + ("optimizer",), ph.optimizer, ("adam", "adamw", "sgd", "rmsprop"))
        _choice(doc, p + ("weights",), ph.weights, ("pretrained", "random"))
        _choice(doc, p + ("schedule",), ph.schedule, SCHEDULES)
        _choice(doc, p + ("solver",), ph.solver, SOLVERS)
        if ph.min_steps is not None and ph.min_steps < 1:
            _fail(doc, p + ("min_steps",), "min_steps must be at least 1 (or null for no floor)")
    d = plan.data
    if len(d.input_size) != 2 or min(d.input_size) < 8:
        _fail(doc, ("data", "input_size"), "data.input_size must be [height, width], each at least 8")
    _choice(doc, ("data", "channels"), d.channels, (1, 3))
    _choice(doc, ("data", "channel_mode"), d.channel_mode, CHANNEL_MODES)
    _choice(doc, ("data", "preprocessing"), d.preprocessing, PREPROCESSING)
    for key in ("validation_split", "test_split"):
        if not 0 <= getattr(d, key) < 1:
            _fail(doc, ("data", key), f"data.{key} must be in [0, 1)")
    if d.validation_split + d.test_split >= 1:
        _fail(doc, ("data", "test_split"), "data.validation_split + data.test_split must leave training data")
    if d.batch_size < 1:
        _fail(doc, ("data", "batch_size"), "data.batch_size must be at least 1")
    allowed_aug = ("flip", "rotation", "zoom", "contrast", "translation")
    for key in d.augmentation:
        _choice(doc, ("data", "augmentation", key), key, allowed_aug)


# ------------------------------------------------------------------------------------------ versions


def _upgrade_0_to_1(data: dict) -> dict:
    """Version 0 (pre-release drafts) had flat training settings; version 1 has phases."""
    training = data.get("training") or {}
    if not isinstance(training, dict):  # the schema check names the line of the wrong value
        data["plan_version"] = 1
        return data
    phases = [{"name": "head", "trainable": "head", "epochs": training.pop("head_epochs", 5),
               "learning_rate": training.pop("learning_rate", 1e-3)}]
    ft_epochs = training.pop("finetune_epochs", 0)
    ft_lr = training.pop("finetune_learning_rate", 1e-4)
    unfreeze = training.pop("unfreeze", "all")
    if ft_epochs:
        phases.append({"name": "finetune", "trainable": unfreeze, "epochs": ft_epochs, "learning_rate": ft_lr})
    training["phases"] = phases
    data["training"] = training
    data["plan_version"] = 1
    return data


UPGRADES = {0: _upgrade_0_to_1}


def upgrade(data: dict, doc: YamlDoc | None = None) -> dict:
    """Apply the upgrade steps from the plan's version to the current one."""
    doc = doc or YamlDoc(data, "plan", {})
    if not isinstance(data, dict):
        _fail(doc, (), "a plan must be a mapping of sections (plan_version, model, surgery, training, data, ...)")
    if "plan_version" not in data:
        _fail(doc, (), "plan_version is missing; a plan written by graft starts with 'plan_version: 1'")
    version = data["plan_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        _fail(doc, ("plan_version",), f"plan_version must be an integer, not {version!r}")
    if version > PLAN_VERSION:
        _fail(doc, ("plan_version",), f"plan_version {version} is newer than this graft reads ({PLAN_VERSION}); "
                                      "upgrade graft")
    while version < PLAN_VERSION:
        if version not in UPGRADES:
            _fail(doc, ("plan_version",), f"no upgrade from plan_version {version}")
        data = UPGRADES[version](data)
        version = data["plan_version"]
    return data


# ------------------------------------------------------------------------------------------ files


def load_plan(path: str | os.PathLike | None = None, text: str | None = None) -> Plan:
    """Read, upgrade and validate a plan file.

    Args:
        path: the plan file (or only its name in messages, when `text` is given).
        text: the plan's YAML text instead of reading `path`.

    Returns:
        The `Plan`.

    Raises:
        PlanError: `FILE:LINE: ...` for unknown keys, wrong types and invalid values; a missing file.
    """
    name = str(path) if path is not None else "<plan>"
    if text is None:
        p = Path(name)
        if not p.is_file():
            raise PlanError(f"{name}: no such plan file; write one with `python cli.py advise DATASET --out {name}`")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"{name}: cannot read the plan: {exc}") from None
    try:
        doc = load_yaml(text, name)
    except InputError as exc:
        raise PlanError(str(exc)) from None
    if doc.data is None:
        raise PlanError(f"{name}:1: the plan is empty")
    return Plan.from_dict(doc.data, doc)


def dump_plan(plan: Plan) -> str:
    """The plan as YAML text."""
    return dump_yaml(plan.to_dict())


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Write the plan atomically, with a header saying how to apply it."""
    header = ("graft transfer plan - edit freely, then run:\n"
              f"  python cli.py apply {path}\n"
              "Every field is described in docs/plan.md.")
    return write_yaml(path, plan.to_dict(), header)
