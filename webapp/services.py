"""What the app does, without Gradio: open studies, find stored reports, call the model, save verdicts.

The panels (`webapp.panels`) turn clicks into calls on `AppServices` and its results into
component updates; everything here is plain Python, so it is tested directly.

Studies are named by a `StudyRef`: a dataset study id, or the content key of an uploaded study
kept in memory (`UploadRegistry`). Reports are stored once they are final (`webapp.report_store`);
verdicts are saved only against a stored report, naming the finding by index AND sentence, and
refused when the two disagree (`save_finding_verdict`), so a verdict can never land on a
finding other than the one the reviewer saw.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from model_backend.backends.base import REPORTING, Backend, BackendError
from model_backend.datasets import Dataset
from model_backend.images import ImageLoadError
from model_backend.types import PromptContext, Report, Study
from webapp.background import BackgroundWork, ModelGate, Plan, Switches
from webapp.database import Database
from webapp.report_store import ReportStore, StoredReport
from webapp.reviews import FindingVerdict, ReportVerdict, ReviewStore

log = logging.getLogger(__name__)
UPLOADS_DATASET = "uploads"
MAX_UPLOADS = 32


@dataclass(frozen=True)
class StudyRef:
    """Which study: `kind` "dataset" (key = study id) or "upload" (key = the upload's images key)."""

    kind: Literal["dataset", "upload"]
    key: str


@dataclass(frozen=True)
class SaveResult:
    """The answer to a verdict save: `ok`, a sentence for the reviewer and the report's current verdicts."""

    ok: bool
    message: str
    verdicts: dict[int, FindingVerdict]
    report_verdict: ReportVerdict | None = None


class UploadRegistry:
    """Uploaded studies kept in memory (newest `MAX_UPLOADS`), by their images key."""

    def __init__(self, capacity: int = MAX_UPLOADS) -> None:
        self._studies: OrderedDict[str, Study] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, study: Study) -> str:
        key = study.images_key()
        with self._lock:
            self._studies[key] = replace(study, study_id=f"upload-{key[:12]}")
            self._studies.move_to_end(key)
            while len(self._studies) > self._capacity:
                self._studies.popitem(last=False)
        return key

    def get(self, key: str) -> Study | None:
        with self._lock:
            return self._studies.get(key)


class StudyUnavailable(ValueError):
    """A study that cannot be opened; the message is a sentence for people."""


class AppServices:
    """Server-side singletons shared by every browser tab."""

    def __init__(
        self,
        backend: Backend,
        dataset: Dataset,
        db: Database,
        *,
        pregenerate: int = 2,
        auth_enabled: bool = False,
        results_path: Path | None = None,
    ) -> None:
        self.backend = backend
        self.dataset = dataset
        self.db = db
        self.reviews = ReviewStore(db)
        self.reports = ReportStore(db)
        self.uploads = UploadRegistry()
        self.gate = ModelGate()
        self.pregenerate = max(0, pregenerate)
        self.auth_enabled = auth_enabled
        self.results_path = results_path
        self.study_ids = [e.study_id for e in dataset.entries]
        self.background = BackgroundWork(
            backend,
            self.gate,
            load_study=lambda study_id: self.dataset.load_study(study_id),
            context_for=self.default_context,
            has_report=lambda dataset, study, context: self.reports.latest(
                dataset, study.study_id, context, study.images_key()) is not None,
            store=lambda report, dataset: self.store(report, dataset, "pregenerate"),
        )  # fmt: skip

    # ------------------------------------------------------------------ studies
    def load(self, ref: StudyRef) -> Study:
        """The study behind `ref`; `StudyUnavailable` with a sentence when it cannot be opened."""
        if ref.kind == "upload":
            study = self.uploads.get(ref.key)
            if study is None:
                raise StudyUnavailable(
                    "This uploaded study is no longer in the server's memory (it keeps the last "
                    f"{MAX_UPLOADS} uploads while it runs). Upload the images again."
                )
            return study
        if ref.key not in self.dataset:
            raise StudyUnavailable(f"Study {ref.key[:100]!r} is not in the dataset {self.dataset.name!r}.")
        try:
            return self.dataset.load_study(ref.key)
        except (ImageLoadError, ValueError, OSError) as err:
            log.warning("cannot open study %s: %s", ref.key, err)
            raise StudyUnavailable(f"Study {ref.key!r} cannot be opened: {getattr(err, 'message', err)}") from err

    def open_study(self, ref: StudyRef | None) -> tuple[StudyRef, Study]:
        """The study a tab has open, with its ref; `StudyUnavailable` when none is open or it cannot be loaded."""
        if ref is None:
            raise StudyUnavailable("Open a study in the Review tab first.")
        return ref, self.load(ref)

    def dataset_of(self, ref: StudyRef) -> str:
        return UPLOADS_DATASET if ref.kind == "upload" else self.dataset.name

    def context_for(self, study: Study, sections: Sequence[str | None], switches: Switches) -> PromptContext:
        """The prompt context on screen: typed sections, switches off where the study lacks the view."""
        indication, technique, comparison, prior_report = (s.strip() if s and s.strip() else None for s in sections)
        context = PromptContext(
            name="A", indication=indication, technique=technique, comparison=comparison, prior_report=prior_report,
            use_lateral=switches.use_lateral, use_prior=switches.use_prior, grounded=switches.grounded,
        )  # fmt: skip
        return study.effective_context(context)

    def default_context(self, study: Study, switches: Switches) -> PromptContext:
        """The study's own sections under the reviewer's switches (what Next shows)."""
        c = study.context
        return self.context_for(study, (c.indication, c.technique, c.comparison, c.prior_report), switches)

    # ------------------------------------------------------------------ reports
    def stored_report(
        self, ref: StudyRef, study: Study, context: PromptContext, task: str = REPORTING
    ) -> StoredReport | None:
        return self.reports.latest(self.dataset_of(ref), study.study_id, context, study.images_key(), task)

    def store(self, report: Report, dataset: str, source: str) -> StoredReport:
        settings = getattr(self.backend, "settings", None)
        return self.reports.save(report, dataset, source=source, settings=asdict(settings) if settings else {})

    def generate(self, ref: StudyRef, study: Study, context: PromptContext) -> Iterator[Report | StoredReport]:
        """Growing partial reports, then the final one as stored (raises `BackendError`)."""
        final: Report | None = None
        with self.gate.call("generate", study.study_id, user=True):
            for partial in self.backend.stream(study, context):
                final = partial
                yield partial
        if final is None:
            raise BackendError("the backend returned no report")
        yield self.store(final, self.dataset_of(ref), "app")

    def ground(self, ref: StudyRef, study: Study, phrase: str) -> StoredReport:
        """MAIRA-2 phrase grounding on the frontal image, stored like any report."""
        with self.gate.call("ground", study.study_id, user=True):
            report = self.backend.ground_phrase(study, phrase)
        return self.store(report, self.dataset_of(ref), "app")

    def complete_boxes(self, ref: StudyRef, study: Study, context: PromptContext) -> StoredReport:
        """Box completion: the study's reference sentences, forced, and the model's boxes for them (stored)."""
        if not study.reference_findings:
            raise ValueError("This study has no reference findings, so there is nothing to complete boxes for.")
        with self.gate.call("complete_boxes", study.study_id, user=True):
            (report,) = self.backend.complete_boxes(study, list(study.reference_findings), [context])
        return self.store(report, self.dataset_of(ref), "app")

    def compare(self, ref: StudyRef, study: Study, contexts: Sequence[PromptContext]) -> list[StoredReport]:
        """Several contexts in one backend call (shared image prefix), every report stored."""
        with self.gate.call("compare", study.study_id, user=True):
            reports = self.backend.generate(study, list(contexts))
        return [self.store(r, self.dataset_of(ref), "compare") for r in reports]

    def follow(self, ref: StudyRef, listing: Sequence[str], switches: Switches) -> None:
        """Background work for the study just opened: warm it, pre-generate the next ones in `listing`."""
        if ref.kind != "dataset":
            return
        upcoming: list[str] = []
        if self.pregenerate and ref.key in listing:
            start = listing.index(ref.key)
            upcoming = [listing[(start + k) % len(listing)] for k in range(1, self.pregenerate + 1)]
            upcoming = [s for s in dict.fromkeys(upcoming) if s != ref.key]
        self.background.follow(Plan(self.dataset.name, ref.key, tuple(upcoming), switches))

    # ------------------------------------------------------------------ verdicts
    def verdicts(self, stored: StoredReport, reviewer: str) -> dict[int, FindingVerdict]:
        if not reviewer:
            return {}
        return self.reviews.finding_verdicts(stored.dataset, stored.report.study_id, stored.report_id, reviewer)

    def report_verdict(self, stored: StoredReport, reviewer: str) -> ReportVerdict | None:
        if not reviewer:
            return None
        return self.reviews.report_verdict(stored.dataset, stored.report.study_id, stored.report_id, reviewer)

    def _verdict_target(self, report_id: Any, reviewer: str) -> StoredReport:
        if not reviewer:
            raise ValueError("Enter your reviewer name (top left) before recording verdicts.")
        stored = self.reports.get(str(report_id)) if isinstance(report_id, str) else None
        if stored is None:
            raise ValueError("This report is not in the report store; generate it again before recording verdicts.")
        return stored

    def save_finding_verdict(
        self, reviewer: str, report_id: Any, finding_index: Any, sentence: Any, **fields: Any
    ) -> SaveResult:
        """Save one verdict on finding `finding_index` of a stored report, refused unless `sentence` is that finding."""
        try:
            stored = self._verdict_target(report_id, reviewer)
            findings = stored.report.findings
            if isinstance(finding_index, bool) or not isinstance(finding_index, int) or not 0 <= finding_index < len(
                    findings):  # fmt: skip
                raise ValueError(f"This report has {len(findings)} findings; there is no finding {finding_index!r}.")
            if findings[finding_index].text != sentence:
                raise ValueError(
                    f"Not saved: finding {finding_index + 1} of this report is not the sentence on your screen. "
                    "Reload the study."
                )
            verdict = FindingVerdict.for_finding(stored.report, finding_index, **fields)
            self.reviews.save_finding_verdict(
                reviewer, stored.dataset, stored.report.study_id, stored.report_id, finding_index, verdict
            )
        except ValueError as err:
            return SaveResult(False, str(err), {})
        log.info("verdict saved: %s finding %d of report %s", reviewer, finding_index, stored.report_id)
        return SaveResult(True, f"Saved your verdict on finding {finding_index + 1}.", self.verdicts(stored, reviewer))

    def undo_finding_verdict(self, reviewer: str, report_id: Any, finding_index: Any) -> SaveResult:
        try:
            stored = self._verdict_target(report_id, reviewer)
            if isinstance(finding_index, bool) or not isinstance(finding_index, int):
                raise ValueError("No finding is selected.")
            event = self.reviews.undo_last(reviewer, stored.dataset, stored.report.study_id, stored.report_id,
                                           finding_index)  # fmt: skip
        except ValueError as err:
            return SaveResult(False, str(err), {})
        message = f"Undid your last verdict on finding {finding_index + 1}." if event else "Nothing to undo."
        return SaveResult(event is not None, message, self.verdicts(stored, reviewer))

    def save_report_verdict(
        self, reviewer: str, report_id: Any, omissions: str, rating: Any, comment: str
    ) -> SaveResult:
        try:
            stored = self._verdict_target(report_id, reviewer)
            missed = [{"text": line.strip()} for line in str(omissions or "").splitlines() if line.strip()]
            verdict = ReportVerdict(omissions=missed, rating=rating or None, comment=str(comment or ""))
            self.reviews.save_report_verdict(reviewer, stored.dataset, stored.report.study_id, stored.report_id,
                                             verdict)  # fmt: skip
        except ValueError as err:
            return SaveResult(False, str(err), {})
        return SaveResult(True, "Saved your report verdict.", self.verdicts(stored, reviewer), verdict)

    # ------------------------------------------------------------------ the study list
    def listing(self, query: str, unreviewed_only: bool, reviewer: str) -> list[str]:
        """Study ids of the current list: search words, then (optionally) only those without your verdicts."""
        ids = [e.study_id for e in self.dataset.search(query or "")]
        if unreviewed_only and reviewer:
            done = self.reviews.reviewed_study_ids(self.dataset.name, reviewer)
            ids = [i for i in ids if i not in done]
        return ids

    def reviewed(self, reviewer: str) -> set[str]:
        return self.reviews.reviewed_study_ids(self.dataset.name, reviewer) if reviewer else set()
