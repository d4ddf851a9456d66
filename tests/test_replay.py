"""Replay backend: recorded results JSONL served through the backend protocol, never generating."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from model_backend.backends import load_backend
from model_backend.backends.base import BackendError
from model_backend.backends.replay import ReplayBackend
from model_backend.types import Box, PromptContext, Study
from tests.conftest import random_study, xray_from_array

DEFAULT = PromptContext(name="default", indication="Dyspnea.", technique="PA and lateral views.", comparison="None.")
NO_INDICATION = PromptContext(name="no_indication", technique="PA and lateral views.", comparison="None.")
OUTPUT = [["Right pleural effusion.", [[0.105, 0.555, 0.405, 0.915]]], ["No pneumothorax.", None]]


def batch_line(study_id: str, context: PromptContext, output: list, **extra) -> dict:
    """A line in the batch runner's format."""
    line = {
        "study_id": study_id,
        "context": asdict(context),
        "context_key": context.key(),
        "output": output,
        "raw_text": "raw",
        "complete": True,
        "warnings": [],
        "image_width": 60,
        "image_height": 70,
        "model_id": "tiny-model",
        "backend": "local",
        "error": None,
        "timings": {"generate_s": 0.5},
    }
    return {**line, **extra}


def write_jsonl(path: Path, lines: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + tail, encoding="utf-8")
    return path


@pytest.fixture
def study() -> Study:
    return random_study(0, study_id="s1")  # frontal 60 x 70 (width x height)


def test_recorded_findings_boxes_and_provenance(tmp_path: Path, study: Study) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT)])
    backend = ReplayBackend(path)
    (report,) = backend.generate(study, [DEFAULT])
    assert [f.text for f in report.findings] == ["Right pleural effusion.", "No pneumothorax."]
    assert report.findings[0].model_boxes == (Box(0.105, 0.555, 0.405, 0.915),)
    assert report.findings[1].model_boxes is None
    assert (report.image_width, report.image_height) == (60, 70)
    assert report.raw_text == "raw" and report.complete and report.warnings == ()
    assert report.timing("generate_s") == 0.5
    assert report.context == DEFAULT and report.images_key == study.images_key()
    assert backend.info.name == "replay" and backend.info.model_id == "tiny-model"
    assert not backend.info.can_ground_phrases


def test_lookup_by_prompt_settings_then_by_name(tmp_path: Path, study: Study) -> None:
    other = [["Cardiomegaly.", None]]
    path = write_jsonl(
        tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT), batch_line("s1", NO_INDICATION, other)]
    )
    backend = ReplayBackend(path)
    renamed = DEFAULT.with_name("A")  # the study's own context under the UI's name: same key
    assert backend.generate(study, [renamed])[0].findings[0].text == "Right pleural effusion."
    changed = NO_INDICATION.with_name("default")  # name of one, settings of the other: settings win
    assert backend.generate(study, [changed])[0].findings[0].text == "Cardiomegaly."
    by_name = PromptContext(name="no_indication", indication="Something else.")
    (report,) = backend.generate(study, [by_name])
    assert report.findings[0].text == "Cardiomegaly."
    assert any("recorded prompt settings differ" in w for w in report.warnings)


def test_minimal_lines_with_name_only(tmp_path: Path, study: Study) -> None:
    lines = [{"study_id": "s1", "context": "A", "output": json.dumps(OUTPUT)}]
    backend = ReplayBackend(write_jsonl(tmp_path / "r.jsonl", lines))
    (report,) = backend.generate(study, [PromptContext(name="A")])
    assert report.findings[0].model_boxes == (Box(0.105, 0.555, 0.405, 0.915),)
    assert (report.image_width, report.image_height) == (study.frontal.width, study.frontal.height)
    assert backend.info.model_id == "r.jsonl"


def test_missing_entry_raises_and_never_generates(tmp_path: Path, study: Study) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT)])
    backend = ReplayBackend(path)
    with pytest.raises(BackendError, match=r"no recorded result for study 's2' under context 'default' in .*r\.jsonl"):
        backend.generate(random_study(0, study_id="s2"), [DEFAULT])
    with pytest.raises(BackendError, match="under context 'other'"):
        backend.generate(study, [PromptContext(name="other", indication="x")])
    with pytest.raises(BackendError, match="phrase grounding was not recorded"):
        backend.ground_phrase(study, "effusion")


def test_stream_yields_the_recorded_report(tmp_path: Path, study: Study) -> None:
    backend = ReplayBackend(write_jsonl(tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT)]))
    reports = list(backend.stream(study, DEFAULT))
    assert len(reports) == 1 and reports[0].findings == backend.generate(study, [DEFAULT])[0].findings


def test_recorded_error_is_raised(tmp_path: Path, study: Study) -> None:
    line = batch_line("s1", DEFAULT, None, error="The image 'a.png' is truncated.", complete=False)
    backend = ReplayBackend(write_jsonl(tmp_path / "r.jsonl", [line]))
    with pytest.raises(BackendError, match=r"recorded run failed .*r\.jsonl:1\): The image 'a.png' is truncated"):
        backend.generate(study, [DEFAULT])


def test_image_size_mismatch_is_a_warning(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT)])
    frontal = xray_from_array(np.random.default_rng(1).integers(0, 256, (100, 200)))
    big = Study("s1", frontal=frontal)
    (report,) = ReplayBackend(path).generate(big, [DEFAULT.with_name("default")])
    assert (report.image_width, report.image_height) == (60, 70)
    assert any("60x70" in w and "200x100" in w for w in report.warnings)


def test_torn_last_line_is_ignored_but_a_broken_middle_line_is_not(tmp_path: Path, study: Study) -> None:
    good = batch_line("s1", DEFAULT, OUTPUT)
    torn = json.dumps(batch_line("s1", NO_INDICATION, OUTPUT))[:40]
    backend = ReplayBackend(write_jsonl(tmp_path / "torn.jsonl", [good], tail=torn))
    assert len(backend) == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + "\n" + torn + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(BackendError, match=r"broken\.jsonl:2: not valid JSON"):
        ReplayBackend(broken)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no recorded results"),
        ('{"context": "A", "output": []}\n', "missing study_id"),
        ('{"study_id": "s1", "context": {"indication": "x"}, "output": []}\n', "context must be a name"),
        ('{"study_id": "s1", "context": "A"}\n', "missing output"),
        ('{"study_id": "s1", "context": "A", "output": [["x", [[0, 1]]]]}\n', "a box must be"),
        ('{"study_id": "s1", "context": {"name": "A", "colour": 1}, "output": []}\n', "unknown context fields colour"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(BackendError, match=message):
        ReplayBackend(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot read recorded results"):
        ReplayBackend(tmp_path / "nope.jsonl")


def test_load_backend_dispatches_replay_specs(tmp_path: Path, study: Study) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [batch_line("s1", DEFAULT, OUTPUT)])
    backend = load_backend(f"replay:{path}")
    assert isinstance(backend, ReplayBackend)
    assert backend.generate(study, [DEFAULT])[0].findings[0].text == "Right pleural effusion."
