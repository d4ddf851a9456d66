"""MAIRA-2 output parsing: tolerant parser properties, agreement with the official strict parser, warnings."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st

from model_backend.boxes import bins_to_box
from model_backend.maira2.parsing import format_grounded, parse_strict, parse_tolerant
from model_backend.types import Box, Finding

SENTENCE_ALPHABET = st.sampled_from(list("abcdefghij klmnop.,;:-'()0123456789ABCXYZ<>/"))
PLAIN_SENTENCE = st.text(SENTENCE_ALPHABET, min_size=1, max_size=30).filter(
    lambda s: s.strip() == s and not re.search(r"<(/?obj|/?box|[xy]\d+)>", s)
)
VALID_BIN = st.integers(0, 99)
ANY_BIN = st.one_of(VALID_BIN, st.integers(100, 130), st.just(0))


@st.composite
def ordered_bins(draw) -> tuple[int, int, int, int]:
    x0, x1 = sorted((draw(VALID_BIN), draw(VALID_BIN)))
    y0, y1 = sorted((draw(VALID_BIN), draw(VALID_BIN)))
    return x0, y0, x1, y1


FINDINGS = st.lists(
    st.tuples(PLAIN_SENTENCE, st.one_of(st.none(), st.lists(ordered_bins().map(bins_to_box), min_size=1, max_size=3))),
    max_size=6,
)


@st.composite
def box_text(draw) -> str:
    """Usually a valid `<box><x><y><x><y></box>`, sometimes with bad bins, missing/extra/garbled coordinates."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "any_bins", "garbled"]))
    if kind == "garbled":
        coords = draw(st.lists(st.tuples(st.sampled_from("xy"), ANY_BIN), max_size=6))
        inner = "".join(f"<{axis}{value}>" for axis, value in coords)
        if draw(st.booleans()):
            inner = draw(st.sampled_from(["", " ", "junk", "<obj>", "<box>"])) + inner
    else:
        bins = draw(st.tuples(*[ANY_BIN if kind == "any_bins" else VALID_BIN] * 4))
        inner = "<x{}><y{}><x{}><y{}>".format(*bins)
    return "<box>" + inner + "</box>"


@st.composite
def phrase_text(draw) -> str:
    sentence = draw(st.one_of(PLAIN_SENTENCE, st.sampled_from(["", " ", " lead", "trail "])))
    boxes = "".join(draw(st.lists(box_text(), max_size=2)))
    return "<obj>" + sentence + boxes + "</obj>"


JUNK = st.sampled_from(
    ["<obj>", "</obj>", "<box>", "</box>", "<x5>", "<y7>", "<x120>", " ", "\n", "stray", ".", "<obj>nested", "<x3><y4>"]
)


@st.composite
def model_output(draw) -> str:
    """Grammar of MAIRA-2 outputs: well-formed phrases, then (often) a few malformed pieces spliced in."""
    pieces = draw(st.lists(phrase_text(), max_size=5))
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            pieces.insert(draw(st.integers(0, len(pieces))), draw(JUNK))
    text = "".join(pieces)
    if text and draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # cut off, as at max_new_tokens
    return draw(st.sampled_from(["", " ", "\n"])) + text


def strict_or_none(text: str):
    try:
        return parse_strict(text)
    except ValueError:
        return None


def as_comparable(findings: tuple[Finding, ...]) -> list[tuple[str, list[tuple[float, ...]] | None]]:
    return [(f.text, None if f.model_boxes is None else [b.as_tuple() for b in f.model_boxes]) for f in findings]


def ordered_corners(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def assert_agrees_with_strict(text: str) -> None:
    strict = strict_or_none(text)
    parsed = parse_tolerant(text)
    if strict is None:
        # A clean tolerant parse must be officially readable too, up to whitespace between tags
        # (which the official parser rejects and the tolerant one ignores).
        if parsed.complete:
            assert strict_or_none(re.sub(r">\s+<", "><", text)) is not None, f"{text!r} is clean but unreadable"
        return
    if isinstance(strict, str):
        assert " ".join(f.text for f in parsed.findings) == re.sub(r"(?<=[.!?])\s+", " ", strict)
        assert all(f.model_boxes is None for f in parsed.findings)
        return
    # The tolerant parser orders the corners of a box generated as x_max < x_min (with a warning).
    expected = [(s, None if b is None else [ordered_corners(box) for box in b]) for s, b in strict]
    assert as_comparable(parsed.findings) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_tolerant_parser_never_raises_on_random_text(text: str) -> None:
    parsed = parse_tolerant(text, truncated=len(text) % 2 == 0)
    assert isinstance(parsed.complete, bool)
    assert all(isinstance(w, str) and w for w in parsed.warnings)


@settings(max_examples=200, deadline=None)
@given(model_output(), st.booleans())
def test_tolerant_parser_never_raises_on_grammar_text(text: str, truncated: bool) -> None:
    parsed = parse_tolerant(text, truncated=truncated)
    for finding in parsed.findings:
        for box in finding.model_boxes or ():
            assert 0 < box.x_min <= box.x_max < 1 and 0 < box.y_min <= box.y_max < 1
    assert parsed.complete == (not parsed.warnings)
    if truncated:
        assert not parsed.complete


@settings(max_examples=200, deadline=None)
@given(FINDINGS)
def test_format_then_parse_round_trips_exactly(items: list[tuple[str, list[Box] | None]]) -> None:
    text = format_grounded(items)
    parsed = parse_tolerant(text)
    assert parsed.warnings == ()
    assert parsed.complete
    assert [(f.text, None if f.model_boxes is None else list(f.model_boxes)) for f in parsed.findings] == items
    if items:
        strict = parse_strict(text)
        assert strict == [(s, None if b is None else [box.as_tuple() for box in b]) for s, b in items]
    assert format_grounded(parsed.findings) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_output())
@example("<obj>a<obj>b</obj>")
@example("<obj>a <x1> <y2>b</obj>")
@example("<obj>a<box><x1><y1><x2><y2><obj></box></obj>")
@example("<obj>a<box><x1> <y2><x3><y4><x5><y6></box></obj>")
@example("<obj>a<box>junk<x1><y2><x3><y4>junk</box></obj>")
@example("<obj>a<box><x30><y20><x10><y40></box></obj>")
@example("The heart is normal.  The lungs are clear.\nNo effusion.")
def test_agrees_with_the_official_parser_wherever_it_accepts(text: str) -> None:
    assert_agrees_with_strict(text)


def test_grammar_produces_both_accepted_and_rejected_outputs() -> None:
    """The agreement property above is only meaningful if both kinds of string occur."""
    fast = settings(max_examples=2000, database=None, phases=[Phase.generate])  # first hit, no shrinking
    accepted = find(model_output(), lambda t: isinstance(strict_or_none(t), list) and "<box>" in t, settings=fast)
    rejected = find(model_output(), lambda t: "<obj>" in t and strict_or_none(t) is None, settings=fast)
    assert parse_strict(accepted)
    assert not parse_tolerant(rejected).complete


def test_official_docstring_example() -> None:
    text = "<obj>grounded phrase <box><x55><y45><x70><y56></box></obj><obj>ungrounded phrase</obj>"
    expected = [("grounded phrase", [(0.555, 0.455, 0.705, 0.565)]), ("ungrounded phrase", None)]
    assert parse_strict(text) == expected
    assert as_comparable(parse_tolerant(text).findings) == expected


def warnings_of(text: str, **kwargs) -> str:
    parsed = parse_tolerant(text, **kwargs)
    assert not parsed.complete
    return " | ".join(parsed.warnings)


def test_warning_truncated() -> None:
    parsed = parse_tolerant("<obj>The heart is normal.</obj><obj>There is a", truncated=True)
    assert "truncated at max_new_tokens" in " | ".join(parsed.warnings)
    assert "ends inside a phrase" in " | ".join(parsed.warnings)
    assert [f.text for f in parsed.findings] == ["The heart is normal.", "There is a"]
    assert "truncated" in warnings_of("The lungs are clear.", truncated=True)


def test_warning_output_ends_inside_a_box() -> None:
    parsed = parse_tolerant("<obj>Nodule.<box><x1><y2>")
    assert "ends inside a box" in " | ".join(parsed.warnings)
    assert parsed.findings == (Finding("Nodule.", None),)


def test_warning_stray_text() -> None:
    assert "stray text between phrases: 'junk'" in warnings_of("<obj>a</obj> junk <obj>b</obj>")
    assert "stray text after the last phrase: 'tail'" in warnings_of("<obj>a</obj>tail")
    assert "stray text inside a box" in warnings_of("<obj>a<box>x<x1><y2><x3><y4></box></obj>")
    assert [f.text for f in parse_tolerant("<obj>a</obj> junk <obj>b</obj>").findings] == ["a", "b"]


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ("<x1><y2></box>", "malformed box <x1><y2> dropped"),
        ("</box>", "malformed box (empty) dropped"),
        ("<y1><x2><y3><x4></box>", "malformed box"),
        ("<x100><y2><x3><y4></box>", "box bin out of range (>= 100) dropped"),
        ("<x1><y2><x3><y400></box>", "out of range"),
    ],
)
def test_warning_malformed_or_out_of_range_box(box: str, message: str) -> None:
    text = "<obj>Effusion.<box>" + box + "</obj>"
    assert message in warnings_of(text)
    assert parse_tolerant(text).findings == (Finding("Effusion.", None),)
    assert strict_or_none(text) is None


def test_warning_extra_coordinates() -> None:
    parsed = parse_tolerant("<obj>a<box><x1><y2><x3><y4><x5></box></obj>")
    assert "extra coordinate tokens" in " | ".join(parsed.warnings)
    assert parsed.findings[0].model_boxes == (bins_to_box((1, 2, 3, 4)),)


def test_warning_x_max_below_x_min() -> None:
    parsed = parse_tolerant("<obj>Nodule.<box><x30><y20><x10><y40></box></obj>")
    assert "max < min" in " | ".join(parsed.warnings)
    assert parsed.findings[0].model_boxes == (Box(0.105, 0.205, 0.305, 0.405),)


def test_warning_nested_obj() -> None:
    assert "nested <obj>" in warnings_of("<obj>The heart<obj>is normal.</obj>")
    assert "nested <obj>" in warnings_of("<obj>Nodule.<box><x1><y2><x3><y4></box><obj>Effusion.</obj>")


def test_other_structural_warnings() -> None:
    assert "</obj> without <obj>" in warnings_of("</obj>")
    assert "<box> outside a phrase" in warnings_of("<box><x1><y2><x3><y4></box>")
    assert "</box> without <box>" in warnings_of("<obj>a</box></obj>")
    assert "coordinate token <x5> outside a box" in warnings_of("<obj>a</obj><x5>")
    assert "empty phrase" in warnings_of("<obj></obj>")


def test_plain_text_is_split_into_sentences() -> None:
    parsed = parse_tolerant("  The heart is normal. The lungs are clear!\nNo effusion  ")
    assert [f.text for f in parsed.findings] == ["The heart is normal.", "The lungs are clear!", "No effusion"]
    assert parsed.complete and all(not f.grounded for f in parsed.findings)
    assert parse_tolerant("").findings == ()
