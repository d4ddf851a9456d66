"""Model-based metrics for the metrics CLI: CheXpert F1 (CheXbert), RadGraph-F1, RadFact logical P/R (LLM).

Each family runs when its weights or endpoint are there and is skipped otherwise, with a line
saying which flag or folder is missing; everything else is still computed. Weights are read from
local files only (`model_backend.evaluation.weights`); `HF_HUB_OFFLINE=1` is fine.

Only studies with reference findings are scored; the keys each family adds to a row:
`chexbert_generated` / `chexbert_reference` (14 binary labels each), `radgraph_f1_simple` /
`_partial` / `_complete`, and the keys of `entailment.add_logical_scores`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from model_backend.evaluation.chexbert_labels import UNCERTAIN_CHOICES
from model_backend.evaluation.radgraph_rewards import ARCHIVES, MODEL_TYPES, REWARD_LEVELS, rewards
from model_backend.evaluation.weights import WeightsMissing, find_weights

CHEXBERT_FAMILY = "CheXpert F1-14 / F1-5"
RADGRAPH_FAMILY = "RadGraph-F1"
ENTAILMENT_FAMILY = "RadFact logical precision/recall"
_BATCH = 16
T = TypeVar("T")


@dataclass
class ModelMetricsRun:
    """What ran (settings, for the output) and what was skipped (family -> reason)."""

    settings: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The metrics CLI's flags for model-based metrics."""
    group = parser.add_argument_group("model-based metrics (local weights only, nothing is downloaded)")
    group.add_argument(
        "--chexbert", type=Path, help="chexbert.pth or its folder (default: HF cache of StanfordAIMI/RRG_scorers)"
    )
    group.add_argument(
        "--chexbert-bert", default="bert-base-uncased", help="CheXbert's BERT config + tokenizer: folder or cached id"
    )
    group.add_argument(
        "--chexbert-uncertain", choices=UNCERTAIN_CHOICES, default="positive", help="how uncertain labels count"
    )
    group.add_argument(
        "--radgraph", type=Path, help="radgraph archive: extracted folder or .tar.gz (default: HF cache)"
    )
    group.add_argument("--radgraph-type", choices=MODEL_TYPES, default="radgraph", help="which RadGraph model")
    group.add_argument("--radgraph-bert", default=None, help="override the BERT folder / id named in the archive")
    group.add_argument(
        "--radgraph-legacy-case", action="store_true", help="compare entity tokens as radgraph <= 0.1.18 did"
    )
    group.add_argument("--no-model-metrics", action="store_true", help="skip CheXbert and RadGraph")
    group.add_argument("--entailment-url", help="OpenAI-compatible chat endpoint (base URL or .../chat/completions)")
    group.add_argument("--entailment-model", help="model name to send (required with --entailment-url)")
    group.add_argument("--entailment-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    group.add_argument("--entailment-cache", type=Path, help="answer cache (default: RESULTS.entailment-cache.jsonl)")
    group.add_argument("--entailment-workers", type=int, default=4, help="parallel requests")
    group.add_argument("--device", default="cpu", help="torch device for CheXbert and RadGraph")


def _texts_to_score(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct generated and reference texts of the rows with a reference."""
    scored = [r for r in rows if r["reference_text"].strip()]
    return list(dict.fromkeys([r["generated_text"] for r in scored] + [r["reference_text"] for r in scored]))


def _map_texts(texts: list[str], fn: Callable[[list[str]], list[Any]], what: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for start in tqdm(range(0, len(texts), _BATCH), desc=what, unit="batch", file=sys.stderr, leave=False):
        chunk = texts[start : start + _BATCH]
        results.update(zip(chunk, fn(chunk), strict=True))
    return results


def add_chexbert_labels(rows: list[dict[str, Any]], labeler: Any, uncertain: str = "positive") -> None:
    """`chexbert_generated` / `chexbert_reference` labels on rows with a reference (None elsewhere)."""
    labels = _map_texts(_texts_to_score(rows), lambda chunk: labeler.labels(chunk, uncertain), "CheXbert")
    for row in rows:
        scored = bool(row["reference_text"].strip())
        row["chexbert_generated"] = labels[row["generated_text"]] if scored else None
        row["chexbert_reference"] = labels[row["reference_text"]] if scored else None


def add_radgraph_rewards(rows: list[dict[str, Any]], annotator: Any, legacy_case: bool = False) -> None:
    """`radgraph_f1_{simple,partial,complete}` on rows with a reference (None elsewhere); an empty
    generated report scores 0, as in the radgraph package."""
    annotations = _map_texts(_texts_to_score(rows), lambda chunk: [annotator.annotate(t) for t in chunk], "RadGraph")
    for row in rows:
        if row["reference_text"].strip():
            scores = rewards(annotations[row["generated_text"]], annotations[row["reference_text"]], legacy_case)
        else:
            scores = dict.fromkeys(REWARD_LEVELS)
        row.update({f"radgraph_f1_{level}": value for level, value in scores.items()})


def _radgraph_folder(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """(archive folder, where it came from): --radgraph (folder or .tar.gz), else the HF cache's
    archive (extracted into `workdir`), else the radgraph package's extracted cache."""
    if args.radgraph is not None and args.radgraph.is_dir():
        return args.radgraph, args.radgraph
    try:
        archive = find_weights(args.radgraph, ARCHIVES[args.radgraph_type], "--radgraph")
    except WeightsMissing:
        package_cache = sorted(Path.home().glob(f".cache/radgraph/*/{args.radgraph_type}/config.json"))
        if args.radgraph is None and package_cache:
            return package_cache[-1].parent, package_cache[-1].parent
        raise
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(workdir, filter="data")
    configs = sorted(workdir.glob("**/config.json"))
    if not configs:
        raise WeightsMissing(f"{archive} holds no config.json: not a radgraph archive")
    return configs[0].parent, archive


def add_model_metrics(rows: list[dict[str, Any]], args: argparse.Namespace) -> ModelMetricsRun:
    """Run every model-based family that can run; `ModelMetricsRun.skipped` says what was not and why."""
    run = ModelMetricsRun()
    if args.no_model_metrics:
        run.skipped[CHEXBERT_FAMILY] = run.skipped[RADGRAPH_FAMILY] = "--no-model-metrics"
    else:
        _run_chexbert(rows, args, run)
        _run_radgraph(rows, args, run)
    _run_entailment(rows, args, run)
    return run


_UNREADABLE = (ValueError, RuntimeError, EOFError, pickle.UnpicklingError, tarfile.TarError)


def _load(run: ModelMetricsRun, family: str, load: Callable[[], T], hint: str) -> T | None:
    """`load()`, or None with the reason in `run.skipped` when weights are missing or do not load."""
    try:
        return load()
    except WeightsMissing as exc:
        run.skipped[family] = str(exc)
    except OSError as exc:  # transformers: config or tokenizer files not on this machine
        run.skipped[family] = f"{hint} ({type(exc).__name__}: {str(exc)[:200]})"
    except _UNREADABLE as exc:
        run.skipped[family] = f"cannot load the weights ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _run_chexbert(rows: list[dict[str, Any]], args: argparse.Namespace, run: ModelMetricsRun) -> None:
    def load() -> tuple[Any, Path]:
        fallbacks = [Path.home() / ".cache/chexbert/chexbert.pth"]
        checkpoint = find_weights(args.chexbert, "chexbert.pth", "--chexbert", fallbacks=fallbacks)
        from model_backend.evaluation.chexbert import CheXbertLabeler

        return CheXbertLabeler.from_files(checkpoint, args.chexbert_bert, args.device), checkpoint

    hint = (
        f"BERT files for {args.chexbert_bert!r} not found offline: pass --chexbert-bert DIR (config.json, vocab.txt) "
        "or cache them (huggingface-cli download bert-base-uncased config.json vocab.txt tokenizer_config.json)"
    )
    loaded = _load(run, CHEXBERT_FAMILY, load, hint)
    if loaded is None:
        return
    labeler, checkpoint = loaded
    add_chexbert_labels(rows, labeler, args.chexbert_uncertain)
    run.settings["chexbert"] = {"checkpoint": str(checkpoint), "bert": args.chexbert_bert}
    run.settings["chexbert"]["uncertain"] = args.chexbert_uncertain


def _run_radgraph(rows: list[dict[str, Any]], args: argparse.Namespace, run: ModelMetricsRun) -> None:
    with tempfile.TemporaryDirectory(prefix="radgraph-") as workdir:

        def load() -> tuple[Any, Path]:
            folder, source = _radgraph_folder(args, Path(workdir))
            from model_backend.evaluation.radgraph import RadGraphAnnotator

            return RadGraphAnnotator.from_folder(folder, args.radgraph_type, args.radgraph_bert, args.device), source

        hint = "files not found offline: the archive's config.json, weights.th, or the BERT it names (--radgraph-bert)"
        loaded = _load(run, RADGRAPH_FAMILY, load, hint)
    if loaded is None:
        return
    annotator, source = loaded
    add_radgraph_rewards(rows, annotator, args.radgraph_legacy_case)
    run.settings["radgraph"] = {"archive": str(source), "type": args.radgraph_type}
    run.settings["radgraph"]["token case"] = "as written (legacy)" if args.radgraph_legacy_case else "lowercased"


def _run_entailment(rows: list[dict[str, Any]], args: argparse.Namespace, run: ModelMetricsRun) -> None:
    from model_backend.evaluation.entailment import EntailmentJudge, add_logical_scores

    if not args.entailment_url:
        run.skipped[ENTAILMENT_FAMILY] = "no --entailment-url (an OpenAI-compatible chat endpoint)"
        return
    if not args.entailment_model:
        run.skipped[ENTAILMENT_FAMILY] = "--entailment-url needs --entailment-model"
        return
    cache = args.entailment_cache or args.results.with_name(args.results.name + ".entailment-cache.jsonl")
    judge = EntailmentJudge(
        args.entailment_url,
        args.entailment_model,
        api_key=os.environ.get(args.entailment_key_env),
        cache_path=cache,
        workers=args.entailment_workers,
    )
    add_logical_scores(rows, judge)
    run.settings["entailment"] = {
        "url": judge.url,
        "model": judge.model,
        "cache": str(cache),
        "requests": judge.n_requests,
        "cached_answers": judge.n_cached,
    }
