"""The encoder: embedding contract, deterministic random init, save/load round trips, errors."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from synthetic import combos, draw

from models import weights
from models.encoder import Encoder, load_model
from models.errors import ModelError

TINY = "clipsearch-tiny"
TEXTS = ["a red circle on a blue background", "a green square", "a cross", "", "x " * 200]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _images(n: int = 5) -> list[Image.Image]:
    return [draw(shape, fg, bg, size=40) for shape, fg, bg in combos(n)]


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Change both projections, so that a loaded copy cannot pass for a fresh random init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("visual.proj", "text_projection"):
                p.add_(0.1 * p.std() * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Encoder.load(TINY, "none", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An exported tiny model with perturbed weights, and its image and text embeddings."""
    loaded = load_model(TINY, "none")
    _perturb(loaded.model)
    out = weights.export_model_dir(loaded.model, TINY, tmp_path_factory.mktemp("export") / "m")
    enc = Encoder(loaded, torch.device("cpu"))
    return out, enc.encode_images(_images()), enc.encode_texts(TEXTS)


# --- the embedding contract ---------------------------------------------------------------------


def test_shapes_dtype_unit_norm(tiny: Encoder, tmp_path: Path) -> None:
    paths = []
    for i, image in enumerate(_images(3)):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    for emb, n in ((tiny.encode_images(_images()), 5), (tiny.encode_images(paths), 3)):
        assert emb.shape == (n, tiny.dim)
        assert emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Paths and PIL images of the same pictures embed alike.
    np.testing.assert_allclose(tiny.encode_images(paths), tiny.encode_images(_images(3)), atol=1e-6)
    text = tiny.encode_texts(TEXTS)
    assert text.shape == (len(TEXTS), tiny.dim)
    assert text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_texts([]).shape == (0, tiny.dim)
    assert tiny.encode_images([]).shape == (0, tiny.dim)


def test_batch_size_invariance(tiny: Encoder) -> None:
    images = _images(7)
    ref = tiny.encode_images(images, batch_size=32)
    for bs in (1, 3):
        np.testing.assert_allclose(tiny.encode_images(images, batch_size=bs), ref, atol=1e-5)
    ref = tiny.encode_texts(TEXTS, batch_size=64)
    for bs in (1, 2):
        np.testing.assert_allclose(tiny.encode_texts(TEXTS, batch_size=bs), ref, atol=1e-5)


def test_random_init_is_deterministic(tiny: Encoder) -> None:
    torch.manual_seed(12345)  # the global RNG state must not matter
    other = Encoder.load(TINY, "none", device="cpu", precision="fp32")
    np.testing.assert_array_equal(other.encode_texts(TEXTS), tiny.encode_texts(TEXTS))
    np.testing.assert_array_equal(other.encode_images(_images()), tiny.encode_images(_images()))


def test_provenance_random(tiny: Encoder) -> None:
    p = tiny.provenance
    assert (p.model, p.pretrained, p.dim, p.precision) == (TINY, "none", 32, "fp32")
    assert p.image_size == tiny.image_size == 32
    assert p.weights_sha256 == "random-init-seed0"
    assert set(p.to_dict()) == {
        "model",
        "pretrained",
        "weights_sha256",
        "dim",
        "image_size",
        "precision",
    }


# --- save -> load -> identical embeddings ---------------------------------------------------------


def test_export_then_load_gives_identical_embeddings(tiny_dir, tiny: Encoder) -> None:
    out, image_emb, text_emb = tiny_dir
    assert (out / weights.CONFIG_FILE).is_file()
    assert (out / weights.WEIGHTS_FILE).is_file()
    for model in (TINY, None):  # None: the directory names its architecture
        enc = Encoder.load(model, str(out), device="cpu")
        assert enc.name == TINY
        np.testing.assert_array_equal(enc.encode_images(_images()), image_emb)
        np.testing.assert_array_equal(enc.encode_texts(TEXTS), text_emb)
        p = enc.provenance
        assert p.weights_sha256 == weights.file_sha256(out / weights.WEIGHTS_FILE)
        assert len(p.weights_sha256) == 64
        assert p.pretrained == str(out.resolve())  # what --pretrained takes to load it again
    # The loaded weights are the exported ones, not a fresh random init.
    assert not np.allclose(tiny.encode_texts(TEXTS), text_emb, atol=1e-4)


def test_export_can_leave_out_a_tower_that_reloads_itself(tmp_path: Path) -> None:
    # The shipped model leaves out its frozen text trunk, which its package provides; here the
    # text transformer is left out and comes back from the (seeded) initialisation instead.
    loaded = load_model(TINY, "none")
    _perturb(loaded.model)
    out = weights.export_model_dir(
        loaded.model, TINY, tmp_path / "m", omit_prefixes=("transformer.",)
    )
    enc = Encoder(loaded, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = Encoder.load(None, str(out), device="cpu")
    np.testing.assert_array_equal(again.encode_texts(TEXTS), enc.encode_texts(TEXTS))
    np.testing.assert_array_equal(again.encode_images(_images()), enc.encode_images(_images()))
    # Leaving out anything else is refused rather than silently random.
    from safetensors.torch import load_file

    state = load_file(out / weights.WEIGHTS_FILE)
    save_file(
        {k: v for k, v in state.items() if not k.startswith("visual.")}, out / weights.WEIGHTS_FILE
    )
    with pytest.raises(ModelError, match="missing"):
        Encoder.load(None, str(out), device="cpu")


def test_export_dir_with_another_model_name_is_refused(tiny_dir) -> None:
    out, _, _ = tiny_dir
    with pytest.raises(ModelError, match=r"holds a 'clipsearch-tiny' model.*--model"):
        Encoder.load("ViT-B-32", str(out), device="cpu")


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A perturbed ViT-B-32 saved as a plain state dict, both ways; and its embeddings."""
    loaded = load_model("ViT-B-32", "none")
    ref = Encoder(loaded, torch.device("cpu"))
    fresh_text = ref.encode_texts(TEXTS[:2])
    _perturb(loaded.model)
    text_emb = ref.encode_texts(TEXTS[:2])
    assert not np.allclose(fresh_text, text_emb, atol=1e-4)  # a load cannot pass for random init
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    root = tmp_path_factory.mktemp("vit")
    torch.save(state, root / "vit.pt")
    save_file(state, str(root / "vit.safetensors"))
    return root, ref.encode_images(_images(2)), text_emb


@pytest.mark.parametrize("name", ["vit.pt", "vit.safetensors"])
def test_standard_architecture_state_dict_file(vit_files, name: str) -> None:
    root, image_emb, text_emb = vit_files
    enc = Encoder.load("ViT-B-32", str(root / name), device="cpu")
    np.testing.assert_array_equal(enc.encode_images(_images(2)), image_emb)
    np.testing.assert_array_equal(enc.encode_texts(TEXTS[:2]), text_emb)
    assert enc.dim == 512
    assert enc.provenance.weights_sha256 == weights.file_sha256(root / name)


# --- errors ---------------------------------------------------------------------------------------


def test_hub_tag_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelError, match="--pretrained") as info:
        Encoder.load("ViT-B-32", "openai", device="cpu")
    assert time.monotonic() - start < 10
    assert "unreachable" in str(info.value)
    assert "local" in str(info.value)


@pytest.mark.skipif(
    bool(os.environ.get("HF_HUB_OFFLINE")) or weights.hub_reachable(timeout=2.0),
    reason="needs the model hub to be unreachable (and HF_HUB_OFFLINE unset)",
)
def test_hub_tag_really_offline_fails_fast() -> None:
    start = time.monotonic()
    with pytest.raises(ModelError, match="--pretrained"):
        Encoder.load("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("model", "pretrained", "match"),
    [
        ("ViT-B-32", "no-such-tag", r"neither a file nor a known tag.*tags: .*openai"),
        (TINY, "/nonexistent/weights.safetensors", "weights file not found"),
        (TINY, "missing.pt", "weights file not found"),
        ("no-such-architecture", "none", "unknown architecture 'no-such-architecture'"),
        ("no-such-architecture", None, "no weights ship with 'no-such-architecture'"),
    ],
)
def test_clear_errors(model: str, pretrained: str | None, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        Encoder.load(model, pretrained, device="cpu")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.safetensors", b"not a checkpoint\n" * 10),
        ("empty.safetensors", b""),
        ("text.pt", b"not a checkpoint\n" * 10),
        ("empty.pt", b""),
        ("truncated.pt", None),
    ],
)
def test_corrupt_files(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        torch.save({"x": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=f"could not load {TINY} with weights .*{name}"):
        Encoder.load(TINY, str(path), device="cpu")


def test_mismatched_files(tmp_path: Path, tiny_dir) -> None:
    out, _, _ = tiny_dir  # tiny weights into other architectures
    for arch in ("ViT-S-32-alt", "RN50"):
        with pytest.raises(ModelError, match=f"could not load {arch}"):
            Encoder.load(arch, str(out / weights.WEIGHTS_FILE), device="cpu")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelError, match=r"without open_clip_config\.json"):
        Encoder.load(TINY, str(tmp_path / "empty_dir"), device="cpu")


def test_bad_precision_and_device() -> None:
    with pytest.raises(ModelError, match="precision"):
        Encoder.load(TINY, "none", device="cpu", precision="fp8")
    with pytest.raises(ModelError, match="device"):
        Encoder.load(TINY, "none", device="gpu")


def test_bf16_close_to_fp32(tiny: Encoder) -> None:
    bf16 = Encoder.load(TINY, "none", device="cpu", precision="bf16")
    assert bf16.provenance.precision == "bf16"
    for a, b in (
        (tiny.encode_images(_images()), bf16.encode_images(_images())),
        (tiny.encode_texts(TEXTS), bf16.encode_texts(TEXTS)),
    ):
        assert b.dtype == np.float32
        cos = (a * b).sum(axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.99
