"""The batch runner on a local Ray cluster (2 CPUs) with the bundled demo model.

The dataset is the bundled samples plus one study whose frontal image is corrupt, under two
contexts. A Ray run writes the same file as the in-process runner (once "timings" are dropped),
decodes images in CPU tasks ahead of the model actors, records the corrupt study and goes on;
a driver killed with SIGKILL resumes to the same file; a model actor killed mid-run is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")

from model_backend.backends import load_backend  # noqa: E402
from model_backend.backends.base import BOX_COMPLETION  # noqa: E402
from model_backend.batch import BatchError, BatchSummary, ContextSpec, load_contexts, plan_batch, run_batch  # noqa: E402
from model_backend.datasets import load_manifest  # noqa: E402
from model_backend.ray_batch import RayOptions, build_pipeline, run_ray_batch  # noqa: E402
from model_backend.ray_cluster import local_cluster  # noqa: E402
from tests.test_batch import without_timings  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"
BROKEN_AFTER = 4  # the corrupt study comes after this many sample studies
CONTEXTS = {"full": {}, "findings_only": {"grounded": False}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs for the whole module; yields its address for CLI drivers."""
    with local_cluster(num_cpus=2, object_store_mb=256) as address:
        yield address


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled samples (copied) with a study whose frontal image is corrupt, and a two-context file."""
    root = tmp_path_factory.mktemp("ray_samples")
    rows = [json.loads(line) for line in (SAMPLES / "studies.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        for key in ("frontal", "lateral", "prior_frontal"):
            if row.get(key):
                (root / row[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLES / row[key], root / row[key])
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    rows.insert(BROKEN_AFTER, {"study_id": "broken", "frontal": "broken.png", "indication": "Cough."})
    (root / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "contexts.json").write_text(json.dumps(CONTEXTS), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The in-process runner's file on the same data."""
    out = tmp_path_factory.mktemp("ray_reference") / "results.jsonl"
    run_batch(load_manifest(data_dir), load_contexts(data_dir / "contexts.json"), load_backend("demo"), out)
    return out


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, cluster: str) -> tuple[Path, BatchSummary]:
    """One Ray run driven from this process: one model actor, batches of 4 studies."""
    out = tmp_path_factory.mktemp("ray_run") / "results.jsonl"
    dataset, specs = load_manifest(data_dir), load_contexts(data_dir / "contexts.json")
    summary = run_ray_batch(dataset, specs, "demo", out, RayOptions(workers=1, batch_size=4), progress=False)
    return out, summary


def ray_cli(data_dir: Path, out: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "model_backend.batch", "--engine", "ray", "--address", address, "--batch-size", "1",
        "--data", str(data_dir / "studies.jsonl"), "--contexts", str(data_dir / "contexts.json"),
        "--model", "demo", "--out", str(out), "--no-progress",
    ]  # fmt: skip


def driver_with_lines(workdir: Path, data_dir: Path, address: str, count: int) -> tuple[subprocess.Popen, Path, Path]:
    """A CLI driver writing workdir/results.jsonl, once that file holds `count` complete lines (polled)."""
    out, log = workdir / "results.jsonl", workdir / "driver.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as sink:
        driver = subprocess.Popen(ray_cli(data_dir, out, address), cwd=REPO, env=env, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 300
    while not (out.exists() and out.read_bytes().count(b"\n") >= count):
        assert driver.poll() is None, f"the driver exited early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {count} lines in 300 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.01)
    return driver, out, log


def descendants(root: int) -> list[int]:
    """Process ids below `root` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [root]
    while stack:
        kids = children.get(stack.pop(), [])
        found += kids
        stack += kids
    return found


def model_actor_pids() -> list[int]:
    """The model actors of this module's cluster (its workers descend from this test process)."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            if b"GenerateReports" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_ray_run_equals_the_in_process_run(ray_run: tuple[Path, BatchSummary], reference: Path) -> None:
    out, summary = ray_run
    assert without_timings(out) == without_timings(reference)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert any(r["output"] for r in records) and records[0]["backend"] == "demo"
    assert (summary.studies, summary.lines, summary.skipped) == (len(records) // 2, len(records), 0)
    assert {"load_s", "generate_s"} <= set(records[0]["timings"])


def test_a_failing_study_is_recorded_and_the_run_goes_on(ray_run: tuple[Path, BatchSummary]) -> None:
    out, summary = ray_run
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    broken = [r for r in records if r["study_id"] == "broken"]
    assert [r["context"]["name"] for r in broken] == list(CONTEXTS)
    assert all("not a readable image" in r["error"] and r["output"] is None for r in broken)
    assert records.index(broken[0]) == 2 * BROKEN_AFTER and len(records) > 2 * BROKEN_AFTER + 2
    assert summary.errors == 1 and summary.error_messages[0].startswith("broken: ")


def test_images_are_decoded_in_tasks_ahead_of_the_model_actors(
    data_dir: Path, cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = load_manifest(data_dir)
    plan, _ = plan_batch(dataset, load_contexts(data_dir / "contexts.json"), data_dir / "none.jsonl")
    build_pipeline(plan, dataset, "demo", {}, RayOptions(batch_size=4)).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(GenerateReports)]" in optimized
    assert "TaskPoolMapOperator[MapBatches(decode_studies)]" in optimized  # its own stage, not fused into the actors


def test_sigkill_of_the_driver_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path, cluster: str, reference: Path
) -> None:
    driver, out, _ = driver_with_lines(tmp_path, data_dir, cluster, 4)
    driver.send_signal(signal.SIGKILL)
    driver.wait(60)
    lines_at_kill = out.read_bytes().count(b"\n")
    total = len(without_timings(reference))
    assert 4 <= lines_at_kill < total, "the run finished before it could be killed"
    resumed = subprocess.run(
        ray_cli(data_dir, out, cluster), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # 1: the corrupt study is recorded as an error
    assert "already done" in resumed.stdout and "studies/s" in resumed.stdout
    assert without_timings(out) == without_timings(reference)


def test_a_killed_model_actor_is_replaced_and_its_batch_retried(
    tmp_path: Path, data_dir: Path, cluster: str, reference: Path
) -> None:
    driver, out, log = driver_with_lines(tmp_path, data_dir, cluster, 2)
    (actor,) = model_actor_pids()
    os.kill(actor, signal.SIGKILL)
    lines_at_kill = out.read_bytes().count(b"\n")
    assert lines_at_kill < len(without_timings(reference)), "the run finished before the actor was killed"
    assert driver.wait(600) == 1, log.read_text()[-3000:]  # 1: the corrupt study is recorded as an error
    assert "errors: 1" in log.read_text() and actor not in model_actor_pids()
    assert without_timings(out) == without_timings(reference)


def test_box_completion_on_ray_equals_in_process(tmp_path: Path, data_dir: Path, cluster: str) -> None:
    dataset, specs = load_manifest(data_dir), [ContextSpec("full")]
    on_ray, in_process = tmp_path / "ray.jsonl", tmp_path / "in_process.jsonl"
    options = RayOptions(batch_size=4)
    run_ray_batch(dataset, specs, "demo", on_ray, options, progress=False, task=BOX_COMPLETION)
    run_batch(dataset, specs, load_backend("demo"), in_process, progress=False, task=BOX_COMPLETION)
    assert without_timings(on_ray) == without_timings(in_process)
    records = [json.loads(line) for line in on_ray.read_text(encoding="utf-8").splitlines()]
    assert {r["task"] for r in records} == {BOX_COMPLETION} and any(r["output"] for r in records)
    with pytest.raises(BatchError, match="box completion uses the grounded prompt"):  # ungrounded: no study can run
        run_ray_batch(dataset, load_contexts(data_dir / "contexts.json"), "demo", tmp_path / "x.jsonl", options,
                      progress=False, task=BOX_COMPLETION)  # fmt: skip
