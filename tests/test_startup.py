"""Start-up cost: libraries and the command import nothing heavy until a command needs it, and a
text query on an index with an exported text tower runs without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset

from indexer import Index, query_text
from models.encoder import Encoder
from models.lite_text import LiteTextEncoder, export

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "transformers", "timm")


def _modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    listing = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\nimport sys, json\n{listing}"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import models, indexer\nfrom indexer import Index, QueryError", (*HEAVY, "typer")),
        ("from models.errors import ClipsearchError\nimport indexer.errors", (*HEAVY, "numpy")),
        ("import app.client", HEAVY),
        ("import app.cli", (*HEAVY, "faiss", "fastapi", "httpx")),
    ],
)
def test_imports_stay_light(code: str, absent: tuple[str, ...]) -> None:
    loaded = _modules_after(code)
    assert not loaded & set(absent), sorted(loaded & set(absent))


def test_help_imports_nothing_heavy() -> None:
    loaded = _modules_after(
        "import sys\nfrom app.cli import app\n"
        "try:\n    app(['search', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert not loaded & {*HEAVY, "faiss", "numpy"}


@pytest.fixture(scope="module")
def shipped() -> Encoder:
    return Encoder.load(device="cpu")


TEXTS = [
    "a dog",
    "Two children play in a fountain &amp; laugh",
    "café naïve “quoted” text",
    "word " * 100,  # longer than the context: truncated the same way
    "  spaces\tand\nbreaks  ",
]


def test_lite_text_tower_equals_the_encoder(shipped: Encoder, tmp_path: Path) -> None:
    path = tmp_path / "query.tower"
    identity = {"model": shipped.name, "weights_sha256": "x", "dim": shipped.dim}
    assert export(shipped, path, identity)
    lite = LiteTextEncoder.load(path)
    assert lite.identity == identity
    expected = shipped.encode_texts(TEXTS)
    got = lite.encode_texts(TEXTS, batch_size=2)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5


def test_towers_that_cannot_be_exported_say_so(tmp_path: Path) -> None:
    from test_indexer_support import tiny_encoder  # a CLIP-style causal text tower

    assert not export(tiny_encoder(), tmp_path / "t.tower", {"model": "x"})
    assert not (tmp_path / "t.tower").exists()


def test_cold_text_search_runs_without_torch(shipped: Encoder, tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", n=8, size=48)
    with Index.create(tmp_path / "idx", encoder=shipped, workers=0) as index:
        index.add_images([tmp_path / "data" / "images"])
        expected = [(h.id, round(h.score, 4)) for h in index.search_text("a red circle", k=5)]
    assert (tmp_path / "idx" / query_text.QUERY_TEXT).is_file()
    code = (
        "from indexer import Index\n"
        f"with Index.open({str(tmp_path / 'idx')!r}, lazy=True) as index:\n"
        "    hits = index.search_text('a red circle', k=5)\n"
        "print([(h.id, round(h.score, 4)) for h in hits])\n"
        "import sys\nassert 'torch' not in sys.modules and 'open_clip' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(expected)


def test_a_tower_of_another_model_is_ignored(shipped: Encoder, tmp_path: Path) -> None:
    model = {"model": shipped.name, "weights_sha256": "a" * 64, "dim": shipped.dim}
    query_text.ensure(tmp_path, shipped, model)
    assert query_text.load(tmp_path, model) is not None
    other = {**model, "weights_sha256": "b" * 64}
    assert query_text.load(tmp_path, other) is None
    query_text.ensure(tmp_path, shipped, other)  # rewritten for the model the index has now
    assert query_text.load(tmp_path, other) is not None
    (tmp_path / query_text.QUERY_TEXT).write_bytes(b"not a tower")
    assert query_text.load(tmp_path, other) is None  # unreadable: the full encoder is used
