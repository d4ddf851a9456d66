"""Prompt contexts on the local backend: batching, warm cache and streaming on a shape-realistic tiny MAIRA-2.

The model has MAIRA-2's shapes where they matter for cost: 518 px images, patch 14 (1369 image
tokens per image), frontal + lateral, the grounded-reporting prompt with real-length sections;
only the hidden sizes are small. Random weights generate no findings, so the script first fits the
model for a few dozen AdamW steps to one grounded report of six findings (loss on the assistant
tokens only), which greedy decoding then reproduces. Measurements run in a fresh process on the
saved snapshot, each cold run on a fresh backend (empty caches):

(a) wall(K=4 contexts together) / wall(K=1)            naive ~4, target <= 1.6
(b) wall(same study, new context, warm) / wall(cold)   target <= 0.5
(c) time to the first closed finding / stream total    target <= 0.25 (cold and warm; and "opened":
    the app prefetches a study when it is opened, Generate pressed OPEN_DWELL s later)
(d) peak RSS, prefill (time to first token) and decode (ms per token)

    python benchmarks/bench_contexts.py [--steps 80] [--repeats 3] [--threads 1] [--out DIR] [--snapshot DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.images import load_image_bytes
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import build_tokenizer, default_corpus, make_processor, tiny_config, write_snapshot
from model_backend.types import PromptContext, Report, Study

TARGET_REPORT = (
    "<obj>Moderate right pleural effusion.<box><x8><y62><x36><y90></box></obj>"
    "<obj>Patchy consolidation in the left lower lobe.<box><x58><y55><x86><y82></box></obj>"
    "<obj>The cardiac silhouette is enlarged.<box><x32><y45><x72><y80></box></obj>"
    "<obj>A 1 cm nodule projects over the right upper zone.<box><x22><y20><x30><y28></box></obj>"
    "<obj>Bibasal atelectasis.<box><x10><y78><x38><y92></box><box><x60><y78><x88><y92></box></obj>"
    "<obj>No pneumothorax.</obj>"
)
SECTIONS = {
    "indication": "67-year-old man with fever, productive cough and shortness of breath for three days; history "
    "of congestive heart failure. Evaluate for pneumonia or pleural effusion.",
    "technique": "PA and lateral views of the chest were obtained in the upright position at full inspiration.",
    "comparison": "Chest radiographs from two months earlier, which showed mild cardiomegaly and no effusion.",
}
CONTEXTS = [
    PromptContext(name="A", use_prior=False, **SECTIONS),
    PromptContext(name="B", use_prior=False, **{**SECTIONS, "indication": "Acute dyspnea and hypoxia after surgery; "
                  "assess for pulmonary edema, effusion or collapse of the lower lobes."}),
    PromptContext(name="C", use_prior=False, **{**SECTIONS, "comparison": None}),
    PromptContext(name="D", use_prior=False, **{**SECTIONS, "technique": "Single portable AP view, semi-erect."}),
]  # fmt: skip
NEW_CONTEXT = PromptContext(name="E", use_prior=False, **{**SECTIONS, "indication": "Follow-up of known effusion."})
TARGETS = {"a": 1.6, "b": 0.5, "c": 0.25}
OPEN_DWELL = 1.0  # seconds between opening a study and pressing Generate (a first look at the image)


# ---------------------------------------------------------------------------------------- model
def radiograph(width: int, height: int, seed: int) -> Image.Image:
    """A synthetic chest-radiograph-like picture: dark lungs, bright mediastinum and diaphragm, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    lungs = np.exp(-(((xx - 0.3) / 0.14) ** 2 + ((yy - 0.45) / 0.28) ** 2))
    lungs += np.exp(-(((xx - 0.7) / 0.14) ** 2 + ((yy - 0.45) / 0.28) ** 2))
    picture = 0.8 - 0.5 * lungs + 0.3 * (yy > 0.78) + rng.normal(0, 0.03, xx.shape)
    return Image.fromarray((np.clip(picture, 0, 1) * 255).astype(np.uint8))


def build_study() -> Study:
    def xray(image: Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return load_image_bytes(buffer.getvalue(), "bench.png")

    return Study("bench", frontal=xray(radiograph(1100, 1300, 1)), lateral=xray(radiograph(1200, 1150, 2)))


def fit(model: Maira2ForConditionalGeneration, processor: Maira2Processor, study: Study, steps: int) -> list[float]:
    """AdamW on the language model until every context's prompt is answered by TARGET_REPORT.

    Loss on the assistant's tokens (and the closing eos) only. Curriculum: the first three quarters
    of the steps see only the text after the images (fast, and the model learns the report), the
    rest see the whole ~3000-token sequence (the model learns to look past the image tokens).
    The vision tower and projector stay random and frozen, so image features are computed once.
    """
    frontal, lateral = (Image.fromarray(img.display) for img in (study.frontal, study.lateral))
    examples = []
    with torch.no_grad():
        for context in [*CONTEXTS, NEW_CONTEXT]:
            args = (frontal, lateral, None, context.indication, context.technique, context.comparison, None)
            prompt = processor.format_and_preprocess_reporting_input(*args, get_grounding=True)["input_ids"]
            batch = processor.format_and_preprocess_reporting_input(
                *args, get_grounding=True, assistant_text=TARGET_REPORT
            )
            ids = batch["input_ids"]
            assert torch.equal(ids[:, : prompt.shape[1]], prompt), "the prompt tokenises differently with an answer"
            labels = ids.clone()
            labels[:, : prompt.shape[1]] = -100
            embeds = model.embed_prompt(ids, model.get_image_features(batch["pixel_values"]))
            after_images = int((ids[0] == processor.image_token_id).nonzero().max()) + 1
            examples.append((embeds, labels, after_images))
    language_model = model.language_model
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    language_model.train()
    losses = []
    for step in range(steps):
        embeds, labels, after_images = examples[step % len(examples)]
        if step < steps * 3 // 4:
            embeds, labels = embeds[:, after_images:], labels[:, after_images:]
        loss = language_model(inputs_embeds=embeds, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(language_model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def build_snapshot(out_dir: Path, steps: int) -> Path:
    study = build_study()
    corpus = [*default_corpus(), *SECTIONS.values(), *(c.indication or "" for c in CONTEXTS), TARGET_REPORT]
    tokenizer = build_tokenizer(corpus, vocab_size=900)
    processor = make_processor(tokenizer, image_size=518, patch_size=14)
    config = tiny_config(
        len(tokenizer), processor.image_token_id, image_size=518, patch_size=14, vision_hidden=96, vision_layers=2,
        text_hidden=192, text_layers=3, heads=4, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Maira2ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    start = time.perf_counter()
    losses = fit(model, processor, study, steps)
    print(
        f"fitted the random model to one 6-finding grounded report: {steps} AdamW steps in "
        f"{time.perf_counter() - start:.0f} s, loss {losses[0]:.2f} -> {losses[-1]:.4f}"
    )
    return write_snapshot(out_dir, model, processor)


# ---------------------------------------------------------------------------------------- timing
def closed_findings(report: Report) -> int:
    """Findings that can no longer change: grounded ones end with </obj>; a plain sentence is closed
    once another sentence follows it."""
    if "<obj>" in report.raw_text or "</obj>" in report.raw_text:
        return report.raw_text.count("</obj>")
    return max(0, len(report.findings) - 1)


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def stream_times(backend: LocalBackend, study: Study, context: PromptContext) -> tuple[float, float, float, Report]:
    """(first token, first closed finding, total) seconds of one stream, and its final report."""
    start = time.perf_counter()
    first_token = first_finding = None
    final = None
    for report in backend.stream(study, context):
        now = time.perf_counter() - start
        first_token = first_token if first_token is not None else now
        if first_finding is None and closed_findings(report) >= 1:
            first_finding = now
        final = report
    total = time.perf_counter() - start
    return first_token, first_finding if first_finding is not None else total, total, final


def measure(snapshot: str, study: Study, repeats: int, settings: GenerationSettings) -> dict[str, float]:
    """Best of `repeats` for each quantity (the machine may be shared); cold runs get a fresh backend."""

    def fresh() -> LocalBackend:
        return LocalBackend(snapshot, device="cpu", dtype="float32", settings=settings)

    runs: dict[str, list[float]] = {}

    def keep(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    fresh().generate(study, CONTEXTS[:1])  # warm up torch kernels and allocator, not measured
    for _ in range(repeats):
        one, _ = timed(fresh().generate, study, CONTEXTS[:1])
        four, reports = timed(fresh().generate, study, CONTEXTS)
        keep("k1", one)
        keep("k4", four)
        keep("tokens_k4", sum(r.timing("new_tokens") for r in reports))
        backend = fresh()
        cold, _ = timed(backend.generate, study, [CONTEXTS[0]])
        warm, _ = timed(backend.generate, study, [NEW_CONTEXT])
        keep("cold", cold)
        keep("warm", warm)
        backend = fresh()
        ttft, finding, total, final = stream_times(backend, study, CONTEXTS[0])
        keep("stream_cold_first_token", ttft)
        keep("stream_cold_first_finding", finding)
        keep("stream_cold_total", total)
        keep("stream_tokens", final.timing("new_tokens"))
        ttft, finding, total, _ = stream_times(backend, study, CONTEXTS[0])  # same study + context: warm
        keep("stream_warm_first_token", ttft)
        keep("stream_warm_first_finding", finding)
        keep("stream_warm_total", total)
        backend = fresh()
        warming = threading.Thread(target=backend.prefetch, args=(study,))  # what opening it in the app does
        warming.start()
        time.sleep(OPEN_DWELL)
        keep("prefetch_done_at_click", float(not warming.is_alive()))
        warming.join()
        _, finding, total, _ = stream_times(backend, study, CONTEXTS[0])
        keep("stream_opened_first_finding", finding)
        keep("stream_opened_total", total)
    best = {name: min(values) for name, values in runs.items()}
    best["prefetch_done_at_click"] = statistics.mean(runs["prefetch_done_at_click"])
    for name in ("k1", "k4", "cold", "warm"):
        best[name + "_median"] = statistics.median(runs[name])
    return best


def report_table(m: dict[str, float], example: Report) -> bool:
    rows = [
        ("(a) K=4 together / K=1", m["k4"] / m["k1"], TARGETS["a"], f"{m['k4']:.2f} s / {m['k1']:.2f} s"),
        ("(b) warm new context / cold", m["warm"] / m["cold"], TARGETS["b"], f"{m['warm']:.2f} s / {m['cold']:.2f} s"),
        ("(c) first finding / stream, cold", m["stream_cold_first_finding"] / m["stream_cold_total"], TARGETS["c"],
         f"{m['stream_cold_first_finding']:.2f} s / {m['stream_cold_total']:.2f} s"),
        ("(c) first finding / stream, warm", m["stream_warm_first_finding"] / m["stream_warm_total"], TARGETS["c"],
         f"{m['stream_warm_first_finding']:.2f} s / {m['stream_warm_total']:.2f} s"),
        (f"(c) opened, Generate {OPEN_DWELL:.0f} s later", m["stream_opened_first_finding"] / m["stream_opened_total"],
         TARGETS["c"], f"{m['stream_opened_first_finding']:.2f} s / {m['stream_opened_total']:.2f} s"),
    ]  # fmt: skip
    decode_tokens = max(m["stream_tokens"] - 1, 1)
    per_token = (m["stream_warm_total"] - m["stream_warm_first_token"]) / decode_tokens
    print(f"\nreport (context A, {example.timing('new_tokens'):.0f} new tokens, {len(example.findings)} findings):")
    for finding in example.findings:
        print(f"  - {finding.text}  boxes={len(finding.model_boxes or ())}")
    print(f"\n{'measure':36} {'ratio':>7} {'target':>8}  result  detail")
    ok = True
    for name, ratio, target, detail in rows:
        passed = ratio <= target
        ok &= passed
        print(f"{name:36} {ratio:7.2f} {'<= ' + str(target):>8}  {'PASS' if passed else 'FAIL':6}  {detail}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cold_first, warm_first = m["stream_cold_first_token"], m["stream_warm_first_token"]
    print(f"\n(d) peak RSS {peak_mib:.0f} MiB (the measuring process: inference only)")
    print(f"    prefill (to the first token: images, prompt) cold {cold_first:.2f} s, warm {warm_first:.2f} s")
    print(
        f"    decode: {per_token * 1000:.1f} ms per token ({m['stream_tokens']:.0f} tokens per report); cold stream = "
        f"{cold_first / m['stream_cold_total']:.0%} prefill, {1 - cold_first / m['stream_cold_total']:.0%} decode"
    )
    print(
        f"    K=4 generated {m['tokens_k4']:.0f} tokens in all; medians: K=1 {m['k1_median']:.2f} s, "
        f"K=4 {m['k4_median']:.2f} s, cold {m['cold_median']:.2f} s, warm {m['warm_median']:.2f} s"
    )
    done = m["prefetch_done_at_click"]
    print(f"    opened: the prefetch had finished when Generate was pressed in {done:.0%} of the runs")
    return ok


def run_measurements(snapshot: str, repeats: int) -> int:
    study = build_study()
    processor = Maira2Processor.from_pretrained(snapshot)
    budget = len(processor.tokenizer(TARGET_REPORT, add_special_tokens=False)["input_ids"]) + 16
    settings = GenerationSettings(budget, budget, budget)
    example = LocalBackend(snapshot, device="cpu", dtype="float32", settings=settings).generate(study, CONTEXTS[:1])[0]
    images = [Image.fromarray(img.display) for img in (study.frontal, study.lateral)]
    context = CONTEXTS[0]
    prompt = processor.format_and_preprocess_reporting_input(
        *images, None, context.indication, context.technique, context.comparison, None, get_grounding=True
    )["input_ids"]
    image_tokens = int((prompt == processor.image_token_id).sum())
    print(
        f"snapshot {snapshot}: {processor.num_image_tokens} image tokens per image, frontal + lateral; prompt "
        f"{prompt.shape[1]} tokens ({image_tokens} image + {prompt.shape[1] - image_tokens} text); at most {budget} "
        f"new tokens; torch threads {torch.get_num_threads()}"
    )
    if example.raw_text == TARGET_REPORT:
        print("greedy decoding reproduces the fitted 6-finding report exactly")
    else:
        print("note: greedy output differs from the fitted report (fit with more --steps)")
    ok = report_table(measure(snapshot, study, repeats, settings), example)
    print("\nall targets met" if ok else "\nsome targets missed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="AdamW steps to fit the random model")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: tiny model)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best is reported)")
    parser.add_argument("--out", type=Path, help="where to keep the fitted snapshot (default: a temporary folder)")
    parser.add_argument("--snapshot", help="measure this fitted snapshot (skips building and fitting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.snapshot:
        return run_measurements(args.snapshot, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = build_snapshot(args.out or Path(tmp) / "snapshot", args.steps)
        # Measure in a fresh process, so that peak RSS is inference only (not training).
        command = [sys.executable, __file__, "--snapshot", str(snapshot), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]  # fmt: skip
        return subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False).returncode


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
