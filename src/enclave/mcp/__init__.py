"""Enclave's side of the Model Context Protocol that is not HTTP: what ``/mcp`` offers."""
