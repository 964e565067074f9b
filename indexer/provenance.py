"""Whether an encoder is the one an index was built with, and the error that says it is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indexer.errors import ModelMismatchError


def identity(prov: dict[str, Any]) -> tuple[str, str, int]:
    """What must match for vectors to be comparable (precision may differ)."""
    return (str(prov["model"]), str(prov["weights_sha256"]), int(prov["dim"]))


def _describe(prov: dict[str, Any]) -> str:
    sha = str(prov["weights_sha256"])[:16]
    return f"{prov['model']} (weights {prov['pretrained']}, sha256 {sha}, dim {prov['dim']})"


def mismatch(
    directory: Path, built: dict[str, Any], given: dict[str, Any] | str
) -> ModelMismatchError:
    given_text = given if isinstance(given, str) else f"the encoder given is {_describe(given)}"
    reindex = ""
    if isinstance(given, dict):
        weights = f" --pretrained {given['pretrained']}" if given.get("pretrained") else ""
        reindex = (
            f". To re-index with {given['model']} instead: clipsearch index FOLDER... --index "
            f"{directory.parent / (directory.name + '-' + str(given['model']))} "
            f"--model {given['model']}{weights} (and clipsearch index-text for its texts)"
        )
    return ModelMismatchError(
        f"the index in {directory} was built with {_describe(built)}, but {given_text}; "
        "vectors of different models cannot be compared. Pass "
        f"--model {built['model']} --pretrained {built['pretrained']} to use this index, or a new "
        f"--index directory for the other model{reindex}"
    )
