"""YAML with line numbers, so that errors can say where in a file a field is.

PyYAML's node API keeps a start mark on every node. :func:`compose_with_lines`
parses a document once, returning the plain data (as ``yaml.safe_load`` would)
and a map from field path (a tuple of keys and list indexes) to the 1-based
line where that field starts. For a mapping entry the key's line is used, since
that is the line a reader looks for. :func:`line_of` finds the line for a path
that may go deeper than the file does (a missing field, a value that a
validator expanded), by falling back to the nearest ancestor.

Both the settings loader and app files use it.
"""

from __future__ import annotations

from typing import Any, NoReturn

import yaml

Lines = dict[tuple[Any, ...], int]
MAX_VALUES = 1_000_000


class YamlSyntaxError(ValueError):
    """Text that is not YAML; the message reads ``source, line N: invalid YAML: ...``."""


def compose_with_lines(text: str, source: str, *, unique_keys: bool = False) -> tuple[Any, Lines]:
    """Parse one YAML document: its data (None if empty) and a map from path to line.

    YAML lets a later key silently replace an earlier one; with ``unique_keys``
    a repeated key is an error instead (two ``tests:`` blocks are a mistake).
    Aliases are followed like any value, up to :data:`MAX_VALUES` values in
    all, so a small file cannot expand into a huge document.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        # Lines first: constructing merges `<<` keys into the nodes.
        lines = _lines(root, source, unique_keys)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSyntaxError(f"{where}: invalid YAML: {problem}") from exc
    finally:
        loader.dispose()
    return data, lines


def _lines(root: yaml.Node, source: str, unique_keys: bool) -> Lines:
    lines: Lines = {}
    open_nodes: set[int] = set()  # the nodes being walked: an alias to one is a cycle

    def fail(node: yaml.Node, problem: str) -> NoReturn:
        raise YamlSyntaxError(f"{source}, line {node.start_mark.line + 1}: invalid YAML: {problem}")

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines[path] = node.start_mark.line + 1
        if len(lines) > MAX_VALUES:
            fail(node, f"more than {MAX_VALUES} values once aliases are expanded")
        if id(node) in open_nodes:
            fail(node, "an alias refers to a value that contains it")
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, key_node.value)
                if unique_keys and key_path in lines:
                    fail(
                        key_node,
                        f"key '{key_node.value}' repeats the one on line {lines[key_path]}",
                    )
                walk(value_node, key_path)
                lines[key_path] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))
        open_nodes.discard(id(node))

    walk(root, ())
    return lines


def line_of(lines: Lines, path: tuple[Any, ...]) -> int | None:
    """The line of ``path``, else of its nearest ancestor in the file; None if neither."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return None
