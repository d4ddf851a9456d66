"""Parsing MAIRA-2 output: the official-compatible strict parser and a tolerant one.

Grounded output looks like
`<obj>There is a nodule.<box><x10><y20><x30><y40></box></obj><obj>The heart is normal.</obj>`.
Bins map to bin centres, `(i + 0.5) / 100`, in the model frame (x_min, y_min, x_max, y_max).

`parse_strict` reproduces the official `convert_output_to_plaintext_or_grounded_sequence`
(raises on anything it cannot read). `parse_tolerant` never raises: it returns what it can
read, a `complete` flag and human-readable warnings; on every string the strict parser
accepts, both give the same findings (except that a box generated with x_max < x_min or
y_max < y_min comes back with its corners ordered, and a warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_backend.boxes import NUM_BINS, bin_to_coord, box_to_bins
from model_backend.types import Box, Finding

PHRASE_START, PHRASE_END, BOX_START, BOX_END = "<obj>", "</obj>", "<box>", "</box>"
GROUNDING_MARKERS = (PHRASE_START, PHRASE_END, BOX_START, BOX_END)
STRICT_BOX_RE = re.compile(r"<x(\d+?)><y(\d+?)><x(\d+?)><y(\d+?)>")
_TOKEN_RE = re.compile(r"<obj>|</obj>|<box>|</box>|<([xy])(\d+)>")
_COORD_RE = re.compile(r"<[xy]\d+>")
_LITERAL_TOKEN_WARNINGS = {PHRASE_START: "nested <obj> kept as text", BOX_END: "</box> without <box>"}

StrictResult = str | list[tuple[str, list[tuple[float, float, float, float]] | None]]


def _between_delimiters(text: str, begin: str, end: str) -> list[str]:
    """Official `_get_text_between_delimiters`: strict, raises ValueError instead of asserting."""
    pieces = []
    while begin in text:
        if not text.startswith(begin):
            raise ValueError(f"text between {begin!r} blocks: {text[:40]!r}")
        end_index = text.find(end)
        if end_index == -1:
            raise ValueError(f"unclosed {begin!r}")
        pieces.append(text[len(begin) : end_index])
        text = text[end_index + len(end) :]
    if text:
        raise ValueError(f"trailing text after {end!r}: {text[:40]!r}")
    return pieces


def parse_strict(text: str, num_bins: int = NUM_BINS) -> StrictResult:
    """Official-compatible parse: plain text is returned as is; grounded text as (phrase, boxes|None)."""
    text = text.strip()
    if not any(marker in text for marker in GROUNDING_MARKERS):
        return text
    phrases: list[tuple[str, list[tuple[float, float, float, float]] | None]] = []
    for phrase_text in _between_delimiters(text, PHRASE_START, PHRASE_END):
        if BOX_START in phrase_text or BOX_END in phrase_text:
            first_box = phrase_text.find(BOX_START)
            sentence = phrase_text[:first_box].strip()
            boxes = []
            for box_text in _between_delimiters(phrase_text[first_box:], BOX_START, BOX_END):
                match = STRICT_BOX_RE.search(box_text)
                if not match:
                    raise ValueError(f"invalid box {box_text!r}")
                box = tuple((int(c) + 0.5) / num_bins for c in match.groups())
                if not all(0 <= c <= 1 for c in box):
                    raise ValueError(f"box coordinates out of range: {box}")
                boxes.append(box)
            phrases.append((sentence, boxes))
        else:
            phrases.append((phrase_text.lstrip(), None))
    return phrases


@dataclass(frozen=True)
class ParsedOutput:
    """Result of `parse_tolerant`: findings (model frame), whether the text was clean, warnings."""

    findings: tuple[Finding, ...]
    complete: bool
    warnings: tuple[str, ...]


def _split_plain_sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p.strip() for p in parts if p.strip()]


def parse_tolerant(text: str, *, truncated: bool = False, num_bins: int = NUM_BINS) -> ParsedOutput:
    """Read whatever findings `text` holds; never raises.

    `truncated=True` means generation stopped at max_new_tokens (the caller knows this; the
    text alone may look complete). Plain (non-grounded) text becomes one finding per sentence.
    """
    warnings: list[str] = []
    if truncated:
        warnings.append("output truncated at max_new_tokens")
    stripped = text.strip()
    if not any(marker in stripped for marker in GROUNDING_MARKERS):
        findings = tuple(Finding(s) for s in _split_plain_sentences(stripped))
        return ParsedOutput(findings, not truncated, tuple(warnings))

    findings: list[Finding] = []
    sentence_parts: list[str] = []
    boxes: list[Box] | None = None
    in_phrase = in_box = had_box = False  # had_box: the open phrase has reached its first <box>
    box_start = 0  # where the open box's text begins

    def close_phrase() -> None:
        nonlocal boxes, had_box
        joined = "".join(sentence_parts)
        sentence = joined.strip() if boxes else joined.lstrip()  # as the official parser does
        if not sentence and not boxes:
            warnings.append("empty phrase")
        findings.append(Finding(sentence, tuple(boxes) if boxes else None))
        sentence_parts.clear()
        boxes, had_box = None, False

    def close_box(box_text: str) -> None:
        """Read a box's text as the official parser does: the first contiguous <x><y><x><y> run."""
        nonlocal boxes
        match = STRICT_BOX_RE.search(box_text)
        if match is None:
            warnings.append(f"malformed box {box_text.strip()[:40] or '(empty)'} dropped")
            return
        bins = [int(v) for v in match.groups()]
        if any(v >= num_bins for v in bins):
            warnings.append(f"box bin out of range (>= {num_bins}) dropped")
            return
        if len(_COORD_RE.findall(box_text)) != 4:
            warnings.append("extra coordinate tokens in a box ignored")
        x0, y0, x1, y1 = (bin_to_coord(v, num_bins) for v in bins)
        if x1 < x0 or y1 < y0:
            warnings.append("box with max < min: corners reordered")
            x0, x1 = sorted((x0, x1))
            y0, y1 = sorted((y0, y1))
        boxes = [*(boxes or []), Box(x0, y0, x1, y1)]

    position = 0
    for match in _TOKEN_RE.finditer(stripped):
        between = stripped[position : match.start()]
        position = match.end()
        token = match.group(0)
        if in_phrase and not in_box:
            sentence_parts.append(between)  # whitespace too: literal tokens may follow
        if between.strip():
            if in_box:
                warnings.append(f"stray text inside a box: {between.strip()[:40]!r}")
            elif in_phrase and had_box:
                warnings.append(f"text after a box inside a phrase: {between.strip()[:40]!r}")
            elif not in_phrase:
                warnings.append(f"stray text between phrases: {between.strip()[:40]!r}")
        if in_box and token not in (BOX_END, PHRASE_END):
            # The official parser reads a box up to the first </box>; other tokens stay in its text.
            if match.group(1) is None:
                warnings.append(f"{token} inside a box ignored")
        elif in_phrase and not had_box and token not in (BOX_START, PHRASE_END):
            # Before a phrase's first <box>, the official parser keeps every other token in the sentence.
            warnings.append(_LITERAL_TOKEN_WARNINGS.get(token, f"coordinate token {token} outside a box"))
            sentence_parts.append(token)
        elif token == PHRASE_START:
            if in_phrase:
                warnings.append("nested <obj>: previous phrase closed")
                close_phrase()
            in_phrase = True
        elif token == PHRASE_END:
            if in_box:
                warnings.append("unclosed <box>")
                close_box(stripped[box_start : match.start()])
                in_box = False
            if in_phrase:
                close_phrase()
            else:
                warnings.append("</obj> without <obj>")
            in_phrase = False
        elif token == BOX_START:
            if not in_phrase:
                warnings.append("<box> outside a phrase")
                in_phrase = True
            in_box = had_box = True
            box_start = position
        elif token == BOX_END:
            if in_box:
                close_box(stripped[box_start : match.start()])
            else:
                warnings.append("</box> without <box>")
            in_box = False
        else:
            warnings.append(f"coordinate token {token} outside a box")
    tail = stripped[position:]
    if in_box:
        warnings.append("output ends inside a box")
        in_box = False
    if in_phrase:
        sentence_parts.append(tail)
        warnings.append("output ends inside a phrase")
        close_phrase()
    elif tail.strip():
        warnings.append(f"stray text after the last phrase: {tail.strip()[:40]!r}")
    complete = not warnings
    return ParsedOutput(tuple(findings), complete, tuple(warnings))


def format_grounded(findings: list[tuple[str, list[Box] | None]] | tuple[Finding, ...]) -> str:
    """Findings -> MAIRA-2 grounded text (the inverse of the parsers, on bin centres)."""
    parts = []
    for item in findings:
        sentence, boxes = (item.text, item.model_boxes) if isinstance(item, Finding) else item
        box_text = "".join(BOX_START + "<x{}><y{}><x{}><y{}>".format(*box_to_bins(b)) + BOX_END for b in (boxes or ()))
        parts.append(f"{PHRASE_START}{sentence}{box_text}{PHRASE_END}")
    return "".join(parts)
