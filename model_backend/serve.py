"""The CXRReportGen scoring service on Ray Serve: model replicas and dynamic batching across requests.

    python -m model_backend.serve --model SPEC [--replicas N] [--gpus-per-replica G] [--max-batch-size B]
        [--batch-wait-s S] [--api-key KEY] [--host 127.0.0.1] [--port 8000] [--address auto|HOST:PORT]

`POST /score` is the app's own: every replica serves `scoring.make_router`, so the protocol,
validation, error bodies, key check and body limit are exactly those of the app's `/score`.
`GET /health` answers once a replica is up, with its batching counts. Each replica builds its
backend once, in its constructor. The key comes from `--api-key` or `$CXR_REVIEW_API_KEY`;
without one the endpoint is open, so the service then refuses to listen beyond loopback.

Dynamic batching: the router hands each study of a request to `backend.generate`; in a replica that
call joins a `@serve.batch` queue (up to `--max-batch-size` calls, waiting at most `--batch-wait-s`
for more). A batch makes one backend call per distinct set of images: requests on the same images
(several prompt contexts of one study, sent as separate requests) are decoded together on one
shared image prefix; different images run one after another within the batch.

The app and the batch runner use the service through the remote backend:
`--model http://HOST:PORT/score` (key in `$CXR_REMOTE_API_KEY`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import anyio.from_thread
import ray
from fastapi import FastAPI
from ray import serve

from model_backend.backends import load_backend
from model_backend.backends.base import Backend, BackendError
from model_backend.ray_cluster import connect, shortfall
from model_backend.scoring import is_loopback, make_router
from model_backend.types import PromptContext, Report, Study

APP_NAME = "cxr-score"

GenerateCall = tuple[Study, list[PromptContext]]
Outcome = list[Report] | Exception


def generate_together(backend: Backend, calls: Sequence[GenerateCall]) -> list[Outcome]:
    """Outcomes of `backend.generate` for each call; one backend call per distinct set of images."""
    groups: dict[str, list[int]] = {}
    for position, (study, _) in enumerate(calls):
        groups.setdefault(study.images_key(), []).append(position)
    outcomes: list[Outcome | None] = [None] * len(calls)
    for members in groups.values():
        for position, outcome in zip(members, _generate_group(backend, [calls[m] for m in members]), strict=True):
            outcomes[position] = outcome
    return [o for o in outcomes if o is not None]


def _generate_group(backend: Backend, calls: Sequence[GenerateCall]) -> list[Outcome]:
    """Calls on the same images as one backend call; when that fails, each call again on its own."""
    contexts = [context for _, call_contexts in calls for context in call_contexts]
    try:
        reports = backend.generate(calls[0][0], contexts)
    except Exception as exc:  # handed back to the request it belongs to, which answers with it
        if len(calls) == 1:
            return [exc]
        return [outcome for call in calls for outcome in _generate_group(backend, [call])]
    outcomes: list[Outcome] = []
    start = 0
    for study, call_contexts in calls:
        chunk = reports[start : start + len(call_contexts)]
        outcomes.append([replace(report, study_id=study.study_id) for report in chunk])
        start += len(call_contexts)
    return outcomes


class QueuedBackend:
    """The backend as the scoring router sees it in a replica: `generate` waits its turn in the batch queue.

    The router runs `score` in a worker thread of the replica's event loop; `generate` hands its
    call to the loop (`anyio.from_thread`), where `@serve.batch` collects it. Everything else is
    the replica's backend.
    """

    def __init__(self, backend: Backend, submit: Callable[[GenerateCall], Awaitable[Outcome]]) -> None:
        self._backend = backend
        self._submit = submit
        self.info = backend.info

    def generate(self, study: Study, contexts: Sequence[PromptContext]) -> list[Report]:
        outcome = anyio.from_thread.run(self._submit, (study, list(contexts)))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


@dataclass
class BatchStats:
    """How the replica's batching went: batches run, calls in them, the largest batch."""

    batches: int = 0
    calls: int = 0
    largest_batch: int = 0

    def record(self, size: int) -> None:
        self.batches += 1
        self.calls += size
        self.largest_batch = max(self.largest_batch, size)


@serve.deployment
@serve.ingress()
class ScoringReplica:
    """One model replica serving `POST /score` and `GET /health`."""

    def __init__(
        self, model: str, backend_options: dict[str, Any], api_key: str | None, max_batch_size: int, batch_wait_s: float
    ) -> None:
        self.backend = load_backend(model, **backend_options)
        self.api_key = api_key
        self.stats = BatchStats()
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.include_router(make_router(QueuedBackend(self.backend, self.generate_batch), self.api_key))
        app.add_api_route("/health", self.health, methods=["GET"])
        return app

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": self.backend.info.name, **asdict(self.stats)}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, calls: list[GenerateCall]) -> list[Outcome]:
        self.stats.record(len(calls))
        return await asyncio.to_thread(generate_together, self.backend, calls)


def start_service(args: argparse.Namespace) -> str:
    """Deploy the scoring app on the connected cluster; returns its URL once every replica is up."""
    problem = shortfall(args.replicas * 1.0, args.replicas * args.gpus_per_replica)
    if problem:
        raise BackendError(f"{args.replicas} replica(s) do not fit: {problem}; lower --replicas or --gpus-per-replica")
    serve.start(http_options={"host": args.host, "port": args.port})
    replica = ScoringReplica.options(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": 1, "num_gpus": args.gpus_per_replica},
        max_ongoing_requests=max(2 * args.max_batch_size, 8),
    )
    app = replica.bind(args.model, {}, args.api_key, args.max_batch_size, args.batch_wait_s)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{args.host}:{args.port}/score"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_backend.serve", description="CXRReportGen POST /score on Ray Serve (research use only)."
    )
    parser.add_argument("--model", default="demo", help="demo, a snapshot folder, hub id, http(s)://.../score, ...")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas, each builds the model once")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--max-batch-size", type=int, default=8, help="backend calls batched across requests")
    parser.add_argument("--batch-wait-s", type=float, default=0.01, help="how long a batch waits to fill up")
    parser.add_argument("--api-key", default=os.environ.get("CXR_REVIEW_API_KEY"), help="key for POST /score")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default=None, help="auto, HOST:PORT or ray://HOST:PORT; default: a local one")
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.max_batch_size < 1 or args.gpus_per_replica < 0 or args.batch_wait_s < 0:
        parser.error("--replicas and --max-batch-size take positive numbers; --gpus-per-replica, --batch-wait-s >= 0")
    if args.api_key is not None and not args.api_key.strip():
        parser.error("the API key is empty; give a key or none for an open endpoint")
    if args.api_key is None and not is_loopback(args.host):
        parser.error(f"an open POST /score on {args.host} would let anyone run the model: give --api-key KEY")
    connected = connect(args.address)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after connecting: Ray installs a handler of its own
    try:
        url = start_service(args)
        print(f"serving POST {url} ({args.replicas} replica(s) of {args.model}); Ctrl-C stops", flush=True)
        stop.wait()
        serve.delete(APP_NAME)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
    except (BackendError, RuntimeError, ray.exceptions.RayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if connected:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
