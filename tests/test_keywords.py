"""One-word query evaluation: noun choice, relevance and ranking metrics on hand-made data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data import Pair
from models.keywords import frequent_nouns, noun_lemma, ranking_metrics, relevance


def test_nouns_are_singular_and_leave_out_adjectives_verbs_and_stop_words() -> None:
    assert noun_lemma("dogs") == "dog"
    assert noun_lemma("men") == "man"
    assert noun_lemma("white") is None  # also an adjective
    assert noun_lemma("running") is None
    assert noun_lemma("the") is None
    captions = ["Two dogs on the grass", "A dog in the water", "A man and a dog", "men"]
    assert frequent_nouns(captions, 3) == ["dog", "man", "grass"]
    # "run" is mostly a verb here ("running"): left out although it also names a thing.
    verbs = ["A dog running", "A boy running", "A long run", "A dog on the run"]
    assert "run" not in frequent_nouns(verbs, 5) and "dog" in frequent_nouns(verbs, 5)


def test_relevance_matches_singular_and_plural() -> None:
    pairs = [
        Pair(Path("a.jpg"), "A dog on grass", 2),
        Pair(Path("a.jpg"), "Two dogs", 3),
        Pair(Path("b.jpg"), "Men on a bench", 4),
        Pair(Path("c.jpg"), "A man with dogs", 5),
    ]
    rel = relevance(pairs, ["dog", "man"])
    assert rel.tolist() == [[True, False, True], [False, True, True]]


def test_ranking_metrics_by_hand() -> None:
    rel = np.array([[True, False, True, False], [False, False, False, True]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1]])
    result = ranking_metrics(scores, rel, k=2)
    # Row 0 ranks relevant items 1st and 3rd: P@2 = 1/2, AP = (1 + 2/3) / 2.
    # Row 1 ranks its only relevant item last: P@2 = 0, AP = 1/4.
    assert result["P@2"] == pytest.approx(0.25)
    assert result["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        ranking_metrics(scores[:1], rel)


def test_short_queries_are_the_mean_of_their_templates() -> None:
    from models.keywords import embed_queries

    def embed(texts: list[str]) -> np.ndarray:
        # A stand-in text tower: one-hot rows by text, so means are easy to check.
        vocab = sorted(set(texts))
        return np.eye(len(vocab), dtype=np.float32)[[vocab.index(t) for t in texts]]

    out = embed_queries(embed, ["dog", "a dog runs on the grass"], ("a {}.", "the {}."))
    assert out.shape[0] == 2
    assert np.count_nonzero(out[0]) == 2  # "a dog." and "the dog."
    assert np.allclose(out[0][out[0] > 0], 1 / np.sqrt(2))
    assert np.count_nonzero(out[1]) == 1  # long query: itself only
    with pytest.raises(ValueError, match="needs a"):
        embed_queries(embed, ["dog"], ("no slot",))
