"""Warm the backend for the study a person just opened, while they look at it.

Opening a study asks the backend to `prefetch` it (vision features and the image prompt prefix)
on one background thread, so that Generate starts from warm caches. Only the latest request
matters: someone paging through studies queues at most one prefetch, never a backlog.
"""

from __future__ import annotations

import logging
import threading

from model_backend.backends.base import Backend
from model_backend.types import Study

log = logging.getLogger(__name__)


class Prefetcher:
    """One daemon thread that runs `backend.prefetch` for the most recently requested study."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._pending: Study | None = None
        self._wake = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self.completed = 0
        threading.Thread(target=self._loop, name="prefetch", daemon=True).start()

    def request(self, study: Study) -> None:
        """Replace any waiting request with `study` (a running prefetch finishes first)."""
        with self._wake:
            self._pending = study
            self._idle.clear()
            self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no prefetch is waiting or running (for tests and benchmarks)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while self._pending is None:
                    self._idle.set()
                    self._wake.wait()
                study, self._pending = self._pending, None
            try:
                self._backend.prefetch(study)
                self.completed += 1
            except Exception as err:  # a bad image is reported when the person asks for a report
                log.info("prefetch of %s skipped: %s", study.study_id, type(err).__name__)
