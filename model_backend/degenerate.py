"""Degenerate outputs: flags on a generated report whose text or boxes cannot be taken at face value.

`degenerate_flags(report)` is a pure function of the report (findings, raw text, `complete`,
parser warnings) and returns the flags that apply, in the order of `FLAGS`, each with a short
human reason. The names are stable: the batch runner writes them to each results line
(`"flags"`), the metrics CLI counts them per context.

- `repetition`: looping output. A sentence occurs `MIN_SENTENCE_REPEATS` or more times
  (compared lowercased, whitespace collapsed, final punctuation dropped), or the findings text
  has at least `MIN_NGRAMS` word `NGRAM`-grams of which fewer than `MIN_DISTINCT_NGRAM_SHARE`
  are distinct (a loop inside one sentence).
- `truncated`: generation stopped at the token limit. The local backend parses with
  `parse_tolerant(..., truncated=True)`, which adds the warning "output truncated at
  max_new_tokens" and sets `complete` False; that warning is the marker (a remote or recorded
  report without warnings cannot be told apart from a complete one).
- `empty`: no finding with text or boxes.
- `unparseable_boxes`: the tolerant parser dropped or repaired box tokens (its warnings about a
  malformed or unclosed `<box>`, a bin out of range, coordinate tokens outside a box, corners
  in the wrong order, ...).
- `box_outside_crop`: a box coordinate outside [0, 1] of the model frame, i.e. outside the
  square crop the model sees. MAIRA-2's bins cannot produce one; recorded or remote outputs can.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from model_backend.types import Report

REPETITION = "repetition"
TRUNCATED = "truncated"
EMPTY = "empty"
UNPARSEABLE_BOXES = "unparseable_boxes"
BOX_OUTSIDE_CROP = "box_outside_crop"
FLAGS = (REPETITION, TRUNCATED, EMPTY, UNPARSEABLE_BOXES, BOX_OUTSIDE_CROP)

MIN_SENTENCE_REPEATS = 3
NGRAM = 4
MIN_NGRAMS = 20
MIN_DISTINCT_NGRAM_SHARE = 0.5

# Substrings of `model_backend.maira2.parsing.parse_tolerant` warnings.
_TRUNCATION_WARNING = "truncated at max_new_tokens"
_BOX_WARNING = re.compile(
    r"malformed box|box bin out of range|coordinate token|corners reordered|inside a box|<box>|</box>"
)


@dataclass(frozen=True)
class Flag:
    """One degenerate-output flag: its name (one of `FLAGS`) and why it was raised."""

    name: str
    reason: str


def _normalised(sentence: str) -> str:
    return re.sub(r"\s+", " ", sentence.lower()).strip().rstrip(".!?;:, ")


def _clip(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _repetition(texts: list[str]) -> str | None:
    sentences = Counter(s for s in map(_normalised, texts) if s)
    if sentences:
        sentence, count = sentences.most_common(1)[0]
        if count >= MIN_SENTENCE_REPEATS:
            return f"'{_clip(sentence)}' repeated {count} times ({len(texts)} findings)"
    words = re.findall(r"\w+", " ".join(texts).lower())
    grams = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
    if len(grams) >= MIN_NGRAMS and len(set(grams)) < MIN_DISTINCT_NGRAM_SHARE * len(grams):
        return f"looping text: {len(set(grams))} distinct of {len(grams)} word {NGRAM}-grams"
    return None


def degenerate_flags(report: Report) -> tuple[Flag, ...]:
    """The `FLAGS` that apply to a report, in `FLAGS` order, each with a short reason."""
    flags: list[Flag] = []
    texts = [f.text for f in report.findings]
    reason = _repetition(texts)
    if reason:
        flags.append(Flag(REPETITION, reason))
    if any(_TRUNCATION_WARNING in w for w in report.warnings):
        flags.append(Flag(TRUNCATED, f"cut at the token limit after {len(texts)} findings"))
    if not any(f.text.strip() or f.model_boxes for f in report.findings):
        size = len(report.raw_text.strip())
        flags.append(Flag(EMPTY, "no findings" + (f" (raw output: {size} characters)" if size else "")))
    box_warnings = [w for w in report.warnings if _BOX_WARNING.search(w)]
    if box_warnings:
        flags.append(Flag(UNPARSEABLE_BOXES, f"{len(box_warnings)} box-token warning(s), e.g. {box_warnings[0]!r}"))
    outside = [
        box
        for finding in report.findings
        for box in finding.model_boxes or ()
        if min(box.as_tuple()) < 0.0 or max(box.as_tuple()) > 1.0
    ]
    if outside:
        example = ", ".join(f"{v:.2f}" for v in outside[0].as_tuple())
        flags.append(Flag(BOX_OUTSIDE_CROP, f"{len(outside)} box(es) outside the crop, e.g. [{example}]"))
    return tuple(flags)
