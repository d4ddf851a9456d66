"""Shared pytest fixtures: offline hub, a tiny MAIRA-2 snapshot, a local backend on it, synthetic studies.

The snapshot is randomly initialised (official layout, ~0.2 s to build) and shared by the whole
session; backends are cheap to load, so each test gets a fresh one with empty caches.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Tiny test models: intra-op threads only add contention on a shared 2-core machine (10x slower there).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model_backend.types import PromptContext, Study, XrayImage

TINY_MAX_NEW_TOKENS = 24


def xray_from_array(display: np.ndarray) -> XrayImage:
    """An 8-bit grayscale array -> XrayImage keyed by content (no file decoding, no blank check)."""
    display = np.ascontiguousarray(display, dtype=np.uint8)
    digest = hashlib.sha256(f"{display.shape[0]}x{display.shape[1]}:".encode())
    digest.update(display.tobytes())
    return XrayImage(
        pixels=display, display=display, source_format="array", bits_stored=8, content_key=digest.hexdigest()
    )


def random_study(seed: int, study_id: str | None = None, context: PromptContext | None = None) -> Study:
    """A study of three distinct non-square random images (frontal 70x60, lateral 64x80, prior 60x66)."""
    rng = np.random.default_rng(seed)
    frontal, lateral, prior = (xray_from_array(rng.integers(0, 256, shape)) for shape in ((70, 60), (64, 80), (60, 66)))
    return Study(
        study_id=study_id or f"study-{seed}",
        frontal=frontal,
        lateral=lateral,
        prior_frontal=prior,
        context=context or PromptContext(indication="Dyspnea.", technique="PA and lateral views.", comparison="None."),
    )


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny MAIRA-2 snapshot in the official `microsoft/maira-2` layout."""
    from model_backend.maira2.snapshot import build_tiny_snapshot

    return build_tiny_snapshot(tmp_path_factory.mktemp("tiny_maira2"))


@pytest.fixture
def tiny_backend(tiny_snapshot: Path):
    """A fresh `LocalBackend` (CPU, fp32, empty caches) on the tiny snapshot, 24 new tokens per task."""
    from model_backend.backends.local import GenerationSettings, LocalBackend

    budget = TINY_MAX_NEW_TOKENS
    return LocalBackend(
        str(tiny_snapshot), device="cpu", dtype="float32", settings=GenerationSettings(budget, budget, budget)
    )


@pytest.fixture
def make_xray() -> Callable[[np.ndarray], XrayImage]:
    """Factory: 8-bit array -> XrayImage."""
    return xray_from_array


@pytest.fixture
def make_study() -> Callable[..., Study]:
    """Factory: `make_study(seed, study_id=None, context=None)` -> Study with three distinct random images."""
    return random_study


@pytest.fixture
def tiny_study() -> Study:
    """A study with frontal, lateral and prior frontal images and a filled-in default context."""
    return random_study(0)
