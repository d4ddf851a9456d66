"""Box completion through the batch runner (`--task box-completion`), replay, the metrics CLI and azureml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_backend import batch, metrics
from model_backend.backends.azureml import AzureMLBackend
from model_backend.backends.base import BOX_COMPLETION, REPORTING, BackendError, UnsupportedTaskError
from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.backends.replay import ReplayBackend
from model_backend.batch import BatchError, ContextSpec, run_batch
from model_backend.datasets import load_manifest
from model_backend.protocol import report_to_output
from tests.conftest import TINY_MAX_NEW_TOKENS, random_study
from tests.test_batch import write_png

FINDINGS = {
    "s0": ["Small right pleural effusion.", "The heart size is normal."],
    "s1": [],  # no reference findings: an error line, and the run goes on
    "s2": ["There is a nodule in the left upper zone.", "No pneumothorax.", "Cardiomegaly."],
}
SPECS = [ContextSpec("default"), ContextSpec("frontal_only", (("use_lateral", False),))]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("box_completion_data")
    rows = [
        {
            "study_id": study_id,
            "frontal": write_png(root, f"f{i}.png", 80 + 8 * i, 96, seed=i),
            "lateral": write_png(root, f"l{i}.png", 70, 90, seed=10 + i) if i == 2 else None,
            "indication": f"Reason {i}.",
            "reference_findings": findings,
            "reference_boxes": [{"label": "Effusion", "x_min": 10, "y_min": 40, "x_max": 40, "y_max": 90}],
        }
        for i, (study_id, findings) in enumerate(FINDINGS.items())
    ]
    path = root / "studies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def backend(tiny_snapshot: Path) -> LocalBackend:
    budget = TINY_MAX_NEW_TOKENS
    return LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(budget, budget, budget))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, manifest: Path, backend: LocalBackend) -> Path:
    out = tmp_path_factory.mktemp("box_completion_out") / "boxes.jsonl"
    summary = run_batch(load_manifest(manifest), SPECS, backend, out, progress=False, task=BOX_COMPLETION)
    assert (summary.studies, summary.lines, summary.errors) == (3, 6, 1)
    return out


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lines_hold_the_reference_findings_in_order_with_the_models_boxes(
    results: Path, manifest: Path, backend: LocalBackend
) -> None:
    lines = read_lines(results)
    assert [(r["study_id"], r["context"]["name"]) for r in lines] == [
        (s, c.name) for s in FINDINGS for c in SPECS
    ]  # the study without findings sits in the middle: the run went on after it
    assert all(r["task"] == "box_completion" for r in lines)
    dataset = load_manifest(manifest)
    for study_id in ("s0", "s2"):
        study = dataset.load_study(study_id)
        expected = backend.complete_boxes(
            study, FINDINGS[study_id], [s.resolve(dataset.entry(study_id)) for s in SPECS]
        )
        written = [r for r in lines if r["study_id"] == study_id]
        assert [[sentence for sentence, _ in r["output"]] for r in written] == [FINDINGS[study_id]] * 2
        assert [r["output"] for r in written] == [report_to_output(report) for report in expected]
        assert [r["raw_text"] for r in written] == [report.raw_text for report in expected]
    failed = [r for r in lines if r["study_id"] == "s1"]
    assert all(r["output"] is None and "no findings" in r["error"] for r in failed)


def test_resume_skips_done_lines_and_refuses_another_task(results: Path, manifest: Path, backend) -> None:
    before = results.read_bytes()
    again = run_batch(load_manifest(manifest), SPECS, backend, results, progress=False, task=BOX_COMPLETION)
    assert (again.lines, again.skipped) == (0, 3) and results.read_bytes() == before
    with pytest.raises(BatchError, match="written for task 'box_completion', this run is 'reporting'"):
        run_batch(load_manifest(manifest), SPECS, backend, results, progress=False, task=REPORTING)


def test_replay_serves_recorded_box_completions_only_as_box_completions(
    results: Path, manifest: Path, backend: LocalBackend, tmp_path: Path
) -> None:
    dataset = load_manifest(manifest)
    study = dataset.load_study("s2")
    contexts = [s.resolve(dataset.entry("s2")) for s in SPECS]
    reporting = tmp_path / "reports.jsonl"
    run_batch(dataset, SPECS, backend, reporting, progress=False)
    both = tmp_path / "both.jsonl"
    both.write_bytes(reporting.read_bytes() + results.read_bytes())
    replay = ReplayBackend(both)
    replayed = replay.complete_boxes(study, FINDINGS["s2"], contexts)
    assert [(r.task, r.findings) for r in replayed] == [
        (r.task, r.findings) for r in backend.complete_boxes(study, FINDINGS["s2"], contexts)
    ]
    assert [r.raw_text for r in replay.generate(study, contexts)] == [
        r.raw_text for r in backend.generate(study, contexts)
    ]  # the reporting lines, not the box completions, under the same study and context names
    with pytest.raises(BackendError, match="for other sentences"):
        replay.complete_boxes(study, FINDINGS["s2"][:2], contexts)
    with pytest.raises(BackendError, match=r"the recorded run failed.*no findings"):
        replay.complete_boxes(dataset.load_study("s1"), [], contexts)
    with pytest.raises(UnsupportedTaskError, match="not supported by replay"):
        ReplayBackend(reporting).complete_boxes(study, FINDINGS["s2"], contexts)
    with pytest.raises(BackendError, match="no recorded result for study 's2'"):
        ReplayBackend(results).generate(study, contexts)


def test_metrics_cli_reads_the_lines(results: Path, manifest: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "metrics.csv"
    assert metrics.main([str(results), "--data", str(manifest), "--out", str(csv_path)]) == 0
    assert len(csv_path.read_text(encoding="utf-8").splitlines()) == 1 + 4  # header + the lines without an error


def test_cli_run_equals_the_in_process_run(results: Path, manifest: Path, tiny_snapshot: Path, tmp_path: Path) -> None:
    contexts = tmp_path / "contexts.json"
    contexts.write_text(json.dumps({"default": {}, "frontal_only": {"use_lateral": False}}), encoding="utf-8")
    out = tmp_path / "cli.jsonl"
    argv = ["--task", "box-completion", "--data", str(manifest), "--contexts", str(contexts)]
    assert batch.main([*argv, "--model", str(tiny_snapshot), "--out", str(out), "--no-progress"]) == 1  # s1 failed

    def without_timings(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "timings"} for r in read_lines(path)]

    assert without_timings(out) == without_timings(results)


def test_unsupported_backend_stops_the_run(results: Path, manifest: Path, tmp_path: Path, capsys) -> None:
    reporting_only = tmp_path / "reporting.jsonl"
    reporting_only.write_text(
        "".join(json.dumps({**r, "task": REPORTING}) + "\n" for r in read_lines(results)[:2]), encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    argv = ["--task", "box-completion", "--data", str(manifest), "--model", f"replay:{reporting_only}"]
    assert batch.main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert "box completion is not supported by replay" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == ""


def test_azureml_refuses_box_completion_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOX_COMPLETION_TEST_KEY", "secret")
    remote = AzureMLBackend("http://127.0.0.1:9/score", api_key_env="BOX_COMPLETION_TEST_KEY", retries=0)
    with pytest.raises(UnsupportedTaskError, match="box completion is not supported by the azureml backend"):
        remote.complete_boxes(random_study(0), ["No effusion."], [random_study(0).context])
