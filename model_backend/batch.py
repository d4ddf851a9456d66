"""Generate reports for every study of a manifest under named prompt contexts; resumable.

    python -m model_backend.batch --data MANIFEST --contexts CONTEXTS.yaml --model SPEC --out results.jsonl
    python -m model_backend.batch --task box-completion --data MANIFEST --model SPEC --out boxes.jsonl

Contexts file (JSON or YAML): a list of objects with a `name`, or a mapping name -> object. The
other keys are `PromptContext` fields (indication, technique, comparison, prior_report,
use_lateral, use_prior, grounded) and `from_study` (default true: start from the study's own
sections and override the given fields; a null blanks a section). Without --contexts every
study runs once under its own sections, as context "default".

Output: one JSON line per (study, context), in manifest order x contexts order::

    {"study_id", "context": {name + fields}, "context_key", "task", "output" (protocol findings, list
     form, model-frame boxes), "raw_text", "complete", "warnings", "flags" (degenerate-output flag
     names, `model_backend.degenerate`), "image_width", "image_height", "model_id", "backend",
     "error": null | "message", "timings": {...}}

`--task` is `reporting` (the default: the model writes the report; "task": "reporting") or
`box-completion` ("task": "box_completion"): the study's reference findings are given to the model
sentence by sentence and it writes only their boxes (`Backend.complete_boxes`); "output" then holds
exactly the manifest's `reference_findings`, in their order, each with the model's boxes. A study
without reference findings gets an error line. A backend that cannot do the task stops the run.

A study that fails (unreadable image, model error) gets lines with "error" set and output null,
and the run goes on; the exit status is then 1. Each line is flushed and fsync'ed as written, so
a crash loses at most the line in flight. A second run with the same --out resumes: it drops a
torn last line, skips (study, context) pairs already written (error lines included; delete them
to retry) and refuses a file written by another model, for another task or with other context
settings. All contexts of a study go to the backend in one call (they share the image prefix); a
study cut in half by a crash is generated again in full and only its missing lines are written.

Determinism: every field except "timings" depends only on the model, the manifest and the
contexts file, so a killed and resumed run equals an uninterrupted one once "timings" (always
the last key) is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from model_backend.backends import load_backend
from model_backend.backends.base import BOX_COMPLETION, REPORTING, Backend, BackendError, UnsupportedTaskError
from model_backend.datasets import Dataset, DatasetError, StudyEntry, load_manifest
from model_backend.degenerate import degenerate_flags
from model_backend.protocol import report_to_output
from model_backend.types import PromptContext, Report, Study

TASKS = {"reporting": REPORTING, "box-completion": BOX_COMPLETION}  # --task -> the lines' "task"
_TEXT_FIELDS = ("indication", "technique", "comparison", "prior_report")
_BOOL_FIELDS = ("use_lateral", "use_prior", "grounded")
assert {f.name for f in fields(PromptContext)} == {"name", *_TEXT_FIELDS, *_BOOL_FIELDS}


class BatchError(ValueError):
    """A contexts file or results file that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class ContextSpec:
    """A named context from the contexts file: field overrides, applied to the study's sections or to defaults."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    from_study: bool = True

    def resolve(self, entry: StudyEntry) -> PromptContext:
        """This context for one study; lateral / prior switched off where the study has no such view."""
        base = entry.context() if self.from_study else PromptContext()
        return entry.effective_context(replace(base, name=self.name, **dict(self.overrides)))


def _parse_spec(name: Any, raw: Any, where: str) -> ContextSpec:
    if not isinstance(name, str) or not name.strip():
        raise BatchError(f"{where}: every context needs a non-empty name")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise BatchError(f"{where} ({name}): expected an object of context fields")
    unknown = set(raw) - {*_TEXT_FIELDS, *_BOOL_FIELDS, "from_study", "name"}
    if unknown:
        allowed = ", ".join((*_TEXT_FIELDS, *_BOOL_FIELDS, "from_study"))
        raise BatchError(f"{where} ({name}): unknown field(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    for key, value in raw.items():
        if key in _TEXT_FIELDS and value is not None and not isinstance(value, str):
            raise BatchError(f"{where} ({name}): {key} must be text or null, got {value!r}")
        if key in (*_BOOL_FIELDS, "from_study") and not isinstance(value, bool):
            raise BatchError(f"{where} ({name}): {key} must be true or false, got {value!r}")
    overrides = tuple((k, v) for k, v in raw.items() if k not in ("name", "from_study"))
    return ContextSpec(name.strip(), overrides, raw.get("from_study", True))


def load_contexts(path: str | Path) -> list[ContextSpec]:
    """Read a contexts file (.json, .yaml or .yml) into specs, in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise BatchError(f"contexts file {path.name} must end in .json, .yaml or .yml")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BatchError(f"cannot read contexts file {path}: {exc}") from exc
    if isinstance(data, dict):
        specs = [_parse_spec(name, raw, f"{path.name}") for name, raw in data.items()]
    elif isinstance(data, list):
        specs = [
            _parse_spec(raw.get("name") if isinstance(raw, dict) else None, raw, f"{path.name} item {i}")
            for i, raw in enumerate(data, start=1)
        ]
    else:
        raise BatchError(f"{path.name}: expected a list of contexts or a mapping name -> context")
    if not specs:
        raise BatchError(f"{path.name} defines no contexts")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BatchError(f"{path.name}: duplicate context name(s) {', '.join(duplicates)}")
    return specs


@dataclass(frozen=True)
class DoneLine:
    """What resuming needs to know about a line already in the results file."""

    line: int
    context_key: str | None
    model_id: str | None
    task: str


def read_done(path: Path) -> dict[tuple[str, str], DoneLine]:
    """(study_id, context name) -> `DoneLine` for the lines already written; truncates a torn last line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    done: dict[tuple[str, str], DoneLine] = {}
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(raw)
            key = (str(record["study_id"]), str(record["context"]["name"]))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise BatchError(
                f"{path}:{number} is not a results line ({exc}); use a new --out file or repair this one"
            ) from exc
        done[key] = DoneLine(number, record.get("context_key"), record.get("model_id"), record.get("task") or REPORTING)
    if end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
        print(f"dropped a torn last line ({len(data) - end} bytes) from {path}", file=sys.stderr)
    return done


def result_line(
    study_id: str,
    context: PromptContext,
    task: str,
    backend: Backend,
    report: Report | None,
    error: str | None,
    timings: dict,
) -> dict[str, Any]:
    """One results line (key order fixed; "timings" last)."""
    return {
        "study_id": study_id,
        "context": asdict(context),
        "context_key": context.key(),
        "task": task,
        "output": None if report is None else report_to_output(report),
        "raw_text": None if report is None else report.raw_text,
        "complete": report is not None and report.complete,
        "warnings": [] if report is None else list(report.warnings),
        "flags": [] if report is None else [flag.name for flag in degenerate_flags(report)],
        "image_width": None if report is None else report.image_width,
        "image_height": None if report is None else report.image_height,
        "model_id": backend.info.model_id,
        "backend": backend.info.name,
        "error": error,
        "timings": timings,
    }


@dataclass
class BatchSummary:
    """Counts and where the time went (seconds) in one run."""

    studies: int = 0
    skipped: int = 0
    lines: int = 0
    errors: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    images_s: float = 0.0
    writing_s: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    @property
    def studies_per_s(self) -> float:
        return self.studies / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def outside_share(self) -> float:
        """Share of the run's wall time spent outside `backend.generate`."""
        return (self.wall_s - self.model_s) / self.wall_s if self.wall_s > 0 else 0.0

    def format(self) -> str:
        outside = self.wall_s - self.model_s
        other = max(outside - self.images_s - self.writing_s, 0.0)
        return "\n".join(
            [
                f"studies: {self.studies} run, {self.skipped} already done; lines written: {self.lines}; "
                f"errors: {self.errors}",
                f"time: {self.wall_s:.2f} s, {self.studies_per_s:.2f} studies/s",
                f"inside backend.generate: {self.model_s:.2f} s ({1 - self.outside_share:.1%}); "
                f"outside: {outside:.2f} s ({self.outside_share:.1%}: images {self.images_s:.2f} s, "
                f"JSON + writing {self.writing_s:.2f} s, other {other:.2f} s)",
            ]
        )


def _check_resume(done: DoneLine, study_id: str, context: PromptContext, model_id: str, task: str, path: Path) -> None:
    where = f"{path}:{done.line}"
    if done.task != task:
        raise BatchError(f"{where} was written for task {done.task!r}, this run is {task!r}; use a new --out file")
    if done.model_id is not None and done.model_id != model_id:
        raise BatchError(
            f"{where} was written by model {done.model_id!r}, this run uses {model_id!r}; "
            "use a new --out file or the same --model"
        )
    if done.context_key is not None and done.context_key != context.key():
        raise BatchError(
            f"{where}: context {context.name!r} of study {study_id!r} was run with other settings; "
            "use a new --out file or the same contexts file"
        )


def run_batch(
    dataset: Dataset,
    specs: Sequence[ContextSpec],
    backend: Backend,
    out: Path,
    *,
    limit: int | None = None,
    progress: bool = True,
    task: str = REPORTING,
) -> BatchSummary:
    """Generate and append the missing lines of `out`; see the module docstring for the format."""
    entries = dataset.entries[:limit] if limit is not None else dataset.entries
    done = read_done(out)
    plan = []
    for entry in entries:
        contexts = [spec.resolve(entry) for spec in specs]
        for context in contexts:
            if (entry.study_id, context.name) in done:
                _check_resume(
                    done[(entry.study_id, context.name)], entry.study_id, context, backend.info.model_id, task, out
                )
        pending = [c for c in contexts if (entry.study_id, c.name) not in done]
        plan.append((entry, contexts, pending))
    summary = BatchSummary(skipped=sum(1 for _, _, pending in plan if not pending))
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(plan), initial=summary.skipped, unit="study", file=sys.stderr, disable=not progress)
    start = time.perf_counter()
    with out.open("ab") as handle, bar:
        for entry, contexts, pending in plan:
            if not pending:
                continue
            lines = _run_study(dataset, entry, contexts, pending, backend, task, summary)
            began = time.perf_counter()
            for line in lines:
                handle.write(json.dumps(line).encode() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            summary.writing_s += time.perf_counter() - began
            summary.studies += 1
            summary.lines += len(lines)
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)
    summary.wall_s = time.perf_counter() - start
    return summary


def _run_study(
    dataset: Dataset,
    entry: StudyEntry,
    contexts: list[PromptContext],
    pending: list[PromptContext],
    backend: Backend,
    task: str,
    summary: BatchSummary,
) -> list[dict[str, Any]]:
    """All contexts of one study in one backend call; lines for the pending ones (error lines on failure)."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    try:
        study = dataset.load_study(entry.study_id)
        timings["load_s"] = round(time.perf_counter() - began, 4)
        summary.images_s += time.perf_counter() - began
        began = time.perf_counter()
        try:
            reports = _run_task(backend, task, study, contexts)
        finally:
            summary.model_s += time.perf_counter() - began
        timings["generate_s"] = round(time.perf_counter() - began, 4)
    except UnsupportedTaskError:
        raise  # no study can succeed: stop the run
    except Exception as exc:  # one bad study must not stop the run; the line records what happened
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackendError | ValueError) else str(exc)
        summary.errors += 1
        summary.error_messages.append(f"{entry.study_id}: {message}")
        return [result_line(entry.study_id, c, task, backend, None, message, timings) for c in pending]
    by_name = {r.context.name: r for r in reports}
    return [
        result_line(
            entry.study_id, c, task, backend, by_name[c.name], None, {**timings, **dict(by_name[c.name].timings)}
        )
        for c in pending
    ]


def _run_task(backend: Backend, task: str, study: Study, contexts: list[PromptContext]) -> list[Report]:
    """One backend call for all contexts of a study: reports, or box completions of its reference findings."""
    if task == BOX_COMPLETION:
        return backend.complete_boxes(study, study.reference_findings, contexts)
    return backend.generate(study, contexts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_backend.batch", description="Generate grounded reports for a study manifest (resumable)."
    )
    parser.add_argument("--data", type=Path, required=True, help="study manifest (.jsonl/.csv) or its folder")
    parser.add_argument(
        "--contexts", type=Path, default=None, help="named contexts (.json/.yaml); default: own sections"
    )
    parser.add_argument("--model", default="demo", help="demo, a snapshot folder, hub id, azureml:URL, ...")
    parser.add_argument("--out", type=Path, required=True, help="results JSONL (appended to when it exists)")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="reporting",
        help="reporting (default), or box-completion: boxes for the manifest's reference findings",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="only the first N studies of the manifest")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap generated tokens (local models only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    backend_options: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1 or args.model.startswith(("azureml:", "replay:")):
            parser.error("--max-new-tokens takes a positive number and applies to local models only")
        from model_backend.backends.local import GenerationSettings  # torch: only when a local model is asked for

        backend_options["settings"] = GenerationSettings(*[args.max_new_tokens] * 3)
    try:
        specs = load_contexts(args.contexts) if args.contexts else [ContextSpec("default")]
        dataset = load_manifest(args.data, cache_size=1)
        for row_error in dataset.errors:
            print(f"manifest {row_error} (skipped)", file=sys.stderr)
        began = time.perf_counter()
        backend = load_backend(args.model, **backend_options)
        ready = f"model {backend.info.model_id} ({backend.info.name}) ready in {time.perf_counter() - began:.1f} s"
        print(ready, file=sys.stderr)
        summary = run_batch(
            dataset, specs, backend, args.out, limit=args.limit, progress=not args.no_progress, task=TASKS[args.task]
        )
    except (BatchError, DatasetError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    for message in summary.error_messages:
        print(f"  failed: {message}")
    return 1 if summary.errors else 0


if __name__ == "__main__":
    sys.exit(main())
