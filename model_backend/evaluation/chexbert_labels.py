"""CheXpert label arithmetic (no model): classes, CheXbert outputs -> binary labels, F1 counts.

CheXbert (Smit et al. 2020) has one head per CheXpert observation. The first 13 heads choose
among blank (0), positive (1), negative (2) and uncertain (3); the "No Finding" head among blank
(0) and positive (1). Binary labels for report-generation F1 follow `f1chexbert`'s "rrg" mode,
used by the report-generation literature: positive -> 1, negative and blank -> 0, and uncertain
-> 1 by default (`uncertain="positive"`); `uncertain="negative"` maps it to 0 instead. The
CXRReportGen / MAIRA-2 papers do not say how uncertain findings were counted, so the choice is
a flag and is recorded in the output.

F1-14 is the micro F1 over all 14 observations, F1-5 over Cardiomegaly, Edema, Consolidation,
Atelectasis and Pleural Effusion: 2 TP / (2 TP + FP + FN) with TP, FP, FN summed over the
classes and the studies (generated report vs reference report).
"""

from __future__ import annotations

from collections.abc import Sequence

CHEXPERT_CLASSES = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
CHEXPERT_5 = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
UNCERTAIN_CHOICES = ("positive", "negative")


def binary_labels(head_classes: Sequence[int], uncertain: str = "positive") -> list[int]:
    """CheXbert head outputs (14 class indices) -> 14 binary labels (see the module docstring)."""
    if len(head_classes) != len(CHEXPERT_CLASSES):
        raise ValueError(f"expected {len(CHEXPERT_CLASSES)} head outputs, got {len(head_classes)}")
    if uncertain not in UNCERTAIN_CHOICES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_CHOICES}, got {uncertain!r}")
    positive = {POSITIVE, UNCERTAIN} if uncertain == "positive" else {POSITIVE}
    return [int(c in positive) for c in head_classes]


def f1_counts(generated: Sequence[int], reference: Sequence[int], classes: Sequence[str]) -> tuple[int, int, int]:
    """(TP, FP, FN) of one study's binary labels over the named classes."""
    index = [CHEXPERT_CLASSES.index(c) for c in classes]
    tp = sum(1 for i in index if generated[i] and reference[i])
    fp = sum(1 for i in index if generated[i] and not reference[i])
    fn = sum(1 for i in index if reference[i] and not generated[i])
    return tp, fp, fn


def micro_f1(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], classes: Sequence[str]) -> float | None:
    """Micro F1 over studies' (generated, reference) labels and the named classes; None when nothing is positive."""
    tp = fp = fn = 0
    for generated, reference in pairs:
        t, f, n = f1_counts(generated, reference, classes)
        tp, fp, fn = tp + t, fp + f, fn + n
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
