"""The shipped architecture's path: a timm image tower with a package-provided HF text tower.

Covers what only that kind of model runs: padding trimmed from token batches, the frozen text
trunk cached once per caption (``--lock-text``) instead of run every step, and the exported model
that leaves that trunk out and reloads it from its package.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hf_tower import CAPTIONS, NAME, load, register
from safetensors import safe_open
from synthetic import make_dataset

from models.data import read_pairs
from models.distributed import init_distributed
from models.encoder import Encoder, LoadedModel
from models.evaluate import evaluate_retrieval
from models.train import ContrastiveModel, TrainConfig, Trainer, text_trunk_features
from models.weights import CONFIG_FILE, WEIGHTS_FILE

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*random weights.*:UserWarning")


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"), n=16, size=32)


def hf_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    register()
    base = dict(
        data=str(data), out=str(out), model=NAME, pretrained="none", lock_text=True,
        batch_size=4, accum_steps=2, lr=1e-3, warmup_steps=1, weight_decay=0.0,
        aug_scale=None, workers=0, precision="fp32", log_every=1000,
    )  # fmt: skip
    return TrainConfig(**(base | overrides))


def test_trim_padding_equals_the_full_forward(loaded: LoadedModel) -> None:
    tokens = loaded.tokenizer(CAPTIONS)
    assert tokens.shape[1] == 16
    assert loaded.trim_padding(tokens).shape[1] == 16  # the long caption fills the context
    short = loaded.trim_padding(loaded.tokenizer(CAPTIONS[:2]))
    assert short.shape[1] == 9  # [CLS] a red circle on a blue background [SEP]
    assert loaded.trim_padding(loaded.tokenizer(CAPTIONS[:1])).shape[1] == 4  # [CLS] a dog [SEP]
    with torch.no_grad():
        full = loaded.model.encode_text(tokens, normalize=True)
        torch.testing.assert_close(
            loaded.model.encode_text(short, normalize=True), full[:2], atol=1e-6, rtol=1e-5
        )
    # The encoder trims every batch it embeds.
    got = Encoder(loaded, CPU, "fp32").encode_texts(CAPTIONS, batch_size=2)
    torch.testing.assert_close(torch.from_numpy(got), full, atol=1e-6, rtol=1e-5)


def test_cached_trunk_features_follow_the_precision(loaded: LoadedModel) -> None:
    model = loaded.model
    with torch.no_grad():
        expected = model.encode_text(loaded.tokenizer(CAPTIONS), normalize=True)
        fp32 = text_trunk_features(loaded, CAPTIONS, CPU, None)
        bf16 = text_trunk_features(loaded, CAPTIONS, CPU, torch.bfloat16)
        head = model.text.proj
        torch.testing.assert_close(torch.nn.functional.normalize(head(fp32), dim=-1), expected)
    assert fp32.dtype == bf16.dtype == torch.float32
    assert (fp32 - bf16).abs().max() > 1e-4  # bf16 only when asked for


def test_lock_text_step_with_cached_features_equals_the_uncached_step(
    dataset: Path, tmp_path: Path
) -> None:
    cached = Trainer(hf_config(dataset, tmp_path / "cached"), init_distributed("cpu"))
    uncached = Trainer(hf_config(dataset, tmp_path / "uncached"), init_distributed("cpu"))
    assert cached.text_inputs.dtype == torch.float32  # trunk outputs, one row per caption
    # The same step, the frozen trunk run on every micro-batch's tokens instead.
    uncached.text_cached = False
    uncached.text_inputs = uncached.loaded.tokenizer(uncached.captions)
    uncached.net = ContrastiveModel(uncached.loaded.model, text_cached=False)
    for trainer in (cached, uncached):
        trainer.loaded.model.train()
    uncached.loaded.model.text.transformer.eval()  # a frozen trunk draws no dropout masks

    batches = list(itertools.islice(cached.epoch_loader(0), 2))  # accum_steps micro-batches
    loss = cached.train_step(batches)
    assert uncached.train_step(batches) == pytest.approx(loss, abs=1e-5)
    trained = {n: p for n, p in cached.loaded.model.named_parameters() if p.requires_grad}
    assert "text.proj.weight" in trained and "logit_scale" in trained
    assert not any(n.startswith("text.transformer.") for n in trained)
    other = dict(uncached.loaded.model.named_parameters())
    for name, param in trained.items():
        torch.testing.assert_close(param, other[name], atol=1e-5, rtol=1e-4, msg=name)


def test_export_leaves_out_the_text_trunk_and_reloads_for_eval(
    dataset: Path, tmp_path: Path
) -> None:
    trainer = Trainer(
        hf_config(dataset, tmp_path, val_data=str(dataset), epochs=1), init_distributed("cpu")
    )
    trainer.run()
    best = tmp_path / "best"
    with safe_open(str(best / WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert "text.proj.weight" in keys and "visual.head.proj.weight" in keys
    assert not any(k.startswith("text.transformer.") for k in keys)
    block = json.loads((best / CONFIG_FILE).read_text())["clipsearch"]
    assert block["omitted_prefixes"] == ["text.transformer."]

    encoder = Encoder.load(None, str(best))  # the trunk comes back from its package
    assert encoder.name == NAME
    model = trainer.loaded.model.eval()
    with torch.no_grad():
        texts = model.encode_text(trainer.loaded.tokenizer(CAPTIONS), normalize=True)
    torch.testing.assert_close(torch.from_numpy(encoder.encode_texts(CAPTIONS)), texts)
    val = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert evaluate_retrieval(encoder, read_pairs(dataset)) == val[-1]["val"]
