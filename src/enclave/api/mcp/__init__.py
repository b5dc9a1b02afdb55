"""``/mcp``: Enclave as an MCP server."""
