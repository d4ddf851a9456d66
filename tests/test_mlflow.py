"""MLflow pyfunc export: a self-contained model folder whose predict answers like `/score`.

MLflow is optional (requirements-mlflow.txt); the tests that need it skip without it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_backend.backends.local import GenerationSettings, LocalBackend
from model_backend.mlflow_model import MlflowExportError, main, resolve_snapshot
from model_backend.scoring import score
from tests.conftest import TINY_MAX_NEW_TOKENS

REPO = Path(__file__).resolve().parents[1]


def b64_png(width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.linspace(0, 200, width)[None, :] + rng.integers(0, 55, (height, width))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return base64.encodebytes(buffer.getvalue()).decode("utf-8")


FRONTAL, LATERAL = b64_png(96, 80, 1), b64_png(70, 90, 2)
COLUMNS = ["frontal_image", "lateral_image", "indication"]
ROWS = [[FRONTAL, LATERAL if i % 4 == 0 else None, f"Reason {i}." if i % 3 else None] for i in range(12)]

PREDICT = """
import json, sys
import pandas as pd
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
import model_backend  # importable only through the model folder's code/ copy
frame = pd.DataFrame(json.loads(sys.argv[2]), columns=json.loads(sys.argv[3]))
print(json.dumps({"code": model_backend.__file__, "output": model.predict(frame)["output"].tolist()}))
"""


def test_missing_mlflow_gives_a_clear_message(tmp_path: Path, tiny_snapshot: Path) -> None:
    script = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from model_backend.mlflow_model import main\n"
        f"sys.exit(main(['save', '--model', {str(tiny_snapshot)!r}, '--out', {str(tmp_path / 'm')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "MLflow is not installed" in done.stderr and "pip install -r requirements-mlflow.txt" in done.stderr


def test_only_local_snapshots_can_be_exported(tmp_path: Path) -> None:
    with pytest.raises(MlflowExportError, match="not a local MAIRA-2 snapshot folder"):
        resolve_snapshot(str(tmp_path))
    with pytest.raises(MlflowExportError, match="huggingface-cli download"):
        resolve_snapshot("microsoft/maira-2")


def test_saved_model_predicts_like_score(tmp_path: Path, tiny_snapshot: Path) -> None:
    pytest.importorskip("mlflow")
    out = tmp_path / "cxr_model"
    assert main(["save", "--model", str(tiny_snapshot), "--out", str(out), "--max-new-tokens", "24"]) == 0
    assert (out / "MLmodel").is_file() and (out / "data" / tiny_snapshot.name / "config.json").is_file()
    assert (out / "code" / "model_backend" / "mlflow_model.py").is_file()
    assert main(["save", "--model", str(tiny_snapshot), "--out", str(out)]) == 2  # never overwrites

    # Load and predict in a fresh interpreter outside the repository: the folder must be self-contained.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT, str(out), json.dumps(ROWS), json.dumps(COLUMNS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["code"]).is_relative_to(out / "code")

    budget = TINY_MAX_NEW_TOKENS
    backend = LocalBackend(str(tiny_snapshot), device="cpu", settings=GenerationSettings(budget, budget, budget))
    expected = []
    for start in (0, 10):  # /score takes at most 10 rows; predict takes any number
        body = {"input_data": {"columns": COLUMNS, "index": list(range(start, min(start + 10, 12))),
                               "data": ROWS[start : start + 10]}}  # fmt: skip
        status, answer = score(json.dumps(body).encode(), backend)
        assert status == 200
        expected += [item["output"] for item in answer]
    assert result["output"] == expected
