"""Export a MAIRA-2 snapshot as an MLflow pyfunc model that answers like `POST /score`.

    python -m model_backend.mlflow_model save --model SPEC --out DIR [--max-new-tokens N]

The saved model folder holds a copy of the snapshot (`data/`), a copy of this package (`code/`),
the pinned requirements and a signature. It uses MLflow's loader-module form of the pyfunc
flavour: loading calls `_load_pyfunc` below, which opens the copied snapshot with the local
backend, so no Python object is pickled and this module needs MLflow only to *save*.

`predict` takes a pandas DataFrame with the protocol columns (`model_backend.protocol.COLUMNS`:
images as base64 PNG/JPEG/DICOM text, text sections or null) and returns a DataFrame with one
`output` per row: the same JSON-encoded findings string that `/score` answers. Rows are
generated `MAX_ROWS` at a time; any number of rows may be passed.

MLflow is optional (requirements-mlflow.txt).
"""

from __future__ import annotations

import argparse
import numbers
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from model_backend.backends import DEMO_MODEL_PATH
from model_backend.backends.base import Backend
from model_backend.protocol import COLUMNS, MAX_ROWS, decode_request, encode_response
from model_backend.scoring import generate_rows

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
MISSING_MLFLOW = "MLflow is not installed; install it with: pip install -r requirements-mlflow.txt"


class MlflowExportError(RuntimeError):
    """The model cannot be exported; the message says why."""


class ScoringModel:
    """The pyfunc implementation: protocol DataFrame in, `output` DataFrame out."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One JSON-encoded findings string per input row (raises `ProtocolError` naming a bad row/column)."""
        frame = model_input.astype(object).where(model_input.notna(), None)
        columns = [str(c) for c in frame.columns]
        index = [int(v) if isinstance(v, numbers.Integral) else str(v) for v in frame.index]
        data = frame.values.tolist()
        outputs: list[str] = []
        for start in range(0, len(data), MAX_ROWS):
            request = {
                "input_data": {
                    "columns": columns,
                    "index": index[start : start + MAX_ROWS],
                    "data": data[start : start + MAX_ROWS],
                }
            }
            reports = generate_rows(decode_request(request), self.backend)
            outputs += [item["output"] for item in encode_response(reports)]
        return pd.DataFrame({"output": outputs}, index=model_input.index)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ScoringModel:
    """MLflow's loader hook: open the copied snapshot (`model_config`: optional `max_new_tokens`)."""
    from model_backend.backends.local import GenerationSettings, LocalBackend

    settings = None
    if model_config and model_config.get("max_new_tokens"):
        settings = GenerationSettings(*[int(model_config["max_new_tokens"])] * 3)
    return ScoringModel(LocalBackend(data_path, name="mlflow", settings=settings))


def resolve_snapshot(spec: str) -> Path:
    """`demo` or a local snapshot folder -> the folder (a hub model must be downloaded first)."""
    path = DEMO_MODEL_PATH if spec == "demo" else Path(spec)
    if not (path / "config.json").is_file():
        raise MlflowExportError(
            f"{spec!r} is not a local MAIRA-2 snapshot folder (no config.json in {path}); for a hub model, "
            "download it first (huggingface-cli download microsoft/maira-2 --local-dir DIR) and pass DIR"
        )
    return path


def _requirements() -> list[str]:
    lines: list[str] = []
    for name in ("requirements.txt", "requirements-mlflow.txt"):
        for line in (REPO_DIR / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    return lines


def save(spec: str, out: str | Path, *, max_new_tokens: int | None = None) -> Path:
    """Write the pyfunc model folder `out` (which must not exist or be empty)."""
    try:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema
    except ImportError as exc:
        raise MlflowExportError(MISSING_MLFLOW) from exc
    snapshot = resolve_snapshot(spec)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", c, required=c == "frontal_image") for c in COLUMNS]),
        outputs=Schema([ColSpec("string", "output")]),
    )
    with warnings.catch_warnings():
        # An input example would be a radiograph, and MLflow would run the model on it while saving.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*", category=UserWarning)
        try:
            mlflow.pyfunc.save_model(
                path=str(out),
                loader_module="model_backend.mlflow_model",  # not __name__: that is __main__ under `python -m`
                data_path=str(snapshot),
                code_paths=[str(PACKAGE_DIR)],
                pip_requirements=_requirements(),
                signature=signature,
                model_config={"max_new_tokens": max_new_tokens} if max_new_tokens else None,
            )
        except (MlflowException, OSError) as exc:
            raise MlflowExportError(f"cannot write the MLflow model to {out}: {exc}") from exc
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_backend.mlflow_model", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    save_cmd = commands.add_parser("save", help="write an MLflow pyfunc model folder")
    save_cmd.add_argument("--model", default="demo", help="demo or a local MAIRA-2 snapshot folder")
    save_cmd.add_argument("--out", type=Path, required=True, help="model folder to create")
    save_cmd.add_argument("--max-new-tokens", type=int, default=None, help="cap generated tokens (default: MAIRA-2's)")
    args = parser.parse_args(argv)
    try:
        path = save(args.model, args.out, max_new_tokens=args.max_new_tokens)
    except MlflowExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"MLflow model written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
