"""A 10-study batch on the demo model feeds the metrics CLI and the dashboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_backend import batch, metrics
from model_backend.backends import DEMO_MODEL_PATH
from model_backend.datasets import bundled_samples_path
from model_backend.protocol import decode_output
from webapp.dashboard import distributions_figure, heatmap_figure, load_dashboard, metrics_table, summary_markdown


@pytest.mark.skipif(not (DEMO_MODEL_PATH / "config.json").exists(), reason="the demo model is not built")
def test_ten_study_demo_batch_feeds_metrics_cli_and_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = bundled_samples_path()
    out = tmp_path / "results.jsonl"
    argv = ["--data", str(manifest), "--model", "demo", "--out", str(out), "--limit", "10"]
    assert batch.main([*argv, "--max-new-tokens", "120", "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10 and not any(line["error"] for line in lines)

    assert metrics.main([str(out), "--data", str(manifest), "--out", str(tmp_path / "metrics.csv")]) == 0
    assert "precision" in capsys.readouterr().out
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 11  # header + 10 studies

    data = load_dashboard(out, manifest)
    assert [row[0] for row in metrics_table(data)] == [line["study_id"] for line in lines]
    generated_boxes = sum(len(boxes or ()) for line in lines for _, boxes in decode_output(line["output"]))
    assert heatmap_figure(data).data[0].z.sum() == generated_boxes
    assert "default" in summary_markdown(data)
    assert len(distributions_figure(data).data) == 4  # one box trace per metric for the one context
