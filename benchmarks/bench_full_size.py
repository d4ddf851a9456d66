"""The context benchmark at full MAIRA-2 size with random bf16 weights, for a GPU machine.

RAD-DINO-shaped vision tower (ViT-B/14 at 518 px: hidden 768, 12 layers, 12 heads), the 4-layer
projector, a Llama-7B-shaped language model (hidden 4096, 32 layers, 32 heads, MLP 11008). The
vocabulary is the benchmark tokenizer's (~900 tokens instead of 32k: 0.1 % of the weights instead
of 2 %, so decode bandwidth is slightly under-stated). The snapshot is written to disk and loaded
through `LocalBackend` exactly as a real one. Random weights write no report, so end-of-sequence is
ignored and every run decodes exactly `--new-tokens` tokens.

Prints (a) K=4 / K=1, (b) warm new context / cold, prefill and per-token decode times, decode
tokens/s against the bandwidth bound (weight bytes / HBM bandwidth), peak GPU memory, and (c) for
the benchmark's 6-finding report (`bench_contexts.TARGET_REPORT`): time to its first closed finding
/ total, cold, warm and opened (prefetch done), from the measured prefill and decode times.

    python benchmarks/bench_full_size.py [--new-tokens 86] [--bandwidth 4.8e12] [--out /tmp/full]
    python benchmarks/bench_full_size.py --small       # smoke test of this script on a CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_contexts import CONTEXTS, NEW_CONTEXT, SECTIONS, TARGET_REPORT, build_study, stream_times, timed

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.maira2.configuration import Maira2Config
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import (
    build_tokenizer,
    default_corpus,
    make_processor,
    tiny_config,
    write_snapshot,
)

FULL = {"vision": (768, 12, 12, 3072), "text": (4096, 32, 32, 11008)}
SMALL = {"vision": (64, 2, 4, 128), "text": (128, 2, 4, 256)}


def config_and_processor(
    sizes: dict[str, tuple[int, int, int, int]], vocab_size: int | None = None
) -> tuple[Maira2Config, Maira2Processor]:
    """The benchmark's tokenizer in a 518 px / patch 14 processor, and a config of the given sizes
    (hidden, layers, heads, MLP width); embedding rows: the tokenizer's unless `vocab_size` is given."""
    corpus = [*default_corpus(), *SECTIONS.values(), *(c.indication or "" for c in CONTEXTS), TARGET_REPORT]
    tokenizer = build_tokenizer(corpus, vocab_size=900)
    processor = make_processor(tokenizer, image_size=518, patch_size=14)
    v_hidden, v_layers, v_heads, v_mlp = sizes["vision"]
    t_hidden, t_layers, t_heads, t_mlp = sizes["text"]
    config = tiny_config(
        vocab_size or len(tokenizer), processor.image_token_id, image_size=518, patch_size=14, vision_hidden=v_hidden,
        vision_layers=v_layers, text_hidden=t_hidden, text_layers=t_layers, heads=t_heads, vision_heads=v_heads,
        vision_intermediate=v_mlp, text_intermediate=t_mlp, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return config, processor


def build(out: Path, sizes: dict[str, tuple[int, int, int, int]], device: str, dtype: torch.dtype) -> Path:
    """Random-weight snapshot of the given sizes (initialised on `device`, saved in `dtype`)."""
    config, processor = config_and_processor(sizes)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Maira2ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    path = write_snapshot(out, model, processor)
    del model
    return path


def tokens_to_first_finding(backend: LocalBackend) -> tuple[int, int]:
    """(tokens up to and including the first `</obj>`, tokens in all) of the benchmark report."""
    tokenizer = backend.processor.tokenizer
    first = TARGET_REPORT.index("</obj>") + len("</obj>")
    return len(tokenizer(TARGET_REPORT[:first], add_special_tokens=False)["input_ids"]), len(
        tokenizer(TARGET_REPORT, add_special_tokens=False)["input_ids"]
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(snapshot: Path, device: str, dtype: str, new_tokens: int, repeats: int) -> dict[str, float]:
    settings = GenerationSettings(new_tokens, new_tokens, new_tokens)

    def fresh() -> LocalBackend:
        backend = LocalBackend(str(snapshot), device=device, dtype=dtype, settings=settings)
        backend.eos_id = -1  # random weights: decode exactly `new_tokens` tokens
        return backend

    study = build_study()
    backend = fresh()
    backend.generate(study, CONTEXTS[:1])  # warm-up: kernels, allocator
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, float("inf")), value)

    for _ in range(repeats):
        for name, contexts in (("k1", CONTEXTS[:1]), ("k4", CONTEXTS)):
            backend = fresh()
            sync(device)
            seconds, _ = timed(backend.generate, study, contexts)
            keep(name, seconds)
        sync(device)
        seconds, _ = timed(backend.generate, study, [NEW_CONTEXT])  # same images, new context: warm
        keep("warm", seconds)
        ttft, _, total, _ = stream_times(fresh(), study, CONTEXTS[0])
        keep("cold_first_token", ttft)
        keep("cold_total", total)
        ttft, _, total, _ = stream_times(backend, study, NEW_CONTEXT)
        keep("warm_first_token", ttft)
        keep("warm_total", total)
    best["first_finding_tokens"], best["report_tokens"] = tokens_to_first_finding(backend)
    best["parameter_bytes"] = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    best["language_bytes"] = sum(p.numel() * p.element_size() for p in backend.model.language_model.parameters())
    return best


def report(m: dict[str, float], new_tokens: int, bandwidth: float, device: str) -> None:
    per_token = (m["warm_total"] - m["warm_first_token"]) / max(new_tokens - 1, 1)
    first, length = m["first_finding_tokens"], m["report_tokens"]

    def ratio(prefill: float) -> float:
        return (prefill + (first - 1) * per_token) / (prefill + (length - 1) * per_token)

    bound = bandwidth / m["language_bytes"]
    print(f"weights {m['parameter_bytes'] / 1e9:.2f} GB (language model {m['language_bytes'] / 1e9:.2f} GB)")
    print(
        f"(a) K=4 / K=1                 {m['k4'] / m['k1']:.2f}  ({m['k4']:.2f} s / {m['k1']:.2f} s, "
        f"{new_tokens} tokens each)"
    )
    print(f"(b) warm new context / cold   {m['warm'] / m['k1']:.2f}  ({m['warm']:.2f} s / {m['k1']:.2f} s)")
    print(f"    prefill: cold {m['cold_first_token']:.3f} s, warm {m['warm_first_token']:.3f} s")
    print(
        f"    decode: {per_token * 1000:.1f} ms per token = {1 / per_token:.1f} tokens/s; bandwidth bound "
        f"{bound:.1f} tokens/s ({bandwidth / 1e12:.1f} TB/s / {m['language_bytes'] / 1e9:.2f} GB) -> "
        f"{(1 / per_token) / bound:.0%} of the bound"
    )
    print(f"(c) first finding after {first} of {length} tokens (the 6-finding report), from these times:")
    print(
        f"    cold {ratio(m['cold_first_token']):.2f}, warm or opened {ratio(m['warm_first_token']):.2f} (target 0.25)"
    )
    if device.startswith("cuda"):
        print(f"(d) peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny hidden sizes on the CPU (smoke test)")
    parser.add_argument("--new-tokens", type=int, default=86, help="tokens decoded per context (default: 86)")
    parser.add_argument("--bandwidth", type=float, default=4.8e12, help="HBM bytes/s (H200: 4.8e12)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="snapshot folder (default: a temporary folder)")
    args = parser.parse_args()
    device = "cpu" if args.small else "cuda"
    dtype = torch.float32 if args.small else torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        snapshot = build(args.out or Path(tmp) / "full", SMALL if args.small else FULL, device, dtype)
        print(f"random-weight snapshot written in {time.perf_counter() - start:.0f} s")
        dtype_name = str(dtype).removeprefix("torch.")
        report(measure(snapshot, device, dtype_name, args.new_tokens, args.repeats), args.new_tokens,
               args.bandwidth, device)  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
