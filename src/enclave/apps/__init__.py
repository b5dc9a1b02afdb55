"""Declarative apps: YAML assistants with knowledge, OpenAPI tools and tests.

* :mod:`.spec`: the App spec as pydantic models (shape and cross-references).
* :mod:`.manifest`: app files in and out: line-numbered errors, inlined
  ``schema``/``avatar`` files, the canonical YAML form and diffs.
* :mod:`.openapi`: OpenAPI 3.x operations as tools with JSON-schema arguments.
* :mod:`.calls`: one API call: URL, headers and secrets, timeout, size cap.
* :mod:`.service`: stored apps, versions, rollback and drafts.
* :mod:`.runner`: serving ``app/<name>`` on ``/v1/chat/completions``: routing
  to tools, grammar-constrained decisions, confirmation, grounding.
* :mod:`.actions`: pending actions that wait for the user's confirmation.
* :mod:`.evals`: ``enclave test``: fixtures, assertions, judge, reports.
"""
