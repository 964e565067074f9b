"""Short queries, measured: one-word searches for the most frequent nouns of a caption set.

People type "dog", not "a brown dog runs across the grass". For each of the ``n`` most frequent
nouns in the captions, the relevant images are those with at least one caption that uses the noun
(singular or plural); the query is the bare word, or the word in prompt templates whose
embeddings are averaged. Reported: mean precision@10 and mean average precision over the nouns.

Nouns are found with a lexicon (``lemminflect``): a word counts when the lexicon knows it as a
noun and not as an adjective (colours, "young", "front" drop out), it is not an -ing form, the
captions do not use it mostly as a verb, and it is no stop word. That is a heuristic, not a
parser; the chosen words are printed with the result.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from models.data import Pair
from models.encoder import Encoder
from models.evaluate import _unique_images, embed_image_files

# Templates tried for one-word queries. Measured on Flickr8k val with clipsearch-base they do not
# beat the bare word (models/MODEL_CARD.md), so search does not use them.
QUERY_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {} in the picture.")
SHORT_QUERY_WORDS = 2
WORD = re.compile(r"[a-z]+")
STOP = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "in",
        "on",
        "at",
        "to",
        "with",
        "from",
        "by",
        "for",
        "into",
        "over",
        "under",
        "near",
        "while",
        "one",
        "two",
        "three",
        "four",
        "five",
        "something",
        "someone",
        "other",
        "another",
        "each",
        "some",
        "his",
        "her",
        "their",
        "its",
        "this",
        "that",
        "it",
        "they",
        "he",
        "she",
        "them",
        "there",
        "here",
        "is",
        "are",
        "be",
        "very",
        "lot",
        "way",
        "down",
        "up",
        "out",
        "off",
        "back",
        "behind",
        "him",
        "area",
        "picture",
    }
)


def noun_lemma(word: str) -> str | None:
    """The singular of ``word`` if the lexicon calls it a noun (and not an adjective), else None."""
    from lemminflect import getAllLemmas

    if word in STOP or len(word) < 3 or word.endswith("ing"):
        return None
    lemmas = getAllLemmas(word)
    if "NOUN" not in lemmas or "ADJ" in lemmas:
        return None
    return lemmas["NOUN"][0]


def caption_counts(captions: Sequence[str]) -> tuple[Counter[str], Counter[str]]:
    """(nouns, words): how many captions use each noun (singular) and each word."""
    nouns: Counter[str] = Counter()
    words: Counter[str] = Counter()
    for caption in captions:
        tokens = set(WORD.findall(caption.lower()))
        words.update(tokens)
        nouns.update({lemma for w in tokens if (lemma := noun_lemma(w))})
    return nouns, words


def frequent_nouns(captions: Sequence[str], n: int = 50) -> list[str]:
    """The ``n`` nouns (singular) used by the most captions.

    A word whose -ing form the captions use at least a quarter as often ("jumping" against
    "jump"/"jumps") is taken for a verb there and left out.
    """
    from lemminflect import getInflection

    nouns, words = caption_counts(captions)
    kept = [
        w for w, uses in nouns.most_common()
        if 4 * sum(words[f] for f in getInflection(w, tag="VBG") or ()) <= uses
    ]  # fmt: skip
    return kept[:n]


def uses(
    captions: Sequence[str], image_of: Sequence[int], nouns: Sequence[str], n_images: int
) -> np.ndarray:
    """Boolean (nouns, images): image j has a caption (``captions[c]`` of image ``image_of[c]``)
    that uses noun i, singular or plural."""
    column = {w: i for i, w in enumerate(nouns)}
    rel = np.zeros((len(nouns), n_images), bool)
    for caption, image in zip(captions, image_of, strict=True):
        for word in set(WORD.findall(caption.lower())):
            i = column.get(noun_lemma(word) or "")
            if i is not None:
                rel[i, image] = True
    return rel


def relevance(pairs: Sequence[Pair], nouns: Sequence[str]) -> np.ndarray:
    """Boolean (nouns, images): image j has a caption using noun i; images in first-seen order."""
    items, image_of = _unique_images(pairs)
    return uses([p.text for p in pairs], image_of, nouns, len(items))


def ranking_metrics(scores: np.ndarray, rel: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean precision@k and mean average precision of each row's ranking of the images."""
    if scores.shape != rel.shape:
        raise ValueError(f"scores {scores.shape} and relevance {rel.shape} differ in shape")
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(rel, order, axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision_at * hits).sum(axis=1) / np.maximum(hits.sum(axis=1), 1)
    return {f"P@{k}": float(hits[:, :k].mean()), "mAP": float(ap.mean())}


def evaluate_keywords(
    encoder: Encoder,
    pairs: Sequence[Pair],
    n_words: int = 50,
    templates: Sequence[str] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict:
    """Precision@10 and mAP of one-word queries for the most frequent nouns of ``pairs``."""
    nouns = frequent_nouns([p.text for p in pairs], n_words)
    rel = relevance(pairs, nouns)
    items, _ = _unique_images(pairs)
    image_emb = embed_image_files(encoder, items, batch_size, num_workers, progress)
    bare = embed_queries(encoder.encode_texts, nouns, ("{}",)) @ image_emb.T
    prompted = embed_queries(encoder.encode_texts, nouns, templates) @ image_emb.T
    top10 = np.argsort(-bare, axis=1, kind="stable")[:, :10]  # as search embeds queries
    per_word = np.take_along_axis(rel, top10, axis=1).mean(axis=1)
    return {
        "bare": ranking_metrics(bare, rel),
        "templates": ranking_metrics(prompted, rel),
        "words": {w: round(float(p), 2) for w, p in zip(nouns, per_word, strict=True)},
        "n_images": len(items),
    }


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
