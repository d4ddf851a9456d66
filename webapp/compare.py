"""Side-by-side contexts: align the findings of several reports of one study into rows.

Each row holds at most one finding per report (context). Matching is greedy on a sentence
similarity over lowercased words without punctuation: identical sentences first, then the most
similar pairs above a threshold; findings that match nothing get a row of their own, placed so
that every context keeps its own order where it can.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from model_backend.types import PromptContext, Report

MATCH_THRESHOLD = 0.5
MISSING = "—"

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset({"a", "an", "the", "is", "are", "there", "of", "seen", "noted", "present"})
_NEGATIONS = frozenset({"no", "not", "without", "absent", "negative", "free", "resolved"})
_SIDES = {"left": "left", "right": "right", "bilateral": "both", "both": "both", "bibasal": "both", "bibasilar": "both"}


@dataclass(frozen=True)
class AlignedRow:
    """One row of the comparison: `cells[k]` is a finding index of report k, or None.

    `status`: "same" (present in every context with the same words), "similar" (present in
    every context, wording differs) or "unique" (missing in at least one context).
    """

    cells: tuple[int | None, ...]
    status: str


def words(text: str) -> tuple[str, ...]:
    """Lowercased words without punctuation."""
    return tuple(_WORD.findall(text.lower()))


def similarity(a: str, b: str) -> float:
    """Sentence similarity in [0, 1]: 1 for the same words, else the better of content-word Jaccard
    and the word-sequence ratio, halved when only one sentence is negated and halved again when
    the two name different sides (left / right / both): those are different findings."""
    wa, wb = words(a), words(b)
    if wa == wb:
        return 1.0
    ca = {w for w in wa if w not in _STOPWORDS}
    cb = {w for w in wb if w not in _STOPWORDS}
    jaccard = len(ca & cb) / len(ca | cb) if ca | cb else 0.0
    ratio = difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()
    score = max(jaccard, ratio)
    if bool(_NEGATIONS & set(wa)) != bool(_NEGATIONS & set(wb)):
        score *= 0.5
    sides_a, sides_b = {_SIDES[w] for w in wa if w in _SIDES}, {_SIDES[w] for w in wb if w in _SIDES}
    if sides_a and sides_b and sides_a != sides_b:
        score *= 0.5
    return score


def align_findings(reports: Sequence[Report], threshold: float = MATCH_THRESHOLD) -> list[AlignedRow]:
    """Align the findings of `reports` (one per context) into rows; see the module docstring."""
    if not reports:
        return []
    n = len(reports)
    rows: list[list[int | None]] = [[i] + [None] * (n - 1) for i in range(len(reports[0].findings))]
    for k in range(1, n):
        matched = _match_context(rows, reports, k, threshold)
        _insert_context(rows, matched, len(reports[k].findings), k, n)
    return [AlignedRow(tuple(cells), _status(cells, reports)) for cells in rows]


def _match_context(rows: list[list[int | None]], reports: Sequence[Report], k: int, threshold: float) -> dict[int, int]:
    """Greedy matching of report k's findings to existing rows: finding index -> row position."""
    texts = [f.text for f in reports[k].findings]
    candidates: list[tuple[float, float, int, int]] = []
    for r, cells in enumerate(rows):
        row_texts = [reports[c].findings[i].text for c, i in enumerate(cells) if i is not None]
        for j, text in enumerate(texts):
            score = max(similarity(text, other) for other in row_texts)
            if score >= threshold:
                # Same score: prefer the pair at the closer relative position (keeps order).
                distance = abs(r / max(len(rows), 1) - j / max(len(texts), 1))
                candidates.append((score, -distance, r, j))
    candidates.sort(reverse=True)
    matched: dict[int, int] = {}
    used_rows: set[int] = set()
    for _, _, r, j in candidates:
        if j not in matched and r not in used_rows:
            matched[j] = r
            used_rows.add(r)
    return matched


def _insert_context(rows: list[list[int | None]], matched: dict[int, int], count: int, k: int, n: int) -> None:
    """Fill column k: matched findings join their row, the others get a new row right after the
    row of the previous finding of the same context (or at the top)."""
    matched_rows = {j: rows[r] for j, r in matched.items()}
    previous: list[int | None] | None = None
    for j in range(count):
        if j in matched_rows:
            cells = matched_rows[j]
            cells[k] = j
        else:
            cells = [None] * n
            cells[k] = j
            position = 0 if previous is None else next(p for p, row in enumerate(rows) if row is previous) + 1
            rows.insert(position, cells)
        previous = cells


def _status(cells: list[int | None], reports: Sequence[Report]) -> str:
    if any(i is None for i in cells):
        return "unique"
    texts = {words(reports[c].findings[i].text) for c, i in enumerate(cells) if i is not None}
    return "same" if len(texts) == 1 else "similar"


def alignment_headers(reports: Sequence[Report]) -> list[str]:
    """Column names for `alignment_table`: "match", then each context's name (made unique)."""
    headers = ["match"]
    for k, report in enumerate(reports):
        name = report.context.name or f"context {k + 1}"
        headers.append(name if name not in headers else f"{name} ({k + 1})")
    return headers


def alignment_table(rows: Sequence[AlignedRow], reports: Sequence[Report]) -> list[list[str]]:
    """Plain-text table for a Gradio Dataframe: the row status, then "<n>. <sentence>" per context
    (n = finding index + 1) or "—" where the context has no matching finding."""
    table = []
    for row in rows:
        cells = [MISSING if i is None else f"{i + 1}. {reports[c].findings[i].text}" for c, i in enumerate(row.cells)]
        table.append([row.status, *cells])
    return table


def row_colours(rows: Sequence[AlignedRow], reports: Sequence[Report], palette: Sequence[str]) -> list[list[str]]:
    """One colour per aligned row (cycling through `palette`), as a colour per finding of each report:
    the same finding has the same colour in every context, and a finding unique to one context has a
    colour of its own."""
    colours = [[""] * len(r.findings) for r in reports]
    for n, row in enumerate(rows):
        for k, index in enumerate(row.cells):
            if index is not None:
                colours[k][index] = palette[n % len(palette)]
    return colours


def context_difference(base: PromptContext, other: PromptContext) -> str:
    """What `other` changes relative to `base`, in a few words ("no prior", "indication 'cough'", ...)."""
    changes = []
    for name, label in (("indication", "indication"), ("technique", "technique"), ("comparison", "comparison"),
                        ("prior_report", "prior report")):  # fmt: skip
        a, b = getattr(base, name), getattr(other, name)
        if a != b:
            changes.append(f"no {label}" if not b else f"{label} {_quote(b)}")
    for name, label in (("use_lateral", "lateral"), ("use_prior", "prior")):
        if getattr(base, name) != getattr(other, name):
            changes.append(f"{'with' if getattr(other, name) else 'no'} {label}")
    if base.grounded != other.grounded:
        changes.append("grounded" if other.grounded else "not grounded")
    return ", ".join(changes) or "same as A"


def _quote(text: str, limit: int = 24) -> str:
    return f"'{text}'" if len(text) <= limit else f"'{text[:limit]}…'"
