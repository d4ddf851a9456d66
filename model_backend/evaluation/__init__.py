"""Evaluation beyond the per-study box and text metrics of `model_backend.metrics`.

- `radfact_boxes`: RadFact's spatial and grounding precision/recall (union of evidence boxes, 224 x 224 masks).
- `metric_specs`: the metrics reported, as per-study sufficient statistics; `bleu`: BLEU-4 that way.
- `summary`: every metric per context and per class with bootstrap 95% intervals, paired differences
  between contexts, degenerate-output counts; `report`: the CLI's tables, CSV and JSON.
- `chexbert_labels` / `chexbert`: CheXpert F1-14 / F1-5 (micro) arithmetic / the CheXbert labeller.
- `radgraph_rewards` / `radgraph`: RadGraph-F1 rewards / RadGraph (DyGIE) from a local archive.
- `entailment`: RadFact-style logical precision/recall through an OpenAI-compatible chat endpoint.
- `weights`: where local weights are found (a flag, or the Hugging Face cache, offline);
  `model_metrics`: the CLI flags and runs of the model-based families.
"""
