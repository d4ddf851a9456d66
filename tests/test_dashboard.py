"""The Dashboard's tables and figures from a crafted results file and dataset (real images, the real metrics
code), and a 10-study batch on the demo model that feeds the metrics CLI and the dashboard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from model_backend import batch, metrics
from model_backend.backends import DEMO_MODEL_PATH
from model_backend.datasets import bundled_samples_path, load_manifest
from model_backend.protocol import decode_output
from webapp.dashboard import (
    HEAT_BINS,
    MEAN_SIDE,
    N_BINS,
    PALETTE,
    TABLE_COLUMNS,
    DashboardData,
    bin_index,
    dashboard_for,
    distributions_figure,
    dot_positions,
    filter_rows,
    findings_figure,
    flag_choices,
    heatmap_figure,
    html_table,
    load_dashboard,
    pairs_html,
    study_table,
    summary_html,
)

WIDTH, HEIGHT = 300, 200  # landscape: the model's square crop is x 50..250 of the image
NODULE = {"label": "Nodule", "x_min": 90, "y_min": 40, "x_max": 130, "y_max": 80}  # image frame
HIT = [0.21, 0.21, 0.41, 0.41]  # model frame: image x 92..132, y 42..82, on the nodule; centre (0.31, 0.31)
MISS = [0.72, 0.62, 0.9, 0.8]  # centre (0.81, 0.71)
SENTENCE = "Right upper zone nodule."
HOSTILE = "<img src=x onerror=alert(1)>"


def _image(path: Path) -> None:
    """Inside the crop: left half black, right half grey 200; outside it (x < 50, x >= 250): grey 100."""
    pixels = np.full((HEIGHT, WIDTH), 100, dtype=np.uint8)
    pixels[:, 50:150], pixels[:, 150:250] = 0, 200
    Image.fromarray(pixels).save(path)


def _line(study: str, context: str, output: list, grounded: bool = True, task: str = "reporting") -> dict:
    return {"study_id": study, "context": {"name": context, "grounded": grounded}, "task": task, "output": output,
            "image_width": WIDTH, "image_height": HEIGHT}  # fmt: skip


def _lines(a: str = "A") -> list[dict]:
    """Contexts a, B (grounded), C (ungrounded, s2 loops: "repetition"), and box completion under a; file order."""
    return [
        _line("s1", a, [[SENTENCE, [HIT]]]),
        _line("s2", a, [[SENTENCE, [HIT]], ["Left lower zone mass.", [MISS]]]),
        _line("s1", "B", [[SENTENCE, [HIT]]]),
        _line("s2", "B", [[SENTENCE, [MISS]]]),
        _line("s1", "C", [[SENTENCE, None]], grounded=False),
        _line("s2", "C", [[SENTENCE, None]] * 3, grounded=False),
        _line("s1", a, [[SENTENCE, [HIT]]], task="box_completion"),
        _line("s2", a, [[SENTENCE, [MISS]]], task="box_completion"),
    ]


def _dataset(tmp_path: Path, lines: list[dict]) -> tuple[Path, Path]:
    """(results file, manifest) of two studies with the same image and one reference nodule each."""
    _image(tmp_path / "frontal.png")
    studies = [{"study_id": s, "frontal": "frontal.png", "reference_findings": [SENTENCE], "reference_boxes": [NODULE]}
               for s in ("s1", "s2")]  # fmt: skip
    manifest, results = tmp_path / "studies.jsonl", tmp_path / "results.jsonl"
    manifest.write_text("".join(json.dumps(s) + "\n" for s in studies), encoding="utf-8")
    results.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return results, manifest


def _load(tmp_path: Path, lines: list[dict] | None = None) -> DashboardData:
    results, manifest = _dataset(tmp_path, _lines() if lines is None else lines)
    return load_dashboard(results, load_manifest(manifest), n_resamples=50)


@pytest.fixture
def data(tmp_path: Path) -> DashboardData:
    return _load(tmp_path)


def _legend(figure: go.Figure) -> list[str]:
    return [t.name for t in figure.data if t.showlegend is not False]


def test_one_colour_per_context_everywhere_and_a_complete_legend(data: DashboardData) -> None:
    labels = ["A", "B", "C", "A (box completion)"]
    assert [s.label for s in data.series] == labels and [s.colour for s in data.series] == list(PALETTE[:4])
    colour = {s.label: s.colour for s in data.series}
    legends = [s.legend for s in data.series]
    assert legends[2] == "C · ungrounded: box metrics n/a" and legends[3] == "A (box completion) · text metrics n/a"
    rows = data.rows
    for figure in (distributions_figure(data, rows), heatmap_figure(data, rows)):
        assert _legend(figure) == legends  # every context, the ungrounded one and box completion included
        for trace in figure.data:
            if isinstance(trace, go.Scatter):
                assert trace.marker.color == colour[trace.legendgroup]
            else:  # heat map cells: transparent to opaque in the context's colour
                red, green, blue = (int(colour[trace.legendgroup][i : i + 2], 16) for i in (1, 3, 5))
                assert all(f"rgba({red},{green},{blue}," in c for _, c in trace.colorscale)
    findings = findings_figure(data, rows)
    assert _legend(findings) == ["A", "B", "C", "A (box completion) · n/a: findings given"]
    assert [t.marker.color for t in findings.data] == list(PALETTE[:4])
    html = summary_html(data)
    assert all(f"background:{colour[label]}'></span>{label}</th>" in html for label in labels)


def test_the_same_bins_for_every_context(data: DashboardData) -> None:
    assert [bin_index(v) for v in (0.0, 0.099, 0.1, 0.3, 0.7, 0.95, 1.0)] == [0, 0, 1, 3, 7, 9, 9]
    for slot in range(3):  # side by side inside the bin, never in the next one
        xs, ys = dot_positions([0.0, 0.0, 0.3, 1.0], slot, 3)
        assert [math.floor(x * N_BINS) for x in xs] == [0, 0, 3, 9] and ys == [1, 2, 1, 1]
    figure = distributions_figure(data, data.rows)
    by_key = {(r["study_id"], r["context"], r["task"]): r for r in data.rows}
    metric_of = {f"xaxis{i if i > 1 else ''}": key for i, key in enumerate(("precision", "recall"), start=1)}
    checked = 0
    for trace in figure.data:
        axis = f"xaxis{trace.xaxis[1:]}" if trace.xaxis else None
        if trace.x[0] is None or axis not in metric_of:
            continue
        for x, key in zip(trace.x, trace.customdata, strict=True):
            assert math.floor(x * N_BINS) == bin_index(by_key[tuple(key)][metric_of[axis]])
            checked += 1
    assert checked == 2 * 6  # precision and recall: s1 and s2 of A, B and A (box completion)
    findings = findings_figure(data, data.rows)
    assert len({tuple(t.x) for t in findings.data if t.x[0] is not None}) == 1  # one set of bins


def test_not_applicable_is_never_drawn_or_tabulated_as_zero(data: DashboardData) -> None:
    figure = distributions_figure(data, data.rows)
    drawn = {(t.legendgroup, t.xaxis) for t in figure.data if t.x[0] is not None}
    assert {axis for group, axis in drawn if group == "C"} == {"x6"}  # ROUGE-L only
    assert {axis for group, axis in drawn if group == "A (box completion)"} == {"x", "x2", "x3", "x4", "x5"}
    titles = [figure.layout[f"xaxis{i}"].title.text or "" for i in ("", 2, 3, 4, 5, 6)]
    assert all("n/a for C: ungrounded context" in t for t in titles[:5]) and "for C" not in titles[5]
    assert "n/a for A (box completion): box completion (the text is given)" in titles[5]

    table = study_table(data, data.rows)
    columns = {name: i for i, name in enumerate(TABLE_COLUMNS)}
    for row in table:
        box_cells = [row[columns[c]] for c in ("box prec.", "box rec.", "union IoU", "RadFact sp. P")]
        if row[1] == "C":
            assert box_cells == ["n/a"] * 4
        else:
            assert "n/a" not in box_cells
        assert (row[columns["ROUGE-L"]] == "n/a") == (row[2] == "box_completion")
    summary = summary_html(data)
    recall = next(line for line in summary.split("<tr>") if line.startswith("<td>box recall"))
    assert recall.count("<td class='na'>n/a</td>") == 1 and "0.000 [0.000, 0.000]" not in recall

    heat = heatmap_figure(data, data.rows)
    c_panel = next(t for t in heat.data if isinstance(t, go.Heatmap) and t.legendgroup == "C")
    assert np.all(np.isnan(np.asarray(c_panel.z, dtype=float)))  # nothing drawn, not a grid of zeros
    assert any(a.text == "n/a: ungrounded context (no boxes)" for a in heat.layout.annotations)


def test_heat_map_has_equal_axes_over_the_model_frame_and_the_mean_crop(data: DashboardData) -> None:
    figure = heatmap_figure(data, data.rows)
    panels = [t for t in figure.data if isinstance(t, go.Heatmap)]
    assert [p.legendgroup for p in panels] == [s.label for s in data.series]
    for panel in panels:
        x_axis = figure.layout[f"xaxis{panel.xaxis[1:]}"]
        y_axis = figure.layout[f"yaxis{panel.yaxis[1:]}"]
        assert y_axis.scaleanchor == panel.xaxis and y_axis.scaleratio == 1
        assert tuple(x_axis.range) == (0, 1) and tuple(y_axis.range) == (1, 0)  # the model frame, y down
        assert min(panel.x) > 0 and max(panel.x) < 1 and min(panel.y) > 0 and max(panel.y) < 1
    counts = {p.legendgroup: np.nan_to_num(np.asarray(p.z, dtype=float)) for p in panels}
    assert {k: int(v.sum()) for k, v in counts.items()} == {"A": 3, "B": 2, "C": 0, "A (box completion)": 2}
    hit_cell = (int(0.31 * HEAT_BINS), int(0.31 * HEAT_BINS))  # model-frame centre, not the image frame's (0.37, 0.31)
    assert counts["A"][hit_cell] == 2 and counts["B"][hit_cell] == 1 and counts["B"][14, 16] == 1

    images = figure.layout.images
    assert len(images) == len(panels) and all(i.source.startswith("data:image/png;base64,") for i in images)
    assert {(i.x, i.y, i.sizex, i.sizey) for i in images} == {(0, 0, 1, 1)}
    mean = data.mean_crop
    assert mean is not None and mean.shape == (MEAN_SIDE, MEAN_SIDE)
    half = MEAN_SIDE // 2  # the crop only: black left half, white right half after min-max; the grey sides are cut
    assert mean[:, : half - 4].max() < 10 and mean[:, half + 4 :].min() > 245


def test_flag_filter_narrows_the_table_and_the_figures(data: DashboardData) -> None:
    assert flag_choices(data) == [("repetition (1)", "repetition")]
    flagged = filter_rows(data.rows, ["repetition"])
    assert [(r["study_id"], r["context"]) for r in flagged] == [("s2", "C")]
    assert filter_rows(data.rows, []) == data.rows and filter_rows(data.rows, ["empty"]) == []
    assert [row[:4] for row in study_table(data, flagged)] == [["s2", "C", "reporting", "repetition"]]
    figure = distributions_figure(data, flagged)
    points = {tuple(c) for t in figure.data if t.customdata is not None for c in t.customdata}
    assert points == {("s2", "C", "reporting")}  # its ROUGE-L dot only
    assert _legend(figure) == [s.legend for s in data.series]  # the legend stays complete
    findings = findings_figure(data, flagged)
    assert [sum(t.y) for t in findings.data if t.x[0] is not None] == [0, 0, 1]


def test_pair_differences_table(data: DashboardData) -> None:
    html = pairs_html(data)
    header = html.split("</thead>")[0]
    assert [h.split("</th>")[0] for h in header.split("<th>")[1:]] == [
        "metric", "B - A (2)", "C - A (2)", "C - B (2)",
    ]  # fmt: skip
    recall = next(line for line in html.split("<tr>") if line.startswith("<td>box recall"))
    cells = [c.split("</td>")[0].split(">")[-1] for c in recall.split("<td")[1:]]
    assert cells[1].startswith("-0.500 [") and " p=" in cells[1] and cells[2:] == ["n/a", "n/a"]
    (pair,) = [p for p in data.summary.pairs if (p.a, p.b) == ("A", "B")]
    assert pair.metrics["recall"].difference == pytest.approx(-0.5)


def test_names_from_the_files_are_escaped(tmp_path: Path) -> None:
    data = _load(tmp_path, _lines(a=HOSTILE))
    pages = [summary_html(data), pairs_html(data), html_table((["metric", HOSTILE], [[HOSTILE, "n/a"]]))]
    assert all("<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page for page in pages)
    for figure in (distributions_figure(data, data.rows), heatmap_figure(data, data.rows)):
        text = json.dumps(figure.to_plotly_json()["layout"]) + json.dumps([t.name for t in figure.data])
        assert "<img" not in text and "&lt;img" in text
    assert study_table(data, data.rows)[0][1] == HOSTILE  # the Dataframe shows cells as text


def test_dashboard_is_computed_once_per_version_of_the_results_file(tmp_path: Path) -> None:
    results, manifest = _dataset(tmp_path, _lines())
    dataset = load_manifest(manifest)
    first = dashboard_for(results, dataset)
    assert dashboard_for(results, dataset) is first
    results.write_text("".join(json.dumps(line) + "\n" for line in _lines()[:2]), encoding="utf-8")
    assert [s.label for s in dashboard_for(results, dataset).series] == ["A"]


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

    data = load_dashboard(out, load_manifest(manifest), n_resamples=100)
    assert [row[0] for row in study_table(data, data.rows)] == [line["study_id"] for line in lines]
    generated_boxes = sum(len(boxes or ()) for line in lines for _, boxes in decode_output(line["output"]))
    (panel,) = [t for t in heatmap_figure(data, data.rows).data if isinstance(t, go.Heatmap)]
    assert np.nansum(np.asarray(panel.z, dtype=float)) == generated_boxes
    assert "default</th>" in summary_html(data) and data.mean_crop is not None
