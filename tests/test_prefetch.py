"""Prefetch on open: the backend warms its caches in the background, Generate then starts warm."""

from __future__ import annotations

import threading

import numpy as np

from model_backend.backends.local import LocalBackend
from model_backend.types import PromptContext, Study
from tests.conftest import random_study, xray_from_array
from webapp.prefetch import Prefetcher


def tokens(backend: LocalBackend, study: Study, context: PromptContext) -> str:
    return backend.generate(study, [context])[0].raw_text


def test_prefetch_warms_the_prefix_and_keeps_the_tokens(tiny_backend: LocalBackend, tiny_snapshot) -> None:
    study = random_study(21)
    tiny_backend.prefetch(study)
    assert tiny_backend.cache_stats() == {"feature_hits": 0, "feature_misses": 3, "prefix_hits": 0, "prefix_misses": 1}
    warm = tokens(tiny_backend, study, study.context)
    assert tiny_backend.cache_stats()["prefix_hits"] == 1  # the default context uses all images: warm
    fresh = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=tiny_backend.settings)
    assert warm == tokens(fresh, study, study.context)


def test_prefetcher_keeps_only_the_latest_request(tiny_backend: LocalBackend) -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[str] = []
    original = tiny_backend.prefetch

    def slow_prefetch(study: Study) -> None:
        seen.append(study.study_id)
        started.set()
        assert release.wait(30)
        original(study)

    tiny_backend.prefetch = slow_prefetch  # type: ignore[method-assign]
    prefetcher = Prefetcher(tiny_backend)
    prefetcher.request(random_study(1))
    assert started.wait(30)
    for seed in range(2, 7):  # someone pages quickly while the first prefetch runs
        prefetcher.request(random_study(seed))
    release.set()
    assert prefetcher.wait_idle(60)
    assert seen == ["study-1", "study-6"]
    assert prefetcher.completed == 2
    hits = tiny_backend.cache_stats()["prefix_hits"]
    tokens(tiny_backend, random_study(6), random_study(6).context)
    assert tiny_backend.cache_stats()["prefix_hits"] == hits + 1


def test_a_failing_prefetch_leaves_the_thread_serving(tiny_backend: LocalBackend) -> None:
    blank = xray_from_array(np.full((64, 64), 128))
    bad = Study("blank", frontal=blank, context=PromptContext())
    prefetcher = Prefetcher(tiny_backend)
    prefetcher.request(bad)
    assert prefetcher.wait_idle(60)
    assert prefetcher.completed == 0
    prefetcher.request(random_study(8))
    assert prefetcher.wait_idle(60)
    assert prefetcher.completed == 1
