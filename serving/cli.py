"""``regionmir serve``: run the query service on Ray Serve until interrupted.

    regionmir serve --model DIR --milvus URI [--host H] [--port P] [--config FILE]

Settings come from the config file (YAML/JSON), the environment (``REGIONMIR_API_KEY``,
``REGIONMIR_SERVE__SECTION__KEY``) and these flags, in that order (see :mod:`serving.config`).
``--print-config`` shows the merged settings (API key redacted) and exits; ``--atlas-from DATA``
learns the anatomy atlas from a data set's training boxes at start-up when the model directory
has no ``atlas.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging

from .config import ConfigError, ServeSettings
from .startup_checks import require_secure

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(prog="regionmir serve", description="Serve region queries over HTTP on Ray Serve.")
    p.add_argument("--model", help="model directory (or a training run's output: its best/), local or s3://")
    p.add_argument("--milvus", help="milvus-lite .db file (one replica) or http://host:port of a Milvus server")
    p.add_argument("--collection", help="collection or alias to search (default: regions)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--config", help="YAML or JSON settings file (default $REGIONMIR_SERVE_CONFIG)")
    p.add_argument("--atlas", help="anatomy atlas JSON (default MODEL/atlas.json)")
    p.add_argument(
        "--atlas-from",
        metavar="DATA",
        help="learn the atlas from DATA's training boxes at start-up (when there is no atlas.json)",
    )
    p.add_argument("--address", help="join this Ray cluster (default $RAY_ADDRESS, else start a local one)")
    p.add_argument("--print-config", action="store_true", help="print the merged settings and exit")
    p.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start without an API key or with the public identifier salt (demos and tests on a "
        "private machine only; refused otherwise)",
    )
    return p


def load_settings(args: argparse.Namespace) -> ServeSettings:
    overrides = {
        "model": args.model,
        "milvus": args.milvus,
        "collection": args.collection,
        "http.host": args.host,
        "http.port": args.port,
        "atlas.path": args.atlas,
        "ray.address": args.address,
    }
    return ServeSettings.load(args.config, overrides=overrides)


def serve_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_command_logging("serve", args)
    try:
        settings = load_settings(args)
        if args.print_config:
            print(json.dumps(settings.redacted(), indent=1))
            return 0
        settings.validate()
        insecure = require_secure(settings, args.insecure_dev)
    except ConfigError as exc:
        print(f"regionmir serve: {exc}", file=sys.stderr)
        return 2
    for problem in insecure:
        log.warning(f"--insecure-dev: {problem}")

    from regionmir.errors import RegionMIRError

    from .deployments import start_service

    atlas = None
    try:
        if args.atlas_from:
            atlas = fit_atlas(args.atlas_from)
        base = start_service(settings, atlas=atlas)
    except (RegionMIRError, ConfigError, TimeoutError) as exc:
        print(f"regionmir serve: {exc}", file=sys.stderr)
        _shutdown()
        return 2
    except Exception as exc:  # Ray or Serve failed to start: say so in one line, not a traceback
        print(f"regionmir serve: could not start the service: {type(exc).__name__}: {exc}", file=sys.stderr)
        _shutdown()
        return 1
    log.info(
        f"RegionMIR query service ready at {base}/ (API under {base}/v1/, "
        f"health {base}/healthz, readiness {base}/readyz); Ctrl-C stops it"
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    _shutdown()
    return 0


def fit_atlas(data: str):
    """Learn an atlas from the training split of ``data`` (image sizes read from file headers)."""
    from regionmir.anatomy_atlas import AnatomyAtlas
    from regionmir.dataset import open_dataset
    from regionmir.storage import S3Options

    s3 = S3Options.from_env()
    reader = open_dataset(data, s3)
    atlas = AnatomyAtlas.fit_records(reader.iter_images(split="train"), s3=s3, source=f"train split of {data}")
    log.info(f"anatomy atlas: {len(atlas.entries)} regions from {atlas.images} training films")
    return atlas


def _shutdown() -> None:
    try:
        import ray
        from ray import serve

        from cluster.ray_runtime import stop_ray

        if ray.is_initialized():
            serve.shutdown()
        stop_ray()
    except Exception:
        pass


def atlas_main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.cli atlas DATA OUT``: learn an atlas and write it (OUT: .json or model dir)."""
    p = command_parser(
        prog="python -m serving.cli atlas", description="learn the anatomy atlas from a data set's training boxes"
    )
    p.add_argument("data")
    p.add_argument("out", help="atlas .json path, or a model directory (writes DIR/atlas.json)")
    args = p.parse_args(list(argv or []))
    configure_command_logging("atlas", args)
    atlas = fit_atlas(args.data)
    from regionmir.storage import S3Options

    print(atlas.save(args.out, S3Options.from_env()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "atlas":
        raise SystemExit(atlas_main(sys.argv[2:]))
    raise SystemExit(serve_main())
