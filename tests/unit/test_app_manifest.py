"""App files: errors with file, line and field; inlined files; canonical YAML and diffs."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from enclave.apps import spec as spec_module
from enclave.apps.manifest import (
    ManifestError,
    canonical,
    diff,
    find_app_files,
    load_app_file,
    load_app_paths,
    load_app_text,
    parse_app_document,
    to_yaml,
)

DATA = Path(__file__).parents[1] / "data" / "apps" / "manifests"
DOCS = Path(__file__).parents[2] / "docs" / "apps.md"
HR = (DATA / "hr.yaml").read_text()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A writable copy of the example app, its OpenAPI document and avatar."""
    shutil.copytree(DATA, tmp_path / "app")
    return tmp_path / "app"


def problems(text: str, base_dir: Path | None = DATA, **kwargs: int) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_app_text(text, "hr.yaml", base_dir, **kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def edit(old: str, new: str, text: str = HR) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- loading -----------------------------------------------------------------------


def test_the_example_loads_with_its_files_inlined() -> None:
    manifest = load_app_file(DATA / "hr.yaml")
    assert manifest.name == "hr-assistant"
    api = manifest.spec.apis[0]
    assert api.url == "http://hr.internal/api"
    assert isinstance(api.schema_, dict)
    assert api.schema_["info"]["title"] == "HR system"
    # YAML's `200:` is an int key; stored apps are JSON, so it is a string from the start.
    assert "200" in api.schema_["paths"]["/vacancies"]["get"]["responses"]
    avatar = manifest.metadata.avatar
    assert avatar is not None and avatar.startswith("data:image/png;base64,")
    assert base64.b64decode(avatar.split(",", 1)[1]) == (DATA / "hr.png").read_bytes()
    assert (
        manifest.spec.system_prompt
        == "You help HR staff. Be brief.\nNever guess a policy: cite it.\n"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "http://hr.internal/api/",
            "ftp://hr.internal",
            "hr.yaml, line 16: field 'spec.apis[0].url': "
            "must be an http:// or https:// URL with a host",
            id="bad-url",
        ),
        pytest.param(
            "      headers:",
            "      headrs:",
            "hr.yaml, line 18: field 'spec.apis[0].headrs': "
            "unknown field (did you mean 'headers'?)",
            id="unknown-field",
        ),
        pytest.param(
            "  knowledge: [hr-policies]",
            "  knowledge: [hr-policies]\n  colour: blue",
            "hr.yaml, line 14: field 'spec.colour': unknown field (expected one of: model, "
            "classification, system_prompt, knowledge, grounding, apis, mcps, tool_threshold, "
            "max_tool_calls, tests)",
            id="unknown-field-far-from-any",
        ),
        pytest.param(
            "kind: App\n",
            "",
            "hr.yaml, line 1: field 'kind': required, but missing",
            id="missing-kind",
        ),
        pytest.param(
            "        - prompt: What is the capital of France?\n          expect:",
            "        - expect:",
            "hr.yaml, line 24: field 'spec.tests[0].steps[0].prompt': "
            "a step needs exactly one of 'prompt' or 'confirm'",
            id="step-without-prompt-or-confirm",
        ),
        pytest.param(
            "        - prompt: What is the capital of France?",
            "        - prompt: What is the capital of France?\n          confirm: true",
            "hr.yaml, line 24: field 'spec.tests[0].steps[0].prompt': "
            "a step needs exactly one of 'prompt' or 'confirm'",
            id="step-with-both",
        ),
        pytest.param(
            "not_called: hr",
            "not_called: payroll",
            "hr.yaml, line 27: field 'spec.tests[0].steps[0].expect.not_called': "
            "no API named 'payroll' in spec.apis",
            id="unknown-api-in-a-test",
        ),
        pytest.param(
            "        hr:\n          GET /vacancies:",
            "        payroll:\n          GET /vacancies:",
            "hr.yaml, line 30: field 'spec.tests[1].fixtures.payroll': "
            "no API named 'payroll' in spec.apis",
            id="fixture-for-unknown-api",
        ),
        pytest.param(
            "GET /vacancies:",
            "vacancies:",
            "hr.yaml, line 31: field 'spec.tests[1].fixtures.hr.vacancies': "
            "fixture keys look like 'GET /path'",
            id="bad-fixture-key",
        ),
        pytest.param(
            "GET /vacancies:",
            "GET /vacancies:\n            status: 999",
            "hr.yaml, line 32: field 'spec.tests[1].fixtures.hr[\"GET /vacancies\"].status': "
            "Input should be less than or equal to 599",
            id="fixture-key-in-brackets",
        ),
        pytest.param(
            "./hr-openapi.yaml",
            "./missing.yaml",
            "hr.yaml, line 17: field 'spec.apis[0].schema': "
            "cannot read schema file './missing.yaml': No such file or directory",
            id="missing-schema-file",
        ),
        pytest.param(
            "./hr-openapi.yaml",
            "42",
            "hr.yaml, line 17: field 'spec.apis[0].schema': "
            "Input should be a valid dictionary or a valid string",
            id="schema-neither-mapping-nor-path",
        ),
        pytest.param(
            "      confirm:",
            "      operations: [fireEveryone]\n      confirm:",
            "hr.yaml, line 20: field 'spec.apis[0].operations': no operation matches "
            "'fireEveryone' (use an operationId or 'METHOD /path')",
            id="unknown-operation",
        ),
        pytest.param(
            "operation: listVacancies",
            "operation: listVacancy",
            "hr.yaml, line 36: field 'spec.tests[1].steps[0].expect.called[0].operation': "
            "API 'hr' offers no operation 'listVacancy' "
            "(it offers: listVacancies, applyForVacancy)",
            id="unknown-operation-in-a-test",
        ),
        pytest.param(
            "./hr.png",
            "./missing.png",
            "hr.yaml, line 6: field 'metadata.avatar': "
            "cannot read image file './missing.png': No such file or directory",
            id="missing-avatar",
        ),
        pytest.param(
            "knowledge: [hr-policies]",
            "knowledge: [hr-policies",
            "hr.yaml, line 14: invalid YAML: expected ',' or ']', but got ':'",
            id="invalid-yaml",
        ),
        pytest.param(
            "  tests:",
            "  model: other\n  tests:",
            "hr.yaml, line 21: invalid YAML: key 'model' repeats the one on line 8",
            id="repeated-key",
        ),
    ],
)
def test_each_problem_names_file_line_and_field(old: str, new: str, expected: str) -> None:
    assert problems(edit(old, new)) == [expected]


def test_a_recursive_alias_is_refused() -> None:
    assert problems(edit("  knowledge: [hr-policies]", "  knowledge: &k [hr-policies, *k]")) == [
        "hr.yaml, line 13: invalid YAML: an alias refers to a value that contains it"
    ]


def test_aliases_cannot_expand_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enclave.yaml_lines.MAX_VALUES", 100)
    text = edit("  knowledge: [hr-policies]", "  knowledge: &k [a, b, c, d, e, f, g, h, i, j]")
    text += "".join(f"x{n}: &x{n} [*{'k' if n == 0 else f'x{n - 1}'}, *k]\n" for n in range(20))
    assert problems(text)[0].endswith(
        "invalid YAML: more than 100 values once aliases are expanded"
    )


def test_every_problem_is_reported_at_once() -> None:
    text = edit("http://hr.internal/api/", "hr.internal", edit("./hr.png", "./missing.png"))
    text = edit("name: capital needs no API", "name: ''", text)
    assert problems(text) == [
        "hr.yaml, line 6: field 'metadata.avatar': "
        "cannot read image file './missing.png': No such file or directory",
        "hr.yaml, line 16: field 'spec.apis[0].url': "
        "must be an http:// or https:// URL with a host",
        "hr.yaml, line 22: field 'spec.tests[0].name': String should have at least 1 character",
    ]


def test_invalid_openapi_in_a_schema_file_names_both_lines(app_dir: Path) -> None:
    schema = app_dir / "hr-openapi.yaml"
    schema.write_text(schema.read_text().replace("in: query", "in: body"))
    with pytest.raises(ManifestError) as caught:
        load_app_file(app_dir / "hr.yaml")
    assert caught.value.problems == [
        f"{app_dir / 'hr.yaml'}, line 17: field 'spec.apis[0].schema': parameter 'department': "
        "'in' must be path, query, header or cookie "
        "(at /paths/~1vacancies/get/parameters/0/in, ./hr-openapi.yaml line 12)"
    ]


def test_invalid_openapi_inline_points_at_its_line() -> None:
    document = (DATA / "hr-openapi.yaml").read_text().replace("openapi: 3.0.3", "swagger: '2.0'")
    indented = "".join(f"        {line}\n" for line in document.splitlines())
    text = edit("      schema: ./hr-openapi.yaml\n", f"      schema:\n{indented}")
    assert problems(text) == [
        "hr.yaml, line 17: field 'spec.apis[0].schema': "
        "expected an OpenAPI 3.x document, found swagger: '2.0' (OpenAPI 2) (at /openapi)"
    ]
    broken = document.replace("swagger: '2.0'", "openapi: 3.0.3").replace("in: query", "in: body")
    indented = "".join(f"        {line}\n" for line in broken.splitlines())
    text = edit("      schema: ./hr-openapi.yaml\n", f"      schema:\n{indented}")
    assert problems(text) == [
        "hr.yaml, line 29: field 'spec.apis[0].schema': parameter 'department': "
        "'in' must be path, query, header or cookie (at /paths/~1vacancies/get/parameters/0/in)"
    ]


def test_a_schema_file_may_be_json(app_dir: Path) -> None:
    document = yaml.safe_load((app_dir / "hr-openapi.yaml").read_text())
    (app_dir / "hr-openapi.json").write_text(json.dumps(document))
    path = app_dir / "hr.yaml"
    path.write_text(edit("./hr-openapi.yaml", "hr-openapi.json"))
    schema = load_app_file(path).spec.apis[0].schema_
    assert isinstance(schema, dict)
    assert schema["paths"].keys() == {"/vacancies", "/vacancies/{id}/applications"}


def test_a_schema_file_that_is_not_yaml(app_dir: Path) -> None:
    (app_dir / "hr-openapi.yaml").write_text("openapi: [3.0\n")
    with pytest.raises(ManifestError, match=r"line 17: field 'spec.apis\[0\].schema': "):
        load_app_file(app_dir / "hr.yaml")
    with pytest.raises(ManifestError, match=r"\./hr-openapi\.yaml, line 2: invalid YAML"):
        load_app_file(app_dir / "hr.yaml")


def test_avatars_are_checked(app_dir: Path) -> None:
    assert problems(HR, app_dir, max_avatar_bytes=10) == [
        "hr.yaml, line 6: field 'metadata.avatar': './hr.png' is 69 bytes; the limit is 10 bytes"
    ]
    (app_dir / "hr.bmp").write_bytes(b"BM")
    assert problems(edit("./hr.png", "./hr.bmp"), app_dir) == [
        "hr.yaml, line 6: field 'metadata.avatar': "
        "'./hr.bmp' is not a supported image (use .png, .jpg, .gif, .webp or .svg)"
    ]
    (app_dir / "fake.png").write_text("<html>")
    assert problems(edit("./hr.png", "./fake.png"), app_dir) == [
        "hr.yaml, line 6: field 'metadata.avatar': './fake.png' does not look like a PNG image"
    ]
    (app_dir / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    avatar = load_app_text(edit("./hr.png", "logo.svg"), "hr.yaml", app_dir).metadata.avatar
    assert avatar is not None and avatar.startswith("data:image/svg+xml;base64,")
    assert problems(edit("./hr.png", "'data:text/html;base64,AAAA'")) == [
        "hr.yaml, line 6: field 'metadata.avatar': "
        "a data: URI must be data:image/(png|jpeg|gif|webp|svg+xml);base64,..."
    ]


def test_text_without_a_directory_must_inline_its_files() -> None:
    assert problems(HR, base_dir=None) == [
        "hr.yaml, line 17: field 'spec.apis[0].schema': './hr-openapi.yaml' is a file path, "
        "but there is no app file directory to resolve it against: inline it as an OpenAPI "
        "document",
        "hr.yaml, line 6: field 'metadata.avatar': './hr.png' is a file path, but there is no "
        "app file directory to resolve it against: inline it as a data: URI",
    ]


def test_a_request_body_must_be_inline_and_errors_have_no_lines() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_app_document(yaml.safe_load(HR))
    assert caught.value.problems == [
        "request: field 'spec.apis[0].schema': "
        "must be inline as an OpenAPI document (enclave apply inlines files)",
        "request: field 'metadata.avatar': "
        "must be inline as a data: URI (enclave apply inlines files)",
    ]
    document = canonical(load_app_file(DATA / "hr.yaml"))
    assert canonical(parse_app_document(document)) == document
    document["spec"]["apis"][0]["url"] = "hr.internal"
    with pytest.raises(ManifestError) as caught:
        parse_app_document(document, source="PUT /api/apps/hr-assistant")
    assert caught.value.problems == [
        "PUT /api/apps/hr-assistant: field 'spec.apis[0].url': "
        "must be an http:// or https:// URL with a host"
    ]
    with pytest.raises(ManifestError, match="an app is a mapping"):
        parse_app_document(["not", "an", "app"])


# -- canonical form, YAML and diffs ---------------------------------------------


def test_canonical_survives_yaml_round_trips() -> None:
    text = edit(
        "  system_prompt: |\n",
        "  system_prompt: |\n    Ünïcode stays: 東京, «quotes» and 'single' ones.\n"
        "    Lines: with colons, # not a comment, - not a list\n\n    After a blank line.\n",
    )
    text = edit(
        "  knowledge: [hr-policies]", "  knowledge: [hr-policies, 'yes', '123', 'null']", text
    )
    first = canonical(load_app_text(text, "hr.yaml", DATA))
    rendered = to_yaml(first)
    assert "system_prompt: |\n" in rendered
    assert "東京" in rendered
    second = canonical(load_app_text(rendered, "export.yaml", None))
    assert second == first
    assert to_yaml(second) == rendered
    assert list(first) == ["apiVersion", "kind", "metadata", "spec"]


def test_same_meaning_same_canonical_form() -> None:
    spelled_out = HR
    for old, new in [
        (
            "      confirm: [DELETE, POST, PUT, PATCH]",
            "      confirm: [POST, PUT, PATCH, DELETE, POST]",
        ),
        ("url: http://hr.internal/api/", "url: http://hr.internal/api"),
        ("contains: Paris", "contains: [Paris]"),
        ("not_called: hr", "not_called: [{api: hr, operation: null}]"),
        ("  apis:\n", "  grounding: {when_not_found: abstain}\n  tool_threshold: null\n  apis:\n"),
    ]:
        spelled_out = edit(old, new, spelled_out)
    shortest = edit("      confirm: [DELETE, POST, PUT, PATCH]\n", "")
    shortest = edit("  model: default\n", "", shortest)
    first = canonical(load_app_text(spelled_out, "a.yaml", DATA))
    assert first == canonical(load_app_text(shortest, "b.yaml", DATA))
    assert "confirm" not in first["spec"]["apis"][0]
    assert "model" not in first["spec"] and "grounding" not in first["spec"]
    assert first["spec"]["tests"][0]["steps"][0]["expect"] == {
        "contains": ["Paris"],
        "not_called": [{"api": "hr"}],
    }
    fewer = edit("      confirm: [DELETE, POST, PUT, PATCH]", "      confirm: [DELETE]")
    assert canonical(load_app_text(fewer, "c.yaml", DATA))["spec"]["apis"][0]["confirm"] == [
        "DELETE"
    ]


def test_canonical_keeps_the_required_keys() -> None:
    minimal = "apiVersion: enclave/v1\nkind: App\nmetadata: {name: tiny}\nspec: {model: default}\n"
    assert canonical(load_app_text(minimal, "tiny.yaml", None)) == {
        "apiVersion": "enclave/v1",
        "kind": "App",
        "metadata": {"name": "tiny"},
        "spec": {},
    }


def test_to_yaml_is_block_style_without_anchors() -> None:
    shared = {"type": "string"}
    text = to_yaml({"b": [shared, shared], "a": "one\ntwo", "c": {}})
    assert text == "b:\n  - type: string\n  - type: string\na: |-\n  one\n  two\nc: {}\n"
    # YAML 1.1 reads NEL and the Unicode separators as line breaks unless they are escaped.
    awkward = {"s": "one\x85two\u2028three\r\nfour", "t": "yes", "u": "  lead\ntrail  \n"}
    assert yaml.safe_load(to_yaml(awkward)) == awkward


def test_diff() -> None:
    old = canonical(load_app_file(DATA / "hr.yaml"))
    assert diff(old, old, "hr-assistant") == ""
    new = json.loads(json.dumps(old))
    new["spec"]["system_prompt"] = "You help HR staff.\n"
    changes = diff(old, new, "hr-assistant")
    assert changes.startswith("--- hr-assistant (current)\n+++ hr-assistant (new)\n")
    removed = [line for line in changes.splitlines() if line.startswith("-") and line[1:2] != "-"]
    added = [line for line in changes.splitlines() if line.startswith("+") and line[1:2] != "+"]
    assert removed == ["-    You help HR staff. Be brief.", "-    Never guess a policy: cite it."]
    assert added == ["+    You help HR staff."]
    created = diff(None, old, "hr-assistant").splitlines()
    assert created[0] == "--- /dev/null"
    assert all(line.startswith("+") for line in created[3:])
    assert len(created) - 3 == len(to_yaml(old).splitlines())


# -- finding app files ----------------------------------------------------------------


def test_find_app_files(tmp_path: Path) -> None:
    app = "apiVersion: enclave/v1\nkind: App\nmetadata: {name: NAME}\nspec: {}\n"
    (tmp_path / "b.yaml").write_text(app.replace("NAME", "b"))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "a.yml").write_text(app.replace("NAME", "a"))
    (tmp_path / "nested" / "openapi.yaml").write_text("openapi: 3.0.3\npaths: {}\n")
    (tmp_path / "broken.yaml").write_text("kind: App\nmetadata: [\n")
    (tmp_path / "notes.txt").write_text(app)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.yaml").write_text(app.replace("NAME", "c"))
    assert find_app_files(tmp_path) == [
        tmp_path / "b.yaml",
        tmp_path / "broken.yaml",
        tmp_path / "nested" / "a.yml",
    ]
    assert find_app_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert find_app_files(DATA) == [DATA / "hr.yaml"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no app files"):
        find_app_files(tmp_path / "empty")
    with pytest.raises(ManifestError, match="no such file or folder"):
        find_app_files(tmp_path / "missing")


def test_load_app_paths_loads_each_file_once_and_collects_every_problem(tmp_path: Path) -> None:
    app = "apiVersion: enclave/v1\nkind: App\nmetadata: {name: NAME}\nspec: {}\n"
    (tmp_path / "a.yaml").write_text(app.replace("NAME", "a"))
    (tmp_path / "b.yaml").write_text(app.replace("NAME", "b"))
    (tmp_path / "broken.yaml").write_text("kind: App\nmetadata: [\n")
    apps, found = load_app_paths([tmp_path / "b.yaml", tmp_path, tmp_path / "missing"])
    assert [(path.name, manifest.name) for path, manifest in apps] == [
        ("b.yaml", "b"),
        ("a.yaml", "a"),
    ]
    assert len(found) == 2
    assert "no such file or folder" in found[0]  # paths first, then files
    assert found[1].startswith(str(tmp_path / "broken.yaml"))
    assert load_app_paths([DATA / "hr.yaml"])[1] == []


def test_an_unreadable_app_file() -> None:
    with pytest.raises(ManifestError, match="cannot read the file: No such file or directory"):
        load_app_file(DATA / "missing.yaml")


# -- documentation ------------------------------------------------------------------


# Which section of docs/apps.md documents each spec model.
SECTIONS = {
    "AppManifest": "Top level",
    "Metadata": "`metadata`",
    "AppBody": "`spec`",
    "Grounding": "`spec.grounding`",
    "ApiSpec": "`spec.apis[]`",
    "ApiAuth": "`spec.apis[].auth`",
    "TokenExchange": "`spec.apis[].auth.token_exchange`",
    "McpSpec": "`spec.mcps[]`",
    "McpToolFilter": "`spec.mcps[].tools`",
    "AppTest": "`spec.tests[]`",
    "FixtureResponse": "Fixture responses",
    "Step": "`spec.tests[].steps[]`",
    "Expectation": "`spec.tests[].steps[].expect`",
    "CallExpectation": "Calls in `called`, `not_called` and `pending`",
}


def doc_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    for block in re.split(r"^### ", DOCS.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[heading.strip()] = body.split("\n## ", 1)[0]
    return sections


def test_every_spec_field_is_documented() -> None:
    models = {
        name: value
        for name, value in vars(spec_module).items()
        if isinstance(value, type)
        and issubclass(value, spec_module.SpecModel)
        and value is not spec_module.SpecModel
    }
    assert models.keys() == SECTIONS.keys(), "a new spec model needs a section in docs/apps.md"
    sections = doc_sections()
    missing = []
    for name, model in models.items():
        table = sections.get(SECTIONS[name], "")
        for field_name, field in model.model_fields.items():
            if f"| `{field.alias or field_name}` |" not in table:
                missing.append(f"{SECTIONS[name]}: {field.alias or field_name}")
    assert not missing, f"document these in docs/apps.md: {missing}"


def test_the_documented_example_is_valid() -> None:
    text = DOCS.read_text()
    example = re.search(r"```yaml\n(# hr-assistant.yaml\n.*?)```", text, re.DOTALL)
    assert example is not None
    # The OpenAPI document of the HR system the tests use stands in for ./hr-openapi.yaml.
    manifest = load_app_text(example.group(1), "hr-assistant.yaml", DATA.parent)
    assert manifest.name == "hr-assistant"
    assert [test.name for test in manifest.spec.tests] == [
        "capital needs no API",
        "vacancies call the API",
    ]
    assert manifest.spec.tests[1].steps[0].expect.judge
