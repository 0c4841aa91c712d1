"""YAML in and out with line numbers: what the rules and plan loaders need to say `FILE:LINE: ...`.

`yaml.safe_load` forgets where each value came from. `load_yaml` composes the document with the safe
loader, builds plain Python data from the node tree and keeps, for every path into the data (a tuple
of keys and list indexes), the 1-based line it was written on.

    doc = load_yaml(text, "plan.yaml")
    doc.data["training"]["phases"][0]["epochs"]
    doc.line(("training", "phases", 0, "epochs"))   # -> 23

Hostile input is refused with an `InputError` naming the file and line, never another exception:
nesting deeper than `MAX_DEPTH` levels, anchors and aliases that expand to more than `MAX_VALUES`
values (a "billion laughs"), an alias inside its own anchor, and scalars their tag cannot read
(`!!int abc`, a 5,000-digit integer, `!!timestamp 2020-13-45`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graft import atomic
from graft.errors import InputError

Path_ = tuple

MAX_DEPTH = 50
"""Deepest nesting of mappings and lists accepted; graft's own files nest fewer than 10 levels."""
MAX_VALUES = 100_000
"""Most values a document may hold once its aliases are expanded; rules.yaml holds about 1,000."""


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than MAX_DEPTH while composing: PyYAML's composer
    recurses once per level, so a deep document would otherwise end in a RecursionError."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"mappings and lists nest more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict, open_: set, source: str) -> int:
    """How many values `node` stands for once aliases are expanded (an alias is the anchored node
    itself in PyYAML's tree, so it is counted each time it is used), without expanding anything."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise InputError(f"{source}:{node.start_mark.line + 1}: an alias refers to the mapping or list "
                         "that contains it; graft cannot read recursive YAML")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_, source) + _expanded_size(v, sizes, open_, source)
                    for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes, open_, source) for item in node.value)
    open_.discard(key)
    if size > MAX_VALUES:
        raise InputError(f"{source}:{node.start_mark.line + 1}: the document expands to more than "
                         f"{MAX_VALUES:,} values through YAML anchors and aliases (&name / *name); "
                         "graft refuses it - write the values out or use fewer nested aliases")
    sizes[key] = size
    return size


def _construct(node: yaml.Node, constructor: yaml.constructor.SafeConstructor, source: str):
    """A scalar (or a key) as Python data; a value its tag cannot read is an InputError."""
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        shown = str(node.value) if isinstance(node, yaml.ScalarNode) else type(node).__name__
        shown = shown if len(shown) <= 40 else f"{shown[:30]}... ({len(shown):,} characters)"
        tag = node.tag.rsplit(":", 1)[-1]
        raise InputError(f"{source}:{node.start_mark.line + 1}: cannot read {shown!r} as {tag} "
                         "(a malformed value, or a number with thousands of digits)") from None


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
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise InputError(f"{source}:{key_node.start_mark.line + 1}: merge keys (<<) are not "
                                 "supported; write the keys out")
            key = _construct(key_node, constructor, source)
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
    return _construct(node, constructor, source)


def load_yaml(text: str, source: str = "<string>") -> YamlDoc:
    """Parse YAML safely, keeping line numbers.

    Args:
        text: the YAML text.
        source: the file name to use in messages.

    Returns:
        A `YamlDoc`; an empty document gives `data=None`.

    Raises:
        InputError: `FILE:LINE: ...` for a syntax error, a duplicate key, an anchor/tag that safe
            loading refuses, or a document beyond the bounds above (MAX_DEPTH, MAX_VALUES).
    """
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters already here
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(None, source, {})
        _expanded_size(node, {}, set(), source)
        lines: dict[Path_, int] = {}
        data = _build(node, (), lines, loader, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise InputError(f"{source}:{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise InputError(f"{source}:{line}: not valid YAML: the character U+{char:04X} is not allowed "
                         "(control characters other than tab and newline cannot appear in YAML)") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        if loader is not None:
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
