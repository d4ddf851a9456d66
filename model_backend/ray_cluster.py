"""Joining a Ray cluster (batch engine, scoring service) and checking that a layout fits it.

Workers import this repository's code, so every node needs it at the same path (a shared
filesystem or one container image); `worker_runtime_env` puts it on the workers' PYTHONPATH.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

REPO_ROOT = Path(__file__).resolve().parents[1]


def worker_runtime_env() -> dict[str, Any]:
    """Ray runtime environment that lets workers import this repository's code."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (None: start a local one) unless this process already has; True if it did now."""
    if ray.is_initialized():
        return False
    ray.init(address=address, runtime_env=worker_runtime_env(), logging_level="WARNING")
    return True


@contextmanager
def local_cluster(num_cpus: int, object_store_mb: int | None = None) -> Iterator[str]:
    """A local cluster started by this process (tests, benchmarks), shut down on exit; yields its address."""
    memory = None if object_store_mb is None else object_store_mb * 1024**2
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=memory,
        runtime_env=worker_runtime_env(),
        logging_level="WARNING",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def shortfall(cpus: float, gpus: float, *, spare_cpus: float = 0.0) -> str | None:
    """Why `cpus` CPUs and `gpus` GPUs, with `spare_cpus` left free, do not fit the cluster; None when they do."""
    resources = ray.cluster_resources()
    have_cpus, have_gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus + spare_cpus > have_cpus:
        spare = f" and {spare_cpus:g} left free" if spare_cpus else ""
        return f"{cpus:g} CPU(s){spare} are needed, the cluster has {have_cpus:g}"
    if gpus > have_gpus:
        return f"{gpus:g} GPU(s) are needed, the cluster has {have_gpus:g}"
    return None
