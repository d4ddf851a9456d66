"""Ray's overhead on the batch runner: wall(--engine ray) / wall(in-process), same CPUs, same studies.

Writes N demo phantoms (frontal, and a lateral / prior frontal where the phantom has one, with
their prompt sections) as a manifest, starts a local Ray cluster on C CPUs in this process, then
runs `python -m model_backend.batch` on the demo model, alternating:

    in-process: --engine inprocess
    Ray:        --engine ray --address THIS_CLUSTER --workers C-1 --batch-size B
                (one model actor per CPU but one, which decodes images ahead of them)

Each run is a fresh process, timed from start to exit, so both pay Python, torch and model
loading once (Ray in its actors); the cluster is started once, as a long-lived cluster would be,
and its start-up is reported apart. Both runs must write the same lines (timings aside). Torch
gets one intra-op thread per model in both: Ray sets OMP_NUM_THREADS to an actor's CPUs (1), and
the in-process run gets the same, since a second thread on a tiny model only adds contention on
a shared 2-core machine (runs then vary 4x from one to the next).
Goal (issue 17): Ray / in-process <= 1.3, as the median of back-to-back pairs (the load of a
shared machine drifts between pairs more than within one).

    python benchmarks/bench_ray.py [--studies 50] [--cpus 2] [--batch-size 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_backend.demo_model.phantoms import render_phantom, to_png_bytes
from model_backend.ray_cluster import REPO_ROOT, local_cluster

GOAL = 1.3


def write_phantoms(root: Path, count: int) -> Path:
    """`count` phantom studies as PNG files and a studies.jsonl manifest under `root`; returns the manifest."""
    rows = []
    for seed in range(count):
        phantom = render_phantom(seed)
        row = {"study_id": f"phantom_{seed:04d}", "indication": phantom.indication, "technique": phantom.technique,
               "comparison": phantom.comparison, "prior_report": phantom.prior_report}  # fmt: skip
        views = {"frontal": phantom.frontal, "lateral": phantom.lateral, "prior_frontal": phantom.prior_frontal}
        for view, image in views.items():
            if image is not None:
                (root / f"{seed:04d}_{view}.png").write_bytes(to_png_bytes(image))
                row[view] = f"{seed:04d}_{view}.png"
        rows.append(row)
    manifest = root / "studies.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def timed_run(command: list[str]) -> tuple[float, str]:
    """Wall seconds of one batch-runner process (one torch thread) and its summary (stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout.strip()


def lines_without_timings(path: Path) -> list[str]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [json.dumps({k: v for k, v in r.items() if k != "timings"}) for r in records]


def compare(workdir: Path, manifest: Path, address: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Alternate in-process and Ray runs; wall seconds per engine (each pair must write the same lines)."""
    common = [sys.executable, "-m", "model_backend.batch", "--data", str(manifest), "--model", "demo", "--no-progress"]
    ray_flags = ["--engine", "ray", "--address", address, "--workers", str(max(args.cpus - 1, 1)),
                 "--batch-size", str(args.batch_size)]  # fmt: skip
    walls: dict[str, list[float]] = {"in-process": [], "Ray": []}
    for repeat in range(args.repeats):
        for engine, extra in (("in-process", []), ("Ray", ray_flags)):
            out = workdir / f"{engine}_{repeat}.jsonl"
            wall, summary = timed_run([*common, "--out", str(out), *extra])
            walls[engine].append(wall)
            print(f"[{repeat}] {engine}: {wall:.1f} s  | {summary.splitlines()[1]}", flush=True)
        if lines_without_timings(workdir / f"Ray_{repeat}.jsonl") != lines_without_timings(
            workdir / f"in-process_{repeat}.jsonl"
        ):
            raise SystemExit("the Ray run and the in-process run wrote different lines")
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (and of the machine)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        workdir = Path(tmp)
        manifest = write_phantoms(workdir, args.studies)
        began = time.perf_counter()
        with local_cluster(args.cpus) as address:
            cluster_start = time.perf_counter() - began
            walls = compare(workdir, manifest, address, args)
    inproc, on_ray = statistics.median(walls["in-process"]), statistics.median(walls["Ray"])
    pairs = [r / i for i, r in zip(walls["in-process"], walls["Ray"], strict=True)]  # back to back: similar load
    ratio = statistics.median(pairs)
    print(f"\n{args.studies} phantom studies, {args.cpus} CPUs, one torch thread per model")
    print(f"Ray cluster start (once): {cluster_start:.1f} s")
    print(f"median wall: in-process {inproc:.1f} s, Ray {on_ray:.1f} s; per-pair Ray / in-process: "
          f"{', '.join(f'{r:.2f}' for r in pairs)}")  # fmt: skip
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"Ray / in-process = {ratio:.2f}, median of the pairs (goal <= {GOAL}: {verdict})")


if __name__ == "__main__":
    main()
