"""Every model call the app makes, counted and prioritised; background warm-up and pre-generation.

`ModelGate` is the one door to the backend: each call is counted by kind and logged
("model call N: ..."), and calls a person asked for (Generate, phrase grounding, Compare) mark
themselves active so that background work steps aside.

`BackgroundWork` runs one daemon thread that follows the reviewer: when a study is opened it is
given a plan (warm the open study if it has no stored report, then pre-generate the next N
studies of the current list under the current context into the report store). Only the latest
plan matters; a plan is dropped as soon as a newer one arrives, and work starts only once no newer
plan has arrived for `SETTLE_S` (the page that asked is answered first, a fast reader pages on).
Before each job, and between the findings of a streaming generation, the thread waits while a
person's call is running, and a generation interrupted that way is abandoned (nothing half-done is
stored) and retried later.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from model_backend.backends.base import Backend
from model_backend.types import PromptContext, Report, Study

log = logging.getLogger(__name__)
SETTLE_S = 0.5


class ModelGate:
    """Counts and logs model calls; lets background work yield to calls a person is waiting for."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._active_user_calls = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def call(self, kind: str, study_id: str, *, user: bool) -> Iterator[None]:
        """Wrap one model call (`kind`: generate, ground, compare, prefetch, pregenerate)."""
        with self._cond:
            self.calls[kind] += 1
            total = sum(self.calls.values())
            if user:
                self._active_user_calls += 1
        log.info("model call %d: %s for study %s (%s)", total, kind, study_id, "user" if user else "background")
        try:
            yield
        finally:
            if user:
                with self._cond:
                    self._active_user_calls -= 1
                    self._cond.notify_all()

    def user_waiting(self) -> bool:
        with self._cond:
            return self._active_user_calls > 0

    def wait_for_users(self) -> None:
        """Block while any call a person asked for is running."""
        with self._cond:
            self._cond.wait_for(lambda: self._active_user_calls == 0)

    def total(self) -> int:
        with self._cond:
            return sum(self.calls.values())


@dataclass(frozen=True)
class Switches:
    """The prompt switches a reviewer sets once and keeps while moving between studies."""

    use_lateral: bool = True
    use_prior: bool = True
    grounded: bool = True


@dataclass(frozen=True)
class Plan:
    """What to do in the background for the study a person just opened."""

    dataset: str
    current: str | None  # study id to warm up, when it has no stored report yet
    upcoming: tuple[str, ...]  # studies to pre-generate, in order
    switches: Switches  # applied to each study's own sections


class BackgroundWork:
    """One daemon thread that warms the open study and pre-generates the next ones (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        gate: ModelGate,
        load_study: Callable[[str], Study],
        context_for: Callable[[Study, Switches], PromptContext],
        has_report: Callable[[str, Study, PromptContext], bool],
        store: Callable[[Report, str], None],
    ) -> None:
        self._backend = backend
        self._gate = gate
        self._load_study = load_study
        self._context_for = context_for
        self._has_report = has_report
        self._store = store
        self._plan: Plan | None = None
        self._generation = 0
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self.pregenerated = 0
        self.stepped_aside = threading.Event()  # set the first time a generation stepped aside for a person
        threading.Thread(target=self._loop, name="background-work", daemon=True).start()

    def follow(self, plan: Plan) -> None:
        """Replace whatever is planned with `plan` (a running job finishes or steps aside first)."""
        with self._cond:
            self._plan = plan
            self._generation += 1
            self._idle.clear()
            self._cond.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once the current plan is done (for tests and benchmarks)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._plan is None:
                    self._idle.set()
                    self._cond.wait()
                # Let the page that asked for this plan be answered first (and a quick reader page on):
                # start only once no newer plan has arrived for `SETTLE_S`.
                while self._cond.wait_for(lambda g=self._generation: self._generation != g, timeout=SETTLE_S):
                    pass
                plan, generation, self._plan = self._plan, self._generation, None
            try:
                self._run(plan, generation)
            except Exception as err:  # background work must never take the app down
                log.warning("background work stopped early: %s: %s", type(err).__name__, err)

    def _stale(self, generation: int) -> bool:
        with self._cond:
            return generation != self._generation

    def _run(self, plan: Plan, generation: int) -> None:
        if plan.current is not None:
            self._gate.wait_for_users()
            study = self._load_study(plan.current)
            context = self._context_for(study, plan.switches)
            if not self._has_report(plan.dataset, study, context) and not self._stale(generation):
                with self._gate.call("prefetch", study.study_id, user=False):
                    self._backend.prefetch(study)
        for study_id in plan.upcoming:
            while True:
                if self._stale(generation):
                    return
                self._gate.wait_for_users()
                if self._pregenerate(plan, study_id, generation):
                    break

    def _pregenerate(self, plan: Plan, study_id: str, generation: int) -> bool:
        """Generate and store one study's report; False when a person's call interrupted it (try again)."""
        try:
            study = self._load_study(study_id)
        except Exception as err:  # an unreadable study is reported when a person opens it
            log.info("pre-generation skipped %s: %s", study_id, type(err).__name__)
            return True
        context = self._context_for(study, plan.switches)
        if self._has_report(plan.dataset, study, context):
            return True
        final: Report | None = None
        with self._gate.call("pregenerate", study_id, user=False):
            for partial in self._backend.stream(study, context):
                if self._gate.user_waiting() or self._stale(generation):
                    log.info("pre-generation of %s stepped aside", study_id)
                    self.stepped_aside.set()
                    return False
                final = partial
        if final is not None:
            self._store(final, plan.dataset)
            self.pregenerated += 1
            log.info("pre-generated %s", study_id)
        return True
