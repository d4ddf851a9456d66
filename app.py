"""Entry point: CLI flags -> backend -> dataset -> review store -> UI -> launch (+ POST /score)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

log = logging.getLogger("cxr-review")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Review grounded chest X-ray reports (research use only).")
    parser.add_argument("--model", default="demo", help="demo | SNAPSHOT_DIR | HUB_ID | azureml:URL | replay:FILE")
    parser.add_argument("--data", default=None, help="study manifest (.jsonl/.csv) or its folder; default: samples")
    parser.add_argument("--db", default=None, help="review database (default: reviews.sqlite beside the dataset)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (sends traffic out)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS", help="repeatable")
    parser.add_argument("--auth-file", default=None, help="file with one USER:PASS per line")
    parser.add_argument("--api-key", default=os.environ.get("CXR_REVIEW_API_KEY"), help="key for POST /score")
    parser.add_argument("--results", default=None, help="batch results JSONL for the dashboard (default: replay file)")
    parser.add_argument(
        "--pregenerate", type=int, default=2, metavar="N",
        help="generate the next N studies of the list in the background while you review (0: off)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu / cuda (default: automatic)")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on CUDA)")
    return parser.parse_args(argv)


def read_auth(pairs: list[str], auth_file: str | None) -> list[tuple[str, str]]:
    """USER:PASS strings (flags and file) -> credential pairs; a malformed entry is an error."""
    lines = list(pairs)
    if auth_file:
        lines += [line.strip() for line in Path(auth_file).read_text().splitlines() if line.strip()]
    credentials = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"--auth expects USER:PASS, got {line.split(':')[0]!r}:…")
        credentials.append((user, password))
    return credentials


def scoring_refusal(host: str, share: bool, api_key: str | None, credentials: list[tuple[str, str]]) -> str | None:
    """Why `POST /score` must not be served on this configuration (open to the network), or None."""
    from model_backend.scoring import is_loopback

    if api_key or credentials or (is_loopback(host) and not share):
        return None
    where = "through a share link" if share else f"on {host}"
    return (
        f"POST /score is NOT served: the app listens {where} without --api-key or --auth, so anyone who can "
        "reach it could run the model. Add --api-key KEY (or $CXR_REVIEW_API_KEY) or --auth USER:PASS."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from model_backend.backends import BackendError, load_backend
    from model_backend.datasets import DatasetError, bundled_samples_path, load_manifest
    from model_backend.scoring import RouteAccess, make_router
    from webapp.database import Database, ReviewStoreError
    from webapp.reviews import DEFAULT_DB_NAME
    from webapp.services import AppServices
    from webapp.ui import build_app, launch_settings

    try:
        backend = load_backend(args.model, **{k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v})
        dataset = load_manifest(args.data or bundled_samples_path())
        db_path = Path(args.db) if args.db else dataset.root / DEFAULT_DB_NAME
        db = Database(db_path)
    except (BackendError, DatasetError, ReviewStoreError, OSError) as err:
        sys.exit(f"error: {err}")
    credentials = read_auth(args.auth, args.auth_file)
    results = args.results or (args.model.removeprefix("replay:") if args.model.startswith("replay:") else None)
    services = AppServices(
        backend, dataset, db, pregenerate=args.pregenerate, auth_enabled=bool(credentials),
        results_path=Path(results) if results else None,
    )  # fmt: skip
    if services.results_path is not None:
        try:
            services.reports.import_results(services.results_path, dataset.name)
        except (OSError, ValueError) as err:
            log.warning("could not import the results file %s into the report store: %s", services.results_path, err)
    demo = build_app(services)
    log.info("backend %s (%s, weights %s) on %s; dataset %s; reviews in %s", backend.info.name,
             backend.info.model_id, backend.info.weights_hash or "unknown", backend.info.device, dataset.name,
             db_path)  # fmt: skip
    launch = {
        "server_name": args.host,
        "server_port": args.port,
        "auth": credentials or None,
        "prevent_thread_lock": True,
        "run_history": False,
        **launch_settings(),
    }
    try:
        demo.queue(default_concurrency_limit=4).launch(share=args.share, **launch)
    except Exception as err:  # the share tunnel cannot open offline: keep serving locally
        if not args.share:
            raise
        log.warning("could not create a share link (%s); serving locally only", err)
        demo.launch(share=False, **launch)
    refusal = scoring_refusal(args.host, args.share, args.api_key, credentials)
    if refusal:
        log.warning("%s", refusal)
    else:
        demo.app.include_router(make_router(backend, RouteAccess(args.api_key or None, tuple(credentials))))
        log.info("scoring endpoint: POST http://%s:%d/score", args.host, args.port)
    demo.block_thread()


if __name__ == "__main__":
    main()
