"""The domain never imports the HTTP layer: read every module's imports, no import needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "enclave"
DOMAIN = ("gateway", "knowledge", "apps", "chat", "providers", "runners", "wire", "mcp")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", DOMAIN)
def test_the_domain_never_imports_the_http_layer(package: str) -> None:
    offenders = {
        str(path.relative_to(SRC)): sorted(
            name for name in imported_modules(path) if name.split(".")[:2] == ["enclave", "api"]
        )
        for path in sorted((SRC / package).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_check_sees_an_import_of_the_http_layer(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from enclave.api.deps import Services\nimport enclave.api.errors\n")
    assert imported_modules(module) == {"enclave.api.deps", "enclave.api.errors"}
