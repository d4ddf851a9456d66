"""The batch runner on a Ray cluster (Ray Data): `python -m model_backend.batch --engine ray ...`.

    python -m model_backend.batch --engine ray [--address auto|HOST:PORT|ray://HOST:PORT] --workers N \\
        --gpus-per-worker G --batch-size B --data MANIFEST --contexts CONTEXTS --model SPEC --out results.jsonl

The driver plans the run exactly as the in-process runner does (`batch.plan_batch`: manifest order,
resume from `--out`), then streams the pending studies through two `map_batches` stages:

1. `decode_studies`: Ray tasks on CPUs decode each study's images (`batch.load_study`), ahead of
   the model, so a GPU never waits on PNG/DICOM decoding;
2. `GenerateReports`: a fixed pool of `--workers` actors; each builds the backend once in its
   constructor (never in the driver, nothing model-sized is shipped from it) and runs the in-process
   runner's per-study work (`batch.generate_lines`: all contexts of a study in one call, for
   `--task reporting` or `box-completion`).

The driver appends each finished block's lines to `--out` in manifest order (Ray Data's
`preserve_order`) and fsyncs once per block, so the file equals the in-process runner's and a
killed driver resumes like it. A study that fails is recorded with its error; a backend that
cannot run the task at all (`UnsupportedTaskError`) stops the run, as in-process. An actor that dies
(segfault, out of memory, node lost) is restarted and its batch retried, at most `MAX_RETRIES`
times; past that the run stops with an error instead of hanging, keeping every line written.

Resources: each actor takes `--cpus-per-worker` CPUs and `--gpus-per-worker` GPUs. The run is
refused when the actors would leave no CPU for the decoding tasks (Ray Data then waits forever)
or ask for more GPUs than the cluster has. On a small machine give the actors all but one CPU,
e.g. `ray.init(num_cpus=2)` / `ray start --num-cpus 2` with `--workers 1`.

Every node needs this repository at the same path, the dataset's images and the model snapshot
(a shared filesystem or one container image); workers find the code through PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.annotations import RayDeprecationWarning
from tqdm import tqdm

from model_backend.backends import load_backend
from model_backend.backends.base import REPORTING, UnsupportedTaskError
from model_backend.batch import (
    BatchError,
    BatchSummary,
    ContextSpec,
    DoneLine,
    PlannedStudy,
    StudyResult,
    check_model,
    generate_lines,
    load_study,
    plan_batch,
)
from model_backend.datasets import Dataset
from model_backend.ray_cluster import connect, shortfall

MAX_RETRIES = 3  # restarts of a dead actor, and retries of the batch it held


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the run goes."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 8


def _pack(objects: Iterable[Any]) -> np.ndarray:
    """Python objects -> a bytes column (explicit pickles, so Arrow never guesses at them)."""
    return np.array([pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in objects], dtype=object)


def _unpack(column: Iterable[bytes]) -> list[Any]:
    return [pickle.loads(item) for item in column]


def decode_studies(batch: dict[str, np.ndarray], root: str, name: str) -> dict[str, np.ndarray]:
    """CPU task: decode the images of a batch of planned studies (errors are kept for the study's lines)."""
    planned: list[PlannedStudy] = _unpack(batch["planned"])
    loaded = [load_study(Dataset(Path(root), name, [p.entry], cache_size=0), p.entry.study_id) for p in planned]
    return {"planned": batch["planned"], "loaded": _pack(loaded)}


class GenerateReports:
    """Model actor: builds the backend once, then runs the task on a batch of decoded studies."""

    def __init__(self, model: str, backend_options: dict[str, Any], task: str) -> None:
        self.backend = load_backend(model, **backend_options)
        self.task = task

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        planned: list[PlannedStudy] = _unpack(batch["planned"])
        loaded = _unpack(batch["loaded"])
        try:
            results = [generate_lines(p, s, self.backend, self.task) for p, s in zip(planned, loaded, strict=True)]
            stops = [""] * len(results)
        except UnsupportedTaskError as exc:  # no study can succeed: one row that tells the driver to stop
            results, stops = [None], [str(exc)]
        return {
            "result": _pack(results),
            "model_id": np.array([self.backend.info.model_id] * len(results)),
            "stop": np.array(stops),
        }


def _check_resources(options: RayOptions) -> None:
    """Refuse a layout that cannot run: Ray Data would wait for resources forever instead."""
    workers = options.workers
    problem = shortfall(workers * options.cpus_per_worker, workers * options.gpus_per_worker, spare_cpus=1)
    if problem:
        raise BatchError(
            f"{workers} worker(s) do not fit: {problem} (image decoding needs a CPU the model actors leave free); "
            "lower --workers, --cpus-per-worker or --gpus-per-worker, or give Ray more (ray start --num-cpus N)"
        )


def build_pipeline(
    todo: Sequence[PlannedStudy],
    dataset: Dataset,
    model: str,
    backend_options: dict,
    options: RayOptions,
    task: str = REPORTING,
) -> ray.data.Dataset:
    """Planned studies -> decoded in CPU tasks -> reports from the model actors (lazy; runs when iterated)."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # lines in manifest order, like the in-process runner
    context.enable_progress_bars = False  # the driver shows one bar in studies
    items = ray.data.from_items([{"planned": packed} for packed in _pack(todo)])
    decoded = items.map_batches(
        decode_studies,
        batch_size=options.batch_size,
        fn_kwargs={"root": str(dataset.root), "name": dataset.name},
        num_cpus=1,
    )
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts / max_task_retries only as (deprecated) remote args; requirements-ray.txt pins it.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return decoded.map_batches(
            GenerateReports,
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={"model": model, "backend_options": backend_options, "task": task},
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_restarts=MAX_RETRIES,
            max_task_retries=MAX_RETRIES,
        )


def run_ray_batch(
    dataset: Dataset,
    specs: Sequence[ContextSpec],
    model: str,
    out: Path,
    options: RayOptions,
    *,
    backend_options: dict[str, Any] | None = None,
    limit: int | None = None,
    progress: bool = True,
    task: str = REPORTING,
) -> BatchSummary:
    """Generate and append the missing lines of `out` on Ray; same file format and resume as `batch.run_batch`."""
    plan, done = plan_batch(dataset, specs, out, limit=limit, task=task)
    todo = [p for p in plan if p.pending]
    summary = BatchSummary(skipped=len(plan) - len(todo), engine="Ray", workers=options.workers)
    if not todo:
        return summary
    connected = connect(options.address)
    try:
        _check_resources(options)
        pipeline = build_pipeline(todo, dataset, model, backend_options or {}, options, task)
        _write_blocks(pipeline, out, done, summary, total=len(plan), progress=progress)
    finally:
        if connected:
            ray.shutdown()
    return summary


def _write_blocks(
    pipeline: ray.data.Dataset,
    out: Path,
    done: dict[tuple[str, str], DoneLine],
    summary: BatchSummary,
    *,
    total: int,
    progress: bool,
) -> None:
    """Append each finished block's lines (fsync per block) and count them; the first block checks the model.

    A block that says stop (the backend cannot run the task) ends the run with its message."""
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, initial=summary.skipped, unit="study", file=sys.stderr, disable=not progress)
    start = time.perf_counter()
    checked = False
    try:
        with out.open("ab") as handle, bar:
            for block in pipeline.iter_batches(batch_size=None, batch_format="numpy"):
                if not checked:
                    check_model(done, str(block["model_id"][0]), out)
                    checked = True
                stops = [str(message) for message in block["stop"] if message]
                if stops:
                    raise BatchError(stops[0])
                results: list[StudyResult] = _unpack(block["result"])
                began = time.perf_counter()
                handle.write(b"".join(json.dumps(line).encode() + b"\n" for r in results for line in r.lines))
                handle.flush()
                os.fsync(handle.fileno())
                summary.writing_s += time.perf_counter() - began
                for result in results:
                    summary.add(result)
                bar.update(len(results))
                bar.set_postfix(errors=summary.errors, refresh=False)
    except ray.exceptions.RayError as exc:
        reason = str(exc).strip().splitlines()[-1]  # Ray's message ends with the worker's own error
        raise BatchError(
            f"the Ray run stopped ({type(exc).__name__}: {reason}); the lines written so far are kept in {out}, "
            "run the same command again to resume"
        ) from exc
    finally:
        summary.wall_s = time.perf_counter() - start
