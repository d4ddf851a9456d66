"""Alignment of findings across prompt contexts."""

from __future__ import annotations

from model_backend.types import BackendInfo, Finding, PromptContext, Report
from webapp.compare import AlignedRow, align_findings, alignment_headers, alignment_table, similarity


def make_report(name: str, *sentences: str) -> Report:
    return Report(
        study_id="s1",
        context=PromptContext(name=name),
        findings=tuple(Finding(text) for text in sentences),
        image_width=512,
        image_height=512,
        raw_text=" ".join(sentences),
        complete=True,
        backend=BackendInfo(name="replay", model_id="test"),
    )


BASE = (
    "The heart size is normal.",
    "There is a small left pleural effusion.",
    "No pneumothorax.",
)


def test_identical_reports_align_row_by_row_as_same() -> None:
    rows = align_findings([make_report("A", *BASE), make_report("B", *BASE)])
    assert rows == [AlignedRow((i, i), "same") for i in range(3)]


def test_case_and_punctuation_differences_are_still_same() -> None:
    rows = align_findings([make_report("A", "No pneumothorax."), make_report("B", "no Pneumothorax")])
    assert rows == [AlignedRow((0, 0), "same")]


def test_extra_sentence_gets_its_own_row_in_place() -> None:
    b = make_report("B", BASE[0], "Bibasal atelectasis.", BASE[1], BASE[2])
    rows = align_findings([make_report("A", *BASE), b])
    assert [r.cells for r in rows] == [(0, 0), (None, 1), (1, 2), (2, 3)]
    assert [r.status for r in rows] == ["same", "unique", "same", "same"]


def test_extra_first_sentence_goes_to_the_top() -> None:
    rows = align_findings([make_report("A", *BASE), make_report("B", "Sternotomy wires.", *BASE)])
    assert [r.cells for r in rows] == [(None, 0), (0, 1), (1, 2), (2, 3)]


def test_reordered_sentences_match_by_text_in_first_context_order() -> None:
    rows = align_findings([make_report("A", *BASE), make_report("B", *reversed(BASE))])
    assert [r.cells for r in rows] == [(0, 2), (1, 1), (2, 0)]
    assert all(r.status == "same" for r in rows)


def test_paraphrase_is_similar_and_unrelated_is_unique() -> None:
    a = make_report("A", "There is a small left pleural effusion.", "The heart size is normal.")
    b = make_report("B", "Small left pleural effusion is present.", "Degenerative changes of the spine.")
    rows = align_findings([a, b])
    assert rows[0] == AlignedRow((0, 0), "similar")
    assert {r.cells for r in rows[1:]} == {(1, None), (None, 1)}
    assert all(r.status == "unique" for r in rows[1:])


def test_negated_sentence_is_not_matched_to_positive_one() -> None:
    assert similarity("No pneumothorax.", "There is a pneumothorax.") < 0.5
    rows = align_findings([make_report("A", "No pneumothorax."), make_report("B", "There is a pneumothorax.")])
    assert {r.cells for r in rows} == {(None, 0), (0, None)}


def test_repeated_sentences_pair_in_order() -> None:
    rows = align_findings([make_report("A", "Clips.", "Clips."), make_report("B", "Clips.", "Clips.")])
    assert [r.cells for r in rows] == [(0, 0), (1, 1)]


def test_three_contexts_and_status() -> None:
    a = make_report("A", *BASE)
    b = make_report("B", BASE[0], "There is a small left sided pleural effusion.", BASE[2])
    c = make_report("C", BASE[0], BASE[2], "Right lower lobe consolidation.")
    rows = align_findings([a, b, c])
    assert [r.cells for r in rows] == [(0, 0, 0), (1, 1, None), (2, 2, 1), (None, None, 2)]
    assert [r.status for r in rows] == ["same", "unique", "same", "unique"]


def test_empty_inputs() -> None:
    assert align_findings([]) == []
    rows = align_findings([make_report("A"), make_report("B", "Clips.")])
    assert rows == [AlignedRow((None, 0), "unique")]


def test_alignment_table_is_plain_text_with_one_column_per_context() -> None:
    a = make_report("A", *BASE)
    b = make_report("A", BASE[0], "Bibasal atelectasis.")
    rows = align_findings([a, b])
    assert alignment_headers([a, b]) == ["match", "A", "A (2)"]
    table = alignment_table(rows, [a, b])
    assert table[0] == ["same", "1. The heart size is normal.", "1. The heart size is normal."]
    assert ["unique", "—", "2. Bibasal atelectasis."] in table
    assert all(len(row) == 3 and all("<" not in cell for cell in row) for row in table)
