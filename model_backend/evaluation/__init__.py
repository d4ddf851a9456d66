"""Evaluation beyond the per-study box and text metrics of `model_backend.metrics`.

- `radfact_boxes`: RadFact's spatial and grounding precision/recall (union of evidence boxes, 224 x 224 masks).
- `summary`: every metric per context and per class with bootstrap 95% intervals, paired differences
  between contexts, degenerate-output counts; tables, CSV and JSON.
- `chexbert`: CheXbert labels and CheXpert F1-14 / F1-5 (micro) from a local checkpoint.
- `radgraph`: RadGraph entities/relations (DyGIE from a local archive) and RadGraph-F1 rewards.
- `entailment`: RadFact-style logical precision/recall through an OpenAI-compatible chat endpoint.
- `weights`: where local weights are found (a flag, or the Hugging Face cache, offline).
"""
