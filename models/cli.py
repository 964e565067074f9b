"""``clipsearch train``, ``eval ...`` and ``models``: thin calls into the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models import registry

app = typer.Typer(no_args_is_help=True)
eval_app = typer.Typer(
    no_args_is_help=True, help="Measure a model: retrieval recall, zero-shot accuracy."
)
app.add_typer(eval_app, name="eval")


@app.command("train")
def train_command(
    data: Path = typer.Option(
        ..., help="Training pairs: CSV, TSV or JSONL of (image path, caption)."
    ),
    out: Path = typer.Option(
        ..., help="Run directory: checkpoints/, best/ (exported model), logs."
    ),
    image_root: Path | None = typer.Option(
        None, help="Image paths are relative to this (default: beside --data)."
    ),
    val_data: Path | None = typer.Option(
        None, help="Validation pairs; the best epoch by recall is exported."
    ),
    split: str | None = typer.Option(
        None, help="Keep only rows whose 'split' column has this value."
    ),
    val_split: str | None = typer.Option(None, help="Split of --val-data to validate on."),
    image_col: str = typer.Option("filepath", help="Column holding the image path."),
    text_col: str = typer.Option("caption", help="Column holding the caption."),
    model: str = typer.Option(
        registry.DEFAULT_MODEL, help="Architecture ('clipsearch models' lists them)."
    ),
    pretrained: str | None = typer.Option(
        None, help="Start from: hub tag, local file or dir, or 'none'."
    ),
    loss: str = typer.Option("clip", help="clip (InfoNCE) or siglip (sigmoid)."),
    local_loss: bool = typer.Option(
        False,
        help="Each process scores only its own rows against the global batch (same "
        "gradients, 1/N of the logits).",
    ),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(
        64, min=2, help="Per process; the global batch is this x processes."
    ),
    lr: float = typer.Option(5e-4, min=0.0),
    weight_decay: float = typer.Option(0.1, min=0.0),
    warmup_steps: int = typer.Option(100, min=0),
    accum_steps: int = typer.Option(
        1, min=1, help="Micro-batches per step, all in one contrastive batch (more negatives)."
    ),
    precision: str = typer.Option(
        "auto", help="auto (bf16 autocast with AMX or a GPU, else fp32), fp32, bf16, fp16 (GPU)."
    ),
    seed: int = typer.Option(0),
    lock_image: bool = typer.Option(False, help="Freeze the image tower."),
    lock_text: bool = typer.Option(
        False, help="Freeze the text trunk (LiT); its outputs are cached."
    ),
    aug_scale: tuple[float, float] = typer.Option(
        (0.5, 1.0), help="Random-resized-crop area range."
    ),
    workers: int = typer.Option(2, min=0, help="DataLoader decoding processes."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints/latest.pt exactly."),
    cached_trunks: bool = typer.Option(
        False,
        help="The CPU recipe for pretrained towers: run each tower's frozen bottom once per "
        "image view and caption, cache it, and train only the tops (see MODEL_CARD.md).",
    ),
    image_views: int = typer.Option(
        2, min=0, help="With --cached-trunks: augmented views cached per training image."
    ),
    keyword_texts: int = typer.Option(
        0,
        min=0,
        help="With --cached-trunks: add this many one-word texts per batch (a noun of one of "
        "the batch's captions), matched to every image of the batch whose captions use it; "
        "teaches the short queries people type.",
    ),
    unlock_image_stages: int = typer.Option(
        0, min=0, help="With --cached-trunks: last image stages trained (0: head only)."
    ),
    unlock_text_layers: int = typer.Option(
        0, min=0, help="With --cached-trunks: last text layers trained (0: head only)."
    ),
    trunk_lr_scale: float = typer.Option(
        0.1, min=0.0, help="With --cached-trunks: learning rate of unlocked layers / --lr."
    ),
    cache_dir: Path | None = typer.Option(
        None, help="With --cached-trunks: where caches live (default OUT/cache); share it."
    ),
    log_every: int = typer.Option(10, min=1, help="Log a progress line every N steps."),
    checkpoint_every: int = typer.Option(
        1,
        min=1,
        help="Validate, checkpoint and export the best model every N epochs (and at the end).",
    ),
) -> None:
    """Train or fine-tune a dual encoder contrastively; runs unchanged under torchrun."""
    from models.train import TrainConfig, train

    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        image_root=str(image_root) if image_root else None,
        val_data=str(val_data) if val_data else None,
        split=split,
        val_split=val_split,
        image_col=image_col,
        text_col=text_col,
        model=model,
        pretrained=pretrained,
        loss=loss,
        local_loss=local_loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        accum_steps=accum_steps,
        precision=precision,
        seed=seed,
        lock_image=lock_image,
        lock_text=lock_text,
        aug_scale=aug_scale,
        workers=workers,
        device=device,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        cached_trunks=cached_trunks,
        image_views=image_views,
        keyword_texts=keyword_texts,
        unlock_image_stages=unlock_image_stages,
        unlock_text_layers=unlock_text_layers,
        trunk_lr_scale=trunk_lr_scale,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    result = train(cfg, resume=resume)
    if result:
        typer.echo(json.dumps(result))


@app.command("bank")
def bank_command(
    data: CaptionDataOpt,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    split: SplitOpt = None,
    split_col: SplitColOpt = "split",
    text_col: TextColOpt = "caption",
    size: Annotated[int, typer.Option("--size", min=1, help="Captions in the bank.")] = 10_000,
    k: Annotated[int, typer.Option("--k", min=1, help="Nearest queries averaged.")] = 32,
    weight: Annotated[
        float, typer.Option("--weight", min=0.0, help="How much of r(x) a score loses.")
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the caption sample.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Write the model directory's query bank (query_bank.npz): a sample of training captions
    that text->image search uses against hub images (models/hubness.py)."""
    from models import hubness
    from models.data import read_pairs
    from models.errors import ModelError
    from models.evaluate import embed_texts

    encoder = _eval_encoder(model, pretrained, device, precision)
    directory = encoder.loaded.source.directory
    if directory is None:
        raise ModelError(
            "a query bank belongs in an exported model directory: pass --pretrained DIR "
            "(a clipsearch train output's best/, or a model shipped with clipsearch)"
        )
    pairs = read_pairs(
        data, text_col=text_col, split=split, split_col=split_col, check_images=False
    )
    texts = hubness.sample([p.text for p in pairs], size, seed)
    if k > len(texts):
        raise ModelError(f"--k {k} is more than the {len(texts)} distinct captions of the bank")
    bank = hubness.QueryBank(
        embed_texts(encoder, texts), k, weight, encoder.provenance.weights_sha256
    )
    path = directory / hubness.BANK_FILE
    bank.save(path)
    typer.echo(f"wrote {path}: {len(texts)} captions, k={k}, weight={weight}")


@app.command("models")
def list_models() -> None:
    """List every architecture name --model accepts (the project's own first)."""
    for name in registry.list_architectures():
        shipped = " (weights shipped)" if registry.shipped_weights(name) else ""
        typer.echo(f"{name}{shipped}")


# --- clipsearch eval retrieval / zeroshot --------------------------------------------------------

_EVAL_MODEL_HELP = (
    "Architecture name ('clipsearch models' lists them); may be omitted when --pretrained is an "
    "exported model directory, which names its own."
)
_EVAL_PRETRAINED_HELP = (
    "Weights: a local file (.safetensors/.pt), an exported model directory, an open_clip hub tag, "
    "or 'none' for random weights. Default: the weights shipped with --model."
)


def _eval_encoder(model: str | None, pretrained: str | None, device: str, precision: str):
    from models.encoder import Encoder

    return Encoder.load(model, pretrained, device=device, precision=precision)


def _eval_workers(workers: int | None) -> int:
    import os

    return min(4, os.cpu_count() or 1) if workers is None else workers


def _eval_print(result: dict, as_json: bool, title: str, provenance: dict) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(_eval_round(result), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    counts = {k: v for k, v in result.items() if k.startswith("n")}
    table = Table(title=title, caption=", ".join(f"{k}={v}" for k, v in counts.items()))
    directions = {k: v for k, v in result.items() if isinstance(v, dict)}
    if directions:  # retrieval: one row per direction, one column per K
        table.add_column("direction")
        for k in next(iter(directions.values())):
            table.add_column(k, justify="right")
        for name, recalls in directions.items():
            table.add_row(name.replace("_", " "), *(f"{v:.2f}" for v in recalls.values()))
    else:  # zero-shot: one row per metric
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in result.items():
            if k not in counts:
                table.add_row(k, f"{v:.2f}")
    console = Console()
    console.print(table)
    line = ", ".join(f"{k}={v}" for k, v in provenance.items())
    console.print(line, style="dim", markup=False, highlight=False)


def _eval_round(value):
    if isinstance(value, dict):
        return {k: _eval_round(v) for k, v in value.items()}
    return round(value, 2) if isinstance(value, float) else value


# Options shared by both eval commands.
ImageRootOpt = Annotated[
    str | None,
    typer.Option(
        "--image-root", help="Directory image paths are relative to (default: the file's)."
    ),
]
ModelOpt = Annotated[str | None, typer.Option("--model", help=_EVAL_MODEL_HELP)]
PretrainedOpt = Annotated[str | None, typer.Option("--pretrained", help=_EVAL_PRETRAINED_HELP)]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Keep only rows of this split.")]
SplitColOpt = Annotated[str, typer.Option("--split-col", help="Column holding the split name.")]
ImageColOpt = Annotated[str, typer.Option("--image-col", help="Column holding image paths.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs per forward pass.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Image decoding processes (default: min(4, CPU cores))."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32 or bf16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")]
CaptionDataOpt = Annotated[
    str,
    typer.Option("--data", help="CSV/TSV/JSONL file with an image path and a caption per row."),
]
TextColOpt = Annotated[str, typer.Option("--text-col", help="Column holding captions.")]


@eval_app.command("retrieval")
def eval_retrieval(
    data: CaptionDataOpt,
    image_root: ImageRootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    split: SplitOpt = None,
    split_col: SplitColOpt = "split",
    image_col: ImageColOpt = "filepath",
    text_col: TextColOpt = "caption",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    hubness: Annotated[
        bool,
        typer.Option(
            "--hubness/--no-hubness",
            help="Rank text->image as search does, with the model's query bank (if it has one).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Image<->text retrieval recall@1/5/10 (percent); an image counts as found by any caption."""
    from models.data import read_pairs
    from models.evaluate import evaluate_retrieval

    pairs = read_pairs(data, image_root, image_col, text_col, split=split, split_col=split_col)
    encoder = _eval_encoder(model, pretrained, device, precision)
    result = evaluate_retrieval(
        encoder, pairs, batch_size, _eval_workers(workers), hubness_correction=hubness
    )
    _eval_print(result, as_json, "Retrieval recall (%)", encoder.provenance.to_dict())


@eval_app.command("zeroshot")
def eval_zeroshot(
    data: Annotated[
        str,
        typer.Option(
            "--data", help="CSV/TSV/JSONL file with an image path and a class label per row."
        ),
    ],
    image_root: ImageRootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    split: SplitOpt = None,
    split_col: SplitColOpt = "split",
    image_col: ImageColOpt = "filepath",
    label_col: Annotated[
        str, typer.Option("--label-col", help="Column holding class labels.")
    ] = "label",
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot classification top-1/top-5 accuracy (percent); the classes are the labels seen."""
    from models.data import read_pairs
    from models.evaluate import evaluate_zeroshot

    pairs = read_pairs(data, image_root, image_col, label_col, split=split, split_col=split_col)
    encoder = _eval_encoder(model, pretrained, device, precision)
    result = evaluate_zeroshot(
        encoder, pairs, batch_size=batch_size, num_workers=_eval_workers(workers)
    )
    _eval_print(result, as_json, "Zero-shot accuracy (%)", encoder.provenance.to_dict())


@eval_app.command("keywords")
def eval_keywords(
    data: CaptionDataOpt,
    image_root: ImageRootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    split: SplitOpt = None,
    split_col: SplitColOpt = "split",
    image_col: ImageColOpt = "filepath",
    text_col: TextColOpt = "caption",
    words: Annotated[
        int, typer.Option("--words", min=1, help="How many of the most frequent nouns to query.")
    ] = 50,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    as_json: JsonOpt = False,
) -> None:
    """One-word queries: precision@10 and mAP for the most frequent caption nouns, bare and
    through the query templates."""
    from models.data import read_pairs
    from models.keywords import evaluate_keywords

    pairs = read_pairs(data, image_root, image_col, text_col, split=split, split_col=split_col)
    encoder = _eval_encoder(model, pretrained, device, precision)
    result = evaluate_keywords(
        encoder, pairs, words, batch_size=batch_size, num_workers=_eval_workers(workers)
    )
    if as_json:
        typer.echo(json.dumps(_eval_round(result), indent=2))
        return
    table = {k: result[k] for k in ("bare", "templates")} | {"n_images": result["n_images"]}
    _eval_print(table, False, "One-word queries", encoder.provenance.to_dict())
    typer.echo(
        "P@10 per word (templates): "
        + ", ".join(f"{w} {p:.1f}" for w, p in result["words"].items())
    )
