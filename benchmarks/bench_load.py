"""Full-size MAIRA-2 from disk on this machine's CPU: load time, peak memory, one short generation.

Writes a random-weight snapshot of the official `microsoft/maira-2` shape and layout into a
temporary folder (deleted afterwards): the RAD-DINO-shaped vision tower, the 4-layer projector and
a Vicuna-7B-shaped language model with the official 32,207-row embedding and LM head
(`bench_full_size.FULL`), bf16 shards of at most 5 GB with `model.safetensors.index.json`, the
official key prefixes, and a small tokenizer. The shards are written tensor by tensor and then
dropped from the page cache, so every load below reads them from disk. Then, each in a fresh
process:

1. `python -m model_backend.maira2 --check SNAPSHOT --device cpu --dtype DTYPE`: wall time, peak RSS,
   its facts (parameters, image tokens, smoke forward);
2. `LocalBackend(SNAPSHOT)`: load time, then one generation (a frontal sample image, 8 new tokens;
   random weights write no report, so end-of-sequence is ignored) and its time.

Peak RSS is the kernel's high-water mark for the process (`wait4`); its anonymous and file-backed
(mapped safetensors) parts are sampled from /proc every 50 ms. Goal: peak RSS <= 1.3 x the weights
as loaded (in bf16, the checkpoint's own dtype: 1.3 x the checkpoint's size), i.e. weights mapped or
loaded once, never copied twice. A process whose RSS passes `--max-rss-gb` is killed, to spare a
shared machine. Last, the GPU memory the model needs in bf16: weights + the KV cache of 2 images and 4 contexts
(the shared prefix stored once, as `LocalBackend` does, each context's tail and 450 new tokens).

    python benchmarks/bench_load.py [--dtype bfloat16|float32] [--text-layers 32] [--shard-gb 5] [--dir /tmp]
                                    [--max-rss-gb 18]

fp32 needs twice the checkpoint's size: on a small machine measure it on fewer layers, with shards
scaled down alike (`--dtype float32 --text-layers 8 --shard-gb 1.5`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_contexts import CONTEXTS, build_study
from bench_full_size import FULL, config_and_processor

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.images import load_image_path
from model_backend.maira2.configuration import Maira2Config
from model_backend.maira2.modeling import Maira2ForConditionalGeneration
from model_backend.maira2.processing import Maira2Processor
from model_backend.maira2.snapshot import OFFICIAL_VOCAB_SIZE, write_random_snapshot
from model_backend.types import PromptContext, Study

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DTYPE = torch.bfloat16
GOAL = 1.3  # peak RSS / the weights' size as loaded (= the checkpoint's size when loading in bf16)
NEW_TOKENS = 8
SAMPLE_FRONTAL = ROOT / "assets/samples/nih_cxr14_bbox/00016487_002.png"
GB = 10**9


@dataclass
class ChildRun:
    """A measured child process: its output, wall time and memory peaks (bytes)."""

    output: str
    seconds: float
    returncode: int
    peak_rss: int
    peak_anon: int
    peak_file: int
    killed: bool

    def result(self) -> dict:
        """The JSON the backend child printed last."""
        line = next(x for x in reversed(self.output.splitlines()) if x.startswith("RESULT "))
        return json.loads(line.removeprefix("RESULT "))


# ------------------------------------------------------------------------------------ snapshot
def full_config(text_layers: int) -> tuple[Maira2Config, Maira2Processor]:
    """The full-size config (`text_layers` language layers, the official 32,207-row vocabulary), its processor."""
    hidden, _, heads, mlp = FULL["text"]
    sizes = {"vision": FULL["vision"], "text": (hidden, text_layers, heads, mlp)}
    return config_and_processor(sizes, OFFICIAL_VOCAB_SIZE)


def parameter_count(config: Maira2Config) -> int:
    """Parameters of the model, from a meta-device instance (no memory)."""
    with torch.device("meta"):
        model = Maira2ForConditionalGeneration(config)
    return sum(t.numel() for t in model.state_dict().values())


def drop_from_page_cache(folder: Path) -> None:
    """Flush the shards and evict them from the page cache, so the next load reads the disk."""
    for path in folder.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------ children
def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a process, in bytes (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")))
    return {f[0].rstrip(":"): int(f[1]) * 1024 for f in fields}


def run_measured(args: list[str], max_rss: int) -> ChildRun:
    """Run `args` in a fresh process, sampling its memory; kill it if its RSS passes `max_rss`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    killed = False
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps it ourselves: wait4 reports its peak
            if pid:
                break
            for name, value in proc_memory(proc.pid).items():
                peaks[name] = max(peaks[name], value)
            if peaks["VmRSS"] > max_rss and not killed:
                proc.kill()
                killed = True
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    peak_rss = usage.ru_maxrss * 1024
    return ChildRun(output, seconds, proc.returncode, peak_rss, peaks["RssAnon"], peaks["RssFile"], killed)


def backend_child(snapshot: str, dtype: str) -> None:
    """In the measured process: load `LocalBackend`, generate once, print a RESULT json line."""
    settings = GenerationSettings(NEW_TOKENS, NEW_TOKENS, NEW_TOKENS)
    start = time.perf_counter()
    backend = LocalBackend(snapshot, device="cpu", dtype=dtype, settings=settings)
    load_seconds = time.perf_counter() - start
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    backend.eos_id = -1  # random weights: decode exactly NEW_TOKENS tokens
    study = Study("bench_load", frontal=load_image_path(SAMPLE_FRONTAL))
    start = time.perf_counter()
    report = backend.generate(study, [PromptContext(name="grounded", use_lateral=False, use_prior=False)])[0]
    generate_seconds = time.perf_counter() - start
    two_images = build_study()  # frontal + lateral; CONTEXTS: 4 contexts with real-length sections
    prompts = [backend._reporting_prompt(two_images, context) for context in CONTEXTS]
    result = {
        "load_seconds": load_seconds,
        "load_rss": load_rss,
        "generate_seconds": generate_seconds,
        "new_tokens": int(report.timing("new_tokens")),
        "prompt_tokens": len(backend._reporting_prompt(study, report.context).token_ids),
        "prefix_tokens": prompts[0].split,
        "tail_tokens": [len(p.token_ids) - p.split for p in prompts],
    }
    print("RESULT", json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ report
def memory_line(run: ChildRun, checkpoint: int, weights: int) -> str:
    return (
        f"peak RSS {run.peak_rss / GB:.2f} GB = {run.peak_rss / checkpoint:.2f} x checkpoint, "
        f"{run.peak_rss / weights:.2f} x weights as loaded (sampled: anonymous {run.peak_anon / GB:.2f} GB, "
        f"file-backed {run.peak_file / GB:.2f} GB)"
    )


def gpu_memory(config: Maira2Config, parameters: int, result: dict) -> str:
    """bf16 weights + KV cache of 2 images x 4 contexts: the prefix once, each tail + 450 new tokens."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * CHECKPOINT_DTYPE.itemsize
    new_tokens = GenerationSettings().max_new_tokens_grounded
    tails = result["tail_tokens"]
    tokens = result["prefix_tokens"] + sum(tails) + len(tails) * new_tokens
    weights, kv = parameters * CHECKPOINT_DTYPE.itemsize, tokens * per_token
    return (
        f"GPU memory, bf16: weights {weights / GB:.2f} GB + KV cache {kv / GB:.2f} GB = {(weights + kv) / GB:.2f} GB "
        f"(+ activations)\n  KV: {text.num_hidden_layers} layers x 2 x {text.num_key_value_heads} kv heads x "
        f"{head_dim} x 2 bytes = {per_token / 2**10:.0f} KiB per token x {tokens} tokens = prefix "
        f"{result['prefix_tokens']} (2 x {config.image_seq_length} image tokens + text) + "
        f"{len(tails)} contexts x (tail {min(tails)}-{max(tails)} + {new_tokens} new)"
    )


def indented(text: str) -> str:
    return "  " + text.strip().replace("\n", "\n  ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", help="dtype to load in (default: bfloat16, the checkpoint's)")
    parser.add_argument("--text-layers", type=int, default=FULL["text"][1], help="language model layers (default: 32)")
    parser.add_argument("--shard-gb", type=float, default=5.0, help="largest shard (default: 5 GB, as the hub's)")
    parser.add_argument("--dir", type=Path, help="where the temporary snapshot goes (default: the system's temp)")
    parser.add_argument("--max-rss-gb", type=float, default=18.0, help="kill a measured process above this RSS")
    parser.add_argument("--backend-child", metavar="SNAPSHOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend_child:
        backend_child(args.backend_child, args.dtype)
        return 0

    config, processor = full_config(args.text_layers)
    parameters = parameter_count(config)
    checkpoint = parameters * CHECKPOINT_DTYPE.itemsize
    weights = parameters * getattr(torch, args.dtype).itemsize
    need = weights + (checkpoint if weights != checkpoint else 0)  # a converting load maps the checkpoint too
    max_rss = int(args.max_rss_gb * GB)
    base = args.dir or Path(tempfile.gettempdir())
    if need > max_rss:
        sys.exit(f"loading {parameters / 1e9:.2f} B parameters as {args.dtype} needs ~{need / GB:.1f} GB, over "
                 f"--max-rss-gb {args.max_rss_gb}: use fewer --text-layers or a larger machine")  # fmt: skip
    free = shutil.disk_usage(base).free
    if free < checkpoint * 1.05:
        sys.exit(f"{base} has {free / GB:.1f} GB free; the snapshot needs {checkpoint / GB:.1f} GB")

    with tempfile.TemporaryDirectory(prefix="maira2_full_", dir=base) as tmp:
        start = time.perf_counter()
        shard_bytes = int(args.shard_gb * GB)
        snapshot = write_random_snapshot(
            Path(tmp) / "maira-2", config, processor, dtype=CHECKPOINT_DTYPE, max_shard_bytes=shard_bytes
        )
        drop_from_page_cache(snapshot)
        shards = sorted(snapshot.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in shards)
        print(f"snapshot: {parameters / 1e9:.2f} B parameters, {len(shards)} bf16 shards, {size / GB:.2f} GB "
              f"({size / 2**30:.2f} GiB), written in {time.perf_counter() - start:.0f} s")  # fmt: skip

        command = ["-m", "model_backend.maira2", "--check", str(snapshot), "--device", "cpu", "--dtype", args.dtype]
        check = run_measured([sys.executable, *command], max_rss)
        print(f"\n--check ({args.dtype}, fresh process): exit {check.returncode} in {check.seconds:.1f} s")
        print(indented(memory_line(check, size, weights)))
        print(indented(check.output))

        drop_from_page_cache(snapshot)
        run = run_measured([sys.executable, __file__, "--backend-child", str(snapshot), "--dtype", args.dtype], max_rss)
        print(f"\nLocalBackend ({args.dtype}, fresh process): exit {run.returncode} in {run.seconds:.1f} s")
        if run.returncode != 0 or run.killed:
            print(indented(run.output))
            return 1
        result = run.result()
        print(f"  load {result['load_seconds']:.1f} s, peak RSS after loading {result['load_rss'] / GB:.2f} GB")
        print(f"  generation: 1 frontal image, {result['prompt_tokens']} prompt tokens, {result['new_tokens']} new "
              f"tokens in {result['generate_seconds']:.1f} s (weights read from disk on first use)")  # fmt: skip
        print(indented(memory_line(run, size, weights)))

    ratio = max(check.peak_rss, run.peak_rss) / weights
    verdict = "met" if ratio <= GOAL else "MISSED"
    print(f"\npeak RSS / weights as loaded ({args.dtype}): {ratio:.2f}, goal <= {GOAL}: {verdict}")
    print(gpu_memory(config, parameters, result))
    return 0 if check.returncode == 0 and not check.killed and ratio <= GOAL else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
