"""Retrieval and zero-shot metrics against answers worked out by hand, then end to end."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_dataset

from models.data import read_pairs
from models.encoder import Encoder
from models.evaluate import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    evaluate_retrieval,
    evaluate_zeroshot,
    retrieval_metrics,
    zeroshot_metrics,
)

# Three images along the axes; four captions (image 0 has two). Scores are written out below.
IMAGES = np.eye(3, dtype=np.float32)
TEXTS = np.array(
    [
        [1.0, 0.0, 0.0],  # -> image 0; scores (1, 0, 0): its image first
        [0.0, 0.6, 0.8],  # -> image 0; scores (0, .6, .8): its image third
        [0.6, 0.8, 0.0],  # -> image 1; scores (.6, .8, 0): its image first
        [0.8, 0.5, 0.1],  # -> image 2; scores (.8, .5, .1): its image third
    ],
    dtype=np.float32,
)
TEXT_TO_IMAGE = np.array([0, 0, 1, 2])
# Image -> text scores (columns are the 4 captions):
#   image 0: (1, 0, .6, .8)   its captions 0 and 1: caption 0 is first      -> rank 0
#   image 1: (0, .6, .8, .5)  its caption 2 is first                        -> rank 0
#   image 2: (0, .8, 0, .1)   its caption 3 is second, behind caption 1     -> rank 1


def _flat(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _reference_ranks(scores: np.ndarray, positives: list[set[int]]) -> np.ndarray:
    """Best rank of any positive per row, from a full stable sort (ties by index)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.array(
        [min(list(row).index(p) for p in pos) for row, pos in zip(order, positives, strict=True)]
    )


def test_hand_built_retrieval() -> None:
    m = retrieval_metrics(IMAGES, TEXTS, TEXT_TO_IMAGE, ks=(1, 2, 5))
    assert m["n_images"] == 3
    assert m["n_texts"] == 4
    # Text ranks (0, 2, 0, 2): half found first, all found within the 3 images.
    assert m["text_to_image"] == pytest.approx({"R@1": 50.0, "R@2": 50.0, "R@5": 100.0})
    # Image ranks (0, 0, 1); image 0 counts as found though its caption 1 ranks last.
    assert m["image_to_text"] == pytest.approx({"R@1": 200 / 3, "R@2": 100.0, "R@5": 100.0})


def test_identity_is_perfect_and_default_ks() -> None:
    e = np.eye(6, dtype=np.float32)
    m = retrieval_metrics(e, e, np.arange(6))
    assert set(m) == {"image_to_text", "text_to_image", "n_images", "n_texts"}
    for direction in ("image_to_text", "text_to_image"):
        assert m[direction] == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0}


def test_only_one_of_two_captions_retrieved() -> None:
    # Image 1 has captions 1 (a perfect match) and 2 (pointing at image 0): the image is found
    # (any caption counts), caption 2 is not.
    images = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    m = retrieval_metrics(images, texts, np.array([0, 1, 1]), ks=(1,))
    assert m["image_to_text"]["R@1"] == 100.0
    assert m["text_to_image"]["R@1"] == pytest.approx(200 / 3)


def test_image_found_through_its_second_caption() -> None:
    # Image 0 scores its captions 0 and 3 at .1 and .9: caption 0 alone would miss at R@1
    # (caption 3 is ahead), but caption 3 is first. Caption 0 finds image 2 (.9) before image 0.
    images = np.eye(3, dtype=np.float32)
    texts = np.array(
        [[0.1, 0.0, 0.9], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.9, 0.1, 0.0]], np.float32
    )
    m = retrieval_metrics(images, texts, np.array([0, 1, 2, 0]), ks=(1,))
    assert m["image_to_text"]["R@1"] == 100.0
    assert m["text_to_image"]["R@1"] == 75.0


def test_ties_are_broken_by_index() -> None:
    same = np.ones((3, 2), np.float32)
    m = retrieval_metrics(same, same, np.arange(3), ks=(1, 2, 3))
    # Every score equal: item i ranks i-th.
    assert m["text_to_image"] == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 100.0})
    assert m["image_to_text"] == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 100.0})


def test_chunked_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    n_images, n_texts = 40, 130
    images = rng.standard_normal((n_images, 16)).astype(np.float32)
    texts = rng.standard_normal((n_texts, 16)).astype(np.float32)
    t2i = np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_texts - n_images)])
    full = retrieval_metrics(images, texts, t2i, ks=(1, 3, 10))
    tiny_blocks = retrieval_metrics(images, texts, t2i, ks=(1, 3, 10), max_block=7)
    assert tiny_blocks == full

    t_ranks = _reference_ranks(texts @ images.T, [{i} for i in t2i])
    i_ranks = _reference_ranks(
        images @ texts.T, [set(np.flatnonzero(t2i == i)) for i in range(n_images)]
    )
    for k in (1, 3, 10):
        assert full["text_to_image"][f"R@{k}"] == pytest.approx(100 * np.mean(t_ranks < k))
        assert full["image_to_text"][f"R@{k}"] == pytest.approx(100 * np.mean(i_ranks < k))


def test_1k_by_5k_is_quick() -> None:
    rng = np.random.default_rng(1)
    images = rng.standard_normal((1000, 64)).astype(np.float32)
    texts = np.repeat(images, 5, axis=0) + 0.5 * rng.standard_normal((5000, 64)).astype(np.float32)
    m = retrieval_metrics(images, texts, np.repeat(np.arange(1000), 5))
    assert m["n_images"] == 1000
    assert m["n_texts"] == 5000
    assert m["text_to_image"]["R@1"] > 90
    assert m["image_to_text"]["R@1"] > 90


@pytest.mark.parametrize(
    ("images", "texts", "t2i", "match"),
    [
        (np.eye(3), np.eye(4)[:3], np.arange(3), "dimension"),
        (np.eye(3), np.eye(3), np.arange(2), "shape"),
        (np.eye(3), np.eye(3), np.array([0, 1, 3]), "outside"),
        (np.eye(3), np.eye(3), np.array([0, 1, -1]), "outside"),
        (np.eye(3), np.eye(3), np.array([0.0, 1.0, 2.0]), "integer"),
        (np.eye(3), np.eye(3), np.array([0, 1, 1]), "no caption"),
        (np.ones(3), np.eye(3), np.arange(3), "2-D"),
        (np.zeros((0, 3)), np.eye(3), np.arange(3), "empty"),
    ],
)
def test_retrieval_shape_errors(images, texts, t2i, match) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(images, texts, t2i)


def test_bad_ks() -> None:
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(np.eye(2), np.eye(2), np.arange(2), ks=(0,))


def test_zeroshot_metrics_by_hand() -> None:
    classes = np.eye(3, dtype=np.float32)
    images = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0]], np.float32)
    m = zeroshot_metrics(images, classes, np.array([0, 1, 2, 1]))
    # The last image is nearest class 0 but labelled 1; with 3 classes top-5 means top-3.
    assert m == {"top1": 75.0, "top5": 100.0, "n": 4}


def test_zeroshot_top5_with_many_classes() -> None:
    classes = np.eye(6, dtype=np.float32)
    image = np.array([[6, 5, 4, 3, 2, 1]], np.float32)
    # Class 4 ranks fifth (a top-5 hit), class 5 sixth (a miss).
    m = zeroshot_metrics(np.repeat(image, 2, axis=0), classes, np.array([4, 5]))
    assert m == {"top1": 0.0, "top5": 50.0, "n": 2}
    assert zeroshot_metrics(image, classes, np.array([0]), max_block=1)["top1"] == 100.0


def test_zeroshot_errors() -> None:
    with pytest.raises(ValueError, match="dimension"):
        zeroshot_metrics(np.eye(3), np.eye(4), np.arange(3))
    with pytest.raises(ValueError, match="outside"):
        zeroshot_metrics(np.eye(3), np.eye(3), np.array([0, 1, 3]))


# --- end to end with the tiny random model ------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Encoder.load("clipsearch-tiny", "none", device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images; the first 3 get a second caption, so 15 captions."""
    root = tmp_path_factory.mktemp("ds")
    csv_path = make_dataset(root, n=12, size=48)
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    rows += [[path, f"another picture, number {i}"] for i, (path, _) in enumerate(rows[1:4])]
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return csv_path


def test_evaluate_retrieval_end_to_end(encoder: Encoder, dataset: Path) -> None:
    pairs = read_pairs(dataset)
    m = evaluate_retrieval(encoder, pairs, batch_size=5, num_workers=0)
    assert set(m) == {"image_to_text", "text_to_image", "n_images", "n_texts"}
    assert (m["n_images"], m["n_texts"]) == (12, 15)
    for direction in ("image_to_text", "text_to_image"):
        assert set(m[direction]) == {"R@1", "R@5", "R@10"}
        values = list(m[direction].values())
        assert all(0.0 <= v <= 100.0 for v in values)
        assert values == sorted(values)
    # Decoding in worker processes and another batch size change nothing.
    again = evaluate_retrieval(encoder, pairs, batch_size=64, num_workers=2)
    assert _flat(again) == pytest.approx(_flat(m))


def test_evaluate_retrieval_matches_direct_embedding(encoder: Encoder, dataset: Path) -> None:
    pairs = read_pairs(dataset)
    images = list(dict.fromkeys(p.image for p in pairs))
    expected = retrieval_metrics(
        encoder.encode_images(images),
        encoder.encode_texts([p.text for p in pairs]),
        np.array([images.index(p.image) for p in pairs]),
    )
    assert _flat(evaluate_retrieval(encoder, pairs)) == pytest.approx(_flat(expected))


def test_evaluate_zeroshot_end_to_end(encoder: Encoder, dataset: Path) -> None:
    pairs = read_pairs(dataset)
    # Label each image with its shape (the file name is NNNN_colour_shape_on_colour.png).
    labelled = [type(p)(p.image, p.image.stem.split("_")[2], p.line) for p in pairs]
    m = evaluate_zeroshot(encoder, labelled, batch_size=4)
    assert set(m) == {"top1", "top5", "n"}
    assert m["n"] == 15
    assert 0.0 <= m["top1"] <= 100.0
    assert m["top5"] == 100.0  # at most 4 shapes, so top-5 covers every class


def test_class_embeddings(encoder: Encoder) -> None:
    emb = class_embeddings(encoder, ["circle", "square"])
    assert emb.shape == (2, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one = class_embeddings(encoder, ["circle"], templates=["a photo of a {}."])
    np.testing.assert_allclose(one, encoder.encode_texts(["a photo of a circle."]), atol=1e-5)
    assert all("{}" in t for t in DEFAULT_TEMPLATES)
    with pytest.raises(ValueError, match=r"\{\}"):
        class_embeddings(encoder, ["circle"], templates=["no placeholder"])
