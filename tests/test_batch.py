"""Batch runner: contexts files, results lines, resume after SIGKILL / a torn line, errors, replay and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_backend.backends.base import BackendError
from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.backends.replay import ReplayBackend
from model_backend.batch import BatchError, ContextSpec, load_contexts, read_done, run_batch
from model_backend.datasets import load_manifest
from model_backend.protocol import decode_output
from model_backend.types import PromptContext
from tests.conftest import TINY_MAX_NEW_TOKENS

REPO = Path(__file__).resolve().parents[1]
CONTEXTS_YAML = """\
default: {}
no_indication:
  indication: null
frontal_only:
  from_study: false
  technique: PA view.
  use_lateral: false
  use_prior: false
"""
N_STUDIES, N_CONTEXTS = 5, 3


def write_png(root: Path, name: str, width: int, height: int, seed: int) -> str:
    """A ramp-plus-noise PNG under root/img; returns its manifest path."""
    rng = np.random.default_rng(seed)
    pixels = np.linspace(0, 200, width)[None, :] + rng.integers(0, 55, (height, width))
    (root / "img").mkdir(exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / name)
    return f"img/{name}"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five studies (two with a lateral, one with a prior), sections and a reference box each."""
    root = tmp_path_factory.mktemp("batch_data")
    rows = []
    for i in range(N_STUDIES):
        row = {
            "study_id": f"study{i}",
            "frontal": write_png(root, f"f{i}.png", 80 + 4 * i, 96, seed=i),
            "lateral": write_png(root, f"l{i}.png", 70, 90, seed=10 + i) if i in (1, 3) else None,
            "prior_frontal": write_png(root, f"p{i}.png", 90, 80, seed=20 + i) if i == 2 else None,
            "indication": f"Reason {i}.",
            "technique": "PA and lateral." if i in (1, 3) else "PA.",
            "reference_findings": ["Small right pleural effusion."],
            "reference_boxes": [{"label": "Effusion", "x_min": 10, "y_min": 40, "x_max": 40, "y_max": 90}],
        }
        rows.append(row)
    (root / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "contexts.yaml").write_text(CONTEXTS_YAML, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def backend(tiny_snapshot: Path) -> LocalBackend:
    budget = TINY_MAX_NEW_TOKENS
    return LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(budget, budget, budget))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path, backend: LocalBackend) -> Path:
    """An uninterrupted in-process run over the whole manifest."""
    out = tmp_path_factory.mktemp("batch_ref") / "results.jsonl"
    summary = run_batch(
        load_manifest(dataset_dir), load_contexts(dataset_dir / "contexts.yaml"), backend, out, progress=False
    )
    assert (summary.studies, summary.lines, summary.errors) == (N_STUDIES, N_STUDIES * N_CONTEXTS, 0)
    return out


def without_timings(path: Path) -> list[str]:
    """Each line re-serialised without its "timings" (the only field that varies between runs)."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(raw)
        assert list(record)[-1] == "timings"
        record.pop("timings")
        lines.append(json.dumps(record))
    return lines


def batch_cli(dataset_dir: Path, snapshot: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "model_backend.batch", "--data", str(dataset_dir / "studies.jsonl"),
        "--contexts", str(dataset_dir / "contexts.yaml"), "--model", str(snapshot), "--out", str(out),
        "--max-new-tokens", str(TINY_MAX_NEW_TOKENS),
    ]  # fmt: skip


# ---------------------------------------------------------------- contexts files


def test_contexts_file_forms(tmp_path: Path, dataset_dir: Path) -> None:
    specs = load_contexts(dataset_dir / "contexts.yaml")
    entry = load_manifest(dataset_dir).entries[1]
    default, no_indication, frontal_only = (s.resolve(entry) for s in specs)
    assert entry.prior_frontal is None  # so every context of this study has the prior switched off
    assert default == PromptContext(
        name="default", indication="Reason 1.", technique="PA and lateral.", use_prior=False
    )
    assert no_indication == PromptContext(
        name="no_indication", indication=None, technique="PA and lateral.", use_prior=False
    )
    assert frontal_only == PromptContext(name="frontal_only", technique="PA view.", use_lateral=False, use_prior=False)
    as_list = tmp_path / "c.json"
    as_list.write_text(json.dumps([{"name": "A"}, {"name": "B", "grounded": False}]), encoding="utf-8")
    assert [s.resolve(entry).grounded for s in load_contexts(as_list)] == [True, False]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.yaml", "A:\n  colour: red\n", "unknown field"),
        ("c.yaml", "A:\n  use_prior: 'no'\n", "use_prior must be true or false"),
        ("c.yaml", "A:\n  indication: 3\n", "indication must be text or null"),
        ("c.json", '[{"name": "A"}, {"name": "A"}]', "duplicate context name"),
        ("c.json", '[{"indication": "x"}]', "needs a non-empty name"),
        ("c.json", "[]", "defines no contexts"),
        ("c.json", '"A"', "expected a list"),
        ("c.json", "{not json", "cannot read contexts file"),
        ("c.txt", "A: {}", "must end in .json, .yaml or .yml"),
    ],
)
def test_bad_contexts_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BatchError, match=message):
        load_contexts(path)


# ---------------------------------------------------------------- results lines


def test_lines_follow_the_format_and_replay(reference: Path, dataset_dir: Path, backend: LocalBackend) -> None:
    records = [json.loads(line) for line in reference.read_text(encoding="utf-8").splitlines()]
    assert [(r["study_id"], r["context"]["name"]) for r in records] == [
        (f"study{i}", name) for i in range(N_STUDIES) for name in ("default", "no_indication", "frontal_only")
    ]
    first = records[0]
    assert list(first) == [
        "study_id", "context", "context_key", "task", "output", "raw_text", "complete", "warnings",
        "image_width", "image_height", "model_id", "backend", "error", "timings",
    ]  # fmt: skip
    assert first["context_key"] == PromptContext(**first["context"]).key() and first["task"] == "reporting"
    assert (first["image_width"], first["image_height"]) == (80, 96)
    assert first["backend"] == "local" and first["model_id"] == backend.info.model_id and first["error"] is None
    assert {"load_s", "generate_s"} <= set(first["timings"])
    # The results file opens with the replay backend and gives back what the model generates.
    replay = ReplayBackend(reference)
    dataset = load_manifest(dataset_dir)
    specs = load_contexts(dataset_dir / "contexts.yaml")
    for entry in dataset.entries:
        study = dataset.load_study(entry.study_id)
        contexts = [s.resolve(entry) for s in specs]
        replayed = replay.generate(study, contexts)
        generated = backend.generate(study, contexts)
        assert [r.findings for r in replayed] == [r.findings for r in generated]
        assert [r.raw_text for r in replayed] == [r.raw_text for r in generated]
    assert any(decode_output(r["output"]) for r in records)


def test_metrics_cli_reads_the_results(reference: Path, dataset_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "model_backend.metrics", str(reference), "--data", str(dataset_dir / "studies.jsonl")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("default", "no_indication", "frontal_only"))


# ---------------------------------------------------------------- resuming


def test_sigkill_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, dataset_dir: Path, tiny_snapshot: Path, reference: Path
) -> None:
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        batch_cli(dataset_dir, tiny_snapshot, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the batch run wrote nothing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    lines_at_kill = out.read_bytes().count(b"\n")
    assert 2 <= lines_at_kill < N_STUDIES * N_CONTEXTS, "the run finished before it could be killed"
    resumed = subprocess.run(
        batch_cli(dataset_dir, tiny_snapshot, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout and "studies/s" in resumed.stdout and "outside" in resumed.stdout
    assert without_timings(out) == without_timings(reference)


def test_torn_line_mid_study_resume(tmp_path: Path, dataset_dir: Path, backend: LocalBackend, reference: Path) -> None:
    lines = reference.read_bytes().splitlines(keepends=True)
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(lines[:4]) + lines[4][:50])  # study1 has 1 of 3 lines, then half a line
    assert len(read_done(out)) == 4 and out.read_bytes() == b"".join(lines[:4])  # torn tail dropped
    out.write_bytes(b"".join(lines[:4]) + lines[4][:50])
    summary = run_batch(
        load_manifest(dataset_dir), load_contexts(dataset_dir / "contexts.yaml"), backend, out, progress=False
    )
    assert (summary.skipped, summary.studies, summary.lines) == (1, N_STUDIES - 1, N_STUDIES * N_CONTEXTS - 4)
    assert without_timings(out) == without_timings(reference)
    again = run_batch(load_manifest(dataset_dir), load_contexts(dataset_dir / "contexts.yaml"), backend, out)
    assert (again.studies, again.lines, again.skipped) == (0, 0, N_STUDIES)


def test_resume_refuses_another_model_or_other_settings(
    tmp_path: Path, dataset_dir: Path, backend: LocalBackend, reference: Path
) -> None:
    out = tmp_path / "results.jsonl"
    first = json.loads(reference.read_text(encoding="utf-8").splitlines()[0])
    out.write_text(json.dumps({**first, "model_id": "another/model"}) + "\n", encoding="utf-8")
    dataset, specs = load_manifest(dataset_dir), load_contexts(dataset_dir / "contexts.yaml")
    with pytest.raises(BatchError, match="written by model 'another/model'"):
        run_batch(dataset, specs, backend, out, progress=False)
    out.write_text(json.dumps({**first, "context_key": "0" * 16}) + "\n", encoding="utf-8")
    with pytest.raises(BatchError, match="run with other settings"):
        run_batch(dataset, specs, backend, out, progress=False)
    out.write_text("not json\n" + json.dumps(first) + "\n", encoding="utf-8")
    with pytest.raises(BatchError, match=r"results\.jsonl:1 is not a results line"):
        run_batch(dataset, specs, backend, out, progress=False)


# ---------------------------------------------------------------- errors, limit, CLI


def test_a_bad_study_is_recorded_and_the_run_goes_on(tmp_path: Path, dataset_dir: Path, backend: LocalBackend) -> None:
    manifest = [json.loads(line) for line in (dataset_dir / "studies.jsonl").read_text().splitlines()][:3]
    (tmp_path / "img").mkdir()
    for row in manifest:
        (tmp_path / row["frontal"]).write_bytes((dataset_dir / row["frontal"]).read_bytes())
    manifest[1] = {**manifest[1], "lateral": None, "frontal": "img/broken.png"}
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    manifest[2] = {**manifest[2], "prior_frontal": None}
    (tmp_path / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    summary = run_batch(load_manifest(tmp_path), [ContextSpec("default"), ContextSpec("B")], backend, out)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["study_id"], r["error"] is None) for r in records] == [
        ("study0", True), ("study0", True), ("study1", False), ("study1", False), ("study2", True), ("study2", True)
    ]  # fmt: skip
    assert "not a readable image" in records[2]["error"] and records[2]["output"] is None
    assert summary.errors == 1 and summary.error_messages[0].startswith("study1: ")
    assert "errors: 1" in summary.format()
    with pytest.raises(BackendError, match="recorded run failed"):
        ReplayBackend(out).generate(load_manifest(dataset_dir).load_study("study1"), [PromptContext(name="default")])


def test_limit_and_summary_numbers(tmp_path: Path, dataset_dir: Path, backend: LocalBackend) -> None:
    out = tmp_path / "results.jsonl"
    summary = run_batch(load_manifest(dataset_dir), [ContextSpec("default")], backend, out, limit=2, progress=False)
    assert (summary.studies, summary.lines) == (2, 2)
    assert 0 < summary.model_s <= summary.wall_s and summary.studies_per_s > 0
    assert 0 <= summary.outside_share < 1 and summary.images_s > 0 and summary.writing_s > 0


def test_cli_errors_exit_2(tmp_path: Path, dataset_dir: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("A:\n  colour: red\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "model_backend.batch", "--data", str(dataset_dir), "--contexts", str(bad),
         "--model", "azureml:https://example.invalid/score", "--out", str(tmp_path / "r.jsonl")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown field(s) colour" in done.stderr
    assert not (tmp_path / "r.jsonl").exists()
