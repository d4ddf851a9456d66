"""The one protocol every backend implements, and the errors they raise."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from model_backend.types import BackendInfo, PromptContext, Report, Study

# `Report.task` values that more than one module names
REPORTING = "reporting"
BOX_COMPLETION = "box_completion"


class BackendError(RuntimeError):
    """A backend could not produce a report; the message is meant for a person."""


class PromptError(BackendError):
    """A prompt that cannot run as given (a section too long, not valid text, no room left for the
    report); the person who wrote it can fix it. `field` names the section ("indication", "phrase",
    ...), `context_name` the prompt context it belongs to."""

    def __init__(self, message: str, *, field: str | None = None, context_name: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.context_name = context_name


class UnsupportedTaskError(BackendError):
    """No study can succeed: the backend cannot do this task (or not with these contexts)."""


@runtime_checkable
class Backend(Protocol):
    """Generates grounded reports for a study under one or more prompt contexts."""

    info: BackendInfo

    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        """One report per context, in the order given."""
        ...

    def stream(self, study: Study, context: PromptContext) -> Iterator[Report]:
        """Growing partial reports as tokens arrive; the last one is final."""
        ...

    def ground_phrase(self, study: Study, phrase: str) -> Report:
        """MAIRA-2 phrase grounding: boxes for a given finding on the study's frontal image."""
        ...

    def complete_boxes(self, study: Study, findings: Sequence[str], contexts: Sequence[PromptContext]) -> list[Report]:
        """Box completion: the given sentences, in order, each with the boxes the model chooses for it.

        One report per context (task "box_completion", one finding per sentence); backends that
        cannot force sentences raise `UnsupportedTaskError`.
        """
        ...

    def prefetch(self, study: Study) -> None:
        """Optional head start when a study is opened (warm caches); may do nothing."""
        ...
