"""Evaluate a MAIRA-2 snapshot on fresh phantoms through the public backend API, as the app runs it.

    python -m model_backend.demo_model.evaluate --n 200 --seed 0 [--model assets/demo_model] [--write-card]

Phantom seeds start at `EVAL_SEED_BASE` (10,000,000) + seed; training only ever uses seeds below
1,000,000. Each phantom keeps its default size (short side 384-1024 px, aspect 0.75-1.33) and
context (indication, technique, comparison, prior report; lateral and prior images when it has
them). Images go PNG bytes -> `images.load_image_bytes` -> `Study` -> `backend.generate`.

Metrics:

- finding micro F1: a generated sentence names a finding *type* (kind + side) by the keyword map
  `finding_type` (sentences with "no", "normal" or "clear" name none); per study the set of types
  is compared with the phantom's abnormal findings, counts summed over studies;
- mean IoU: for each correctly named finding, IoU in the image frame between its first generated
  box (`boxes.model_to_image_box`, clipped to the image) and the phantom's box; 0 when it has no box;
- complete: fraction of outputs the tolerant parser read without a warning;
- status accuracy: with a prior, how often a correctly named finding also has the right status
  (new / unchanged / increased);
- seconds per study: wall-clock time of `backend.generate`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from model_backend.backends import load_backend
from model_backend.backends.base import Backend
from model_backend.boxes import clip_box, iou, model_to_image_box
from model_backend.demo_model.phantoms import Phantom, render_phantom, to_png_bytes
from model_backend.demo_model.train import EVAL_SEED_BASE, EVALUATION_FILE, write_model_card
from model_backend.images import load_image_bytes
from model_backend.types import Box, Finding, PromptContext, Study

FindingType = tuple[str, str | None]  # (kind, side); side is None for cardiomegaly

# Kind -> pattern naming it in a generated sentence (the phantom report vocabulary).
KIND_PATTERNS: dict[str, re.Pattern[str]] = {
    "consolidation": re.compile(r"\bconsolidation\b", re.IGNORECASE),
    "mass": re.compile(r"\bmass\b", re.IGNORECASE),
    "nodule": re.compile(r"\bnodule\b", re.IGNORECASE),
    "effusion": re.compile(r"\beffusion\b", re.IGNORECASE),
    "pneumothorax": re.compile(r"\bpneumothorax\b", re.IGNORECASE),
    "cardiomegaly": re.compile(r"\bcardiomegaly\b|\bheart\b.*\b(?:enlarged|increased)\b", re.IGNORECASE),
}
NEGATION = re.compile(r"\bno\b|\bnormal\b|\bclear\b", re.IGNORECASE)
SIDE = re.compile(r"\b(right|left)\b", re.IGNORECASE)
STATUS_PATTERNS = {
    "new": re.compile(r"\bnew(ly)?\b", re.IGNORECASE),
    "unchanged": re.compile(r"\bunchanged\b|\bremains\b", re.IGNORECASE),
    "increased": re.compile(r"\bincreased\b", re.IGNORECASE),
}


def finding_type(sentence: str) -> FindingType | None:
    """The (kind, side) a sentence reports, or None for a normal/negated sentence or no match."""
    if NEGATION.search(sentence):
        return None
    for kind, pattern in KIND_PATTERNS.items():
        if pattern.search(sentence):
            if kind == "cardiomegaly":
                return kind, None
            side = SIDE.search(sentence)
            return (kind, side.group(1).lower()) if side else None
    return None


def sentence_status(sentence: str) -> str | None:
    return next((status for status, pattern in STATUS_PATTERNS.items() if pattern.search(sentence)), None)


def phantom_study(seed: int, phantom: Phantom) -> Study:
    """A `Study` built the way an upload is: PNG bytes through the app's image loader."""

    def load(arr, view: str):
        return None if arr is None else load_image_bytes(to_png_bytes(arr), f"{view}.png")

    context = PromptContext(
        name="phantom", indication=phantom.indication, technique=phantom.technique,
        comparison=phantom.comparison, prior_report=phantom.prior_report, grounded=True,
    )  # fmt: skip
    return Study(
        study_id=f"phantom-{seed}",
        frontal=load(phantom.frontal, "frontal"),
        lateral=load(phantom.lateral, "lateral"),
        prior_frontal=load(phantom.prior_frontal, "prior"),
        context=context,
    )


def _first_image_box(finding: Finding, width: int, height: int) -> Box | None:
    if not finding.model_boxes:
        return None
    return clip_box(model_to_image_box(finding.model_boxes[0], width, height), width, height)


def evaluate(
    backend: Backend, n: int, seed: int = 0, progress: Callable[[str], None] | None = None
) -> dict[str, object]:
    """Run `n` fresh phantoms (seeds EVAL_SEED_BASE + seed ...) and return the metrics (see module doc)."""
    if n < 1 or seed < 0:
        raise ValueError(f"need n >= 1 and seed >= 0, got n={n}, seed={seed}")
    tp = fp = fn = complete = 0
    ious: list[float] = []
    per_kind: dict[str, list[float]] = defaultdict(list)
    status_hits: list[bool] = []
    seconds = 0.0
    first = EVAL_SEED_BASE + seed
    for index in range(n):
        phantom = render_phantom(first + index)
        study = phantom_study(first + index, phantom)
        start = time.perf_counter()
        report = backend.generate(study, [study.context])[0]
        seconds += time.perf_counter() - start
        complete += report.complete
        truth = {(f.kind, f.side if f.kind != "cardiomegaly" else None): f for f in phantom.findings}
        predicted: dict[FindingType, Finding] = {}
        for finding in report.findings:
            kind_side = finding_type(finding.text)
            if kind_side is not None:
                predicted.setdefault(kind_side, finding)
        fp += len(predicted.keys() - truth.keys())
        fn += len(truth.keys() - predicted.keys())
        for kind_side in predicted.keys() & truth.keys():
            tp += 1
            generated_box = _first_image_box(predicted[kind_side], report.image_width, report.image_height)
            overlap = 0.0 if generated_box is None else iou(generated_box, truth[kind_side].image_box)
            ious.append(overlap)
            per_kind[kind_side[0]].append(overlap)
            if study.prior_frontal is not None:
                status_hits.append(sentence_status(predicted[kind_side].text) == truth[kind_side].status)
        if progress is not None and ((index + 1) % 20 == 0 or index + 1 == n):
            progress(f"{index + 1}/{n} studies, {seconds / (index + 1):.2f} s/study")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": n,
        "first_seed": first,
        "last_seed": first + n - 1,
        "micro_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall": recall,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mean_iou": sum(ious) / len(ious) if ious else 0.0,
        "n_matched": len(ious),
        "per_kind_iou": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
        "status_accuracy": sum(status_hits) / len(status_hits) if status_hits else None,
        "complete": complete / n,
        "seconds_per_study": seconds / n,
    }


def format_results(results: dict[str, object]) -> str:
    lines = [
        f"studies            {results['n']} (phantom seeds {results['first_seed']}..{results['last_seed']})",
        f"finding micro F1   {results['micro_f1']:.3f}  (P {results['precision']:.3f}, R {results['recall']:.3f}; "
        f"TP {results['tp']}, FP {results['fp']}, FN {results['fn']})",
        f"mean IoU (matched) {results['mean_iou']:.3f}  over {results['n_matched']} findings",
        "IoU per kind       " + ", ".join(f"{k} {v:.2f}" for k, v in results["per_kind_iou"].items()),  # type: ignore[union-attr]
        f"status accuracy    {results['status_accuracy']}",
        f"complete outputs   {results['complete']:.1%}",
        f"seconds per study  {results['seconds_per_study']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of phantoms")
    parser.add_argument("--seed", type=int, default=0, help="first phantom seed = 10,000,000 + seed")
    parser.add_argument("--model", default="demo", help="snapshot folder (default: the bundled demo model)")
    parser.add_argument("--write-card", action="store_true", help="store the results in the snapshot's model card")
    args = parser.parse_args(argv)
    backend = load_backend(args.model)
    results = evaluate(backend, args.n, args.seed, progress=lambda line: print(line, flush=True))
    print(format_results(results))
    if args.write_card:
        folder = Path(backend.info.model_id)
        results["command"] = "python -m model_backend.demo_model.evaluate " + " ".join(sys.argv[1:])
        (folder / EVALUATION_FILE).write_text(json.dumps(results, indent=2))
        write_model_card(folder)
        print(f"model card updated: {folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
