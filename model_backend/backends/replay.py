"""Recorded outputs (a results JSONL) served through the backend protocol; never generates.

A line needs `study_id`, `context` (a name, or an object with a "name" and optionally the other
`PromptContext` fields) and `output` (protocol findings, list or JSON string). The batch runner's
lines (`model_backend.batch`) also carry `context_key`, `raw_text`, `complete`, `warnings`,
`image_width`/`image_height`, `model_id`, `error` and `task`; all of those are optional here.
`task` is "reporting" when absent; lines of task "box_completion" (`--task box-completion`) are
served by `complete_boxes` only, and reporting lines by `generate` / `stream` only.

A requested context is looked up by its prompt settings (`PromptContext.key()`) first, then by
its name. A torn last line (a run still writing) is ignored; any other unreadable line is an error.
`read_results` is the reader on its own (the app imports results into its report store with it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from model_backend.backends.base import BOX_COMPLETION, REPORTING, BackendError, UnsupportedTaskError
from model_backend.protocol import ProtocolError, decode_output
from model_backend.types import BackendInfo, Finding, PromptContext, Report, Study

_CONTEXT_FIELDS = {f.name for f in fields(PromptContext)}


@dataclass(frozen=True)
class RecordedResult:
    """One recorded (study, context) result as read from the file. `context` is the full prompt
    context when the line records every field (batch runner lines do), else None (a name only)."""

    line: int
    study_id: str
    task: str
    name: str
    context_key: str | None
    context: PromptContext | None
    findings: tuple[Finding, ...]
    raw_text: str
    complete: bool
    warnings: tuple[str, ...]
    image_size: tuple[int, int] | None
    timings: tuple[tuple[str, float], ...]
    error: str | None
    model_id: str | None
    backend: str | None


def read_results(path: Path) -> list[RecordedResult]:
    """Every result line of a results JSONL, in file order; `BackendError` names the first bad line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackendError(f"cannot read recorded results {path}: {exc}") from exc
    results = []
    last = max((i for i, text in enumerate(lines) if text.strip()), default=-1)
    for index, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            if index == last and index == len(lines) - 1:
                continue  # torn last line of a run still writing: no trailing newline yet
            raise BackendError(f"{path}:{index + 1}: not valid JSON ({exc.msg})") from exc
        results.append(_parse(record, f"{path}:{index + 1}", index + 1))
    return results


def _parse(record: Any, where: str, line: int) -> RecordedResult:
    if not isinstance(record, dict):
        raise BackendError(f"{where}: expected a JSON object per line")
    missing = [k for k in ("study_id", "context") if k not in record]
    if missing:
        raise BackendError(f"{where}: missing {', '.join(missing)}")
    name, context_key, context = _context_identity(record["context"], record.get("context_key"), where)
    error = record.get("error")
    findings: tuple[Finding, ...] = ()
    if error is None:
        if "output" not in record:
            raise BackendError(f"{where}: missing output")
        try:
            decoded = decode_output(record["output"])
        except ProtocolError as exc:
            raise BackendError(f"{where}: {exc}") from exc
        findings = tuple(Finding(text, None if boxes is None else tuple(boxes)) for text, boxes in decoded)
    width, height = record.get("image_width"), record.get("image_height")
    size = (width, height) if all(isinstance(v, int) and v > 0 for v in (width, height)) else None
    timings = record.get("timings") if isinstance(record.get("timings"), dict) else {}
    warnings = record.get("warnings") if isinstance(record.get("warnings"), list) else []
    model_id, backend = record.get("model_id"), record.get("backend")
    return RecordedResult(
        line=line,
        study_id=str(record["study_id"]),
        task=str(record.get("task") or REPORTING),
        name=name,
        context_key=context_key,
        context=context,
        findings=findings,
        raw_text=str(record.get("raw_text") or ""),
        complete=bool(record.get("complete", True)),
        warnings=tuple(str(w) for w in warnings),
        image_size=size,
        timings=tuple((str(k), float(v)) for k, v in timings.items() if isinstance(v, int | float)),
        error=None if error is None else str(error),
        model_id=str(model_id) if model_id else None,
        backend=str(backend) if backend else None,
    )


class ReplayBackend:
    """Serves the reports recorded in a results JSONL, keyed by (study, context key) and (study, context name)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._by_key: dict[tuple[str, str, str], RecordedResult] = {}  # (task, study_id, context key)
        self._by_name: dict[tuple[str, str, str], RecordedResult] = {}  # (task, study_id, context name)
        model_ids = self._read()
        self.info = BackendInfo(
            name="replay",
            model_id=", ".join(sorted(model_ids)) or self.path.name,
            device="recorded",
            dtype="recorded",
            can_ground_phrases=False,
        )

    def __len__(self) -> int:
        return len(self._by_name)

    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        """The recorded report for each context; `BackendError` when one was never recorded."""
        return [self._report(study, context, REPORTING) for context in contexts]

    def stream(self, study: Study, context: PromptContext) -> Iterator[Report]:
        yield self._report(study, context, REPORTING)

    def prefetch(self, study: Study) -> None:
        """Nothing to warm: reports are read from the file."""

    def ground_phrase(self, study: Study, phrase: str) -> Report:
        raise BackendError(f"phrase grounding was not recorded in {self.path.name}; replay can only show saved reports")

    def complete_boxes(self, study: Study, findings: Sequence[str], contexts: Sequence[PromptContext]) -> list[Report]:
        """The recorded box completions, when the file has them and they are for these sentences."""
        if not any(task == BOX_COMPLETION for task, _, _ in self._by_name):
            raise UnsupportedTaskError(
                f"box completion is not supported by replay here: {self.path.name} holds no box-completion "
                "lines (the batch runner writes them with --task box-completion)"
            )
        reports = [self._report(study, context, BOX_COMPLETION) for context in contexts]
        sentences = [s.strip() for s in findings]
        for report in reports:
            if [f.text for f in report.findings] != sentences:
                raise BackendError(
                    f"the box completion recorded for study {study.study_id!r} under context {report.context.name!r} "
                    "is for other sentences than the ones given"
                )
        return reports

    # ------------------------------------------------------------------ reading
    def _read(self) -> set[str]:
        results = read_results(self.path)
        for recorded in results:
            self._by_name[(recorded.task, recorded.study_id, recorded.name)] = recorded
            if recorded.context_key:
                self._by_key[(recorded.task, recorded.study_id, recorded.context_key)] = recorded
        if not self._by_name:
            raise BackendError(f"{self.path} holds no recorded results")
        return {r.model_id for r in results if r.model_id}

    # ------------------------------------------------------------------ lookup
    def _report(self, study: Study, context: PromptContext, task: str) -> Report:
        key = context.key()
        recorded = self._by_key.get((task, study.study_id, key))
        warnings: list[str] = []
        if recorded is None:
            recorded = self._by_name.get((task, study.study_id, context.name))
            if recorded is None:
                what = "result" if task == REPORTING else task.replace("_", "-")
                raise BackendError(
                    f"no recorded {what} for study {study.study_id!r} under context {context.name!r} in {self.path}"
                )
            if recorded.context_key is not None and recorded.context_key != key:
                warnings.append(f"replayed by context name {context.name!r}; the recorded prompt settings differ")
        if recorded.error is not None:
            raise BackendError(
                f"the recorded run failed for study {study.study_id!r} under context {context.name!r} "
                f"({self.path}:{recorded.line}): {recorded.error}"
            )
        width, height = study.frontal.width, study.frontal.height
        if recorded.image_size is not None:
            if recorded.image_size != (width, height):
                warnings.append(
                    f"recorded for a {recorded.image_size[0]}x{recorded.image_size[1]} frontal image, "
                    f"this one is {width}x{height}"
                )
            width, height = recorded.image_size
        return Report(
            study_id=study.study_id,
            context=context,
            findings=recorded.findings,
            image_width=width,
            image_height=height,
            raw_text=recorded.raw_text,
            complete=recorded.complete,
            backend=self.info,
            images_key=study.images_key(),
            warnings=recorded.warnings + tuple(warnings),
            timings=recorded.timings,
            task=task,
        )


def _context_identity(context: Any, context_key: Any, where: str) -> tuple[str, str | None, PromptContext | None]:
    """(name, key, full context or None) of a recorded context; the key from `context_key` or the full fields."""
    if isinstance(context, str) and context:
        return context, str(context_key) if context_key else None, None
    if not isinstance(context, dict) or not isinstance(context.get("name"), str) or not context["name"]:
        raise BackendError(f"{where}: context must be a name or an object with a name")
    unknown = set(context) - _CONTEXT_FIELDS
    if unknown:
        raise BackendError(f"{where}: unknown context fields {', '.join(sorted(unknown))}")
    full = PromptContext(**context) if set(context) == _CONTEXT_FIELDS else None
    if context_key:
        return context["name"], str(context_key), full
    return context["name"], None if full is None else full.key(), full
