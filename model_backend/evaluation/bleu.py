"""Corpus BLEU-4 as per-study sufficient statistics, so it can be resampled study by study.

sacrebleu (lowercase, 13a tokenisation, default exponential smoothing) reduces a corpus to summed
per-segment counts (hypothesis and reference lengths, n-gram matches and totals for n = 1..4);
the score is a function of the sums. This is how sacrebleu's own paired tests resample, and the
value on all studies equals `sacrebleu.corpus_bleu` (`model_backend.metrics.corpus_bleu4`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from sacrebleu.metrics import BLEU


@cache
def _bleu() -> BLEU:
    return BLEU(lowercase=True)


def bleu_statistics(pred: str, ref: str) -> list[int]:
    """One study's sufficient statistics (lengths, n-gram matches and totals); they add up over studies."""
    return [int(v) for v in _bleu()._extract_corpus_statistics([pred], [[ref]])[0]]


def bleu_from_statistics(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 in [0, 1] from summed `bleu_statistics`, one value per row; NaN for an all-zero row."""
    sums = np.atleast_2d(sums)
    return np.array(
        [min(1.0, _bleu()._compute_score_from_stats(list(row)).score / 100.0) if row.any() else np.nan for row in sums]
    )
