"""Training: overfitting a tiny model, exact resume, LiT caching, SigLIP, and the CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_dataset

from models.data import read_pairs
from models.distributed import init_distributed
from models.encoder import Encoder
from models.evaluate import evaluate_retrieval
from models.train import TrainConfig, Trainer, lr_at, train

pytestmark = pytest.mark.filterwarnings("ignore:.*random weights.*:UserWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shapes"), n=64, size=32)


def tiny_config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        model="clipsearch-tiny",
        pretrained="none",
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        weight_decay=0.0,
        aug_scale=None,
        workers=0,
        precision="fp32",
        log_every=1000,
    )
    base.update(overrides)
    return TrainConfig(**base)


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.0)


def test_tiny_model_overfits_64_pairs(dataset: Path, tmp_path: Path) -> None:
    # 100 epochs x 2 steps: a bounded budget in which text->image R@1 must reach 90%.
    cfg = tiny_config(dataset, tmp_path, epochs=100, batch_size=32, checkpoint_every=100)
    train(cfg)
    encoder = Encoder.load(None, str(tmp_path / "best"))
    metrics = evaluate_retrieval(encoder, read_pairs(dataset), batch_size=64)
    assert metrics["text_to_image"]["R@1"] >= 90.0, metrics
    first, last = losses(tmp_path)[0], losses(tmp_path)[-1]
    assert last < first / 4


def test_resume_reproduces_the_uninterrupted_loss_curve(dataset: Path, tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(dataset, straight, epochs=4, workers=1, aug_scale=(0.5, 1.0)))
    train(
        tiny_config(dataset, resumed, epochs=4, workers=1, aug_scale=(0.5, 1.0)), stop_after_epoch=2
    )
    assert len(losses(resumed)) == 8
    train(tiny_config(dataset, resumed, epochs=4, workers=1, aug_scale=(0.5, 1.0)), resume=True)
    assert losses(resumed) == losses(straight)
    a = torch.load(straight / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "latest.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    from models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny_config(dataset, tmp_path, epochs=1), resume=True)


def test_resume_reads_the_previous_checkpoint_format(dataset: Path, tmp_path: Path) -> None:
    from models.errors import CheckpointError

    train(tiny_config(dataset, tmp_path, epochs=1))
    path = tmp_path / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    saved = state.pop("rng")[0]["cpu"]
    torch.save(state | {"format": 1, "torch_rng": saved}, path)  # rank 0's CPU state only
    trainer = Trainer(tiny_config(dataset, tmp_path, epochs=1), init_distributed("cpu"))
    torch.manual_seed(5)
    trainer.resume()
    assert trainer.epoch == 1 and torch.equal(torch.get_rng_state(), saved)
    torch.save(state | {"format": 3}, path)
    with pytest.raises(CheckpointError, match="checkpoint format 3"):
        trainer.resume()


def test_lock_text_caches_the_trunk_and_trains_only_the_rest(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dataset, tmp_path, epochs=2, lock_text=True)
    trainer = Trainer(cfg, init_distributed("cpu"))
    before = {k: v.clone() for k, v in trainer.loaded.model.state_dict().items()}
    assert trainer.text_inputs.dtype == torch.float32  # cached features, not token ids
    trainer.run()
    after = trainer.loaded.model.state_dict()
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


def test_siglip_loss_trains(dataset: Path, tmp_path: Path) -> None:
    train(tiny_config(dataset, tmp_path, epochs=6, loss="siglip"))
    curve = losses(tmp_path)
    assert np.mean(curve[-4:]) < np.mean(curve[:4])
    # The SigLIP bias shapes only the loss: the exported model loads like any other.
    assert Encoder.load(None, str(tmp_path / "best")).encode_texts(["a red circle"]).shape == (
        1,
        32,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_train_help_lists_the_options() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in ("--resume", "--lock-image", "--lock-text", "--accum-steps", "--precision"):
        assert option in result.stdout


def test_train_cli_reports_a_missing_column(dataset: Path, tmp_path: Path) -> None:
    result = run_cli(
        "train", "--data", str(dataset), "--out", str(tmp_path), "--model", "clipsearch-tiny",
        "--pretrained", "none", "--text-col", "sentence",
    )  # fmt: skip
    assert result.returncode == 2
    assert "no column 'sentence'" in result.stderr and "line 2" in result.stderr


def test_train_cli_reports_a_missing_image(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("filepath,caption\nimages/nope.png,a thing\n")
    result = run_cli(
        "train", "--data", str(bad), "--image-root", str(dataset.parent), "--out", str(tmp_path),
        "--model", "clipsearch-tiny", "--pretrained", "none",
    )  # fmt: skip
    assert result.returncode == 2
    assert "line 2: image not found" in result.stderr
