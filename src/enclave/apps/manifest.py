"""App files in and out: errors with file, line and field; inlined files; canonical YAML.

Three ways in, one validation. :func:`load_app_file` and :func:`load_app_text`
read YAML with :func:`~enclave.yaml_lines.compose_with_lines`, so every
problem reads ``hr.yaml, line 12: field 'spec.apis[0].url': ...``. They inline
what the file points at: a string ``spec.apis[].schema`` is read (YAML or
JSON) relative to the file's directory, and a ``metadata.avatar`` path becomes
a ``data:image/...;base64,`` URI. :func:`parse_app_document` is the server's
way in (a JSON body): the same checks, no file reading, no lines.

All problems found in one pass are reported together as one
:class:`ManifestError`. Shape problems come from the pydantic models in
:mod:`enclave.apps.spec`; every API schema is then checked as an OpenAPI
document by :func:`enclave.apps.openapi.load_operations`, with the line inside
the app file (inline schema) or the schema file where the problem is.

Out: :func:`canonical` is the one form an app is stored, compared and diffed
in. It leaves out defaults and normalises what carries no meaning (the order
of ``confirm`` methods, ``contains: x`` versus ``contains: [x]``), so two files
that mean the same thing give equal dicts. :func:`to_yaml` renders it for
people (``enclave apps export``), and :func:`diff` compares two renderings.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from enclave.apps.openapi import OpenAPIError, Operation, load_operations, unescape_pointer
from enclave.apps.spec import AppManifest, CallExpectation, Method
from enclave.settings import FieldProblem
from enclave.yaml_lines import Lines, YamlSyntaxError, compose_with_lines, line_of

DEFAULT_MAX_AVATAR_BYTES = 256 * 1024
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
DATA_URI = re.compile(r"^data:image/(png|jpeg|gif|webp|svg\+xml);base64,([A-Za-z0-9+/]*={0,2})$")
METHOD_ORDER: tuple[Method, ...] = get_args(Method)
_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

Loc = tuple[str | int, ...]


class ManifestError(Exception):
    """An app file or document that cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- ways in -----------------------------------------------------------------


def load_app_file(path: Path, *, max_avatar_bytes: int = DEFAULT_MAX_AVATAR_BYTES) -> AppManifest:
    """Read and validate an app file, inlining its schema and avatar files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ManifestError([f"{path}: not a UTF-8 text file"]) from None
    return load_app_text(text, str(path), path.parent, max_avatar_bytes=max_avatar_bytes)


def load_app_text(
    text: str,
    source: str,
    base_dir: Path | None,
    *,
    max_avatar_bytes: int = DEFAULT_MAX_AVATAR_BYTES,
) -> AppManifest:
    """Validate app YAML; ``schema``/``avatar`` paths resolve against ``base_dir``.

    With ``base_dir`` None a path is a problem: the text must carry them inline.
    """
    try:
        data, lines = compose_with_lines(text, source, unique_keys=True)
    except YamlSyntaxError as exc:
        raise ManifestError([str(exc)]) from None
    reader = _Reader(source, lines, base_dir, files=True, max_avatar_bytes=max_avatar_bytes)
    return reader.manifest(data)


def parse_app_document(data: Any, source: str = "request") -> AppManifest:
    """Validate an app sent as JSON (the server's way in): everything must be inline."""
    reader = _Reader(source, None, None, files=False, max_avatar_bytes=None)
    return reader.manifest(data)


class _Reader:
    """One validation pass over one document, collecting problems."""

    def __init__(
        self,
        source: str,
        lines: Lines | None,
        base_dir: Path | None,
        *,
        files: bool,
        max_avatar_bytes: int | None,
    ) -> None:
        self.source = source
        self.lines = lines
        self.base_dir = base_dir
        self.files = files
        self.max_avatar_bytes = max_avatar_bytes
        self.problems: list[str] = []
        # API index -> (schema file name, its lines), to place OpenAPI problems.
        self.schema_files: dict[int, tuple[str, Lines]] = {}

    def problem(self, loc: Loc, message: str, line: int | None = None) -> None:
        self.problems.append(f"{self.where(loc, line)}: field '{field_name(loc)}': {message}")

    def where(self, loc: Loc, line: int | None = None) -> str:
        """``source, line N`` for a location (or the given line); ``source`` without lines."""
        if self.lines is None:
            return self.source
        line = line or line_of(self.lines, loc)
        return f"{self.source}, line {line}" if line else self.source

    def manifest(self, data: Any) -> AppManifest:
        # JSON's data model whichever way the app came in, as it will be stored.
        data = _as_json(data)
        if not isinstance(data, dict):
            raise ManifestError(
                [
                    f"{self.where(())}: an app is a mapping that starts with "
                    "'apiVersion: enclave/v1' and 'kind: App'"
                ]
            )
        self._inline(data)
        try:
            manifest = AppManifest.model_validate(data)
        except ValidationError as exc:
            self._describe(exc, data)
            raise ManifestError(self.problems) from None
        offered: dict[str, list[Operation]] = {}
        for index, api in enumerate(manifest.spec.apis):
            if isinstance(api.schema_, dict):
                found = self._check_openapi(index, api.name, api.schema_, api.operations)
                if found is not None:
                    offered[api.name] = found
        self._check_test_operations(manifest, offered)
        if self.problems:
            raise ManifestError(self.problems)
        return manifest

    # -- referenced files ----------------------------------------------------

    def _inline(self, data: dict[str, Any]) -> None:
        spec = data.get("spec")
        apis = spec.get("apis") if isinstance(spec, dict) else None
        for index, api in enumerate(apis if isinstance(apis, list) else []):
            if isinstance(api, dict) and isinstance(api.get("schema"), str):
                loc: Loc = ("spec", "apis", index, "schema")
                path = self._path(loc, api["schema"], "an OpenAPI document")
                if path is not None:
                    api["schema"] = self._read_schema(index, loc, api["schema"], path)
        metadata = data.get("metadata")
        avatar = metadata.get("avatar") if isinstance(metadata, dict) else None
        if isinstance(avatar, str):
            loc = ("metadata", "avatar")
            if avatar.startswith("data:"):
                self._check_data_uri(loc, avatar)
            else:
                path = self._path(loc, avatar, "a data: URI")
                if path is not None:
                    assert isinstance(metadata, dict)
                    metadata["avatar"] = self._read_avatar(loc, avatar, path)

    def _path(self, loc: Loc, value: str, inline_as: str) -> Path | None:
        """The file a string points at, or None (a problem) when files are not read here."""
        if not self.files:
            self.problem(loc, f"must be inline as {inline_as} (enclave apply inlines files)")
            return None
        if self.base_dir is None:
            self.problem(
                loc,
                f"'{value}' is a file path, but there is no app file directory to resolve it "
                f"against: inline it as {inline_as}",
            )
            return None
        return self.base_dir / Path(value).expanduser()

    def _read_schema(self, index: int, loc: Loc, value: str, path: Path) -> Any:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a UTF-8 text file"
            self.problem(loc, f"cannot read schema file '{value}': {reason}")
            return value
        lines: Lines = {}
        try:
            if path.suffix.lower() == ".json":
                document = json.loads(text)
            else:
                document, lines = compose_with_lines(text, value)
        except ValueError as exc:  # json.JSONDecodeError and YamlSyntaxError
            message = str(exc) if isinstance(exc, YamlSyntaxError) else f"{value}: {exc}"
            self.problem(loc, f"schema file is not valid: {message}")
            return value
        if not isinstance(document, dict):
            self.problem(loc, f"schema file '{value}' must hold an OpenAPI document (a mapping)")
            return value
        self.schema_files[index] = (value, lines)
        return _as_json(document)

    def _read_avatar(self, loc: Loc, value: str, path: Path) -> str:
        mime = IMAGE_TYPES.get(path.suffix.lower())
        if mime is None:
            self.problem(
                loc, f"'{value}' is not a supported image (use .png, .jpg, .gif, .webp or .svg)"
            )
            return value
        try:
            size = path.stat().st_size
            if self.max_avatar_bytes is not None and size > self.max_avatar_bytes:
                self.problem(loc, _too_big(f"'{value}'", size, self.max_avatar_bytes))
                return value
            content = path.read_bytes()
        except OSError as exc:
            self.problem(loc, f"cannot read image file '{value}': {exc.strerror}")
            return value
        if not _looks_like(mime, content):
            kind = mime.split("/")[1].split("+")[0].upper()
            self.problem(loc, f"'{value}' does not look like a {kind} image")
            return value
        return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"

    def _check_data_uri(self, loc: Loc, value: str) -> None:
        match = DATA_URI.match(value)
        if match is None:
            self.problem(
                loc, "a data: URI must be data:image/(png|jpeg|gif|webp|svg+xml);base64,..."
            )
            return
        size = len(match.group(2)) * 3 // 4
        if self.max_avatar_bytes is not None and size > self.max_avatar_bytes:
            self.problem(loc, _too_big("the image", size, self.max_avatar_bytes))

    # -- validation ------------------------------------------------------------

    def _describe(self, exc: ValidationError, data: dict[str, Any]) -> None:
        """One problem per field: union branches of one field are merged into one line."""
        merged: dict[Loc, list[str]] = {}
        for error in exc.errors():
            loc: Loc = tuple(error["loc"])
            problem = (error.get("ctx") or {}).get("error")
            if isinstance(problem, FieldProblem):
                loc, message = (*loc, *problem.loc), problem.message
            elif isinstance(problem, ValueError):
                message = str(problem)
            elif error["type"] == "extra_forbidden":
                message = _unknown_field(loc)
            elif error["type"] == "missing":
                message = "required, but missing"
            else:
                message = error["msg"]
            messages = merged.setdefault(_in_data(loc, data), [])
            if message not in messages:
                messages.append(message)
        for loc, messages in merged.items():
            self.problem(loc, _join(messages))

    def _check_openapi(
        self, index: int, api_name: str, document: dict[str, Any], only: list[str] | None
    ) -> list[Operation] | None:
        """The operations the API offers, or None after noting why it cannot offer any."""
        loc: Loc = ("spec", "apis", index, "schema")
        try:
            return load_operations(document, api_name, only=only)
        except OpenAPIError as exc:
            pointer, message = exc.pointer, exc.message
            parts = tuple(unescape_pointer(p) for p in pointer.split("/")[1:]) if pointer else ()
            at = f" (at {pointer or '/'})"
            line = None
            if not pointer and only is not None:
                # Only the `operations` filter fails without a place in the document.
                self.problem((*loc[:-1], "operations"), message)
                return None
            if index in self.schema_files:
                # The schema came from its own file: say where in that file.
                name, lines = self.schema_files[index]
                inner = _pointer_line(lines, parts)
                if inner is not None:
                    at = f" (at {pointer or '/'}, {name} line {inner})"
            elif self.lines is not None:
                line = _pointer_line(self.lines, (*loc, *parts))
            self.problem(loc, f"{message}{at}", line)
            return None

    def _check_test_operations(
        self, manifest: AppManifest, offered: dict[str, list[Operation]]
    ) -> None:
        """Every operation a test names is one the API offers (a typo would never be called)."""
        for t, test in enumerate(manifest.spec.tests):
            for s, step in enumerate(test.steps):
                expect = step.expect
                base: Loc = ("spec", "tests", t, "steps", s, "expect")
                calls: list[tuple[Loc, CallExpectation]] = [
                    ((*base, "called", i), call) for i, call in enumerate(expect.called)
                ]
                calls += [((*base, "not_called", i), c) for i, c in enumerate(expect.not_called)]
                if expect.pending is not None:
                    calls.append(((*base, "pending"), expect.pending))
                for loc, call in calls:
                    operations = offered.get(call.api)
                    if call.operation is None or operations is None:
                        continue
                    if not any(op.matches(call.operation) for op in operations):
                        names = ", ".join(op.operation_id or op.key for op in operations)
                        self.problem(
                            (*loc, "operation"),
                            f"API '{call.api}' offers no operation '{call.operation}' "
                            f"(it offers: {names or 'none'})",
                        )


def _as_json(data: Any) -> Any:
    """``data`` as JSON gives it back: YAML's int keys and dates become strings.

    Never recursive: :func:`compose_with_lines` refuses an alias inside itself.
    """
    return json.loads(json.dumps(data, default=str))


def field_name(loc: Loc) -> str:
    """``spec.apis[0].url``; keys that are not identifiers in brackets: ``hr["GET /x"]``."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif _IDENTIFIER.match(part):
            name += f".{part}" if name else part
        else:
            name += f'["{part}"]'
    return name or "(top level)"


def _in_data(loc: Loc, data: Any) -> Loc:
    """The part of a pydantic location that is in the document.

    pydantic adds the branch of a union (``schema`` -> ``dict[str,any]``) and
    the items a before-validator made (``called: hr`` -> ``called[0].api``);
    a location stops at the first value that is not a mapping or list.
    """
    node = data
    kept: list[str | int] = []
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            node = node[part] if 0 <= part < len(node) else None
        else:
            break
        kept.append(part)
    return tuple(kept)


def _join(messages: list[str]) -> str:
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m.removeprefix(prefix) for m in messages)
    return "; ".join(messages)


def _unknown_field(loc: Loc) -> str:
    allowed = _fields_at(loc[:-1])
    if not allowed:
        return "unknown field (see docs/apps.md)"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"unknown field (did you mean '{close[0]}'?)"
    return f"unknown field (expected one of: {', '.join(allowed)})"


def _fields_at(loc: Loc) -> list[str]:
    """The field names (aliases) of the model at ``loc``, for suggestions."""
    annotation: Any = AppManifest
    for part in (*loc, None):
        annotation = _without_none(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {f.alias or n: f.annotation for n, f in annotation.model_fields.items()}
            if part is None:
                return list(fields)
            annotation = fields.get(str(part))
        elif typing.get_origin(annotation) in (list, dict) and part is not None:
            annotation = typing.get_args(annotation)[-1]
        else:
            return []
    return []


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0] if len(options) == 1 else annotation
    return annotation


def _pointer_line(lines: Lines, path: tuple[Any, ...]) -> int | None:
    """:func:`line_of`, comparing parts as strings (a pointer's ``"0"``, ``"200"``)."""
    by_text = {tuple(str(p) for p in key): line for key, line in lines.items()}
    return line_of(by_text, tuple(str(p) for p in path))


def _too_big(what: str, size: int, limit: int) -> str:
    return f"{what} is {size} bytes; the limit is {limit} bytes"


def _looks_like(mime: str, content: bytes) -> bool:
    if mime == "image/png":
        return content.startswith(b"\x89PNG\r\n\x1a\n")
    if mime == "image/jpeg":
        return content.startswith(b"\xff\xd8\xff")
    if mime == "image/gif":
        return content.startswith((b"GIF87a", b"GIF89a"))
    if mime == "image/webp":
        return content[:4] == b"RIFF" and content[8:12] == b"WEBP"
    return b"<svg" in content[:4096]


# -- ways out -----------------------------------------------------------------


def canonical(manifest: AppManifest) -> dict[str, Any]:
    """The app as a JSON-able dict without defaults: the form that is stored and compared."""
    normal = manifest.model_copy(deep=True)
    for api in normal.spec.apis:
        chosen = set(api.confirm)
        api.confirm = [method for method in METHOD_ORDER if method in chosen]
    dumped = normal.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    metadata = dumped.get("metadata") or {}
    return {
        "apiVersion": manifest.api_version,
        "kind": manifest.kind,
        "metadata": {"name": manifest.name, **metadata},
        "spec": dumped.get("spec") or {},
    }


class _Dumper(yaml.SafeDumper):
    """Block style, indented lists, ``|`` for multi-line strings, never anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    if any(ch in value for ch in _OTHER_BREAKS):
        # YAML 1.1 reads these as line breaks and folds them unless they are escaped.
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(data: dict[str, Any]) -> str:
    """Readable, stable YAML of a canonical dict (key order kept); loads back to equal data."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,  # never fold long lines: a one-word change stays a one-line diff
    )


def diff(old: dict[str, Any] | None, new: dict[str, Any], name: str) -> str:
    """A unified diff of the YAML forms; "" when equal, all additions when ``old`` is None."""
    if old == new:
        return ""
    before = to_yaml(old).splitlines(keepends=True) if old is not None else []
    after = to_yaml(new).splitlines(keepends=True)
    lines = difflib.unified_diff(
        before,
        after,
        fromfile=f"{name} (current)" if old is not None else "/dev/null",
        tofile=f"{name} (new)",
    )
    return "".join(lines)


def find_app_files(path: Path) -> list[Path]:
    """The app files at ``path``: a file itself, or a folder's app YAML files, sorted.

    In a folder, every ``*.yaml``/``*.yml`` below it whose top level says
    ``kind: App`` counts; hidden folders are skipped.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ManifestError([f"{path}: no such file or folder"])
    found = []
    for candidate in sorted(path.rglob("*")):
        relative = candidate.relative_to(path)
        if candidate.suffix.lower() not in (".yaml", ".yml") or not candidate.is_file():
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        if _is_app_file(candidate):
            found.append(candidate)
    if not found:
        raise ManifestError([f"{path}: no app files (YAML with 'kind: App') in this folder"])
    return found


def load_app_paths(paths: list[Path]) -> tuple[list[tuple[Path, AppManifest]], list[str]]:
    """Every app at ``paths`` (files, or folders as :func:`find_app_files` searches them).

    Returns each app file loaded once, in order, with its manifest, and every
    problem of every path and file (empty when all loaded).
    """
    problems: list[str] = []
    files: list[Path] = []
    for given in paths:
        try:
            found = find_app_files(given)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        files += [file for file in found if file not in files]
    apps: list[tuple[Path, AppManifest]] = []
    for file in files:
        try:
            apps.append((file, load_app_file(file)))
        except ManifestError as exc:
            problems.extend(exc.problems)
    return apps, problems


def _is_app_file(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        # A broken app file must not be skipped in silence: loading it says what is wrong.
        return re.search(r"^kind:\s*['\"]?App['\"]?\s*(#.*)?$", text, re.MULTILINE) is not None
    return isinstance(data, dict) and data.get("kind") == "App"
