#!/usr/bin/env bash
# Installs what the tests need (Python packages, Debian's chromium for the browser tests) and runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; 
  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
python -m pip install -q -r requirements-test.txt -r requirements-mlflow.txt -r requirements-ray.txt
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
ruff check .
python -m pytest -q "$@"
