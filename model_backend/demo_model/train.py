"""Train the bundled demo model: a small MAIRA-2 on procedural chest phantoms, on CPU.

    python -m model_backend.demo_model.train [--out assets/demo_model] [--steps N] [--seed S] [--minutes M]

Same architecture, prompts and snapshot layout as `microsoft/maira-2` (Dinov2 -> 4-layer MLP
projector -> Llama, official chat template and grounding tokens), only tiny. Training phantoms use
seeds below `TRAIN_SEED_LIMIT`; evaluation (`evaluate.py`) uses seeds from `EVAL_SEED_BASE` on.
Deterministic for a given seed and machine (single-threaded data, seeded torch and numpy).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from model_backend.demo_model import phantoms
from model_backend.demo_model.dataset import (
    N_PATCH_TARGETS,
    Batch,
    Mix,
    PhantomRecord,
    all_phrases,
    build_records,
    collate,
    crop_to_pixels,
    patch_targets,
    sample_example,
)
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import ImagePreprocessing, Maira2Processor
from model_backend.maira2.snapshot import build_tokenizer, default_corpus, make_processor, tiny_config, write_snapshot

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "demo_model"
TRAIN_SEED_LIMIT = 1_000_000
EVAL_SEED_BASE = 10_000_000
TRAINING_FILE = "training.json"
EVALUATION_FILE = "evaluation.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained snapshot (recorded in `training.json`)."""

    seed: int = 0
    steps: int = 2400
    n_phantoms: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    image_size: int = 112
    patch_size: int = 14
    vision_hidden: int = 128
    vision_layers: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    heads: int = 4
    vocab_size: int = 2000
    aux_weight: float = 1.0  # auxiliary per-patch finding-coverage loss on the projected image features
    coverage_pos_weight: float = 10.0  # weight of positive targets (covered patches, present types)
    vision_steps: int = 5000  # stage 1: vision tower + projector on the patch loss alone
    vision_batch_size: int = 32
    vision_lr: float = 2e-3
    phantom_short_side: tuple[int, int] = (384, 640)  # training renders; evaluation uses the full 384-1024
    mix: Mix = field(default_factory=Mix)


# ------------------------------------------------------------------------------- building blocks


def tokenizer_corpus() -> list[str]:
    """Report sentences, phrases and every prompt variant, rendered with the official template."""
    bootstrap = make_processor(build_tokenizer(default_corpus(), vocab_size=400), 14, 14)
    prompts = []
    for has_prior in (False, True):
        for has_lateral in (False, True):
            for grounded in (False, True):
                messages = bootstrap._construct_chat_messages_reporting(
                    has_prior=has_prior, has_lateral=has_lateral, indication=None, technique=None,
                    comparison=None, prior_report=None, get_grounding=grounded,
                )  # fmt: skip
                prompts.append(bootstrap._render(messages, None))
    prompts.append(bootstrap._render(bootstrap._construct_chat_messages_phrase_grounding("cardiomegaly"), None))
    prompts = [p.replace("<image>", " ") for p in prompts]
    return prompts + phantoms.all_template_sentences() + all_phrases()


def build_processor(config: TrainConfig) -> Maira2Processor:
    tokenizer: PreTrainedTokenizerFast = build_tokenizer(tokenizer_corpus(), vocab_size=config.vocab_size)
    return make_processor(tokenizer, config.image_size, config.patch_size)


def build_model(config: TrainConfig, processor: Maira2Processor) -> Maira2ForConditionalGeneration:
    tokenizer = processor.tokenizer
    model_config = tiny_config(
        vocab_size=len(tokenizer),
        image_token_index=processor.image_token_id,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_hidden=config.vision_hidden,
        vision_layers=config.vision_layers,
        text_hidden=config.text_hidden,
        text_layers=config.text_layers,
        heads=config.heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = Maira2ForConditionalGeneration(model_config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def training_size(seed: int, short_side: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of training phantom `seed`: short side in `short_side`, aspect 0.75-1.33."""
    rng = np.random.default_rng([seed, 7])
    short = int(rng.integers(short_side[0], short_side[1] + 1))
    aspect = float(rng.uniform(0.75, 1.33))
    long = int(short * max(aspect, 1 / aspect))
    return (long, short) if aspect >= 1 else (short, long)


def load_or_build_records(
    config: TrainConfig, processor: Maira2Processor, cache: Path | None, log: Callable[[str], None]
) -> tuple[list[PhantomRecord], float, bool]:
    """Render the training phantoms (seeds 0..n-1), or read them from `cache` if it matches.

    Returns the records, the seconds rendering them took (when the cache was built, if read from
    it) and whether they came from the cache. Rendering is deterministic, so both are the same data.
    """
    key = (config.n_phantoms, config.image_size, config.phantom_short_side)
    if cache is not None and cache.exists():
        with cache.open("rb") as f:
            stored = pickle.load(f)
        if stored["key"] == key:
            log(f"phantoms: {len(stored['records'])} read from {cache}")
            return stored["records"], stored["render_seconds"], True
    if config.n_phantoms > TRAIN_SEED_LIMIT:
        raise ValueError(f"at most {TRAIN_SEED_LIMIT} training phantoms (seeds below the evaluation range)")
    start = time.perf_counter()
    records = build_records(
        range(config.n_phantoms),
        processor,
        size_for=lambda seed: training_size(seed, config.phantom_short_side),
        progress=lambda done, total: log(f"phantoms: {done}/{total} rendered ({time.perf_counter() - start:.0f} s)"),
    )
    seconds = time.perf_counter() - start
    if cache is not None:
        with cache.open("wb") as f:
            pickle.dump({"key": key, "records": records, "render_seconds": seconds}, f)
    return records, seconds, False


def batches(
    records: Sequence[PhantomRecord], processor: Maira2Processor, config: TrainConfig, rng: np.random.Generator
):
    """Endless batches: shuffled epochs over the phantoms, a fresh random prompt per visit, and
    examples of similar length batched together (sorted within groups of 8 batches)."""
    prep = processor.image_preprocessing
    pad_id = processor.tokenizer.pad_token_id
    grid = config.image_size // config.patch_size
    group = 8 * config.batch_size
    order: list[int] = []
    while True:
        while len(order) < group:
            order += rng.permutation(len(records)).tolist()
        chosen = [records[i] for i in order[:group]]
        del order[:group]
        examples = [sample_example(r, processor, rng, config.mix) for r in chosen]
        by_length = sorted(range(group), key=lambda i: len(examples[i].input_ids))
        chunks = [by_length[i : i + config.batch_size] for i in range(0, group, config.batch_size)]
        for chunk_index in rng.permutation(len(chunks)):
            chunk = chunks[chunk_index]
            yield collate([examples[i] for i in chunk], [chosen[i] for i in chunk], pad_id, prep, grid)


def losses_on_batch(
    model: Maira2ForConditionalGeneration, probe: PatchProbe, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """(language loss, auxiliary patch loss).

    Language: cross-entropy over target tokens (+ eos) only; the LM head runs only where there is a
    label. Padding is on the right and attention is causal, so pads never reach a real token.
    Auxiliary: `PatchProbe.loss` on the projected image tokens (the probe is dropped after
    training; the snapshot is a plain MAIRA-2).
    """
    image_features = model.get_image_features(batch.pixel_values)
    embeds = model.embed_prompt(batch.input_ids, image_features)
    hidden = model.language_model.model(inputs_embeds=embeds).last_hidden_state
    selected = batch.labels != -100
    logits = model.language_model.lm_head(hidden[selected])
    language = F.cross_entropy(logits, batch.labels[selected])
    return language, probe.loss(image_features, batch.patch_targets, batch.patch_weights)


class PatchProbe(torch.nn.Module):
    """Training-only linear probe on the projected image tokens (not part of the snapshot).

    Per patch it predicts how much of the patch each finding kind's boxes cover and which finding
    types (kind + side) the image shows (binary cross-entropy on `patch_targets`, only where boxes
    are known), and the patch's own row and column (cross-entropy). Coverage teaches the
    from-scratch vision tower where findings are; the image-level types put the answer to "what,
    on which side" into every image token, so the language model can read it with any attention
    pattern; row and column keep each token's position readable, which the language model needs
    for zones and box coordinates (its rotary positions only say how far back a token is).
    """

    def __init__(self, hidden: int, grid: int, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.grid = grid
        self.linear = torch.nn.Linear(hidden, N_PATCH_TARGETS + 2 * grid)
        self.register_buffer("pos_weight", torch.tensor(pos_weight), persistent=False)

    def loss(self, image_features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.linear(image_features)
        n_targets = N_PATCH_TARGETS
        per_patch = F.binary_cross_entropy_with_logits(
            out[..., :n_targets], targets, reduction="none", pos_weight=self.pos_weight
        )
        weights = weights[:, None, None].expand_as(per_patch)
        coverage = (per_patch * weights).sum() / weights.sum().clamp(min=1)
        index = torch.arange(self.grid * self.grid).repeat(image_features.shape[0])
        rows = F.cross_entropy(out[..., n_targets : n_targets + self.grid].reshape(-1, self.grid), index // self.grid)
        cols = F.cross_entropy(out[..., n_targets + self.grid :].reshape(-1, self.grid), index % self.grid)
        return coverage + 0.1 * (rows + cols)


def pretrain_vision(
    model: Maira2ForConditionalGeneration,
    probe: PatchProbe,
    records: Sequence[PhantomRecord],
    config: TrainConfig,
    prep: ImagePreprocessing,
    rng: np.random.Generator,
    log: Callable[[str], None],
    log_every: int,
) -> None:
    """Stage 1: teach the from-scratch vision tower (+ projector) where findings are, with the patch
    loss alone on frontal and prior views. Vision steps are cheap (no language model), so this is
    the fastest way to features the language model can read boxes from."""
    grid = config.image_size // config.patch_size
    views = [
        (record, crop, findings)
        for record in records
        for crop, findings in (
            (record.crops["frontal"], record.findings),
            (record.crops.get("prior"), record.prior_findings),
        )
        if crop is not None
    ]
    params = [*model.vision_tower.parameters(), *model.multi_modal_projector.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, betas=(0.9, 0.98), weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup, config.vision_steps, config)
    )
    start = time.perf_counter()
    losses = []
    for step in range(1, config.vision_steps + 1):
        chosen = [views[i] for i in rng.integers(len(views), size=config.vision_batch_size)]
        pixels = torch.stack([crop_to_pixels(crop, prep) for _, crop, _ in chosen])
        targets = torch.stack([torch.from_numpy(patch_targets(f, r.width, r.height, grid)) for r, _, f in chosen])
        loss = probe.loss(model.get_image_features(pixels), targets, torch.ones(len(chosen)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == config.vision_steps:
            log(
                f"vision step {step}/{config.vision_steps}  patch loss {np.mean(losses[-log_every:]):.4f}  "
                f"{time.perf_counter() - start:.0f} s"
            )


def lr_factor(step: int, warmup: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "embed" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


# ------------------------------------------------------------------------------- entry points


def train(
    config: TrainConfig | None = None,
    *,
    out: str | Path = DEFAULT_OUT,
    minutes: float | None = None,
    cache: str | Path | None = None,
    log_every: int = 25,
    log: Callable[[str], None] = print,
    threads: int = 1,
    **overrides,
) -> Path:
    """Train and write an official-layout snapshot (+ `training.json` and a model card) to `out`.

    Keyword overrides replace fields of `config` (e.g. `train(steps=2, n_phantoms=4, out=tmp)`).
    `minutes` caps the wall-clock training time (the snapshot records where it stopped). One thread
    by default (tests; on a busy 2-core machine two contending threads are slower than one); the
    command line uses two, for a machine left to the training.
    """
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    if isinstance(config.mix, dict):
        config = TrainConfig(**{**asdict(config), "mix": Mix(**config.mix)})
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    processor = build_processor(config)
    records, render_seconds, from_cache = load_or_build_records(config, processor, Path(cache) if cache else None, log)
    model = build_model(config, processor)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters; {processor.num_image_tokens} tokens per image")
    probe = PatchProbe(config.text_hidden, config.image_size // config.patch_size, config.coverage_pos_weight)
    rng = np.random.default_rng(config.seed)
    model.train()
    vision_start = time.perf_counter()
    pretrain_vision(model, probe, records, config, processor.image_preprocessing, rng, log, log_every * 4)
    vision_seconds = time.perf_counter() - vision_start
    optimizer = make_optimizer(torch.nn.ModuleList([model, probe]), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.warmup, config.steps, config)
    )
    stream = batches(records, processor, config, rng)
    train_start = time.perf_counter()
    losses: list[float] = []
    aux_losses: list[float] = []
    history = []
    step = 0
    for step in range(1, config.steps + 1):
        batch = next(stream)
        language, aux = losses_on_batch(model, probe, batch)
        optimizer.zero_grad(set_to_none=True)
        (language + config.aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *probe.parameters()], config.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(language.item())
        aux_losses.append(aux.item())
        elapsed = time.perf_counter() - train_start
        if step % log_every == 0 or step == config.steps:
            mean, mean_aux = float(np.mean(losses[-log_every:])), float(np.mean(aux_losses[-log_every:]))
            history.append({"step": step, "loss": round(mean, 4), "aux": round(mean_aux, 4), "seconds": round(elapsed)})
            log(
                f"step {step}/{config.steps}  loss {mean:.4f}  aux {mean_aux:.4f}  "
                f"lr {scheduler.get_last_lr()[0]:.2e}  {elapsed:.0f} s"
            )
        if minutes is not None and elapsed > minutes * 60:
            log(f"time cap of {minutes} min reached at step {step}")
            break
    model.eval()
    out_dir = write_snapshot(out, model, processor)
    summary = {
        "config": asdict(config),
        "steps_done": step,
        "parameters": n_params,
        "tokens_per_image": processor.num_image_tokens,
        "vocab_size": len(processor.tokenizer),
        "render_seconds": round(render_seconds, 1),
        "phantoms_from_cache": from_cache,
        "vision_seconds": round(vision_seconds, 1),
        "train_seconds": round(time.perf_counter() - train_start, 1),
        "final_loss": round(float(np.mean(losses[-log_every:])), 4) if losses else None,
        "history": history,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "command": (
            f"python -m model_backend.demo_model.train --seed {config.seed} --phantoms {config.n_phantoms} "
            f"--vision-steps {config.vision_steps} --steps {config.steps} --batch-size {config.batch_size} "
            f"--lr {config.lr} --image-size {config.image_size} --threads {threads}"
            + (f" --minutes {minutes}" if minutes is not None else "")
        ),
    }
    (out_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2))
    write_model_card(out_dir)
    log(f"snapshot written to {out_dir} ({snapshot_megabytes(out_dir):.1f} MB)")
    return out_dir


def snapshot_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6


def write_model_card(folder: str | Path) -> Path:
    """README.md from `training.json` and, when present, `evaluation.json`."""
    folder = Path(folder)
    training = json.loads((folder / TRAINING_FILE).read_text())
    evaluation_path = folder / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else None
    config = training["config"]
    lines = [
        "# MAIRA-2 demo model (synthetic chest phantoms)",
        "",
        "A tiny model of the MAIRA-2 architecture, bundled so that the app works offline: it generates",
        "grounded reports, phrase groundings and plain findings for **procedurally generated chest phantoms**",
        "(`model_backend/demo_model/phantoms.py`). It uses the official prompts, chat template, grounding tokens,",
        "processor files and checkpoint key names, so it runs through exactly the same code as `microsoft/maira-2`.",
        "",
        "**Not a medical model.** It has never seen a real radiograph. Its output on real images is meaningless.",
        "Do not use it for any clinical, diagnostic or research conclusion; it exists to exercise the software.",
        "",
        "## What it was trained on",
        "",
        f"- {config['n_phantoms']} phantoms (seeds 0..{config['n_phantoms'] - 1}; training seeds are always below "
        f"{TRAIN_SEED_LIMIT:,}), short side {config['phantom_short_side'][0]}-{config['phantom_short_side'][1]} px, "
        "aspect 0.75-1.33, 8/16-bit PNG, read through the app's image loader.",
        "- Findings: consolidation, mass, nodule (side + lung zone), pleural effusion, apical pneumothorax (side),",
        "  cardiomegaly; 0-3 per study; normal statements for the rest. With a prior image, sentences say whether a",
        "  finding is new, unchanged or increased.",
        f"- Tasks per example: grounded reporting {config['mix']['grounded']:.0%}, plain findings "
        f"{config['mix']['findings']:.0%}, phrase grounding the rest; lateral and prior images, indication, "
        "technique, comparison and prior report randomly present or missing. A fresh prompt context is drawn "
        "every time a phantom is visited.",
        "- Sizes: nodules 3-6 % of the image width across (about 10-20 mm), masses 9-15 % (well defined,",
        "  dense), consolidation 16-28 % (patchy, faint, ill-defined), so that the kinds differ as they do on film.",
        "- Language loss on assistant tokens (and end-of-sequence) only. Training-only auxiliary loss: a linear",
        "  probe on each projected image token predicts how much of that patch each finding kind's box covers,",
        "  which finding types (kind + side) the image shows, and the token's own row and column (frontal and prior",
        f"  views; covered patches weighted {config['coverage_pos_weight']}x). Stage 1 trains the vision tower and",
        "  projector on that loss alone (cheap, no language model); stage 2 trains everything on language +",
        "  auxiliary loss. The probe is not saved.",
        "",
        "## Architecture",
        "",
        "| part | size |",
        "|---|---|",
        f"| image | {config['image_size']} px square crop, patch {config['patch_size']}, "
        f"{training['tokens_per_image']} tokens per image |",
        f"| vision (Dinov2) | hidden {config['vision_hidden']}, {config['vision_layers']} layers, "
        f"{config['heads']} heads |",
        f"| projector | 4-layer MLP (GELU) to {config['text_hidden']} |",
        f"| language model (Llama) | hidden {config['text_hidden']}, {config['text_layers']} layers, "
        f"{config['heads']} heads, vocabulary {training['vocab_size']} |",
        f"| parameters | {training['parameters'] / 1e6:.2f} M (float32 weights) |",
        "",
        "## Training",
        "",
        f"- Command: `{training['command']}`",
        f"- Stage 1: {config['vision_steps']} vision steps, batch {config['vision_batch_size']}, "
        f"lr {config['vision_lr']}.",
        f"- Stage 2: seed {config['seed']}; {training['steps_done']} of {config['steps']} steps, "
        f"batch {config['batch_size']}, "
        f"AdamW lr {config['lr']} (warm-up {config['warmup']}, cosine to {config['min_lr_ratio']} x), "
        f"weight decay {config['weight_decay']}, gradient clipping {config['grad_clip']}.",
        f"- Time: {training['render_seconds'] / 60:.1f} min rendering phantoms"
        + (" (this run read them from a cache built by the same code)" if training["phantoms_from_cache"] else "")
        + " + "
        f"{training['vision_seconds'] / 60:.1f} min stage 1 + {training['train_seconds'] / 60:.1f} min stage 2 "
        f"on {training['threads']} CPU thread(s) "
        f"({training['machine']}, torch {training['torch']}).",
        f"- Final training loss: {training['final_loss']}.",
        "",
        "## Evaluation",
        "",
    ]
    if evaluation is None:
        lines.append("Not evaluated yet: run `python -m model_backend.demo_model.evaluate --write-card`.")
    else:
        lines += [
            f"Command: `{evaluation['command']}`; {evaluation['n']} fresh phantoms (seeds {evaluation['first_seed']:,} "
            f"to {evaluation['last_seed']:,}, never used in training; default sizes, short side 384-1024 px, aspect "
            "0.75-1.33), each with the context it comes with (lateral and prior when present), through the public",
            "backend API as the app runs it (`load_backend`, `generate`, tolerant parser, `model_to_image_box`).",
            "",
            "| metric | value |",
            "|---|---|",
            f"| finding micro F1 (kind + side) | {evaluation['micro_f1']:.3f} "
            f"(P {evaluation['precision']:.3f}, R {evaluation['recall']:.3f}) |",
            f"| mean IoU of matched boxes (image frame) | {evaluation['mean_iou']:.3f} "
            f"({evaluation['n_matched']} matched findings) |",
            f"| complete (cleanly parsed) outputs | {evaluation['complete']:.1%} |",
            f"| seconds per study (CPU) | {evaluation['seconds_per_study']:.2f} |",
        ]
        per_kind = evaluation.get("per_kind_iou", {})
        if per_kind:
            lines += ["", "Mean IoU per kind: " + ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items()) + "."]
    lines += ["", "## Licence", "", "MIT, as the rest of this repository.", ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="snapshot folder (default: assets/demo_model)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="stage 2 (full model) steps")
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="stage 1 (vision) steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap on the training loop")
    parser.add_argument("--phantoms", type=int, default=defaults.n_phantoms, help="training phantoms to render")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenCV threads (default 2)")
    parser.add_argument("--cache", type=Path, default=None, help="pickle of rendered phantoms, reused when it matches")
    args = parser.parse_args(argv)
    train(
        out=args.out, minutes=args.minutes, cache=args.cache, threads=args.threads, steps=args.steps,
        vision_steps=args.vision_steps, seed=args.seed,
        n_phantoms=args.phantoms, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
