"""OpenAPI documents as tools: operations, names, schemas a grammar can enforce, and errors
that point at the line of the document that caused them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from enclave.apps.openapi import (
    EMPTY_ARGUMENTS,
    TOOL_NAME,
    OpenAPIError,
    Operation,
    grammar_schema,
    load_operations,
    tidy_arguments,
)
from enclave.chat.constraints import plan_output
from enclave.chat.schema_grammar import UNENFORCEABLE, schema_to_gbnf
from enclave.providers.base import ResponseFormat

HR_PATH = Path(__file__).parents[1] / "data" / "apps" / "hr-openapi.yaml"


@pytest.fixture(scope="module")
def hr_document() -> dict[str, Any]:
    return yaml.safe_load(HR_PATH.read_text())


@pytest.fixture(scope="module")
def hr(hr_document: dict[str, Any]) -> dict[str, Operation]:
    return {op.tool_name: op for op in load_operations(hr_document, "hr")}


def doc(paths: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def one(paths: dict[str, Any], **extra: Any) -> Operation:
    (operation,) = load_operations(doc(paths, **extra), "api")
    return operation


def keys_in(value: Any) -> set[str]:
    """Every mapping key anywhere in ``value``."""
    if isinstance(value, dict):
        return set(value) | {k for child in value.values() for k in keys_in(child)}
    if isinstance(value, list):
        return {k for child in value for k in keys_in(child)}
    return set()


def compiles(schema: dict[str, Any]) -> None:
    assert plan_output(ResponseFormat("json_schema", schema), (), "none").grammar
    assert schema_to_gbnf(schema)


# --- the HR document ---------------------------------------------------------------------------


def test_every_hr_operation_becomes_a_tool_in_document_order(hr: dict[str, Operation]) -> None:
    assert [op.key for op in hr.values()] == [
        "GET /vacancies",
        "POST /vacancies",
        "GET /vacancies/{id}",
        "DELETE /vacancies/{id}",
        "GET /vacancies/{id}/candidates",
    ]
    assert list(hr) == [
        "listVacancies",
        "createVacancy",
        "getVacancy",
        "deleteVacancy",
        "listCandidates",
    ]
    assert {op.api for op in hr.values()} == {"hr"}


def test_describe_uses_the_summary_or_the_first_sentence(hr: dict[str, Operation]) -> None:
    assert hr["listVacancies"].describe() == "listVacancies: GET /vacancies. List open vacancies"
    assert (
        hr["deleteVacancy"].describe() == "deleteVacancy: DELETE /vacancies/{id}. Delete a vacancy."
    )


def test_an_operation_matches_its_id_its_key_and_its_tool_name(hr: dict[str, Operation]) -> None:
    get = hr["getVacancy"]
    assert get.matches("getVacancy")
    assert get.matches("GET /vacancies/{id}")
    assert get.matches("get /vacancies/{id}")
    assert not get.matches("DELETE /vacancies/{id}")
    assert not get.matches("GET /vacancies")
    assert not get.matches("listVacancies")


def test_path_level_parameters_and_refs_are_merged(hr: dict[str, Operation]) -> None:
    candidates = hr["listCandidates"]
    by_name = {p.name: p for p in candidates.parameters}
    assert set(by_name) == {"id", "stage", "X-Request-Id"}  # Authorization is never the model's
    assert by_name["id"].location == "path" and by_name["id"].required
    assert by_name["id"].schema["maximum"] == 999999
    assert by_name["X-Request-Id"].location == "header"
    assert candidates.arguments_schema["required"] == ["id"]
    assert hr["listVacancies"].parameters[1].name == "limit"  # from components/parameters


def test_the_body_schema_is_inlined_and_the_argument_is_required(
    hr: dict[str, Operation],
) -> None:
    create = hr["createVacancy"]
    assert create.body_required and create.body_media_type == "application/json"
    body = create.arguments_schema["properties"]["body"]
    assert body["required"] == ["title"]
    assert body["properties"]["hours_per_week"] == {"type": "integer", "minimum": 1, "maximum": 60}
    assert body["properties"]["department"]["enum"][0] == "Engineering"
    assert create.arguments_schema["required"] == ["body"]
    assert create.arguments_schema["additionalProperties"] is False
    assert "$ref" not in keys_in(create.arguments_schema)
    assert "$ref" not in keys_in(create.validation_schema)


def test_annotations_are_dropped_and_enforceable_formats_kept(hr: dict[str, Operation]) -> None:
    schemas = [op.arguments_schema for op in hr.values()]
    keys = keys_in(schemas)
    assert not keys & {"example", "nullable", "readOnly", "discriminator"}
    text = json.dumps(schemas)
    assert '"int64"' not in text  # not a format the grammar knows
    assert '"format": "date"' in text and '"format": "uuid"' in text


def test_unenforceable_keywords_leave_the_grammar_but_not_validation(
    hr: dict[str, Operation],
) -> None:
    create = hr["createVacancy"]
    skills = create.arguments_schema["properties"]["body"]["properties"]["skills"]
    assert "uniqueItems" not in skills
    assert not UNENFORCEABLE & keys_in(create.arguments_schema)
    arguments = {"body": {"title": "Welder", "skills": ["weld", "weld"]}}
    jsonschema.validate(arguments, create.arguments_schema)
    with pytest.raises(jsonschema.ValidationError, match="non-unique"):
        jsonschema.validate(arguments, create.validation_schema)


def test_nullable_becomes_a_union_that_keeps_its_bounds(hr: dict[str, Operation]) -> None:
    body = hr["createVacancy"].validation_schema["properties"]["body"]
    months = body["properties"]["contract"]["properties"]["months"]
    assert months == {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 36}, {"type": "null"}]}
    contract = {"title": "Nurse", "contract": {"kind": "temporary", "months": None}}
    jsonschema.validate({"body": contract}, hr["createVacancy"].validation_schema)
    contract["contract"]["months"] = 37
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"body": contract}, hr["createVacancy"].validation_schema)


def test_every_hr_arguments_schema_compiles_to_a_grammar(hr: dict[str, Operation]) -> None:
    for operation in hr.values():
        compiles(operation.arguments_schema)
        jsonschema.Draft202012Validator.check_schema(operation.validation_schema)


def test_the_grammar_enforces_the_integer_bounds(hr: dict[str, Operation]) -> None:
    grammar = schema_to_gbnf(hr["getVacancy"].arguments_schema)
    (id_rule,) = [line for line in grammar.splitlines() if line.startswith("id ::=")]
    assert "[1-9] [0-9]{5}" in id_rule  # up to six digits, no leading zero, no sign
    assert "[0-9]{6}" not in id_rule and '"-"' not in id_rule
    assert "integral-part" not in grammar  # not the unbounded integer rule


def test_an_operation_without_arguments_has_the_empty_object_schema() -> None:
    operation = one({"/health": {"get": {"responses": {"200": {"description": "ok"}}}}})
    assert operation.arguments_schema == EMPTY_ARGUMENTS
    assert operation.tool_name == "get_health"
    assert operation.describe() == "get_health: GET /health"
    compiles(operation.arguments_schema)


def test_tidy_arguments_drops_repeats_where_items_must_be_unique(
    hr: dict[str, Operation],
) -> None:
    create = hr["createVacancy"]
    generated = {"body": {"title": "Cook", "skills": ["knife", "fire", "knife", "knife"]}}
    tidied = tidy_arguments(create, generated)
    assert tidied == {"body": {"title": "Cook", "skills": ["knife", "fire"]}}
    assert generated["body"]["skills"] == ["knife", "fire", "knife", "knife"]  # a new value
    jsonschema.validate(tidied, create.validation_schema)
    untouched = {"body": {"title": "Cook", "hours_per_week": 99}}
    assert tidy_arguments(create, untouched) == untouched  # other problems stay visible


# --- names and selection --------------------------------------------------------------------


def test_tool_names_are_sanitised_and_unique() -> None:
    ok = {"responses": {"200": {"description": "ok"}}}
    path_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    operations = load_operations(
        doc(
            {
                "/a": {"get": {**ok, "operationId": "list-vacancies.v2"}},
                "/b": {"get": {**ok, "operationId": "list_vacancies_v2"}},
                "/vacancies/{id}": {"get": {**ok, "parameters": path_param}},
                "/x": {"post": {**ok, "operationId": "x" * 80}},
                "/y": {"put": {**ok, "operationId": "x" * 70}},
            }
        ),
        "api",
    )
    names = [op.tool_name for op in operations]
    assert names[:3] == ["list_vacancies_v2", "list_vacancies_v2_2", "get_vacancies_id"]
    assert names[3] == "x" * 64 and names[4] == "x" * 62 + "_2"
    assert all(TOOL_NAME.match(name) for name in names)
    assert operations[0].matches("list-vacancies.v2") and operations[0].matches("list_vacancies_v2")


def test_only_keeps_the_named_operations(hr_document: dict[str, Any]) -> None:
    operations = load_operations(hr_document, "hr", only=["getVacancy", "POST /vacancies"])
    assert [op.tool_name for op in operations] == ["createVacancy", "getVacancy"]


def test_only_with_unknown_names_says_which(hr_document: dict[str, Any]) -> None:
    with pytest.raises(OpenAPIError) as caught:
        load_operations(hr_document, "hr", only=["getVacancy", "fireEveryone", "PUT /vacancies"])
    assert "'fireEveryone'" in caught.value.message and "'PUT /vacancies'" in caught.value.message
    assert "getVacancy" not in caught.value.message


def test_only_leaves_out_an_operation_that_could_not_be_a_tool() -> None:
    upload = {
        "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "ok"}},
    }
    paths = {
        "/files": {"post": {**upload, "operationId": "upload"}},
        "/ping": {"get": {"operationId": "ping", "responses": {"200": {"description": "ok"}}}},
    }
    with pytest.raises(OpenAPIError) as caught:
        load_operations(doc(paths), "api")
    assert caught.value.pointer == "/paths/~1files/post/requestBody/content"
    assert "multipart/form-data" in caught.value.message
    assert [op.tool_name for op in load_operations(doc(paths), "api", only=["ping"])] == ["ping"]


# --- OpenAPI's dialect -----------------------------------------------------------------------


def test_read_only_properties_leave_request_bodies_and_all_of_is_merged() -> None:
    components = {
        "schemas": {
            "Base": {
                "type": "object",
                "required": ["id", "name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "maxLength": 20},
                },
            },
            "Pet": {
                "allOf": [
                    {"$ref": "#/components/schemas/Base"},
                    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}},
                ],
                "discriminator": {"propertyName": "name"},
            },
        }
    }
    operation = one(
        {
            "/pets": {
                "put": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                        }
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
        components=components,
    )
    assert not operation.body_required
    body = operation.arguments_schema["properties"]["body"]
    assert "allOf" not in body
    assert set(body["properties"]) == {"name", "age"}
    assert body["required"] == ["name"]
    assert "id" not in json.dumps(operation.validation_schema)
    compiles(operation.arguments_schema)
    jsonschema.validate({"body": {"name": "Rex", "age": 3}}, operation.validation_schema)


def test_schemas_the_converter_cannot_take_are_made_enforceable() -> None:
    schema = {
        "type": "object",
        "properties": {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "price": {"type": "number", "minimum": 0.5, "multipleOf": 0.5},
            "count": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
            "code": {"type": "string", "pattern": "[A-Z]{3}"},
            "zip": {"type": "string", "pattern": "^[0-9]{4}$"},
            "email": {"type": "string", "format": "email"},
            "any": {"description": "anything at all"},
            "short": {"maxLength": 5},
            "choice": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "maybe": {"type": ["integer", "null"], "maximum": 9},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        },
    }
    operation = one(
        {
            "/things": {
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": schema}}},
                    "responses": {"200": {"description": "ok"}},
                }
            }
        }
    )
    grammar = operation.arguments_schema["properties"]["body"]["properties"]
    full = operation.validation_schema["properties"]["body"]["properties"]
    assert "minimum" not in grammar["lat"] and full["lat"]["minimum"] == -90
    assert grammar["ratio"]["maximum"] == 1  # whole, non-negative bounds stay
    assert "multipleOf" not in grammar["price"] and "minimum" not in grammar["price"]
    assert full["count"] == {"type": "integer", "exclusiveMinimum": 0}
    assert "pattern" not in grammar["code"] and full["code"]["pattern"] == "[A-Z]{3}"
    assert grammar["zip"]["pattern"] == "^[0-9]{4}$"
    assert "format" not in grammar["email"]
    assert grammar["short"]["type"] == "string"
    assert "anyOf" in grammar["choice"] and "oneOf" not in grammar["choice"]
    assert grammar["maybe"]["anyOf"][0] == {"type": "integer", "maximum": 9}
    compiles(operation.arguments_schema)
    jsonschema.Draft202012Validator.check_schema(operation.validation_schema)
    arguments = {"body": {"count": 1, "zip": "1234", "maybe": None, "short": "abc"}}
    jsonschema.validate(arguments, operation.validation_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"body": {"count": 0}}, operation.validation_schema)


def test_a_text_body_is_a_string() -> None:
    operation = one(
        {
            "/notes": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        }
    )
    assert operation.body_schema == {"type": "string"}
    assert operation.body_media_type == "text/plain"
    assert operation.arguments_schema["required"] == ["body"]


def test_grammar_schema_does_not_change_its_input() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}
    before = copy.deepcopy(schema)
    assert "multipleOf" not in grammar_schema(schema)["properties"]["n"]
    assert schema == before


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "pointer", "words"),
    [
        ({"swagger": "2.0", "paths": {}}, "/openapi", "OpenAPI 2"),
        ({"openapi": "3.0.0", "paths": []}, "/paths", "mapping"),
        ({"openapi": 3, "paths": {}}, "/openapi", "3.x"),
    ],
)
def test_a_document_that_is_not_openapi_3_is_refused(
    document: dict[str, Any], pointer: str, words: str
) -> None:
    with pytest.raises(OpenAPIError) as caught:
        load_operations(document, "api")
    assert caught.value.pointer == pointer
    assert words in str(caught.value)


def body_op(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "/items": {
            "post": {
                "requestBody": {"content": {"application/json": {"schema": schema}}},
                "responses": {"200": {"description": "ok"}},
            }
        }
    }


def test_a_recursive_schema_is_refused_with_the_cycle() -> None:
    components = {
        "schemas": {
            "Node": {
                "type": "object",
                "properties": {
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}
                },
            }
        }
    }
    with pytest.raises(OpenAPIError) as caught:
        load_operations(
            doc(body_op({"$ref": "#/components/schemas/Node"}), components=components), "api"
        )
    assert caught.value.pointer == "/components/schemas/Node/properties/children/items/$ref"
    assert "recursive" in caught.value.message
    assert "#/components/schemas/Node -> #/components/schemas/Node" in caught.value.message


def test_external_and_dangling_refs_are_refused() -> None:
    with pytest.raises(OpenAPIError, match=r"external reference 'other\.yaml#/X'") as caught:
        load_operations(doc(body_op({"$ref": "other.yaml#/X"})), "api")
    assert caught.value.pointer.endswith("/content/application~1json/schema/$ref")
    with pytest.raises(OpenAPIError, match="points at nothing"):
        load_operations(doc(body_op({"$ref": "#/components/schemas/Missing"})), "api")


def test_a_path_variable_without_a_parameter_is_refused() -> None:
    paths = {"/vacancies/{id}": {"get": {"responses": {"200": {"description": "ok"}}}}}
    with pytest.raises(OpenAPIError, match="path variable") as caught:
        load_operations(doc(paths), "api")
    assert caught.value.pointer == "/paths/~1vacancies~1{id}/get/parameters"


def test_a_duplicate_operation_id_is_refused() -> None:
    ok = {"operationId": "same", "responses": {"200": {"description": "ok"}}}
    with pytest.raises(OpenAPIError, match="GET /a and GET /b"):
        load_operations(doc({"/a": {"get": ok}, "/b": {"get": ok}}), "api")


def test_a_bad_parameter_points_at_itself() -> None:
    paths = {
        "/a": {
            "get": {
                "parameters": [
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    {"name": "s", "in": "body", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "ok"}},
            }
        }
    }
    with pytest.raises(OpenAPIError) as caught:
        load_operations(doc(paths), "api")
    assert caught.value.pointer == "/paths/~1a/get/parameters/1/in"
