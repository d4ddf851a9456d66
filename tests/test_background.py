"""Background work on the real tiny model: warm-up on open, pre-generation into the report store,
only the latest plan, and stepping aside for a person's call (synchronised by events, never by sleeps)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_backend.backends.local import LocalBackend
from model_backend.datasets import load_manifest
from model_backend.types import PromptContext, Report, Study
from tests.conftest import random_study
from webapp.database import Database
from webapp.services import AppServices, StudyRef, Switches


def tokens(backend: LocalBackend, study: Study, context: PromptContext) -> str:
    return backend.generate(study, [context])[0].raw_text


def test_prefetch_warms_the_prefix_and_keeps_the_tokens(tiny_backend: LocalBackend, tiny_snapshot: Path) -> None:
    study = random_study(21)
    tiny_backend.prefetch(study)
    assert tiny_backend.cache_stats() == {"feature_hits": 0, "feature_misses": 3, "prefix_hits": 0, "prefix_misses": 1}
    warm = tokens(tiny_backend, study, study.context)
    assert tiny_backend.cache_stats()["prefix_hits"] == 1  # the default context uses all images: warm
    fresh = LocalBackend(str(tiny_snapshot), device="cpu", dtype="float32", settings=tiny_backend.settings)
    assert warm == tokens(fresh, study, study.context)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """Five studies of random non-square 8-bit images, each with an indication."""
    rows = []
    for n in range(5):
        image = np.random.default_rng(n).integers(0, 256, (70 + n, 90), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"s{n}.png")
        rows.append({"study_id": f"s{n}", "frontal": f"s{n}.png", "indication": f"Reason {n}."})
    (tmp_path / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


class SteppedBackend:
    """The tiny backend, but the stream of a study named in `holds` pauses after its first partial report
    (setting that study's `paused` event) until the test sets its `release` event."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.info = inner.info
        self.settings = inner.settings
        self.holds: dict[str, tuple[threading.Event, threading.Event]] = {}

    def hold(self, study_id: str) -> tuple[threading.Event, threading.Event]:
        self.holds[study_id] = (threading.Event(), threading.Event())
        return self.holds[study_id]

    def stream(self, study: Study, context: PromptContext) -> Iterator[Report]:
        for n, partial in enumerate(self.inner.stream(study, context)):
            yield partial
            if n == 0 and study.study_id in self.holds:
                paused, release = self.holds.pop(study.study_id)
                paused.set()
                assert release.wait(60), "the test never released the stream"

    def prefetch(self, study: Study) -> None:
        self.inner.prefetch(study)

    def generate(self, study: Study, contexts: list[PromptContext]) -> list[Report]:
        return self.inner.generate(study, contexts)

    def ground_phrase(self, study: Study, phrase: str) -> Report:
        return self.inner.ground_phrase(study, phrase)


def services_on(backend, dataset_dir: Path, tmp_path: Path, pregenerate: int = 2) -> AppServices:
    return AppServices(backend, load_manifest(dataset_dir), Database(tmp_path / "r.sqlite"), pregenerate=pregenerate)


def test_pregeneration_stores_the_next_studies_and_opening_them_calls_no_model(
    tiny_backend: LocalBackend, dataset_dir: Path, tmp_path: Path
) -> None:
    services = services_on(tiny_backend, dataset_dir, tmp_path)
    listing = services.listing("", False, "")
    switches = Switches()
    services.follow(StudyRef("dataset", "s0"), listing, switches)
    assert services.background.wait_idle(120)
    assert services.gate.calls == {"prefetch": 1, "pregenerate": 2}
    before = services.gate.total()
    for study_id in ("s1", "s2"):
        study = services.load(StudyRef("dataset", study_id))
        stored = services.stored_report(StudyRef("dataset", study_id), study, services.default_context(study, switches))
        assert stored is not None and stored.source == "pregenerate"
        assert stored.report.context.indication == f"Reason {study_id[1]}."
    assert services.gate.total() == before  # looking reports up is not a model call
    services.follow(StudyRef("dataset", "s1"), listing, switches)  # s1 is stored: no warm-up; s2 stored; s3 new
    assert services.background.wait_idle(120)
    assert services.gate.calls == {"prefetch": 1, "pregenerate": 3}


def test_pregeneration_steps_aside_for_a_person_and_only_the_latest_plan_runs(
    tiny_backend: LocalBackend, dataset_dir: Path, tmp_path: Path
) -> None:
    backend = SteppedBackend(tiny_backend)
    services = services_on(backend, dataset_dir, tmp_path, pregenerate=1)
    listing = services.listing("", False, "")
    background_paused, background_release = backend.hold("s1")
    services.follow(StudyRef("dataset", "s0"), listing, Switches())  # warms s0, then pre-generates s1
    assert background_paused.wait(60), "pre-generation never started"
    person_paused, person_release = backend.hold("s0")
    study = services.load(StudyRef("dataset", "s0"))
    context = services.default_context(study, Switches())
    person = threading.Thread(target=lambda: list(services.generate(StudyRef("dataset", "s0"), study, context)))
    person.start()
    assert person_paused.wait(60) and services.gate.user_waiting()  # the person's call is running
    background_release.set()  # the pre-generation resumes mid-stream, sees the person waiting, steps aside
    assert services.background.stepped_aside.wait(60)
    person_release.set()
    person.join(120)
    assert services.gate.calls["generate"] == 1
    for study_id in ("s2", "s3"):  # someone pages on quickly: only the last plan is worked on
        services.follow(StudyRef("dataset", study_id), listing, Switches())
    assert services.background.wait_idle(120)

    def stored(study_id: str) -> bool:
        study = services.load(StudyRef("dataset", study_id))
        return services.stored_report(StudyRef("dataset", study_id), study,
                                      services.default_context(study, Switches())) is not None  # fmt: skip

    assert stored("s0") and stored("s4")  # the person's report; the last plan's pre-generation
