"""Pydantic models nested three levels deep, with enums and optional fields: the
shapes openai ``.parse()``, instructor and pydantic-ai send as ``$defs``/``$ref``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Priority(StrEnum):
    low = "low"
    high = "high"


class Kind(StrEnum):
    home = "home"
    work = "work"


class Street(BaseModel):
    name: str = Field(max_length=16)
    number: int = Field(ge=1, le=999)


class Address(BaseModel):
    street: Street
    city: str = Field(max_length=16)
    kind: Kind | None = None


class Person(BaseModel):
    name: str = Field(max_length=16)
    priority: Priority
    address: Address
    nickname: str | None = Field(default=None, max_length=8)


class Shipment(BaseModel):
    """A second tool's schema with its own ``Address`` definition (the names collide)."""

    class Address(BaseModel):
        postcode: str = Field(max_length=8)

    to: Address
    express: bool


PERSON = Person(
    name="Ada",
    priority=Priority.high,
    address=Address(street=Street(name="Main", number=12), city="Oslo"),
).model_dump(mode="json")
