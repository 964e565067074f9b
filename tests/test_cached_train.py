"""The cached-trunk recipe end to end on generated pictures: caches, training, export, reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset

from models.data import read_pairs
from models.encoder import Encoder
from models.evaluate import evaluate_retrieval
from models.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cached")
    csv_path = make_dataset(root, n=48, size=64)
    lines = csv_path.read_text().splitlines()
    # The first 32 rows train, the last 16 validate.
    (root / "train.csv").write_text("\n".join(lines[:33]) + "\n")
    (root / "val.csv").write_text("\n".join([lines[0], *lines[33:]]) + "\n")
    return root


def config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base = dict(
        data=str(data / "train.csv"), val_data=str(data / "val.csv"), out=str(out),
        model="clipsearch-lite0", pretrained="none", cached_trunks=True, image_views=1,
        epochs=3, batch_size=16, lr=2e-3, warmup_steps=1, workers=0, precision="fp32",
        cache_dir=str(data / "cache"), log_every=100,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_heads_learn_and_the_export_reloads_to_the_same_embeddings(
    data: Path, tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        result = train(config(data, tmp_path / "run", unlock_text_layers=1, unlock_image_stages=1))
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    start, best = rows[0]["val"], result["val"]
    assert best["text_to_image"]["R@1"] > start["text_to_image"]["R@1"]

    # The export leaves out the package-provided bottoms and still reloads exactly: the val
    # recall that selected it is what the full model computes from the image files.
    exported = tmp_path / "run" / "best"
    cfg = json.loads((exported / "open_clip_config.json").read_text())["clipsearch"]
    assert "text.transformer.embeddings." in cfg["omitted_prefixes"]
    assert "visual.trunk.conv_stem." in cfg["omitted_prefixes"]
    encoder = Encoder.load(pretrained=str(exported), device="cpu", precision="fp32")
    pairs = read_pairs(data / "val.csv")
    full = evaluate_retrieval(encoder, pairs)
    for direction in ("image_to_text", "text_to_image"):
        for k, value in best[direction].items():
            # Caches hold float16; allow one of the 16 items to swap places.
            assert full[direction][k] == pytest.approx(value, abs=100 / 16), (direction, k)


def test_caches_are_reused_by_a_later_run(data: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        train(config(data, tmp_path / "a", epochs=1))
    before = {p: p.stat().st_mtime_ns for p in (data / "cache").iterdir()}
    with pytest.warns(UserWarning, match="random weights"):
        train(config(data, tmp_path / "b", epochs=1))
    after = {p: p.stat().st_mtime_ns for p in (data / "cache").iterdir()}
    assert before == after


def test_views_are_augmented_and_deterministic(data: Path) -> None:
    views = sorted((data / "cache").glob("image-*.npy"))
    arrays = [np.load(v) for v in views]
    shapes = {a.shape for a in arrays}
    assert len(shapes) == 2  # train (32 images) and val (16) caches
    train_views = [a for a in arrays if a.shape[0] == 32]
    assert len(train_views) == 2 and not np.allclose(train_views[0], train_views[1])


def test_keyword_texts_match_every_image_whose_captions_use_the_noun(
    data: Path, tmp_path: Path
) -> None:
    from models.cached_train import CachedTrainer

    with pytest.warns(UserWarning, match="random weights"):
        trainer = CachedTrainer(config(data, tmp_path / "kw", keyword_texts=8))
    assert {"circle", "triangle", "background"} <= set(trainer.keywords)  # "square": ADJ too
    rows = np.arange(16)
    captions = np.array([trainer.captions_of[i][0] for i in rows])
    text_rows, positives = trainer._texts_for(rows, captions)
    assert len(text_rows) == 24 and tuple(positives.shape) == (16, 8)
    assert np.array_equal(text_rows[:16], captions)
    for j, row in enumerate(text_rows[16:]):
        word = trainer.keywords[row - len(trainer.captions)]
        expected = [
            any(word in trainer.captions[c].split() for c in trainer.captions_of[i]) for i in rows
        ]
        assert positives[:, j].tolist() == expected, word
        assert sum(expected) >= 1


def test_keyword_training_reports_one_word_queries(data: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        result = train(config(data, tmp_path / "kw", keyword_texts=8, epochs=2))
    rows = [
        json.loads(line) for line in (tmp_path / "kw" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(0.0 <= r["val"]["keywords"]["P@10"] <= 1.0 for r in rows)
    assert result["val"]["keywords"] == rows[result["epoch"]]["val"]["keywords"]
