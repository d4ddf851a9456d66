"""Box completion: the grammar, the local backend's constrained decode (tiny snapshot) and the demo model."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_backend.backends import DEMO_MODEL_PATH, BackendError, load_backend
from model_backend.backends.base import UnsupportedTaskError
from model_backend.backends.box_completion import BoxCompletion, GroundingTokens
from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.boxes import bin_to_coord, box_to_bins, clip_box, iou, model_to_image_box
from model_backend.demo_model.evaluate import phantom_study
from model_backend.demo_model.phantoms import render_phantom, report_findings
from model_backend.maira2.parsing import format_grounded, parse_strict
from model_backend.maira2.processing import Maira2Processor
from model_backend.types import Box, PromptContext, Report, Study

SENTENCES = ["There is a left pleural effusion.", "The heart size is normal.", "A nodule in the right upper zone."]
CONTEXTS = [
    PromptContext(name="A", indication="Dyspnea.", technique="PA and lateral views.", prior_report="Clear lungs."),
    # Same images as A (one batch), a shorter tail and fewer boxes: B's row finishes first.
    PromptContext(name="B", indication="Chest pain."),
    PromptContext(name="C", use_lateral=False, indication="Dyspnea.", prior_report="Clear lungs."),
]


def grammar(sentences: list[str]) -> re.Pattern[str]:
    """The only texts box completion may produce for `sentences`: each verbatim, then zero or more boxes."""
    box = r"<box><x\d{1,2}><y\d{1,2}><x\d{1,2}><y\d{1,2}></box>"
    return re.compile("".join(f"<obj>{re.escape(s)}(?:{box})*</obj>" for s in sentences))


def as_bins(report: Report) -> list[list[tuple[int, int, int, int]] | None]:
    return [None if f.model_boxes is None else [box_to_bins(b) for b in f.model_boxes] for f in report.findings]


@pytest.fixture(scope="module")
def tokenizer(tiny_snapshot: Path):
    return Maira2Processor.from_pretrained(tiny_snapshot).tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer) -> GroundingTokens:
    return GroundingTokens.from_tokenizer(tokenizer, 100)


# ---------------------------------------------------------------- the grammar, without a model


def test_grammar_forces_sentences_constrains_boxes_and_caps_them(tokenizer, vocab: GroundingTokens) -> None:
    sentences = [vocab.sentence_ids(tokenizer, s) for s in SENTENCES]
    row = BoxCompletion(vocab, sentences, max_boxes=2)
    assert row.allowed() == (vocab.box, vocab.obj_end)
    with pytest.raises(ValueError, match="not allowed"):
        row.choose(vocab.x_bins[3])  # a coordinate outside a box
    row.choose(vocab.box)
    assert row.allowed() == vocab.x_bins
    row.choose(vocab.x_bins[40])
    assert row.allowed() == vocab.y_bins
    row.choose(vocab.y_bins[30])
    assert row.allowed() == vocab.x_bins[40:]  # x_max >= x_min
    with pytest.raises(ValueError, match="not allowed"):
        row.choose(vocab.x_bins[39])
    row.choose(vocab.x_bins[90])
    assert row.allowed() == vocab.y_bins[30:]
    row.choose(vocab.y_bins[80])
    row.choose(vocab.obj_end)  # first finding: one box
    row.choose(vocab.obj_end)  # second: none
    for bins in ((1, 2, 3, 4), (5, 6, 7, 8)):  # third: two boxes, and the limit closes it
        row.choose(vocab.box)
        for axis, b in zip("xyxy", bins, strict=True):
            row.choose((vocab.x_bins if axis == "x" else vocab.y_bins)[b])
    assert row.finished and row.allowed() == () and row.capped == [2]
    assert row.boxes == [[(40, 30, 90, 80)], [], [(1, 2, 3, 4), (5, 6, 7, 8)]]
    assert row.choices == 6 + 1 + 10  # <box>, 4 bins, </obj>; </obj>; twice <box> and 4 bins
    text = tokenizer.decode(row.tokens)
    assert text == (
        f"<obj>{SENTENCES[0]}<box><x40><y30><x90><y80></box></obj><obj>{SENTENCES[1]}</obj>"
        f"<obj>{SENTENCES[2]}<box><x1><y2><x3><y4></box><box><x5><y6><x7><y8></box></obj>"
    )


def test_forced_tokens_are_the_training_tokens_of_the_demo_model() -> None:
    """The demo model was trained on `tokenizer(format_grounded(report))`; box completion must feed it the same."""
    if not (DEMO_MODEL_PATH / "tokenizer.json").exists():
        pytest.skip("the demo model is absent")
    tokenizer = Maira2Processor.from_pretrained(DEMO_MODEL_PATH).tokenizer
    vocab = GroundingTokens.from_tokenizer(tokenizer, 100)
    findings = [(SENTENCES[0], [Box(0.105, 0.555, 0.405, 0.915)]), (SENTENCES[1], None), ("No pneumothorax.", None)]
    row = BoxCompletion(vocab, [vocab.sentence_ids(tokenizer, s) for s, _ in findings], max_boxes=10)
    for _, boxes in findings:
        for bins in (box_to_bins(b) for b in boxes or ()):
            row.choose(vocab.box)
            for axis, b in zip("xyxy", bins, strict=True):
                row.choose((vocab.x_bins if axis == "x" else vocab.y_bins)[b])
        row.choose(vocab.obj_end)
    assert row.tokens == tokenizer(format_grounded(findings), add_special_tokens=False)["input_ids"]
    # Tokenised alone, the first sentence would start with a word-boundary marker: not what the model saw.
    assert tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"] != vocab.sentence_ids(tokenizer, SENTENCES[0])


@pytest.mark.parametrize("sentence", ["", "An <obj> inside.", "A coordinate <x5> here.", "Box</box>"])
def test_sentences_with_grounding_tokens_are_refused(tokenizer, vocab: GroundingTokens, sentence: str) -> None:
    with pytest.raises(BackendError, match="non-empty plain text"):
        vocab.sentence_ids(tokenizer, sentence)


# ---------------------------------------------------------------- the local backend, tiny random snapshot


def test_forced_sentences_appear_verbatim_and_only_boxes_are_chosen(tiny_backend: LocalBackend, tiny_study) -> None:
    reports = tiny_backend.complete_boxes(tiny_study, [f"  {SENTENCES[0]}", *SENTENCES[1:]], CONTEXTS)
    assert [r.context for r in reports] == CONTEXTS
    for report in reports:
        assert report.task == "box_completion" and report.complete and report.warnings == ()
        assert [f.text for f in report.findings] == SENTENCES
        assert grammar(SENTENCES).fullmatch(report.raw_text), report.raw_text
        # The official parser reads the same findings and boxes from the text.
        boxes = [None if f.model_boxes is None else [b.as_tuple() for b in f.model_boxes] for f in report.findings]
        assert parse_strict(report.raw_text) == list(zip(SENTENCES, boxes, strict=True))
        for bins in (b for boxes in as_bins(report) if boxes for b in boxes):
            x_min, y_min, x_max, y_max = bins
            assert 0 <= x_min <= x_max <= 99 and 0 <= y_min <= y_max <= 99
        for box in (b for f in report.findings for b in f.model_boxes or ()):
            assert box.as_tuple() == tuple(bin_to_coord(b) for b in box_to_bins(box))  # bin centres
        fed = tiny_backend.processor.tokenizer(report.raw_text, add_special_tokens=False)["input_ids"]
        assert report.timing("new_tokens") == len(fed)
    grounded = [f.grounded for r in reports for f in r.findings]
    assert any(grounded) and not all(grounded)  # the model did choose: boxes for some sentences, not for others


def test_contexts_together_equal_contexts_alone(tiny_backend: LocalBackend, tiny_snapshot: Path, tiny_study) -> None:
    together = tiny_backend.complete_boxes(tiny_study, SENTENCES, CONTEXTS)
    alone = [
        LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32").complete_boxes(tiny_study, SENTENCES, [c])[0]
        for c in CONTEXTS
    ]
    assert [(r.raw_text, r.findings) for r in together] == [(r.raw_text, r.findings) for r in alone]
    assert len({r.raw_text for r in together}) > 1  # the contexts change the boxes, so a mix-up would show


def full_forward_completion(backend: LocalBackend, study: Study, context: PromptContext, sentences: list[str]) -> str:
    """The same constrained greedy decode, by the book: the official processor call and one uncached forward
    pass over the whole sequence per choice (no prefix cache, no shared-prefix attention, no batching)."""
    processor, model = backend.processor, backend.model
    frontal, lateral, prior = (
        None if img is None else Image.fromarray(img.display)
        for img in (study.frontal, study.lateral if context.use_lateral else None,
                    study.prior_frontal if context.use_prior else None)
    )  # fmt: skip
    inputs = processor.format_and_preprocess_reporting_input(
        frontal, lateral, prior, context.indication, context.technique, context.comparison, context.prior_report,
        get_grounding=True,
    )  # fmt: skip
    vocab = GroundingTokens.from_tokenizer(processor.tokenizer, 100)
    row = BoxCompletion(vocab, [vocab.sentence_ids(processor.tokenizer, s) for s in sentences], max_boxes=10)
    while not row.finished:
        ids = torch.cat([inputs["input_ids"], torch.tensor([row.tokens])], dim=1)
        with torch.inference_mode():
            logits = model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -1]
        allowed = row.allowed()
        row.choose(allowed[int(logits[list(allowed)].argmax())])
    return processor.decode(row.tokens)


def test_decode_equals_an_uncached_full_forward_decode(tiny_backend: LocalBackend, tiny_study) -> None:
    reports = tiny_backend.complete_boxes(tiny_study, SENTENCES, CONTEXTS)
    expected = [full_forward_completion(tiny_backend, tiny_study, c, SENTENCES) for c in CONTEXTS]
    assert [r.raw_text for r in reports] == expected


def test_image_prefix_is_computed_once(tiny_backend: LocalBackend, tiny_study, monkeypatch) -> None:
    """Spies (the real calls still run) count vision-tower calls and language-model calls by kind."""
    model = tiny_backend.model
    vision_calls: list[int] = []
    lm_calls: list[tuple[str, int]] = []  # ("prefill" | "tail", tokens fed)
    real_features, real_lm = model.get_image_features, model.language_model.forward

    def features_spy(pixel_values: torch.Tensor) -> torch.Tensor:
        vision_calls.append(len(pixel_values))
        return real_features(pixel_values)

    def lm_spy(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        fed = embeds if embeds is not None else kwargs["input_ids"]
        lm_calls.append(("prefill" if embeds is not None else "tail", fed.shape[1]))
        return real_lm(*args, **kwargs)

    monkeypatch.setattr(model, "get_image_features", features_spy)
    monkeypatch.setattr(model.language_model, "forward", lm_spy)
    same_images = [CONTEXTS[0], CONTEXTS[1]]
    tiny_backend.complete_boxes(tiny_study, SENTENCES, same_images)
    tiny_backend.complete_boxes(tiny_study, SENTENCES[::-1], same_images)
    tiny_backend.generate(tiny_study, [CONTEXTS[0]])
    assert vision_calls == [3]  # frontal, lateral and prior once, in one batch
    assert [kind for kind, _ in lm_calls].count("prefill") == 1  # the image prefix, once for all three calls
    tails = [n for kind, n in lm_calls if kind == "tail"]
    tokenizer = tiny_backend.processor.tokenizer
    longest_sentence = max(
        len(tokenizer(f"<obj>{s}</obj>", add_special_tokens=False)["input_ids"]) - 2 for s in SENTENCES
    )
    # After each call's first step (prompt tail + first sentence), a step feeds at most </obj><obj>sentence
    # or a coordinate plus </box>: the prompt is never fed again.
    between_first_steps = [n for n in tails if n > longest_sentence + 2]
    assert len(between_first_steps) == 3 and len(tails) > 3 * len(SENTENCES)
    assert tiny_backend.cache_stats()["prefix_misses"] == 1


def test_box_limit_is_applied_and_reported(tiny_snapshot: Path, tiny_study) -> None:
    """With a limit of one box, a finding is closed after its first box without asking the model (the tiny
    model would close it there anyway, so the text is the same) and the report says so."""
    settings = GenerationSettings(max_boxes_per_finding=1)
    capped = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=settings)
    (report,) = capped.complete_boxes(tiny_study, SENTENCES, [CONTEXTS[0]])
    (unlimited,) = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32").complete_boxes(
        tiny_study, SENTENCES, [CONTEXTS[0]]
    )
    boxed = [i for i, f in enumerate(report.findings) if f.grounded]
    assert boxed and report.raw_text == unlimited.raw_text and unlimited.complete
    assert not report.complete
    assert report.warnings == tuple(f"finding {i + 1}: closed after 1 box(es), the limit per finding" for i in boxed)
    assert report.timing("model_choices") == unlimited.timing("model_choices") - len(boxed)


def test_a_sentence_the_tokenizer_cannot_spell_is_kept_and_flagged(tiny_backend: LocalBackend, tiny_study) -> None:
    """The tiny tokenizer knows ASCII only: the model reads the dash as <unk>, and the report says so."""
    sentences = ["Small effusion \u2013 unchanged.", SENTENCES[1]]
    (report,) = tiny_backend.complete_boxes(tiny_study, sentences, [CONTEXTS[0]])
    assert [f.text for f in report.findings] == sentences and report.complete
    assert report.warnings == (
        "finding 1 does not survive tokenisation verbatim: the model read 'Small effusion  unchanged.'",
    )


def test_report_identity_differs_from_the_generated_report(tiny_backend: LocalBackend, tiny_study) -> None:
    (completed,) = tiny_backend.complete_boxes(tiny_study, SENTENCES, [CONTEXTS[0]])
    (generated,) = tiny_backend.generate(tiny_study, [CONTEXTS[0]])
    assert completed.report_id != generated.report_id
    assert completed.to_dict()["task"] == "box_completion" and completed.backend == tiny_backend.info


def test_bad_requests_are_clear_errors(tiny_backend: LocalBackend, tiny_study) -> None:
    with pytest.raises(BackendError, match="no findings"):
        tiny_backend.complete_boxes(tiny_study, [], CONTEXTS)
    with pytest.raises(BackendError, match="list of sentences"):
        tiny_backend.complete_boxes(tiny_study, "No effusion.", CONTEXTS)
    with pytest.raises(UnsupportedTaskError, match=r"context\(s\) B have grounded off"):
        tiny_backend.complete_boxes(tiny_study, SENTENCES, [CONTEXTS[0], PromptContext(name="B", grounded=False)])
    with pytest.raises(BackendError, match="plain text"):
        tiny_backend.complete_boxes(tiny_study, ["Effusion <box>."], CONTEXTS)
    assert tiny_backend.complete_boxes(tiny_study, SENTENCES, []) == []


# ---------------------------------------------------------------- the demo model

# Measured on phantoms 30_000_000..30_000_019 (87 sentences): decision accuracy 1.0, mean IoU 0.57.
DEMO_DECISION_FLOOR = 0.9
DEMO_IOU_FLOOR = 0.4


def test_demo_model_boxes_the_abnormal_sentences_of_phantom_reports() -> None:
    """Given each phantom's true report, the demo model boxes the abnormal findings where they are
    and leaves the normal statements unboxed."""
    if not (DEMO_MODEL_PATH / "config.json").exists():
        pytest.skip("the demo model is absent")
    backend = load_backend("demo")
    decisions, ious = [], []
    for seed in range(30_000_000, 30_000_006):
        phantom = render_phantom(seed)
        study = phantom_study(seed, phantom)
        reference = report_findings(phantom, with_prior=study.prior_frontal is not None)
        (report,) = backend.complete_boxes(study, [s for s, _ in reference], [study.context])
        assert [f.text for f in report.findings] == [s for s, _ in reference] and report.complete
        for (_, image_box), finding in zip(reference, report.findings, strict=True):
            decisions.append(finding.grounded == (image_box is not None))
            if image_box is not None and finding.grounded:
                first = model_to_image_box(finding.model_boxes[0], report.image_width, report.image_height)
                ious.append(iou(clip_box(first, report.image_width, report.image_height), image_box))
    assert sum(decisions) / len(decisions) >= DEMO_DECISION_FLOOR, decisions
    assert ious and sum(ious) / len(ious) >= DEMO_IOU_FLOOR, ious


def test_demo_model_decode_equals_an_uncached_full_forward_decode() -> None:
    """On a trained model (where token positions matter), contexts of different tail lengths decoded together
    give what the by-the-book decode gives for each alone."""
    if not (DEMO_MODEL_PATH / "config.json").exists():
        pytest.skip("the demo model is absent")
    backend = load_backend("demo")
    seed = next(s for s in range(30_000_000, 30_000_100) if render_phantom(s).prior_frontal is not None)
    phantom = render_phantom(seed)
    study = phantom_study(seed, phantom)
    sentences = [s for s, _ in report_findings(phantom, with_prior=True)]
    contexts = [
        study.context,
        replace(study.context, name="long", indication="Follow-up of known findings; shortness of breath."),
        replace(study.context, name="short", indication=None, technique=None, comparison=None),
    ]
    reports = backend.complete_boxes(study, sentences, contexts)
    assert [r.raw_text for r in reports] == [full_forward_completion(backend, study, c, sentences) for c in contexts]
    assert any(f.grounded for r in reports for f in r.findings)
