"""The hubness correction: the bank's arithmetic, its file, the metric, and search that uses it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset
from test_indexer_support import write_images
from typer.testing import CliRunner

import app.cli
from indexer import Index
from indexer.refine import search_clean_batch
from models import hubness
from models.data import read_pairs
from models.encoder import Encoder
from models.errors import ModelError
from models.evaluate import evaluate_retrieval, retrieval_metrics
from models.weights import export_model_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_hubness_is_the_mean_of_the_k_nearest_queries() -> None:
    rng = np.random.default_rng(0)
    bank = hubness.QueryBank(_unit(rng.normal(size=(700, 8))), k=5, weight=0.5, weights_sha256="w")
    images = _unit(rng.normal(size=(600, 8)))  # more than one chunk of images
    sims = images @ bank.vectors.T
    expected = np.sort(sims, axis=1)[:, -5:].mean(axis=1)
    np.testing.assert_allclose(bank.hubness(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bank.penalty(images), 0.5 * expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(m, 8\)"):
        bank.hubness(images[:, :4])


def test_bank_checks_its_shape_and_k() -> None:
    with pytest.raises(ModelError, match="between 1 and its 3 rows"):
        hubness.QueryBank(np.eye(3, dtype=np.float32), k=4, weight=1.0, weights_sha256="w")
    with pytest.raises(ModelError, match=r"\(n, dim\)"):
        hubness.QueryBank(np.ones(3, np.float32), k=1, weight=1.0, weights_sha256="w")


def test_specific_queries_are_longer_than_two_words() -> None:
    assert not hubness.specific("dog")
    assert not hubness.specific("  red   car ")
    assert hubness.specific("a dog on the beach")


def test_sample_is_distinct_deterministic_and_in_order() -> None:
    queries = [f"q{i}" for i in range(50)] + ["q3", "q4"]
    a = hubness.sample(queries, 10, seed=1)
    assert a == hubness.sample(queries, 10, seed=1) and len(set(a)) == 10
    assert a == sorted(a, key=queries.index)
    assert a != hubness.sample(queries, 10, seed=2)
    assert hubness.sample(queries, 500) == [f"q{i}" for i in range(50)]


def test_find_reads_the_bank_of_these_weights_only(tmp_path: Path, caplog) -> None:
    bank = hubness.QueryBank(np.eye(4, dtype=np.float32), k=2, weight=0.5, weights_sha256="abc")
    assert hubness.find(tmp_path, "abc") is None  # no bank: no correction
    bank.save(tmp_path / hubness.BANK_FILE)
    found = hubness.find(tmp_path, "abc")
    assert found is not None and (found.k, found.weight) == (2, 0.5)
    np.testing.assert_array_equal(found.vectors, bank.vectors)
    with caplog.at_level(logging.WARNING):
        assert hubness.find(tmp_path, "other weights") is None
    assert "clipsearch bank" in caplog.text
    (tmp_path / hubness.BANK_FILE).write_bytes(b"not a bank")
    with caplog.at_level(logging.WARNING):
        assert hubness.find(tmp_path, "abc") is None
    assert "cannot read the query bank" in caplog.text


def test_retrieval_metrics_subtract_the_penalty_from_marked_captions() -> None:
    # Image 0 is a hub: caption 1 (of image 1) scores it higher than its own image.
    images = np.eye(3, dtype=np.float32)
    texts = _unit(np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1]], np.float32))
    t2i = np.array([0, 1, 2])
    plain = retrieval_metrics(images, texts, t2i, ks=(1,))
    assert plain["text_to_image"]["R@1"] == pytest.approx(200 / 3)
    penalty = np.array([0.3, 0.0, 0.0], np.float32)
    fixed = retrieval_metrics(images, texts, t2i, ks=(1,), image_penalty=penalty)
    assert fixed["text_to_image"]["R@1"] == 100.0
    assert fixed["image_to_text"] == plain["image_to_text"]  # image queries are not corrected
    unmarked = retrieval_metrics(
        images, texts, t2i, ks=(1,), image_penalty=penalty, penalized=np.array([1, 0, 1], bool)
    )
    assert unmarked["text_to_image"] == plain["text_to_image"]
    with pytest.raises(ValueError, match=r"image_penalty must be \(3,\)"):
        retrieval_metrics(images, texts, t2i, image_penalty=penalty[:2])


@pytest.fixture(scope="module")
def banked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, Path]:
    """The tiny model exported to a directory, so that a bank can sit beside its weights."""
    root = tmp_path_factory.mktemp("banked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random = Encoder.load("clipsearch-tiny", "none", device="cpu", precision="fp32")
        directory = export_model_dir(random.loaded.model, "clipsearch-tiny", root / "model")
        encoder = Encoder.load("clipsearch-tiny", str(directory), device="cpu", precision="fp32")
    return encoder, directory


def test_bank_command_writes_a_bank_the_encoder_finds(banked, tmp_path: Path) -> None:
    _, directory = banked
    data = make_dataset(tmp_path, n=12, size=32)
    args = ["bank", "--data", str(data), "--model", "clipsearch-tiny", "--pretrained"]
    result = CliRunner().invoke(app.cli.app, [*args, str(directory), "--k", "3", "--size", "8"])
    assert result.exit_code == 0, result.output
    assert "8 captions, k=3" in result.output
    reloaded = Encoder.load("clipsearch-tiny", str(directory), device="cpu", precision="fp32")
    bank = reloaded.query_bank
    assert bank is not None and bank.vectors.shape == (8, reloaded.dim) and bank.k == 3
    # The bank holds the model's own embeddings of the sampled captions.
    texts = hubness.sample([p.text for p in read_pairs(data, check_images=False)], 8)
    np.testing.assert_allclose(bank.vectors, reloaded.encode_texts(texts), atol=2e-3)
    too_many = CliRunner().invoke(app.cli.app, [*args, str(directory), "--k", "50"])
    assert too_many.exit_code != 0 and "more than the 12 distinct captions" in str(
        too_many.exception
    )
    no_dir = CliRunner().invoke(
        app.cli.app,
        ["bank", "--data", str(data), "--model", "clipsearch-tiny", "--pretrained", "none"],
    )
    assert no_dir.exit_code != 0 and "exported model directory" in str(no_dir.exception)
    (directory / hubness.BANK_FILE).unlink()


def _bank_on(directory: Path, encoder: Encoder, vectors: np.ndarray, weight: float) -> None:
    bank = hubness.QueryBank(
        _unit(vectors), len(vectors), weight, encoder.provenance.weights_sha256
    )
    bank.save(directory / hubness.BANK_FILE)


def test_evaluate_retrieval_ranks_as_search_does(banked, tmp_path: Path) -> None:
    encoder, directory = banked
    pairs = read_pairs(make_dataset(tmp_path, n=10, size=32))
    try:
        _bank_on(directory, encoder, encoder.encode_texts([p.text for p in pairs]), 1.0)
        with_bank = Encoder.load("clipsearch-tiny", str(directory), device="cpu", precision="fp32")
        result = evaluate_retrieval(with_bank, pairs, batch_size=4)
        assert (result["hubness_k"], result["hubness_weight"]) == (10, 1.0)
        plain = evaluate_retrieval(with_bank, pairs, batch_size=4, hubness_correction=False)
        assert result["text_to_image_uncorrected"] == plain["text_to_image"]
        assert "hubness_k" not in plain and result["image_to_text"] == plain["image_to_text"]
    finally:
        (directory / hubness.BANK_FILE).unlink(missing_ok=True)


def test_search_reorders_specific_text_queries_only(banked, tmp_path: Path) -> None:
    encoder, directory = banked
    write_images(tmp_path / "photos", 8)
    index = Index.create(tmp_path / "idx", encoder=encoder, workers=0)
    index.add_images([tmp_path / "photos"])
    ids, vectors = index.catalog.vectors("image")
    hub = int(ids[0])
    # A bank that sits on image 0 makes it a hub with a large penalty (weight 2: r(x) = 1 there).
    _bank_on(directory, encoder, np.repeat(vectors[:1], 3, axis=0), 2.0)
    try:
        reopened = Index.open(tmp_path / "idx")
        assert reopened.hub_penalties is not None
        assert reopened.stats()["hubness"] == {"bank": 3, "k": 3, "weight": 2.0}
        assert (
            "query bank of 3 captions, k 3"
            in CliRunner().invoke(app.cli.app, ["info", "--index", str(tmp_path / "idx")]).output
        )
        query = vectors[:1]
        plain = reopened.search_vectors(query, k=3)[0]
        assert plain[0].id == hub and plain[0].score == pytest.approx(1.0, abs=1e-5)
        corrected = reopened.search_vectors(query, k=3, specific=[True])[0]
        assert hub not in [h.id for h in corrected] and len(corrected) == 3
        # Texts are not images: the correction leaves target 'texts' alone.
        assert reopened.search_vectors(query, k=3, target="texts", specific=[True])[0] == []
        both = search_clean_batch(reopened, np.repeat(query, 2, axis=0), 3, specific=[True, False])
        assert [h.id for h in both[0]] == [h.id for h in corrected]
        assert [h.id for h in both[1]] == [h.id for h in plain]
        with pytest.raises(Exception, match="one flag per query"):
            reopened.search_vectors(query, k=3, specific=[True, True])
        # A plain-text search decides by the query's length.
        long, short = "a red circle on a blue background", "red circle"
        for text, flag in ((long, True), (short, False)):
            vector = reopened.embed_texts([text])
            expected = reopened.search_vectors(vector, k=3, specific=[flag])[0]
            assert reopened.search_text(text, k=3) == expected
        reopened.close()
        # A bank of other weights is ignored: the plain order again.
        hubness.QueryBank(_unit(vectors[:1]), 1, 2.0, "other weights").save(
            directory / hubness.BANK_FILE
        )
        stale = Index.open(tmp_path / "idx")
        assert stale.hub_penalties is None and stale.stats()["hubness"] is None
        assert stale.search_vectors(query, k=3, specific=[True])[0][0].id == hub
        stale.close()
    finally:
        (directory / hubness.BANK_FILE).unlink(missing_ok=True)
        index.close()
