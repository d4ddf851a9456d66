"""Degenerate-output flags: each detector on crafted outputs, normal reports unflagged, batch lines carry them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.backends.replay import ReplayBackend
from model_backend.batch import ContextSpec, run_batch
from model_backend.datasets import load_manifest
from model_backend.degenerate import (
    BOX_OUTSIDE_CROP,
    EMPTY,
    FLAGS,
    REPETITION,
    TRUNCATED,
    UNPARSEABLE_BOXES,
    degenerate_flags,
)
from model_backend.maira2.parsing import format_grounded, parse_tolerant
from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report
from tests.test_batch import write_png

NORMAL = (
    Finding("There is a small left pleural effusion.", (Box(0.105, 0.555, 0.405, 0.915),)),
    Finding("There is no pneumothorax.", None),
    Finding("There is no focal consolidation.", None),
    Finding("The cardiomediastinal silhouette is within normal limits.", None),
    Finding("A 1 cm nodule projects over the right upper zone.", (Box(0.615, 0.215, 0.715, 0.315),)),
    Finding("There is mild degenerative change of the thoracic spine.", None),
)


def report(findings: tuple[Finding, ...], raw_text: str = "", complete: bool = True, warnings: tuple = ()) -> Report:
    return Report(
        study_id="s1",
        context=PromptContext(),
        findings=findings,
        image_width=100,
        image_height=120,
        raw_text=raw_text,
        complete=complete,
        backend=BackendInfo(name="test", model_id="m"),
        warnings=warnings,
    )


def parsed(raw_text: str, truncated: bool = False) -> Report:
    """A report exactly as the local backend builds it from generated text."""
    result = parse_tolerant(raw_text, truncated=truncated)
    return report(result.findings, raw_text, result.complete and not truncated, result.warnings)


def names(rep: Report) -> list[str]:
    return [flag.name for flag in degenerate_flags(rep)]


def test_normal_reports_are_not_flagged() -> None:
    assert degenerate_flags(parsed(format_grounded(NORMAL))) == ()
    plain = " ".join(f.text for f in NORMAL)
    assert degenerate_flags(parsed(plain)) == ()
    # Two identical sentences (e.g. left and right) are normal; so is shared phrasing across sentences.
    twice = (*NORMAL, Finding("There is no pneumothorax.", None))
    assert degenerate_flags(report(twice)) == ()


def test_repeated_sentences() -> None:
    looping = NORMAL[:2] + (Finding("No pneumothorax.", None),) * 49
    flags = degenerate_flags(parsed(format_grounded(looping), truncated=True))
    assert [f.name for f in flags] == [REPETITION, TRUNCATED]
    assert "'no pneumothorax' repeated 49 times (51 findings)" in flags[0].reason
    # Case, spacing and final punctuation do not hide a repeat.
    variants = (Finding("No  effusion."), Finding("no effusion"), Finding("No effusion!"))
    assert names(report(variants)) == [REPETITION]


def test_looping_inside_one_sentence() -> None:
    loop = "There is " + "a small left effusion and " * 8 + "no pneumothorax."
    flags = degenerate_flags(parsed(loop))
    assert [f.name for f in flags] == [REPETITION] and "distinct of" in flags[0].reason
    short = "Effusion and effusion and effusion."  # fewer than MIN_NGRAMS 4-grams: not judged
    assert names(parsed(short)) == []


def test_truncated_at_the_token_limit() -> None:
    cut = format_grounded(NORMAL)[:-20]  # generation stopped mid-phrase
    rep = parsed(cut, truncated=True)
    assert not rep.complete and names(rep) == [TRUNCATED]
    # Incomplete for another reason (a stray closing tag) is not truncation.
    assert TRUNCATED not in names(parsed(format_grounded(NORMAL) + "</obj>"))


def test_empty_report() -> None:
    assert names(parsed("")) == [EMPTY]
    flags = degenerate_flags(report((Finding("  "),), raw_text="<obj>  </obj>"))
    assert [f.name for f in flags] == [EMPTY] and "raw output: 13 characters" in flags[0].reason
    assert names(report((Finding("", (Box(0.1, 0.1, 0.2, 0.2),)),))) == []  # a box alone is content


@pytest.mark.parametrize(
    "raw",
    [
        "<obj>Nodule.<box><x10><y20></box></obj>",  # two coordinates only
        "<obj>Nodule.<box><x10><y20><x130><y40></box></obj>",  # bin out of range
        "<obj>Nodule.<box><x10><y20><x30><y40></obj>",  # unclosed box
        "<obj>Nodule.</obj><x10><y20>",  # coordinates outside a box
        "<obj>Nodule.<box><x30><y40><x10><y20></box></obj>",  # corners in the wrong order
    ],
)
def test_unparseable_box_tokens(raw: str) -> None:
    flags = degenerate_flags(parsed(raw))
    assert UNPARSEABLE_BOXES in [f.name for f in flags]
    assert "box-token warning" in next(f.reason for f in flags if f.name == UNPARSEABLE_BOXES)


def test_box_outside_the_crop() -> None:
    findings = (Finding("Opacity.", (Box(0.1, 0.1, 0.3, 0.3), Box(-0.05, 0.2, 0.4, 1.1))),)
    flags = degenerate_flags(report(findings))
    assert [f.name for f in flags] == [BOX_OUTSIDE_CROP]
    assert flags[0].reason == "1 box(es) outside the crop, e.g. [-0.05, 0.20, 0.40, 1.10]"
    edge = (Finding("Opacity.", (Box(0.0, 0.0, 1.0, 1.0),)),)
    assert names(report(edge)) == []


def test_several_flags_in_fixed_order() -> None:
    findings = (Finding("Mass.", (Box(1.2, 0.1, 1.3, 0.2),)),) * 3
    rep = report(findings, warnings=("output truncated at max_new_tokens", "malformed box <x1> dropped"))
    assert names(rep) == [REPETITION, TRUNCATED, UNPARSEABLE_BOXES, BOX_OUTSIDE_CROP]
    assert set(names(rep)) <= set(FLAGS)


def test_batch_lines_carry_the_flags_replay_recomputes(tmp_path: Path, tiny_snapshot: Path) -> None:
    rows = [{"study_id": f"s{i}", "frontal": write_png(tmp_path, f"f{i}.png", 64, 72, seed=i)} for i in range(2)]
    (tmp_path / "studies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    backend = LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(8, 8, 8))
    out = tmp_path / "results.jsonl"
    dataset = load_manifest(tmp_path)
    run_batch(dataset, [ContextSpec("A"), ContextSpec("B", (("grounded", False),))], backend, out, progress=False)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    replay = ReplayBackend(out)
    for line in lines:
        study = dataset.load_study(line["study_id"])
        (replayed,) = replay.generate(study, [PromptContext(**line["context"])])
        assert line["flags"] == names(replayed)
        truncated = any("truncated" in w for w in line["warnings"])
        assert (TRUNCATED in line["flags"]) == truncated
    assert any(TRUNCATED in line["flags"] for line in lines)  # 8 new tokens cut a random model short
