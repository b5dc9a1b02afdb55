"""Checks every store makes on the vectors it is given."""

from __future__ import annotations

from typing import Any

import numpy as np


def unit_rows(vectors: Any, rows: int, dimension: int) -> np.ndarray:
    """``vectors`` as C-contiguous unit-length float32 rows, or ``ValueError``.

    Callers pass unit-length embeddings; normalising again costs little and
    makes the inner product a cosine in every backend. Zero rows stay zero.
    """
    matrix = np.asarray(vectors, dtype=np.float32)
    if rows == 0 and matrix.size == 0:
        return matrix.reshape(0, dimension)
    if matrix.shape != (rows, dimension):
        raise ValueError(
            f"expected {rows} vectors of dimension {dimension}, got shape {matrix.shape}"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.where(norms > 0, norms, 1))


def unit_vector(vector: Any, dimension: int) -> np.ndarray:
    """One query vector, checked and normalised like :func:`unit_rows`."""
    return unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), 1, dimension)[0]


def dimension_mismatch(stored: int, configured: int) -> ValueError:
    """The error for a store reopened with another embedding model."""
    return ValueError(
        f"the knowledge store holds {stored}-dimensional vectors; the configured embedding "
        f"model gives {configured}. Re-create the knowledge bases or use the previous model."
    )
