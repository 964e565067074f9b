"""Query algebra (``indexer.query``): one grammar, parsed once, for the CLI, REST and the page;
and clean results (the query's own image left out, byte-identical files collapsed)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_app_support import app_for, build_index

from indexer import Index, QueryError
from indexer.query import Query, Term, embed_query, parse_query, search


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("a dog on the beach", [Term(1.0, text="a dog on the beach")]),
        ("  a  dog\t", [Term(1.0, text="a dog")]),
        ('"beach" + "sunset" - 0.5:"people"',
         [Term(1.0, text="beach"), Term(1.0, text="sunset"), Term(-0.5, text="people")]),
        ('-"indoor"', [Term(-1.0, text="indoor")]),
        ('#42 + 2:"at night"', [Term(1.0, id=42), Term(2.0, text="at night")]),
        ('image:~/a.jpg - .25:"blurry"', [Term(1.0, path="~/a.jpg"), Term(-0.25, text="blurry")]),
        ('image:"/x/a b.jpg"', [Term(1.0, path="/x/a b.jpg")]),
        ('"say \\"cheese\\""', [Term(1.0, text='say "cheese"')]),
        ("a child's toy", [Term(1.0, text="a child's toy")]),
    ],
)  # fmt: skip
def test_parse(text: str, terms: list[Term]) -> None:
    query = parse_query(text)
    assert list(query.terms) == terms
    assert parse_query(query.describe()) == query or query.plain_text is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('"beach" "sunset"', 'expected "+" or "-" between terms'),
        ('"beach" + sunset', 'expected a "text", #ID or image:PATH'),
        ('"beach', "missing its closing double quote"),
        ('0:"beach"', "positive number"),
        ('"beach" +', "near 'the end'"),
        ('""', "an empty text"),
        ("image:", "needs a path"),
        (" + ".join(['"a"'] * 20), "at most 16 terms"),
    ],
)
def test_bad_expressions_say_where(text: str, message: str) -> None:
    with pytest.raises(QueryError) as e:
        parse_query(text)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("query")
    idx = build_index(root, n=8)
    copy = root / "images" / "copy" / "same.png"
    copy.parent.mkdir()
    shutil.copy(sorted((root / "images").glob("0000_*.png"))[0], copy)
    idx.add_images([root / "images"])
    yield idx
    idx.close()


def test_weighted_sum_is_the_search_vector(index: Index) -> None:
    texts = index.embed_texts(["red", "circle", "blue"])
    vector, named = embed_query(index, parse_query('"red" + 2:"circle" - 0.5:"blue"'))
    expected = texts[0] + 2 * texts[1] - 0.5 * texts[2]
    assert np.allclose(vector, expected / np.linalg.norm(expected), atol=1e-5)
    assert named == set()
    with pytest.raises(QueryError, match="cancel out"):
        embed_query(index, parse_query('"red" - "red"'))
    with pytest.raises(QueryError, match="#999999: no item"):
        embed_query(index, parse_query("#999999"))


def test_similar_images_leave_the_query_image_out(index: Index) -> None:
    first = index.search_text("a red circle", k=1)[0]
    for query in (f"#{first.id}", f'image:"{first.path}"'):
        hits = search(index, query, k=5)
        assert len(hits) == 5 and first.id not in {h.id for h in hits}
    plain = index.search_image(first.path, k=2)  # the unrefined search finds it first
    assert plain[0].id == first.id


def test_byte_identical_files_collapse_into_one_hit(index: Index) -> None:
    raw = index.search_text("x", k=20)
    assert len(raw) == 9  # 8 pictures and a byte-identical copy of one, indexed on its own
    hits = search(index, '"x"', k=20)
    assert len(hits) == 8
    folded = [h for h in hits if h.duplicates]
    assert len(folded) == 1 and len(folded[0].duplicates) == 1
    paths = {folded[0].path, *folded[0].duplicates}
    assert any(p.endswith("copy/same.png") for p in paths)
    assert any("/0000_" in p for p in paths)
    assert len(search(index, '"x"', k=3)) == 3


def test_rest_takes_expressions_and_refuses_files(index: Index) -> None:
    with TestClient(app_for(index)) as c:
        r = c.post("/v1/search/text", json={"query": '"red" + "circle" - 0.5:"blue"', "k": 3})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3, r.text
        r = c.post("/v1/search/text", json={"query": '"red" +'})
        assert r.status_code == 422 and "bad query at character" in r.json()["detail"]
        r = c.post("/v1/search/text", json={"query": 'image:"/etc/hostname"'})
        assert r.status_code == 422 and "not an indexed image" in r.json()["detail"]
        first = index.search_text("a red circle", k=1)[0]
        r = c.post("/v1/search/image", json={"image_id": first.id, "k": 3})
        assert r.status_code == 200 and first.id not in {h["id"] for h in r.json()["hits"]}


def test_query_describes_itself() -> None:
    q = Query((Term(1.0, text="beach"), Term(-0.5, text="people"), Term(2.0, id=3)))
    assert q.describe() == '"beach" - 0.5:"people" + 2:#3'
    assert Query((Term(1.0, path="a.jpg"),)).with_absolute_paths().terms[0].path == str(
        Path("a.jpg").absolute()
    )


def test_path_prefixes_match_at_folder_boundaries(tmp_path: Path) -> None:
    from test_indexer_support import tiny_encoder, write_images

    write_images(tmp_path / "photos" / "2023", 2)
    write_images(tmp_path / "photos" / "2023-old", 2, start=2)
    with Index.create(tmp_path / "idx", encoder=tiny_encoder(), workers=0) as idx:
        idx.add_images([tmp_path / "photos"])
        for prefix in ("photos/2023", "photos/2023/"):
            hits = idx.search_text("x", k=10, path_prefix=str(tmp_path / prefix))
            assert sorted(Path(h.path).parent.name for h in hits) == ["2023", "2023"]
        one = str(tmp_path / "photos" / "2023-old" / "img_0002.png")
        assert [h.path for h in idx.search_text("x", k=10, path_prefix=one)] == [one]
        assert idx.search_text("x", k=10, path_prefix=str(tmp_path / "photos" / "20")) == []


def test_cutoffs_absolute_and_relative() -> None:
    from indexer.refine import apply_cutoff
    from indexer.results import Hit

    hits = [Hit(i, s, "image", f"/p/{i}") for i, s in enumerate((0.5, 0.45, 0.3, -0.1))]
    assert [h.id for h in apply_cutoff(hits)] == [0, 1, 2, 3]
    assert [h.id for h in apply_cutoff(hits, min_score=0.3)] == [0, 1, 2]
    assert [h.id for h in apply_cutoff(hits, min_relative=0.9)] == [0, 1]
    assert [h.id for h in apply_cutoff(hits, 0.46, 0.5)] == [0]
    assert apply_cutoff([], min_relative=0.5) == []
    with pytest.raises(QueryError, match="min_relative"):
        apply_cutoff(hits, min_relative=1.5)


def test_cutoffs_in_cli_and_rest(index: Index) -> None:
    from typer.testing import CliRunner

    import app.cli

    everything = search(index, "a red circle", k=8)
    best = everything[0].score
    args = ["search", "a red circle", "-i", str(index.directory), "-k", "8", "--local", "--json"]
    out = CliRunner().invoke(app.cli.app, [*args, "--min-relative", "0.999999"])
    assert [h["id"] for h in json.loads(out.stdout)] == [everything[0].id]
    with TestClient(app_for(index)) as c:
        body = {"query": "a red circle", "k": 8, "min_score": best + 1e-4}
        assert c.post("/v1/search/text", json=body).json()["hits"] == []
        body = {"query": "a red circle", "k": 8, "min_relative": 0}
        assert c.post("/v1/search/text", json=body).status_code == 422
