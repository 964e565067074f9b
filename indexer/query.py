"""Query algebra: weighted sums of texts and images, parsed once here for the CLI, REST and page.

Grammar (a query is an *expression* when it holds a double quote or starts with ``#`` or
``image:``; anything else is one plain text, searched as written)::

    expression := ["+" | "-"] term (("+" | "-") term)*
    term       := [weight ":"] atom
    weight     := a positive number: 2, 0.5, .25, 1e-1
    atom       := "text in double quotes"        (\\" for a quote inside)
                | #ID                            an item already in the index, by id
                | image:PATH | image:"PATH"      an image file (indexed or not)

    "beach" + "sunset" - 0.5:"people"      #42 + "at night"      image:"~/a b.jpg" - "blurry"

Each term is embedded (texts by the text encoder; indexed items by their stored vector, so ``#ID``
needs no model; other files by the image encoder), scaled by its signed weight, summed, and the
sum normalised: the search vector. Images a query names are left out of its results.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from indexer import refine
from indexer.errors import QueryError

if TYPE_CHECKING:
    import numpy as np

    from indexer.index import Index
    from indexer.results import Hit

_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_ID = re.compile(r"#(\d+)")
_BARE_PATH = re.compile(r"[^\s\"+]+")
MAX_TERMS = 16


@dataclass(frozen=True)
class Term:
    """One signed, weighted term: exactly one of ``text``, ``path`` or ``id`` is set."""

    weight: float
    text: str | None = None
    path: str | None = None
    id: int | None = None

    def describe(self) -> str:
        if self.text is not None:
            atom = '"' + self.text.replace('"', '\\"') + '"'
        elif self.path is not None:
            atom = 'image:"' + self.path.replace('"', '\\"') + '"'
        else:
            atom = f"#{self.id}"
        size = abs(self.weight)
        return atom if size == 1 else f"{size:g}:{atom}"


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]

    @property
    def plain_text(self) -> str | None:
        """The text, when the query is one text with weight 1 (the common, batchable case)."""
        if len(self.terms) == 1 and self.terms[0].text is not None and self.terms[0].weight == 1:
            return self.terms[0].text
        return None

    def with_absolute_paths(self) -> Query:
        """The same query with ``image:`` paths made absolute (``~`` expanded), to send on."""
        return Query(
            tuple(
                replace(t, path=os.path.abspath(os.path.expanduser(t.path))) if t.path else t
                for t in self.terms
            )
        )

    def describe(self) -> str:
        """The canonical form, e.g. ``"beach" + "sunset" - 0.5:"people"``."""
        out = ""
        for i, t in enumerate(self.terms):
            sign = "-" if t.weight < 0 else "+"
            out += (f" {sign} " if i else ("-" if sign == "-" else "")) + t.describe()
        return out


def is_expression(query: str) -> bool:
    stripped = query.lstrip()
    return '"' in query or stripped.startswith(("#", "image:"))


def parse_query(query: str) -> Query:
    """Parse ``query`` (see the module's grammar); a mistake raises ``QueryError`` saying where."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty: give some words to search for")
    if not is_expression(query):
        return Query((Term(1.0, text=" ".join(query.split())),))
    return _Parser(query).parse()


class _Parser:
    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0

    def fail(self, what: str) -> QueryError:
        near = self.s[self.i : self.i + 12] or "the end"
        return QueryError(
            f"bad query at character {self.i + 1} (near {near!r}): {what}. Example: "
            '"beach" + "sunset" - 0.5:"people"'
        )

    def skip_space(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def parse(self) -> Query:
        terms: list[Term] = []
        self.skip_space()
        sign = 1.0
        if self.i < len(self.s) and self.s[self.i] in "+-":
            sign = -1.0 if self.s[self.i] == "-" else 1.0
            self.i += 1
        while True:
            terms.append(self.term(sign))
            if len(terms) > MAX_TERMS:
                raise self.fail(f"at most {MAX_TERMS} terms")
            self.skip_space()
            if self.i == len(self.s):
                return Query(tuple(terms))
            if self.s[self.i] not in "+-":
                raise self.fail('expected "+" or "-" between terms (texts go in double quotes)')
            sign = -1.0 if self.s[self.i] == "-" else 1.0
            self.i += 1

    def term(self, sign: float) -> Term:
        self.skip_space()
        weight = 1.0
        m = _NUMBER.match(self.s, self.i)
        if m and self.s.startswith(":", m.end()):
            weight = float(m.group(0))
            if not math.isfinite(weight) or weight <= 0:
                raise self.fail("a weight must be a positive number")
            self.i = m.end() + 1
        if self.s.startswith('"', self.i):
            text = " ".join(self.string().split())
            if not text:
                raise self.fail("an empty text")
            return Term(sign * weight, text=text)
        m = _ID.match(self.s, self.i)
        if m:
            self.i = m.end()
            return Term(sign * weight, id=int(m.group(1)))
        if self.s.startswith("image:", self.i):
            self.i += len("image:")
            if self.s.startswith('"', self.i):
                path = self.string()
            else:
                pm = _BARE_PATH.match(self.s, self.i)
                if not pm:
                    raise self.fail("image: needs a path")
                path, self.i = pm.group(0), pm.end()
            if not path.strip():
                raise self.fail("image: needs a path")
            return Term(sign * weight, path=path)
        raise self.fail('expected a "text", #ID or image:PATH')

    def string(self) -> str:
        self.i += 1  # the opening quote
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.s.startswith('"', self.i + 1):
                out.append('"')
                self.i += 2
                continue
            if c == '"':
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        raise self.fail("a text is missing its closing double quote")


def embed_query(index: Index, query: Query, files: bool = True) -> tuple[np.ndarray, set[int]]:
    """The unit search vector of ``query`` and the ids of the indexed images it names.

    ``files=False`` (a server) refuses ``image:PATH`` terms that are not indexed images, so a
    client cannot make the server read files of its choosing.
    """
    import numpy as np

    vectors: list[np.ndarray] = [np.zeros(index.dim, np.float32)] * len(query.terms)
    named: set[int] = set()
    texts = [(i, t.text) for i, t in enumerate(query.terms) if t.text is not None]
    if texts:
        embedded = index.embed_texts([t for _, t in texts])
        for (i, _), v in zip(texts, embedded, strict=True):
            vectors[i] = v
    for i, t in enumerate(query.terms):
        if t.id is not None:
            vectors[i] = _stored(index, t.id)
            named.add(t.id)
        elif t.path is not None:
            path = os.path.abspath(os.path.expanduser(t.path))
            indexed = _indexed_id(index, path)
            if indexed is not None:
                vectors[i] = _stored(index, indexed)
                named.add(indexed)
            elif files:
                vectors[i] = index.embed_image(path)
            else:
                raise QueryError(
                    f"image:{t.path} is not an indexed image; here only images in the index can "
                    "be named (image:PATH of an indexed file, or #ID)"
                )
    total = sum(t.weight * v for t, v in zip(query.terms, vectors, strict=True))
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError(f"the terms of {query.describe()} cancel out: nothing is left to search")
    return (total / norm).astype(np.float32), named


def _indexed_id(index: Index, path: str) -> int | None:
    for item_id in index.catalog.ids_with_prefix(path):
        hit = index.get(int(item_id))
        if hit is not None and hit.path == path:
            return int(item_id)
    return None


def _stored(index: Index, item_id: int) -> np.ndarray:
    hit = index.get(item_id)
    if hit is None:
        raise QueryError(f"#{item_id}: no item with that id in the index")
    _, vectors = index.catalog.vectors(hit.kind, [item_id])
    return vectors[0]


def search(
    index: Index,
    query: str | Query,
    k: int = 10,
    target: str = "images",
    path_prefix: str | None = None,
    files: bool = True,
    min_score: float | None = None,
    min_relative: float | None = None,
    taken: refine.TakenRange | None = None,
) -> list[Hit]:
    """Search with a query expression (or plain text): named images left out, copies collapsed,
    then the optional cutoff (``refine.apply_cutoff``)."""
    from models import hubness  # numpy: not at import (clipsearch --help imports this module)

    parsed = parse_query(query) if isinstance(query, str) else query
    vector, named = embed_query(index, parsed, files)
    text = parsed.plain_text
    specific = text is not None and hubness.specific(text)
    hits = refine.search_clean(
        index, vector, k, target, path_prefix, exclude=named, taken=taken, specific=specific
    )
    return refine.apply_cutoff(hits, min_score, min_relative)
