"""The structured outputs every client test asks for: flat (City) and nested (Person)."""

from __future__ import annotations

from pydantic import BaseModel


class City(BaseModel):
    name: str
    population: int


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    address: Address
