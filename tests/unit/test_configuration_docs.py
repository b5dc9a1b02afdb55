"""Every settings field is documented in docs/configuration.md's reference table."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from enclave.settings import Settings

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def nested_model(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """The settings model inside an annotation, and whether it sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    for argument in typing.get_args(annotation):
        model, _ = nested_model(argument)
        if model is not None:
            return model, origin is list
    return None, False


def dotted_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        dotted = prefix + name
        names.append(dotted)
        inner, is_list = nested_model(field.annotation)
        if inner is not None:
            names.extend(dotted_fields(inner, dotted + ("[]." if is_list else ".")))
    return names


def test_every_field_has_a_row_in_the_reference_table() -> None:
    text = DOCS.read_text()
    fields = dotted_fields(Settings)
    assert "runner.slots" in fields and "providers[].models[].n_ctx" in fields
    missing = [name for name in fields if f"| `{name}` |" not in text]
    assert not missing, f"document these in docs/configuration.md: {missing}"
