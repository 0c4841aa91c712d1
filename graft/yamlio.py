"""YAML in and out with line numbers: what the rules and plan loaders need to say `FILE:LINE: ...`.

`yaml.safe_load` forgets where each value came from. `load_yaml` composes the document with the safe
loader, builds plain Python data from the node tree and keeps, for every path into the data (a tuple
of keys and list indexes), the 1-based line it was written on.

    doc = load_yaml(text, "plan.yaml")
    doc.data["training"]["phases"][0]["epochs"]
    doc.line(("training", "phases", 0, "epochs"))   # -> 23
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graft import atomic
from graft.errors import InputError

Path_ = tuple


@dataclass
class YamlDoc:
    """Plain data from a YAML file, with the line of every key and item.

    Attributes:
        data: the document as dicts, lists and scalars.
        source: the file name used in messages.
        lines: path tuple -> 1-based line of that key (for mapping entries) or item.
    """

    data: object
    source: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int:
        """The line of `path`, or of its nearest ancestor that has one (1 when none does)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def where(self, path: Path_) -> str:
        """`FILE:LINE` for messages."""
        return f"{self.source}:{self.line(path)}"


def _build(node: yaml.Node, path: Path_, lines: dict, constructor: yaml.constructor.SafeConstructor,
           source: str):
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in (
            "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"):
        raise InputError(f"{source}:{node.start_mark.line + 1}: the tag {node.tag} is not allowed; "
                         "graft reads plain YAML (mappings, lists, strings, numbers, booleans)")
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise InputError(f"{source}:{key_node.start_mark.line + 1}: a key must be a plain value, "
                                 f"not {type(key).__name__}")
            if key in out:
                raise InputError(f"{source}:{key_node.start_mark.line + 1}: duplicate key {key!r}; "
                                 "each key may appear once in a mapping")
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, path + (key,), lines, constructor, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines, constructor, source) for i, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


def load_yaml(text: str, source: str = "<string>") -> YamlDoc:
    """Parse YAML safely, keeping line numbers.

    Args:
        text: the YAML text.
        source: the file name to use in messages.

    Returns:
        A `YamlDoc`; an empty document gives `data=None`.

    Raises:
        InputError: `FILE:LINE: ...` for a syntax error, a duplicate key, or an anchor/tag that safe
            loading refuses.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(None, source, {})
        lines: dict[Path_, int] = {}
        data = _build(node, (), lines, loader, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InputError(f"{source}:{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return YamlDoc(data, source, lines)


def read_yaml(path: str | os.PathLike, what: str = "file") -> YamlDoc:
    """Read and parse a YAML file; a missing or unreadable path is an `InputError`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such {what}; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a {what}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the {what}: {exc}") from None
    return load_yaml(text, str(path))


def dump_yaml(data) -> str:
    """YAML text for plain data, keys in the order given, block style."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def write_yaml(path: str | os.PathLike, data, header: str = "") -> Path:
    """Write `data` as YAML atomically (temp file, then rename), with an optional comment header."""
    text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + dump_yaml(data)
    atomic.write_text(path, text)
    return Path(path)
