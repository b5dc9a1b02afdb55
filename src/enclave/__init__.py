"""Enclave: a sovereign, self-hosted AI platform behind one OpenAI-compatible gateway."""

__version__ = "0.1.0"
