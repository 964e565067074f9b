"""EXIF date taken and camera recorded at index time (schema 2, migrated from 1), and date-range
filters in the library, the CLI and the REST API."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_app_support import app_for
from test_indexer_support import tiny_encoder
from typer.testing import CliRunner

import app.cli
from indexer import Index, QueryError
from indexer.catalog import MIGRATIONS, SCHEMA_VERSION, Catalog
from indexer.exif import iso_date, photo_info
from indexer.query import search
from indexer.refine import TakenRange

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PHOTOS = {  # name: (EXIF DateTimeOriginal, make, model, colour)
    "summer.jpg": ("2023:07:14 18:02:11", "Canon", "Canon EOS 5D", (220, 30, 30)),
    "winter.jpg": ("2023:12:31 23:59:59", "Apple", "iPhone 12", (30, 30, 220)),
    "older.jpg": ("2019:05:01 08:00:00", None, None, (30, 200, 30)),
    "nodate.png": (None, None, None, (200, 200, 30)),
}


def _photo(path: Path, taken: str | None, make: str | None, model: str | None, rgb) -> None:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    Image.new("RGB", (48, 32), rgb).save(path, exif=exif)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("dates")
    (root / "photos").mkdir()
    for name, (taken, make, model, rgb) in PHOTOS.items():
        _photo(root / "photos" / name, taken, make, model, rgb)
    idx = Index.create(root / "idx", encoder=tiny_encoder(), workers=0)
    idx.add_images([root / "photos"])
    yield idx
    idx.close()


def test_exif_dates_and_cameras() -> None:
    assert iso_date("2023:07:14 18:02:11") == "2023-07-14T18:02:11"
    assert iso_date(b"2023:07:14 18:02:11\x00") == "2023-07-14T18:02:11"
    assert iso_date("0000:00:00 00:00:00") is None and iso_date("  ") is None
    assert iso_date(42) is None


def test_recorded_at_index_time(index: Index) -> None:
    hits = {Path(h.path).name: h for h in index.search_text("x", k=10)}
    assert (hits["summer.jpg"].taken, hits["summer.jpg"].camera) == (
        "2023-07-14T18:02:11",
        "Canon EOS 5D",
    )
    assert hits["winter.jpg"].camera == "Apple iPhone 12"
    assert hits["nodate.png"].taken is None and hits["nodate.png"].width == 48
    assert photo_info(Image.new("RGB", (2, 2))).taken is None


def test_date_range_filter(index: Index) -> None:
    def names(start: str | None, end: str | None) -> list[str]:
        hits = search(index, '"x"', k=10, taken=TakenRange.parse(start, end))
        return sorted(Path(h.path).name for h in hits)

    assert names("2023-01-01", None) == ["summer.jpg", "winter.jpg"]
    assert names(None, "2023-12-31") == ["older.jpg", "summer.jpg", "winter.jpg"]  # whole day
    assert names("2023-07-14T18:02:12", "2023-12-31T12:00:00") == []
    assert names("2019-05-01", "2019-05-01") == ["older.jpg"]
    with pytest.raises(QueryError, match="not a date"):
        TakenRange.parse("last summer", None)


def test_date_filter_in_cli_and_rest(index: Index) -> None:
    args = ["search", "x", "-i", str(index.directory), "--local", "--json", "--taken-from"]
    out = CliRunner().invoke(app.cli.app, [*args, "2023-07-01", "--taken-to", "2023-08-01"])
    assert [Path(h["path"]).name for h in json.loads(out.stdout)] == ["summer.jpg"]
    assert json.loads(out.stdout)[0]["camera"] == "Canon EOS 5D"
    bad = CliRunner().invoke(app.cli.app, [*args, "yesterday"])
    assert isinstance(bad.exception, QueryError)
    with TestClient(app_for(index)) as c:
        body = {"query": "x", "k": 10, "filter": {"taken_from": "2023-01-01"}}
        hits = c.post("/v1/search/text", json=body).json()["hits"]
        assert sorted(h["taken"][:4] for h in hits) == ["2023", "2023"]
        body["filter"] = {"taken_to": "not a date"}
        r = c.post("/v1/search/text", json=body)
        assert r.status_code == 422 and "not a date" in r.json()["detail"]


def test_a_version_1_catalog_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute(
        """INSERT INTO items(kind, path, sha256, status, vector, gen, updated)
           VALUES ('image', '/p/a.jpg', 'ab', 'ok', ?, 1, 0)""",
        (np.ones(4, "<f4").tobytes(),),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    catalog = Catalog(path, 4)
    assert catalog.schema_version == SCHEMA_VERSION == 2
    row = catalog.get(1)
    assert row is not None and row.path == "/p/a.jpg" and row.taken is None
    catalog.close()
