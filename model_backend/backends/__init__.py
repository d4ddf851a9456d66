"""Backends behind one protocol, chosen by a spec string (see `load_backend`)."""

from __future__ import annotations

from pathlib import Path

from model_backend.backends.base import Backend, BackendError

DEMO_MODEL_PATH = Path(__file__).resolve().parents[2] / "assets" / "demo_model"
REMOTE_KEY_ENV = "CXR_REMOTE_API_KEY"  # key for an http(s)://.../score spec (optional: open endpoints need none)


def load_backend(spec: str = "demo", **kwargs) -> Backend:
    """`demo`, a local snapshot folder, a hub id (`microsoft/maira-2`), a scoring endpoint (`http(s)://.../score`,
    key in $CXR_REMOTE_API_KEY; or `azureml:URL`, key required in $AZUREML_API_KEY) or `replay:FILE.jsonl`."""
    if spec.startswith(("http://", "https://")):
        from model_backend.backends.azureml import AzureMLBackend

        return AzureMLBackend(spec, name="remote", api_key_env=REMOTE_KEY_ENV, key_required=False, **kwargs)
    if spec.startswith("azureml:"):
        from model_backend.backends.azureml import AzureMLBackend

        return AzureMLBackend(spec.removeprefix("azureml:"), **kwargs)
    if spec.startswith("replay:"):
        from model_backend.backends.replay import ReplayBackend

        return ReplayBackend(Path(spec.removeprefix("replay:")), **kwargs)
    from model_backend.backends.local import LocalBackend

    if spec == "demo":
        if not (DEMO_MODEL_PATH / "config.json").exists():
            raise BackendError(
                f"the bundled demo model is missing from {DEMO_MODEL_PATH}; "
                "rebuild it with `python -m model_backend.demo_model.train`"
            )
        return LocalBackend(str(DEMO_MODEL_PATH), name="demo", is_demo=True, **kwargs)
    return LocalBackend(spec, **kwargs)


__all__ = ["Backend", "BackendError", "load_backend"]
