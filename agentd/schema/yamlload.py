"""YAML loaded safely with the position of every node, and merged (no schema: see validation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from agentd.core.errors import DesiredStateError
from agentd.system.readfile import FileTooLarge, read_bounded

# Where a value sits in a document: mapping keys and list indexes from the root.
Loc = tuple[Union[str, int], ...]
# Far larger than any desired state or settings file; read no further than one byte past it.
MAX_DOCUMENT_BYTES = 1 << 20

# A node reached through N aliases is built N times: this bounds what a small hostile document
# (billion laughs) can expand to, long before memory runs out.
MAX_NODES = 100_000
# Far deeper than any desired state; keeps every recursive walk below Python's recursion limit.
MAX_DEPTH = 64
# pydantic appends this to a loc when the error is about a mapping key rather than its value.
KEY_MARKER = "[key]"
# After a path, where the text of its literal block scalar (`|`) starts: line 1 of the value is
# that line, at that column. A problem inside such a text is located with the path, this
# marker, then its line and column in the text (see locate).
TEXT_MARKER = "[text]"
# YAML's line breaks, as PyYAML counts lines for its marks.
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")

_TAG = "tag:yaml.org,2002:"
_MAP_TAG = _TAG + "map"
_SEQ_TAG = _TAG + "seq"
_MERGE_TAG = _TAG + "merge"
_TIMESTAMP_TAG = _TAG + "timestamp"
_SCALAR_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str", "timestamp")}


@dataclass(frozen=True, order=True)
class Pos:
    """A place in a file, 1-based, as editors and compilers print it."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Loaded:
    """Plain data from YAML, with where each value (`positions`) and each key (`keys`) was."""

    data: Any
    positions: dict[Loc, Pos]
    keys: dict[Loc, Pos] = field(default_factory=dict)


class _Refused(Exception):
    """Stops building at once: going on would only cost time and memory."""

    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _problem_error(problems: list[tuple[Pos, str]]) -> DesiredStateError:
    lines = [f"{pos}: {message}" for pos, message in sorted(problems)]
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return DesiredStateError(lines[0] + more, lines)


def _clip(text: str, limit: int = 40) -> str:
    """`text`, cut to `limit` characters: a 5,000-digit number is no use in an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


class _Builder:
    """Turns a composed node tree into Python data, recording positions and refusing abuse."""

    def __init__(self, filename: str, text: str = "") -> None:
        self.filename = filename
        self.text = text
        self.lines: Optional[list[str]] = None
        self.constructor = yaml.constructor.SafeConstructor()
        self.positions: dict[Loc, Pos] = {}
        self.keys: dict[Loc, Pos] = {}
        self.problems: list[tuple[Pos, str]] = []
        self.count = 0
        self.seen: set[int] = set()
        self.aliased = False
        self.open: set[int] = set()

    def pos(self, node: yaml.Node) -> Pos:
        return Pos(self.filename, node.start_mark.line + 1, node.start_mark.column + 1)

    def tally(self, node: yaml.Node) -> None:
        self.count += 1
        if id(node) in self.seen:
            self.aliased = True
        self.seen.add(id(node))
        if self.count > MAX_NODES:
            if self.aliased:
                raise _Refused(self.pos(node), f"YAML aliases expand beyond {MAX_NODES} nodes")
            raise _Refused(self.pos(node), f"document has more than {MAX_NODES} nodes")

    def build(self, node: yaml.Node, path: Loc, depth: int) -> Any:
        self.tally(node)
        pos = self.pos(node)
        if depth > MAX_DEPTH:
            raise _Refused(pos, f"document nested deeper than {MAX_DEPTH} levels")
        # A node reached through an alias is placed where its anchor is.
        self.positions[path] = pos
        if isinstance(node, yaml.ScalarNode):
            if node.style == "|":
                self.literal_text(node, path)
            return self.scalar(node)
        if id(node) in self.open:
            raise _Refused(pos, "recursive YAML alias: this node contains itself")
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                return [
                    self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self.mapping(node, path, depth)
            self.problems.append((pos, f"unsupported YAML tag {_short_tag(node.tag)}"))
            return None
        finally:
            self.open.discard(id(node))

    def literal_text(self, node: yaml.ScalarNode, path: Loc) -> None:
        """Where a literal block's text starts: the line after its `|`, at its indentation."""
        if self.lines is None:
            self.lines = _LINE_BREAK.split(self.text)
        first = node.start_mark.line + 1
        header = self.lines[node.start_mark.line][node.start_mark.column :].split("#")[0]
        if any(c.isdigit() for c in header):
            return  # an explicit indentation (`|2`) counts from the parent's: not worth it
        for line in self.lines[first:]:
            if line.strip(" "):
                indent = len(line) - len(line.lstrip(" "))
                text_at: Loc = (*path, TEXT_MARKER)
                self.positions[text_at] = Pos(self.filename, first + 1, indent + 1)
                return

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            # Dates are only ever strings to agentd; a datetime would fail every str field.
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.problems.append((self.pos(node), f"unsupported YAML tag {_short_tag(node.tag)}"))
            return None
        try:
            return self.constructor.construct_object(node)
        except (ValueError, KeyError, IndexError):
            # An explicit tag on text it cannot hold, such as `!!int abc` (or `!!int ""`, which
            # PyYAML's constructor indexes past the end of). PyYAML leaves the node marked as
            # being built, so an alias to it would then fail as "recursive": unmark it.
            self.constructor.recursive_objects.pop(node, None)
            self.problems.append(
                (self.pos(node), f"{_clip(node.value)!r} is not a valid {_short_tag(node.tag)}")
            )
            return None

    def mapping(self, node: yaml.MappingNode, path: Loc, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            self.tally(key_node)
            key_pos = self.pos(key_node)
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append((key_pos, "a mapping key must be a scalar"))
                continue
            key = self.scalar(key_node)
            if not isinstance(key, (str, int)):
                self.problems.append(
                    (
                        key_pos,
                        f"a mapping key must be a string (YAML read {key_node.value!r} "
                        f"as {type(key).__name__})",
                    )
                )
                continue
            key_path: Loc = (*path, key)
            if key in result:
                first = self.keys[key_path]
                self.problems.append(
                    (
                        key_pos,
                        f"duplicate key {key_node.value!r} "
                        f"(first at line {first.line}, column {first.col})",
                    )
                )
                continue
            self.keys[key_path] = key_pos
            result[key] = self.build(value_node, key_path, depth + 1)
        for value_node in merges:
            self.merge_into(result, value_node, path, depth)
        return result

    def merge_into(self, result: dict[Any, Any], node: yaml.Node, path: Loc, depth: int) -> None:
        """`<<: *base` (SafeLoader semantics): keys written out win, then earlier sources."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if isinstance(node, yaml.SequenceNode):
            self.tally(node)
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.problems.append(
                    (self.pos(source), "a merge key ('<<') takes a mapping or a list of mappings")
                )
                continue
            # Built aside: only the keys it adds keep their positions.
            kept_positions, kept_keys = self.positions, self.keys
            self.positions, self.keys = {}, {}
            try:
                merged = self.build(source, path, depth)
            finally:
                positions, keys = self.positions, self.keys
                self.positions, self.keys = kept_positions, kept_keys
            if not isinstance(merged, dict):
                continue  # a mapping under a tag agentd refuses (`!!str &base {...}`): reported
            added = {k for k in merged if k not in result}
            for k in added:
                result[k] = merged[k]
            for table, scratch in ((self.positions, positions), (self.keys, keys)):
                for p, pos in scratch.items():
                    if len(p) > len(path) and p[len(path)] in added:
                        table[p] = pos


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_NODES nodes (aliases count once here)."""

    # Without this, a hostile 1 MiB flat list costs seconds and ~400 MB of nodes before the
    # builder's own bound is reached.
    composed = 0

    def compose_node(self, parent: Optional[yaml.Node], index: int) -> Optional[yaml.Node]:
        self.composed += 1
        if self.composed > MAX_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"document has more than {MAX_NODES} nodes",
                self.get_mark(),
            )
        return super().compose_node(parent, index)


def _yaml_error_pos(exc: yaml.YAMLError, text: bytes, filename: str) -> tuple[Pos, str]:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if exc.context == "expected a single document in the stream":
            message = "a desired-state file holds one YAML document, and this is a second one"
        elif exc.problem and exc.context:
            where = ""
            if exc.context_mark is not None and exc.context_mark is not mark:
                cm = exc.context_mark
                where = f" at line {cm.line + 1}, column {cm.column + 1}"
            message = f"{exc.problem} ({exc.context}{where})"
        else:
            message = exc.problem or exc.context or "invalid YAML"
        if mark is None:
            return Pos(filename, 1, 1), message
        return Pos(filename, mark.line + 1, mark.column + 1), message
    if isinstance(exc, yaml.reader.ReaderError):
        if exc.encoding == "unicode":
            # A character index into the decoded text.
            before = text.decode("utf-8", "replace")[: exc.position]
            message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
            line = before.count("\n") + 1
            col = len(before) - (before.rfind("\n") + 1) + 1
        else:
            raw = text[: exc.position]
            message = f"not {exc.encoding}: {exc.reason}"
            line = raw.count(b"\n") + 1
            col = len(raw) - (raw.rfind(b"\n") + 1) + 1
        return Pos(filename, line, col), message
    return Pos(filename, 1, 1), str(exc)


def _too_large(filename: str) -> DesiredStateError:
    return _problem_error(
        [(Pos(filename, 1, 1), f"document larger than {MAX_DOCUMENT_BYTES} bytes (1 MiB)")]
    )


def load_yaml(text: bytes, filename: str, *, allow_empty: bool = False) -> Loaded:
    """One YAML document as plain data; any problem raises DesiredStateError.

    An empty document (nothing but comments) is an error unless `allow_empty`: then its data
    is None.
    """
    if len(text) > MAX_DOCUMENT_BYTES:
        raise _too_large(filename)
    try:
        loader = _BoundedLoader(text)  # decodes the text: a ReaderError comes from here
    except yaml.YAMLError as exc:
        raise _problem_error([_yaml_error_pos(exc, text, filename)]) from None
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _problem_error([_yaml_error_pos(exc, text, filename)]) from None
    except ValueError:
        # PyYAML's scanner lets chr()'s ValueError out for an escape past U+10FFFF ("\U1001F600").
        mark = loader.get_mark()
        where = Pos(filename, mark.line + 1, mark.column + 1)
        raise _problem_error([(where, "an escape names no Unicode character")]) from None
    except RecursionError:
        raise _problem_error(
            [(Pos(filename, 1, 1), "document nested too deeply to parse")]
        ) from None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _TAG + "null"):
        if allow_empty:
            return Loaded(None, {})
        raise _problem_error([(Pos(filename, 1, 1), "empty document")])
    builder = _Builder(filename, text.decode(loader.encoding or "utf-8", "replace"))
    try:
        data = builder.build(root, (), 0)
    except _Refused as refused:
        raise _problem_error([(refused.pos, refused.message)]) from None
    if builder.problems:
        raise _problem_error(builder.problems)
    return Loaded(data, builder.positions, builder.keys)


def load_file(path: Path, display: Optional[str] = None, *, allow_empty: bool = False) -> Loaded:
    """A YAML file (a regular one: see read_bounded), refused unread when over the limit."""
    name = str(path) if display is None else display
    try:
        text = read_bounded(path, MAX_DOCUMENT_BYTES)
    except FileTooLarge:
        raise _too_large(name) from None
    except OSError as exc:
        message = f"{name}: cannot read: {exc.strerror or exc}"
        raise DesiredStateError(message, [message]) from None
    return load_yaml(text, name, allow_empty=allow_empty)


# --- merge --------------------------------------------------------------------------------------


def _copy_tree(path: Loc, value: Any, src: Loaded, out: Loaded) -> Any:
    for at in (path, (*path, TEXT_MARKER)):
        if at in src.positions:
            out.positions[at] = src.positions[at]
    if isinstance(value, dict):
        for k, v in value.items():
            child: Loc = (*path, k)
            if child in src.keys:
                out.keys[child] = src.keys[child]
            _copy_tree(child, v, src, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _copy_tree((*path, i), v, src, out)
    return value


class _Merge:
    """Lays `over` on `base`, giving each position to the document whose value won."""

    def __init__(self, base: Loaded, over: Loaded) -> None:
        self.base = base
        self.over = over
        self.out = Loaded(None, {}, {})

    def at(self, path: Loc, base_value: Any, over_value: Any) -> Any:
        base, over, out = self.base, self.over, self.out
        if not (isinstance(base_value, dict) and isinstance(over_value, dict)):
            return _copy_tree(path, over_value, over, out)
        # The mapping itself stays where the base put it: a missing field is reported there.
        if path in base.positions:
            out.positions[path] = base.positions[path]
        result: dict[Any, Any] = {}
        for k, v in base_value.items():
            child: Loc = (*path, k)
            if k not in over_value:
                key_src = base
                result[k] = _copy_tree(child, v, base, out)
            else:
                both = isinstance(v, dict) and isinstance(over_value[k], dict)
                key_src = base if both else over
                result[k] = self.at(child, v, over_value[k])
            if child in key_src.keys:
                out.keys[child] = key_src.keys[child]
        for k, v in over_value.items():
            if k not in base_value:
                child = (*path, k)
                if child in over.keys:
                    out.keys[child] = over.keys[child]
                result[k] = _copy_tree(child, v, over, out)
        return result


def merge(base: Loaded, over: Loaded) -> Loaded:
    """`over` laid on `base`: mappings merged key by key, anything else replaced."""
    merger = _Merge(base, over)
    merger.out.data = merger.at((), base.data, over.data)
    return merger.out


# --- locating and explaining problems -----------------------------------------------------------


def _resolve(loaded: Loaded, loc: Loc) -> tuple[Loc, bool]:
    """The longest path of `loc` that the document has, skipping pydantic's non-path items."""
    path: Loc = ()
    for item in loc:
        if item == KEY_MARKER:
            return path, True
        candidate: Loc = (*path, item)
        if candidate in loaded.positions:
            path = candidate
    return path, False


def locate(loaded: Loaded, loc: Loc, *, key: bool = False) -> Pos:
    """Where `loc` is in the YAML: its value, or its key when `key` is set or loc ends in [key].

    `(*path, TEXT_MARKER, line, col)` is that place in the text of a literal block scalar, or
    the value's own place when it is written otherwise.
    """
    if TEXT_MARKER in loc:
        at = loc.index(TEXT_MARKER)
        start = loaded.positions.get(loc[: at + 1])
        line, col = (*loc[at + 1 : at + 3], 1, 1)[:2]
        if start is not None and isinstance(line, int) and isinstance(col, int):
            return Pos(start.file, start.line + max(line, 1) - 1, start.col + max(col, 1) - 1)
        loc = loc[:at]
    path, at_key = _resolve(loaded, loc)
    if (key or at_key) and path in loaded.keys:
        return loaded.keys[path]
    if path in loaded.positions:
        return loaded.positions[path]
    return loaded.positions.get((), Pos("<unknown>", 1, 1))


# --- provenance -----------------------------------------------------------------------------------


def dotted(path: Loc) -> str:
    """A place in a document as people write it: `components.k3s.version`, `x[0].name`."""
    out = ""
    for item in path:
        if isinstance(item, int) and not isinstance(item, bool):
            out += f"[{item}]"
        else:
            out += ("." if out else "") + str(item)
    return out


def provenance(loaded: Loaded) -> list[tuple[str, Any, Pos]]:
    """Every leaf value of a (merged) document with the file, line and column it came from."""
    found: list[tuple[str, Any, Pos]] = []

    def walk(path: Loc, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk((*path, k), v)
        elif isinstance(value, list) and value:
            for i, v in enumerate(value):
                walk((*path, i), v)
        else:
            found.append((dotted(path), value, locate(loaded, path)))

    walk((), loaded.data)
    return found


def load_merged(files: list[Path], names: Optional[dict[Path, str]] = None) -> Loaded:
    """The files loaded and merged in order (later wins), positions kept; raises on bad YAML."""
    merged: Optional[Loaded] = None
    for path in files:
        doc = load_file(path, (names or {}).get(path))
        merged = doc if merged is None else merge(merged, doc)
    if merged is None:
        raise DesiredStateError("no desired-state file given")
    return merged
