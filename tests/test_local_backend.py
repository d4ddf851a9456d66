"""LocalBackend on the tiny snapshot: batching parity, threads, caches, streaming, phrase grounding, errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from model_backend.backends import Backend, BackendError
from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.types import PromptContext, Report, Study

CONTEXTS = [
    PromptContext(name="A", indication="Dyspnea.", technique="PA and lateral views.", prior_report="Clear lungs."),
    # Same images as A (shared prefix, decoded in one batch), longer tail, not grounded: a shorter budget below.
    PromptContext(name="B", indication="Fever and productive cough for three days, rule out pneumonia.",
                  prior_report="Clear lungs.", grounded=False),
    PromptContext(name="C", use_lateral=False, indication="Dyspnea.", prior_report="Clear lungs."),
    PromptContext(name="D", use_lateral=False, use_prior=False, grounded=False, indication="Chest pain."),
]  # fmt: skip


def tokens(report: Report) -> tuple[str, float | None]:
    return report.raw_text, report.timing("new_tokens")


@pytest.fixture
def uneven_backend(tiny_snapshot: Path) -> LocalBackend:
    """Findings rows stop after 8 tokens, grounded rows after 16: rows leave a running batch."""
    return LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=GenerationSettings(8, 16, 16))


def test_is_a_backend(tiny_backend: LocalBackend, tiny_study: Study) -> None:
    assert isinstance(tiny_backend, Backend)
    assert tiny_backend.info.name == "local" and tiny_backend.info.device == "cpu"
    assert tiny_backend.generate(tiny_study, []) == []


def test_contexts_together_equal_contexts_one_by_one(uneven_backend: LocalBackend, tiny_snapshot, tiny_study) -> None:
    together = uneven_backend.generate(tiny_study, CONTEXTS)
    fresh = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=uneven_backend.settings)
    one_by_one = [fresh.generate(tiny_study, [context])[0] for context in CONTEXTS]
    assert [r.context for r in together] == CONTEXTS
    assert [tokens(r) for r in together] == [tokens(r) for r in one_by_one]
    assert [r.timing("new_tokens") for r in together] == [16, 8, 16, 8]  # B and D hit the findings budget
    assert len({r.raw_text for r in together}) > 1  # the contexts do change the output


def test_report_fields(tiny_backend: LocalBackend, tiny_study: Study) -> None:
    report = tiny_backend.generate(tiny_study, [CONTEXTS[0]])[0]
    assert report.study_id == tiny_study.study_id and report.task == "reporting"
    assert (report.image_width, report.image_height) == (tiny_study.frontal.width, tiny_study.frontal.height)
    assert report.images_key == tiny_study.images_key()
    assert report.backend == tiny_backend.info
    assert report.timing("new_tokens") == 24 and not report.complete  # random weights run to the budget
    assert "output truncated at max_new_tokens" in report.warnings


def test_threads_get_their_own_results(tiny_backend: LocalBackend, make_study) -> None:
    """Four threads at once, each with its own study and context: each gets exactly its sequential result."""
    requests = [(make_study(seed), context) for seed, context in enumerate(CONTEXTS, start=1)]
    sequential = [tokens(tiny_backend.generate(study, [context])[0]) for study, context in requests]
    assert len(set(sequential)) == len(requests)  # distinct outputs, so a mix-up would show
    barrier = threading.Barrier(len(requests))

    def run(request: tuple[Study, PromptContext]) -> Report:
        barrier.wait()
        study, context = request
        return tiny_backend.generate(study, [context])[0]

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(run, requests))
    assert [r.study_id for r in results] == [study.study_id for study, _ in requests]
    assert [r.context for r in results] == CONTEXTS
    assert [tokens(r) for r in results] == sequential


def test_threads_streaming_and_generating_at_once(tiny_backend: LocalBackend, make_study) -> None:
    first, second = make_study(11), make_study(12)
    expected_first = tokens(tiny_backend.generate(first, [CONTEXTS[0]])[0])
    expected_second = tokens(tiny_backend.generate(second, [CONTEXTS[2]])[0])
    with ThreadPoolExecutor(2) as pool:
        streamed = pool.submit(lambda: list(tiny_backend.stream(first, CONTEXTS[0]))[-1])
        generated = pool.submit(lambda: tiny_backend.generate(second, [CONTEXTS[2]])[0])
        assert tokens(streamed.result()) == expected_first
        assert tokens(generated.result()) == expected_second


def test_warm_cache_reuses_features_and_prefix(tiny_backend: LocalBackend, tiny_snapshot, tiny_study) -> None:
    cold = tiny_backend.generate(tiny_study, [CONTEXTS[0]])[0]
    assert tiny_backend.cache_stats() == {"feature_hits": 0, "feature_misses": 3, "prefix_hits": 0, "prefix_misses": 1}
    new_indication = PromptContext(name="A2", indication="Cough.", prior_report="Clear lungs.")
    warm = tiny_backend.generate(tiny_study, [new_indication])[0]
    assert tiny_backend.cache_stats()["prefix_hits"] == 1  # same images: the whole image prefix is reused
    no_lateral = tiny_backend.generate(tiny_study, [CONTEXTS[2]])[0]
    stats = tiny_backend.cache_stats()
    assert (stats["prefix_misses"], stats["feature_hits"], stats["feature_misses"]) == (2, 2, 3)
    fresh = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=tiny_backend.settings)
    assert [tokens(r) for r in fresh.generate(tiny_study, [CONTEXTS[0], new_indication, CONTEXTS[2]])] == [
        tokens(cold),
        tokens(warm),
        tokens(no_lateral),
    ]


def test_stream_yields_partials_then_the_generated_report(tiny_backend: LocalBackend, tiny_study: Study) -> None:
    context = CONTEXTS[0]
    reports = list(tiny_backend.stream(tiny_study, context))
    *partials, final = reports
    assert len(partials) >= 1
    assert all(not p.complete for p in partials)
    assert all(final.raw_text.startswith(p.raw_text) for p in partials)
    generated = tiny_backend.generate(tiny_study, [context])[0]
    assert tokens(final) == tokens(generated)
    assert final.findings == generated.findings and final.warnings == generated.warnings


def test_ground_phrase(tiny_backend: LocalBackend, tiny_study: Study) -> None:
    report = tiny_backend.ground_phrase(tiny_study, "  right pleural effusion ")
    assert isinstance(report, Report)
    assert report.task == "phrase_grounding"
    assert report.context.indication == "right pleural effusion"
    assert report.timing("new_tokens") == 24
    other = tiny_backend.ground_phrase(tiny_study, "left upper lobe nodule")
    assert other.report_id != report.report_id


@pytest.mark.parametrize("phrase", ["", "   \n"])
def test_empty_phrase_is_an_error(tiny_backend: LocalBackend, tiny_study: Study, phrase: str) -> None:
    with pytest.raises(BackendError, match="type a finding"):
        tiny_backend.ground_phrase(tiny_study, phrase)


def test_constant_image_is_a_clear_error(tiny_backend: LocalBackend, make_xray, tiny_study: Study) -> None:
    black = make_xray(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(BackendError, match="blank"):
        tiny_backend.generate(Study("black", black), [PromptContext()])
    study = Study("black-lateral", tiny_study.frontal, lateral=black)
    with pytest.raises(BackendError, match="blank"):
        tiny_backend.generate(study, [PromptContext()])
    # The blank lateral is fine when the context leaves it out, and the backend keeps working.
    assert tiny_backend.generate(study, [PromptContext(use_lateral=False)])[0].study_id == "black-lateral"


def test_bad_model_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"no config\.json"):
        LocalBackend(str(tmp_path))
    with pytest.raises(BackendError, match="does not exist"):
        LocalBackend(str(tmp_path / "missing"))
