"""OpenAPI 3.x operations as tools whose arguments a small model can generate.

:func:`load_operations` reads an OpenAPI 3.0 or 3.1 document (already parsed
into a dict) and returns one :class:`Operation` per HTTP operation. Each
operation's arguments are a single JSON object: one property per path, query
or header parameter, plus ``body`` for the request body. Two schemas describe
that object:

* ``validation_schema``: the document's schemas with every local ``$ref``
  inlined and OpenAPI's dialect turned into plain JSON Schema 2020-12
  (``nullable: true`` becomes ``anyOf [..., {"type": "null"}]``, boolean
  ``exclusiveMinimum`` becomes the numeric form, ``readOnly`` properties leave
  request bodies, annotations such as ``example`` go). Validate the model's
  output against it with ``jsonschema`` after generating.
* ``arguments_schema``: the same, reduced to what the GBNF grammar of
  :mod:`enclave.chat.schema_grammar` can enforce. Keywords it cannot enforce
  (:data:`~enclave.chat.schema_grammar.UNENFORCEABLE`, unanchored
  ``pattern``, fractional or negative number bounds, ``format`` other than
  date, date-time, time and uuid) are dropped, ``allOf`` is merged and
  ``oneOf`` becomes ``anyOf``. Everything the grammar allows is therefore a
  candidate, and whatever it cannot promise is left to ``validation_schema``.
  :func:`load_operations` compiles every exposed ``arguments_schema`` the way
  the runner will, so a document that cannot become a grammar fails at apply
  time with a pointer rather than at chat time.

A small model that repeats an item breaks ``uniqueItems``, which no grammar
here forbids; :func:`tidy_arguments` removes such repeats from the model's
output before it is shown or validated.

Request bodies: ``application/json`` (and any ``+json`` type) is sent as JSON;
``text/*`` becomes a string ``body``. Any other content type (multipart,
form, octet-stream) is refused with :class:`OpenAPIError`; list the other
operations in the API's ``operations:`` to leave such an operation out (only
exposed operations are examined in depth). Optional cookie parameters are
ignored; a required one is refused. ``Accept``, ``Content-Type`` and
``Authorization`` header parameters are ignored, as OpenAPI specifies:
configured API headers carry credentials, never the model.

Recursive schemas cannot become a finite grammar and are refused, and so are
references to other files: the document must be self-contained.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from enclave.chat.constraints import plan_output
from enclave.chat.schema_grammar import UNENFORCEABLE, integer_bounds
from enclave.errors import InvalidRequest
from enclave.providers.base import ResponseFormat

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
ALLOWED_FORMATS = frozenset({"date", "date-time", "time", "uuid"})
ANNOTATIONS = frozenset(
    {
        "example",
        "examples",
        "xml",
        "externalDocs",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "$defs",
        "definitions",
    }
)
IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
TOOL_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
EMPTY_ARGUMENTS: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}

_SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)
_TEMPLATE_VARIABLE = re.compile(r"\{([^{}]+)\}")
_ANY_VALUE_TYPES = ("string", "number", "boolean", "object", "array", "null")
_STRUCTURAL = frozenset(
    {"type", "enum", "const", "anyOf", "oneOf", "allOf", "properties", "items", "prefixItems"}
)
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_TYPE_KEYWORDS = (
    ("string", frozenset({"pattern", "format", "minLength", "maxLength"})),
    ("number", frozenset(_NUMBER_BOUNDS)),
    ("object", frozenset({"additionalProperties", "required"})),
    ("array", frozenset({"minItems", "maxItems"})),
)


class OpenAPIError(ValueError):
    """The document cannot become tools. ``pointer`` locates the problem in it."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"{message} (at {pointer or '/'})")
        self.pointer = pointer
        self.message = message


@dataclass(frozen=True)
class Parameter:
    """A path, query or header parameter; ``schema`` is its validation schema."""

    name: str
    location: str  # "path" | "query" | "header"
    required: bool
    schema: dict[str, Any]
    description: str = ""
    explode: bool = True  # query arrays: repeated (True) or comma-separated


@dataclass(frozen=True)
class Operation:
    """One HTTP operation of one API, as a tool with JSON-schema arguments.

    ``parameters`` and ``body_schema`` hold validation schemas;
    ``arguments_schema`` is the grammar-friendly schema of the whole argument
    object and ``validation_schema`` its complete counterpart.
    """

    api: str
    method: str
    path: str
    key: str
    operation_id: str | None
    tool_name: str
    summary: str
    description: str
    parameters: tuple[Parameter, ...]
    body_schema: dict[str, Any] | None
    body_required: bool
    body_media_type: str | None
    arguments_schema: dict[str, Any]
    validation_schema: dict[str, Any] = field(repr=False)

    def describe(self) -> str:
        """One line for routing: ``name: METHOD /path. Summary``."""
        text = self.summary or _first_sentence(self.description)
        line = f"{self.tool_name}: {self.key}"
        return f"{line}. {text}" if text else line

    def matches(self, name: str) -> bool:
        """True for this operation's operationId, tool name or ``"METHOD /path"``."""
        return _matches(name, self.operation_id, self.tool_name, self.method, self.path)


def _matches(name: str, operation_id: str | None, tool_name: str, method: str, path: str) -> bool:
    name = name.strip()
    if name in {operation_id, tool_name}:
        return True
    wanted_method, _, wanted_path = name.partition(" ")
    return wanted_method.upper() == method.upper() and wanted_path.strip() == path


def load_operations(
    document: dict[str, Any], api: str, *, only: list[str] | None = None
) -> list[Operation]:
    """The operations of an OpenAPI 3.x document, in document order.

    ``only`` keeps the operations that :meth:`Operation.matches` one of its
    names; a name that matches nothing is an error. Raises
    :class:`OpenAPIError` for anything that cannot become a tool.
    """
    if not isinstance(document, dict):
        raise OpenAPIError("", "an OpenAPI document must be a mapping")
    version = document.get("openapi")
    if not isinstance(version, str) or not re.match(r"^3\.\d+(\.\d+)?", version):
        found = "no 'openapi' field" if version is None else f"openapi: {version!r}"
        if "swagger" in document:
            found = f"swagger: {document['swagger']!r} (OpenAPI 2)"
        raise OpenAPIError("/openapi", f"expected an OpenAPI 3.x document, found {found}")
    paths = document.get("paths")
    if not isinstance(paths, dict):
        raise OpenAPIError("/paths", "'paths' must be a mapping of paths to operations")

    resolver = _Resolver(document)
    sites = list(_operation_sites(paths, resolver))
    names = _tool_names(sites)
    selected = range(len(sites)) if only is None else _select(sites, names, only)
    # Only exposed operations are examined in depth, so 'operations:' can leave out
    # one that uses something unsupported.
    return [_build_operation(sites[index], names[index], api, resolver) for index in selected]


def tidy_arguments(operation: Operation, arguments: Any) -> Any:
    """``arguments`` with duplicate items removed from arrays whose schema says
    ``uniqueItems``: a grammar cannot forbid repeats, and a small model repeats itself.

    Call it on the model's output before showing or validating it; it returns a new
    value and changes nothing else, so other violations still fail validation.
    """
    return _tidy(operation.validation_schema, arguments)


def _tidy(schema: Any, value: Any) -> Any:
    if not isinstance(schema, dict):
        return value
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key) or []:
            value = _tidy(branch, value)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {name: _tidy(properties.get(name, extra), item) for name, item in value.items()}
    if isinstance(value, list):
        items = [_tidy(schema.get("items"), item) for item in value]
        if schema.get("uniqueItems") is True:
            seen: set[str] = set()
            unique = []
            for item in items:
                fingerprint = json.dumps(item, sort_keys=True)
                if fingerprint not in seen:
                    seen.add(fingerprint)
                    unique.append(item)
            items = unique
        return items
    return value


# --- where the operations are ------------------------------------------------------------------


@dataclass
class _Site:
    path: str
    method: str
    pointer: str
    node: dict[str, Any]
    path_item: dict[str, Any]
    path_pointer: str

    @property
    def key(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def operation_id(self) -> str | None:
        value = self.node.get("operationId")
        return value if isinstance(value, str) and value else None


def _operation_sites(paths: dict[str, Any], resolver: _Resolver) -> Iterator[_Site]:
    seen_ids: dict[str, str] = {}
    for path, raw_item in paths.items():
        pointer = f"/paths/{_escape(str(path))}"
        if str(path).startswith("x-"):
            continue
        if not isinstance(path, str) or not path.startswith("/"):
            raise OpenAPIError(pointer, f"path {path!r} must start with '/'")
        item, item_pointer = resolver.follow(raw_item, pointer)
        if not isinstance(item, dict):
            raise OpenAPIError(pointer, "a path item must be a mapping")
        for method, node in item.items():
            if method not in METHODS:
                continue
            site = _Site(path, method, f"{item_pointer}/{method}", node, item, item_pointer)
            if not isinstance(node, dict):
                raise OpenAPIError(site.pointer, "an operation must be a mapping")
            op_id = site.operation_id
            if op_id is not None:
                if op_id in seen_ids:
                    raise OpenAPIError(
                        f"{site.pointer}/operationId",
                        f"operationId '{op_id}' is used by both {seen_ids[op_id]} and {site.key}",
                    )
                seen_ids[op_id] = site.key
            yield site


def _tool_names(sites: list[_Site]) -> list[str]:
    """Sanitised, unique names: the operationId, else ``method_path`` (``get_vacancies_id``)."""
    names: list[str] = []
    used: set[str] = set()
    for site in sites:
        base = _sanitise(site.operation_id or "") or _sanitise(f"{site.method} {site.path}")
        name, counter = base, 1
        while name in used:
            counter += 1
            suffix = f"_{counter}"
            name = base[: 64 - len(suffix)] + suffix
        used.add(name)
        names.append(name)
    return names


def _sanitise(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return re.sub(r"_{2,}", "_", name)[:64].rstrip("_")


def _select(sites: list[_Site], names: list[str], only: list[str]) -> list[int]:
    def hit(site: _Site, tool_name: str, wanted: str) -> bool:
        return _matches(wanted, site.operation_id, tool_name, site.method, site.path)

    unknown = [w for w in only if not any(hit(s, n, w) for s, n in zip(sites, names, strict=True))]
    if unknown:
        listed = ", ".join(f"'{name}'" for name in unknown)
        raise OpenAPIError(
            "", f"no operation matches {listed} (use an operationId or 'METHOD /path')"
        )
    return [
        index
        for index, (site, name) in enumerate(zip(sites, names, strict=True))
        if any(hit(site, name, wanted) for wanted in only)
    ]


# --- one operation -------------------------------------------------------------------------------


def _build_operation(site: _Site, tool_name: str, api: str, resolver: _Resolver) -> Operation:
    parameters = _parameters(site, resolver)
    body_schema, body_required, media_type = _request_body(site, resolver)

    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in parameters:
        schema = dict(parameter.schema)
        if parameter.description and "description" not in schema:
            schema["description"] = parameter.description
        properties[parameter.name] = schema
        if parameter.required:
            required.append(parameter.name)
    if body_schema is not None:
        if "body" in properties:
            raise OpenAPIError(
                f"{site.pointer}/parameters",
                "a parameter named 'body' clashes with the request body argument",
            )
        properties["body"] = body_schema
        if body_required:
            required.append("body")
    validation: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        validation["required"] = required
    validation["additionalProperties"] = False

    arguments = dict(EMPTY_ARGUMENTS)
    if properties:
        arguments = _compilable(grammar_schema(validation), site)
    summary = site.node.get("summary")
    description = site.node.get("description")
    return Operation(
        api=api,
        method=site.method.upper(),
        path=site.path,
        key=site.key,
        operation_id=site.operation_id,
        tool_name=tool_name,
        summary=_one_line(summary) if isinstance(summary, str) else "",
        description=description.strip() if isinstance(description, str) else "",
        parameters=tuple(parameters),
        body_schema=body_schema,
        body_required=body_required,
        body_media_type=media_type,
        arguments_schema=arguments,
        validation_schema=validation,
    )


def _parameters(site: _Site, resolver: _Resolver) -> list[Parameter]:
    merged: dict[tuple[str, str], Parameter] = {}
    for owner, owner_pointer in ((site.path_item, site.path_pointer), (site.node, site.pointer)):
        listed = owner.get("parameters") or []
        if not isinstance(listed, list):
            raise OpenAPIError(f"{owner_pointer}/parameters", "'parameters' must be a list")
        for index, raw in enumerate(listed):
            parameter = _parameter(raw, f"{owner_pointer}/parameters/{index}", resolver)
            if parameter is not None:  # operation level overrides path level
                merged[(parameter.location, parameter.name)] = parameter

    where = f"{site.pointer}/parameters"
    template = _TEMPLATE_VARIABLE.findall(site.path)
    declared = {name for location, name in merged if location == "path"}
    if missing := [name for name in template if name not in declared]:
        raise OpenAPIError(where, f"path variable(s) {', '.join(missing)} have no path parameter")
    if extra := sorted(declared - set(template)):
        raise OpenAPIError(where, f"path parameter(s) {', '.join(extra)} are not in {site.path}")
    names = [parameter.name for parameter in merged.values()]
    if clashes := sorted({name for name in names if names.count(name) > 1}):
        raise OpenAPIError(
            where, f"parameter name(s) {', '.join(clashes)} are used in two locations"
        )
    return list(merged.values())


def _parameter(raw: Any, pointer: str, resolver: _Resolver) -> Parameter | None:
    node, node_pointer = resolver.follow(raw, pointer)
    if not isinstance(node, dict):
        raise OpenAPIError(pointer, "a parameter must be a mapping")
    name, location = node.get("name"), node.get("in")
    if not isinstance(name, str) or not name:
        raise OpenAPIError(f"{node_pointer}/name", "a parameter needs a name")
    if location not in {"path", "query", "header", "cookie"}:
        raise OpenAPIError(
            f"{node_pointer}/in", f"parameter '{name}': 'in' must be path, query, header or cookie"
        )
    required = bool(node.get("required", False)) or location == "path"
    if location == "cookie":
        if required:
            raise OpenAPIError(node_pointer, f"required cookie parameter '{name}' is not supported")
        return None
    if location == "header" and name.lower() in IGNORED_HEADERS:
        return None
    if "schema" in node:
        schema = resolver.schema(node["schema"], f"{node_pointer}/schema")
    elif "content" in node:
        raise OpenAPIError(
            f"{node_pointer}/content",
            f"parameter '{name}' is described by 'content'; only 'schema' is supported",
        )
    else:
        schema = {"type": "string"}
    if not isinstance(schema, dict):
        schema = {} if schema is True else {"not": {}}
    description = node.get("description")
    style = node.get("style", "form" if location == "query" else "simple")
    return Parameter(
        name=name,
        location=location,
        required=required,
        schema=schema,
        description=_one_line(description) if isinstance(description, str) else "",
        explode=bool(node.get("explode", style == "form")),
    )


def _request_body(
    site: _Site, resolver: _Resolver
) -> tuple[dict[str, Any] | None, bool, str | None]:
    if "requestBody" not in site.node:
        return None, False, None
    pointer = f"{site.pointer}/requestBody"
    body, body_pointer = resolver.follow(site.node["requestBody"], pointer)
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict):
        raise OpenAPIError(pointer, "a requestBody needs a 'content' mapping")
    content: dict[str, Any] = body["content"]
    required = bool(body.get("required", False))
    by_kind: dict[str, str] = {}
    for media_type in content:
        base = str(media_type).split(";", 1)[0].strip().lower()
        if base == "application/json" or base.endswith("+json"):
            by_kind.setdefault("json", media_type)
        elif base.startswith("text/"):
            by_kind.setdefault("text", media_type)
    if "json" in by_kind:
        media_type = by_kind["json"]
        media = content[media_type] or {}
        where = f"{body_pointer}/content/{_escape(media_type)}"
        raw = media.get("schema", {"type": "object"}) if isinstance(media, dict) else {}
        schema = resolver.schema(raw, f"{where}/schema")
        if not isinstance(schema, dict):
            schema = {} if schema is True else {"not": {}}
        return schema, required, str(media_type).split(";", 1)[0].strip()
    if "text" in by_kind:
        return {"type": "string"}, required, str(by_kind["text"]).split(";", 1)[0].strip()
    kinds = ", ".join(str(media_type) for media_type in content) or "none"
    raise OpenAPIError(
        f"{body_pointer}/content",
        f"{site.key}: request body content type(s) {kinds} are not supported (only "
        "application/json and text/*); leave the operation out with the API's 'operations' list",
    )


def _compilable(schema: dict[str, Any], site: _Site) -> dict[str, Any]:
    """``schema`` if it compiles to a grammar as the runner will compile it, else the
    schema without ``pattern`` (the converter knows a subset of regex syntax)."""
    error = ""
    for attempt in (schema, _without_patterns(schema)):
        try:
            plan_output(ResponseFormat("json_schema", attempt), (), "none")
        except InvalidRequest as exc:
            error = exc.message
            continue
        return dict(attempt)
    raise OpenAPIError(site.pointer, f"{site.key}: arguments cannot become a grammar: {error}")


def _without_patterns(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: value if key in {"enum", "const"} else _without_patterns(value)
            for key, value in schema.items()
            if key != "pattern"
        }
    if isinstance(schema, list):
        return [_without_patterns(item) for item in schema]
    return schema


# --- $ref resolution and OpenAPI schema dialect ---------------------------------------------------


class _Resolver:
    """Local ``$ref`` resolution over one document, refusing cycles and external refs."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def lookup(self, ref: Any, pointer: str) -> tuple[Any, str]:
        if not isinstance(ref, str):
            raise OpenAPIError(pointer, "$ref must be a string")
        if not ref.startswith("#"):
            raise OpenAPIError(
                pointer, f"external reference '{ref}' is not supported; inline it in the document"
            )
        target_pointer = unquote(ref[1:])
        if target_pointer and not target_pointer.startswith("/"):
            raise OpenAPIError(pointer, f"reference '{ref}' is not a JSON pointer")
        node: Any = self.document
        for token in target_pointer.split("/")[1:]:
            token = unescape_pointer(token)
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise OpenAPIError(pointer, f"reference '{ref}' points at nothing")
        return node, target_pointer

    def follow(self, node: Any, pointer: str) -> tuple[Any, str]:
        """A non-schema object (parameter, requestBody, path item) behind any ``$ref`` chain."""
        seen: list[str] = []
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise OpenAPIError(pointer, f"reference cycle: {' -> '.join([*seen, ref])}")
            seen.append(ref)
            node, pointer = self.lookup(ref, f"{pointer}/$ref")
        return node, pointer

    def schema(self, node: Any, pointer: str) -> Any:
        """The validation schema: refs inlined, OpenAPI's dialect turned into JSON Schema."""
        return self._schema(node, pointer, ())

    def _schema(self, node: Any, pointer: str, active: tuple[str, ...]) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            raise OpenAPIError(pointer, "a schema must be a mapping")
        if "$ref" in node:
            ref = node["$ref"]
            if ref in active:
                chain = " -> ".join([*active[active.index(ref) :], ref])
                raise OpenAPIError(
                    f"{pointer}/$ref",
                    f"recursive schema ({chain}) cannot become tool arguments",
                )
            target, target_pointer = self.lookup(ref, f"{pointer}/$ref")
            resolved = self._schema(target, target_pointer, (*active, ref))
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            if not siblings:
                return resolved
            extra = self._schema(siblings, pointer, active)
            if isinstance(resolved, dict) and isinstance(extra, dict):
                return {**resolved, **extra}
            return resolved
        return self._normalise(node, pointer, active)

    def _normalise(
        self, node: dict[str, Any], pointer: str, active: tuple[str, ...]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            where = f"{pointer}/{_escape(key)}"
            if key in ANNOTATIONS or key == "nullable" or key.startswith("x-"):
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {
                    name: self._schema(child, f"{where}/{_escape(name)}", active)
                    for name, child in value.items()
                }
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [
                    self._schema(child, f"{where}/{index}", active)
                    for index, child in enumerate(value)
                ]
            elif key in _SCHEMA_ONE and isinstance(value, dict | bool):
                out[key] = self._schema(value, where, active)
            else:
                out[key] = copy.deepcopy(value)
        _numeric_exclusive_bounds(out)
        _drop_read_only(out, node, self, pointer, active)
        if node.get("nullable") is True:
            return _nullable(out)
        return out


def _drop_read_only(
    out: dict[str, Any],
    node: dict[str, Any],
    resolver: _Resolver,
    pointer: str,
    active: tuple[str, ...],
) -> None:
    """Arguments are requests, and ``readOnly`` properties are never sent in one."""
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return
    read_only = set()
    for name, child in properties.items():
        target = child
        while isinstance(target, dict) and "$ref" in target and "readOnly" not in target:
            target, _ = resolver.lookup(target["$ref"], pointer)
        if isinstance(target, dict) and target.get("readOnly") is True:
            read_only.add(name)
    if not read_only:
        return
    out["properties"] = {k: v for k, v in out["properties"].items() if k not in read_only}
    if isinstance(out.get("required"), list):
        out["required"] = [name for name in out["required"] if name not in read_only]
        if not out["required"]:
            del out["required"]


def _numeric_exclusive_bounds(schema: dict[str, Any]) -> None:
    """OpenAPI 3.0's ``exclusiveMinimum: true`` beside ``minimum``, in 2020-12 form."""
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(flag), bool) and schema.pop(flag) and bound in schema:
            schema[flag] = schema.pop(bound)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``nullable: true`` as a union. ``anyOf`` rather than ``type: [t, "null"]`` so the
    grammar converter keeps the other keywords (bounds, enum, properties)."""
    if schema.get("type") == "null" or schema == {}:
        return schema
    outer: dict[str, Any] = {
        key: schema.pop(key) for key in ("title", "description", "default") if key in schema
    }
    return {**outer, "anyOf": [schema, {"type": "null"}]}


# --- the grammar-friendly schema ----------------------------------------------------------------


def grammar_schema(schema: Any) -> Any:
    """``schema`` reduced to what the GBNF grammar can enforce (a copy; see the module doc)."""
    if schema is True:
        return _any_value()
    if not isinstance(schema, dict):
        return schema
    source = _merge_all_of(schema) if isinstance(schema.get("allOf"), list) else schema
    out: dict[str, Any] = {}
    for key, value in source.items():
        if key in UNENFORCEABLE or key in ANNOTATIONS:
            continue
        if key == "format" and value not in ALLOWED_FORMATS:
            continue
        if key == "pattern" and not _anchored(value):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {
                name: grammar_schema(child) for name, child in value.items() if child is not False
            }
        elif key in ("anyOf", "oneOf", "prefixItems") and isinstance(value, list):
            out["anyOf" if key == "oneOf" else key] = [grammar_schema(child) for child in value]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = grammar_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if isinstance(out.get("required"), list) and isinstance(out.get("properties"), dict):
        out["required"] = [name for name in out["required"] if name in out["properties"]]
    _number_bounds(out)
    kind = out.get("type")
    if isinstance(kind, list):
        rest = {key: value for key, value in out.items() if key != "type"}
        if "enum" in rest or "const" in rest:
            return rest  # the values say it all; the converter would ignore the types
        return {"anyOf": [{**rest, "type": each} for each in kind]}
    if kind is None and not _STRUCTURAL & out.keys():
        return _untyped(out)
    return out


def _untyped(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema without ``type``: the converter needs one, so infer it from the keywords
    (a narrower schema, so still valid) or allow any JSON value."""
    for kind, keywords in _TYPE_KEYWORDS:
        if keywords & schema.keys():
            return {**schema, "type": kind}
    return {**schema, **_any_value()}


def _any_value() -> dict[str, Any]:
    return {"anyOf": [{"type": kind} for kind in _ANY_VALUE_TYPES]}


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """``allOf`` flattened into one schema: the converter only merges properties."""
    merged = {key: value for key, value in schema.items() if key != "allOf"}
    for part in schema["allOf"]:
        if not isinstance(part, dict):
            continue
        part = _merge_all_of(part) if isinstance(part.get("allOf"), list) else part
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged.setdefault(key, value)
    return merged


def _number_bounds(schema: dict[str, Any]) -> None:
    """The grammar enforces whole, non-negative number bounds only; drop other ones."""
    if schema.get("type") != "number":
        return
    keys = [k for k in _NUMBER_BOUNDS if k in schema]
    if not keys:
        return
    values = [schema[key] for key in keys]
    low, _ = integer_bounds(schema)
    whole = all(isinstance(v, int | float) and float(v).is_integer() for v in values)
    if not whole or (low is not None and low < 0):
        for key in keys:
            del schema[key]


def _anchored(pattern: Any) -> bool:
    return isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")


# --- small text helpers --------------------------------------------------------------------------


def _escape(token: str) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def unescape_pointer(token: str) -> str:
    """One JSON-pointer token as the key it names (``~1`` is ``/``, ``~0`` is ``~``)."""
    return token.replace("~1", "/").replace("~0", "~")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_sentence(text: str) -> str:
    text = _one_line(text)
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 200 else sentence[:199].rstrip() + "…"
