"""The model the project ships: loads offline by default and knows colours it was never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import SHAPES, draw

from models.data import Pair
from models.encoder import Encoder
from models.evaluate import evaluate_zeroshot
from models.registry import DEFAULT_MODEL, shipped_weights

# Each colour on a neutral background that is not itself one of the classes' answers.
BACKGROUNDS = {"red": "white", "green": "white", "blue": "white", "yellow": "black",
               "purple": "white", "orange": "black"}  # fmt: skip


@pytest.fixture(scope="module")
def shipped() -> Encoder:
    if shipped_weights(DEFAULT_MODEL) is None:
        pytest.fail(f"{DEFAULT_MODEL} must ship its weights under models/weights/")
    return Encoder.load(device="cpu")


def test_default_model_loads_offline(shipped: Encoder) -> None:
    assert shipped.name == DEFAULT_MODEL and shipped.dim == 256
    assert len(shipped.provenance.weights_sha256) == 64
    texts = shipped.encode_texts(
        ["a dog runs on the grass", "a dog running across a lawn", "a red car"]
    )
    assert texts[0] @ texts[1] > texts[0] @ texts[2]


def test_zero_shot_colours_beat_chance_by_far(shipped: Encoder, tmp_path: Path) -> None:
    # Flickr8k never labels flat colour swatches; 6 classes, so chance is 16.7%.
    pairs = []
    for colour, background in BACKGROUNDS.items():
        for shape in SHAPES:
            path = tmp_path / f"{colour}_{shape}.png"
            draw(shape, colour, background, size=112).save(path)
            pairs.append(Pair(path, colour, len(pairs) + 2))
    result = evaluate_zeroshot(shipped, pairs)
    assert result["n"] == 24
    assert result["top1"] >= 50.0, result
