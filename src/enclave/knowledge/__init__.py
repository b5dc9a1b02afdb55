"""Knowledge: documents in, grounded and cited answers out.

- :mod:`.extract` turns a file (PDF, DOCX, HTML, Markdown, text, CSV, JSON)
  into Markdown that keeps its headings and page numbers; :mod:`.fetch`
  downloads URLs behind an SSRF guard.
- :mod:`.chunking` cuts Markdown along its structure into chunks that know
  where they came from.
- :mod:`.store` keeps chunks, BM25 and vectors (SQLite + sqlite-vec, or
  Postgres + pgvector) behind one :class:`~.store.base.VectorStore`.
- :mod:`.retrieval` fuses BM25 and dense search and applies the threshold.
- :mod:`.jobs` runs ingestion as durable, resumable background jobs.
- :mod:`.service` owns knowledge bases and documents per workspace.
- :mod:`.grounding` answers chat requests from retrieved passages: it cites,
  shows disagreement or abstains, all checked in code.
"""
