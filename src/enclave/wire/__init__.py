"""The OpenAI wire package: request models and response shapes of the OpenAI API.

The domain (gateway, knowledge, apps, chat) depends on this package, never on
the HTTP layer in :mod:`enclave.api`, which only parses requests into these
models and sends what the domain returns.
"""
