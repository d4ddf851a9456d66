"""The direction of imports in DESIGN.md: webapp -> model_backend, never the reverse; no torch in webapp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_webapp_never_imports_torch_or_transformers() -> None:
    loaded = _modules_after_import("webapp.ui")
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_model_backend_never_imports_gradio_or_webapp() -> None:
    for path in (ROOT / "model_backend").rglob("*.py"):
        text = path.read_text()
        assert "import gradio" not in text and "from gradio" not in text, path
        assert "from webapp" not in text and "import webapp" not in text, path
