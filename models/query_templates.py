"""Prompt templates for short search queries, shared by every text-query path (torch-free).

A caption-trained text tower reads "dog" better inside a sentence: a query of at most
``SHORT_QUERY_WORDS`` words is embedded through each of ``QUERY_TEMPLATES`` and the normalised
mean is its vector. Measured on Flickr8k val one-word queries (models/MODEL_CARD.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

QUERY_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {} in the picture.")
SHORT_QUERY_WORDS = 2


def embed_queries(
    embed: Callable[[list[str]], np.ndarray],
    queries: Sequence[str],
    templates: Sequence[str] | None = None,
) -> np.ndarray:
    """``embed`` (texts -> rows) applied to queries, short ones through ``templates``, averaged.

    ``templates=("{}",)`` turns the expansion off. Rows come back L2-normalised, float32.
    """
    templates = tuple(templates or QUERY_TEMPLATES)
    if any("{}" not in t for t in templates):
        raise ValueError("every query template needs a '{}' for the query")
    expanded: list[str] = []
    owner: list[int] = []
    for i, query in enumerate(queries):
        query = query.strip()
        forms = (
            [t.format(query) for t in templates]
            if len(query.split()) <= SHORT_QUERY_WORDS
            else [query]
        )
        expanded += forms
        owner += [i] * len(forms)
    emb = np.asarray(embed(expanded), np.float32)
    out = np.zeros((len(queries), emb.shape[1] if emb.ndim == 2 else 0), np.float32)
    np.add.at(out, np.asarray(owner, np.int64), emb)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12)
