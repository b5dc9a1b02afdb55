"""Fakes for tests: this package's own tests and anyone building on Enclave.

Fakes, not mocks: they implement the real interfaces and behave like small,
predictable versions of the real thing.
"""
