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

Engines: `--engine inprocess` (default) runs the model in this process; `--engine ray` runs the
same per-study work (`load_study`, `generate_lines`) on a Ray cluster and writes the same file
(`model_backend.ray_batch`; `--address`, `--workers`, `--gpus-per-worker`, `--batch-size`).
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


@dataclass(frozen=True)
class PlannedStudy:
    """One study of a run: all its contexts (they go to the backend together) and those still to be written."""

    entry: StudyEntry
    contexts: tuple[PromptContext, ...]
    pending: tuple[PromptContext, ...]


@dataclass(frozen=True)
class LoadedStudy:
    """A study's decoded images, or why they could not be decoded; `load_s` is the decoding time."""

    study: Study | None
    error: str | None
    load_s: float


@dataclass(frozen=True)
class StudyResult:
    """The results lines of one study and where its time went."""

    study_id: str
    lines: list[dict[str, Any]]
    load_s: float
    generate_s: float
    error: str | None


@dataclass
class BatchSummary:
    """Counts and where the time went (seconds) in one run; `model_s` is summed over the engine's workers."""

    studies: int = 0
    skipped: int = 0
    lines: int = 0
    errors: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    images_s: float = 0.0
    writing_s: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    engine: str = "in-process"
    workers: int = 1

    @property
    def studies_per_s(self) -> float:
        return self.studies / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def outside_share(self) -> float:
        """Share of the workers' wall time spent outside `backend.generate`."""
        capacity = self.wall_s * self.workers
        return (capacity - self.model_s) / capacity if capacity > 0 else 0.0

    def add(self, result: StudyResult) -> None:
        """Count one finished study."""
        self.studies += 1
        self.lines += len(result.lines)
        self.images_s += result.load_s
        self.model_s += result.generate_s
        if result.error is not None:
            self.errors += 1
            self.error_messages.append(f"{result.study_id}: {result.error}")

    def format(self) -> str:
        head = [
            f"studies: {self.studies} run, {self.skipped} already done; lines written: {self.lines}; "
            f"errors: {self.errors}",
            f"time: {self.wall_s:.2f} s, {self.studies_per_s:.2f} studies/s",
        ]
        if self.engine != "in-process":
            return "\n".join(
                [
                    *head,
                    f"inside backend.generate: {self.model_s:.2f} s on {self.workers} {self.engine} worker(s) "
                    f"({1 - self.outside_share:.1%} of their time, outside: {self.outside_share:.1%}); "
                    f"images decoded ahead in CPU tasks: {self.images_s:.2f} s; JSON + writing {self.writing_s:.2f} s",
                ]
            )
        outside = self.wall_s - self.model_s
        other = max(outside - self.images_s - self.writing_s, 0.0)
        return "\n".join(
            [
                *head,
                f"inside backend.generate: {self.model_s:.2f} s ({1 - self.outside_share:.1%}); "
                f"outside: {outside:.2f} s ({self.outside_share:.1%}: images {self.images_s:.2f} s, "
                f"JSON + writing {self.writing_s:.2f} s, other {other:.2f} s)",
            ]
        )


def _check_resume(done: DoneLine, study_id: str, context: PromptContext, task: str, path: Path) -> None:
    """Refuse a line written for another task or with other context settings (what a plan can check)."""
    if done.task != task:
        raise BatchError(
            f"{path}:{done.line} was written for task {done.task!r}, this run is {task!r}; use a new --out file"
        )
    if done.context_key is not None and done.context_key != context.key():
        raise BatchError(
            f"{path}:{done.line}: context {context.name!r} of study {study_id!r} was run with other settings; "
            "use a new --out file or the same contexts file"
        )


def check_model(done: dict[tuple[str, str], DoneLine], model_id: str, path: Path) -> None:
    """Refuse to append to a results file written by another model."""
    for line in sorted(done.values(), key=lambda d: d.line):
        if line.model_id is not None and line.model_id != model_id:
            raise BatchError(
                f"{path}:{line.line} was written by model {line.model_id!r}, this run uses {model_id!r}; "
                "use a new --out file or the same --model"
            )


def plan_batch(
    dataset: Dataset, specs: Sequence[ContextSpec], out: Path, *, limit: int | None = None, task: str = REPORTING
) -> tuple[list[PlannedStudy], dict[tuple[str, str], DoneLine]]:
    """Every study (manifest order) with its contexts and the ones `out` still lacks, and the lines already done.

    Refuses a results file whose lines were written for another task or with other context settings.
    """
    entries = dataset.entries[:limit] if limit is not None else dataset.entries
    done = read_done(out)
    plan = []
    for entry in entries:
        contexts = tuple(spec.resolve(entry) for spec in specs)
        for context in contexts:
            if (entry.study_id, context.name) in done:
                _check_resume(done[(entry.study_id, context.name)], entry.study_id, context, task, out)
        pending = tuple(c for c in contexts if (entry.study_id, c.name) not in done)
        plan.append(PlannedStudy(entry, contexts, pending))
    return plan, done


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
    plan, done = plan_batch(dataset, specs, out, limit=limit, task=task)
    check_model(done, backend.info.model_id, out)
    summary = BatchSummary(skipped=sum(1 for planned in plan if not planned.pending))
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(plan), initial=summary.skipped, unit="study", file=sys.stderr, disable=not progress)
    start = time.perf_counter()
    with out.open("ab") as handle, bar:
        for planned in plan:
            if not planned.pending:
                continue
            result = _run_study(dataset, planned, backend, task)
            began = time.perf_counter()
            for line in result.lines:
                handle.write(json.dumps(line).encode() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            summary.writing_s += time.perf_counter() - began
            summary.add(result)
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)
    summary.wall_s = time.perf_counter() - start
    return summary


def _run_study(dataset: Dataset, planned: PlannedStudy, backend: Backend, task: str) -> StudyResult:
    """All contexts of one study in one backend call; lines for the pending ones (error lines on failure)."""
    return generate_lines(planned, load_study(dataset, planned.entry.study_id), backend, task)


def load_study(dataset: Dataset, study_id: str) -> LoadedStudy:
    """Decode a study's images; a failure is kept as its message, for the study's error lines."""
    began = time.perf_counter()
    try:
        study = dataset.load_study(study_id)
    except Exception as exc:  # one bad study must not stop the run; its lines record what happened
        return LoadedStudy(None, _error_message(exc), time.perf_counter() - began)
    return LoadedStudy(study, None, time.perf_counter() - began)


def generate_lines(planned: PlannedStudy, loaded: LoadedStudy, backend: Backend, task: str) -> StudyResult:
    """Run `task` on a decoded study, all its contexts in one backend call; lines for the pending contexts.

    Raises `UnsupportedTaskError` (no study can succeed: the run stops); any other failure becomes error lines."""
    study_id = planned.entry.study_id
    if loaded.study is None:
        lines = [result_line(study_id, c, task, backend, None, loaded.error, {}) for c in planned.pending]
        return StudyResult(study_id, lines, loaded.load_s, 0.0, loaded.error)
    timings = {"load_s": round(loaded.load_s, 4)}
    began = time.perf_counter()
    try:
        reports = _run_task(backend, task, loaded.study, list(planned.contexts))
    except UnsupportedTaskError:
        raise
    except Exception as exc:  # one bad study must not stop the run; its lines record what happened
        message = _error_message(exc)
        lines = [result_line(study_id, c, task, backend, None, message, timings) for c in planned.pending]
        return StudyResult(study_id, lines, loaded.load_s, time.perf_counter() - began, message)
    generate_s = time.perf_counter() - began
    timings["generate_s"] = round(generate_s, 4)
    by_name = {r.context.name: r for r in reports}
    lines = [
        result_line(study_id, c, task, backend, by_name[c.name], None, {**timings, **dict(by_name[c.name].timings)})
        for c in planned.pending
    ]
    return StudyResult(study_id, lines, loaded.load_s, generate_s, None)


def _run_task(backend: Backend, task: str, study: Study, contexts: list[PromptContext]) -> list[Report]:
    """One backend call for all contexts of a study: reports, or box completions of its reference findings."""
    if task == BOX_COMPLETION:
        return backend.complete_boxes(study, study.reference_findings, contexts)
    return backend.generate(study, contexts)


def _error_message(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BackendError | ValueError) else f"{type(exc).__name__}: {exc}"


def _run_on_ray(args: argparse.Namespace, dataset: Dataset, specs: list[ContextSpec], options: dict) -> BatchSummary:
    """`--engine ray`: the same run on a Ray cluster; the model is built in the workers, never here."""
    try:
        from model_backend.ray_batch import RayOptions, run_ray_batch
    except ImportError as exc:
        raise BatchError(f"--engine ray needs Ray: pip install -r requirements-ray.txt ({exc})") from exc
    ray_options = RayOptions(args.address, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
    return run_ray_batch(
        dataset, specs, args.model, args.out, ray_options,
        backend_options=options, limit=args.limit, progress=not args.no_progress, task=TASKS[args.task],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_backend.batch", description="Generate grounded reports for a study manifest (resumable)."
    )
    parser.add_argument("--data", type=Path, required=True, help="study manifest (.jsonl/.csv) or its folder")
    parser.add_argument(
        "--contexts", type=Path, default=None, help="named contexts (.json/.yaml); default: own sections"
    )
    parser.add_argument("--model", default="demo", help="demo, a snapshot folder, hub id, http(s)://.../score, ...")
    parser.add_argument("--out", type=Path, required=True, help="results JSONL (appended to when it exists)")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="reporting",
        help="reporting (default), or box-completion: boxes for the manifest's reference findings",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="only the first N studies of the manifest")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap generated tokens (local models only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess", help="where the model runs")
    ray_group = parser.add_argument_group("Ray engine (--engine ray; pip install -r requirements-ray.txt)")
    ray_group.add_argument("--address", default=None, help="auto, HOST:PORT or ray://HOST:PORT; default: a local one")
    ray_group.add_argument("--workers", type=int, default=1, help="model actors, each builds the model once")
    ray_group.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per model actor")
    ray_group.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per model actor")
    ray_group.add_argument("--batch-size", type=int, default=8, help="studies per map_batches call")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.workers < 1 or args.batch_size < 1 or args.gpus_per_worker < 0 or args.cpus_per_worker <= 0:
        parser.error("--workers and --batch-size take positive numbers, --gpus-per-worker >= 0, --cpus-per-worker > 0")
    backend_options: dict[str, Any] = {}
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1 or args.model.startswith(("azureml:", "replay:", "http://", "https://")):
            parser.error("--max-new-tokens takes a positive number and applies to local models only")
        from model_backend.backends.local import GenerationSettings  # torch: only when a local model is asked for

        backend_options["settings"] = GenerationSettings(*[args.max_new_tokens] * 3)
    try:
        specs = load_contexts(args.contexts) if args.contexts else [ContextSpec("default")]
        dataset = load_manifest(args.data, cache_size=1)
        for row_error in dataset.errors:
            print(f"manifest {row_error} (skipped)", file=sys.stderr)
        if args.engine == "ray":
            summary = _run_on_ray(args, dataset, specs, backend_options)
        else:
            began = time.perf_counter()
            backend = load_backend(args.model, **backend_options)
            ready = f"model {backend.info.model_id} ({backend.info.name}) ready in {time.perf_counter() - began:.1f} s"
            print(ready, file=sys.stderr)
            summary = run_batch(
                dataset, specs, backend, args.out, limit=args.limit, progress=not args.no_progress,
                task=TASKS[args.task],
            )  # fmt: skip
    except (BatchError, DatasetError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    for message in summary.error_messages:
        print(f"  failed: {message}")
    return 1 if summary.errors else 0


if __name__ == "__main__":
    # The importable module's main, so this run and model_backend.ray_batch share one BatchError class.
    from model_backend.batch import main as module_main

    sys.exit(module_main())
