"""``lantern-engine serve``: the analysis as a local HTTP service (engine.service, docs/service.md).

The first line on standard output says where it listens (``--port 0`` picks a free port, which
that line names); the log (one line per request, never a patient's name, ID or file name) goes to
standard error.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

from engine.errors import LanternError
from engine.resources import DEMO_MODEL
from engine.service import settings as defaults


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the analysis over HTTP to other programs (loopback by default; "
                       "docs/service.md)")
    p.add_argument("--model", type=Path, default=DEMO_MODEL, help="model bundle folder (default: the demo model)")
    p.add_argument("--engine", default="auto", help="torch, onnx, onnx-int8 or auto (default: fastest available)")
    p.add_argument("--host", default=defaults.DEFAULT_HOST,
                   help=f"address to listen on (default {defaults.DEFAULT_HOST}, this machine only; any other "
                        "address needs --token-file)")
    p.add_argument("--port", type=int, default=defaults.DEFAULT_PORT,
                   help=f"port (default {defaults.DEFAULT_PORT}; 0: a free one, printed at start)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="file holding a bearer token (one word, at least 16 characters, not readable by others): "
                        "every request must then send 'Authorization: Bearer <token>'")
    p.add_argument("--workers", type=int, default=defaults.DEFAULT_WORKERS,
                   help=f"analyses at once (default {defaults.DEFAULT_WORKERS})")
    p.add_argument("--queue", type=int, default=defaults.DEFAULT_QUEUE,
                   help=f"requests that may wait for a worker; beyond them: 503 (default {defaults.DEFAULT_QUEUE})")
    p.add_argument("--max-upload-mb", type=float, default=defaults.DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest request body, a batch's files together (default {defaults.DEFAULT_MAX_UPLOAD_MB})")
    p.set_defaults(run=serve_command)


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn so that a taken port is a plain-words error, and so that
    the port chosen for ``--port 0`` is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every response waited ~40 ms (Nagle against the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise LanternError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("lantern.service")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from engine.service.app import create_app
    except ImportError as exc:
        raise LanternError(f"the service needs FastAPI and uvicorn: pip install 'lantern[service]' ({exc.name} "
                           "is missing)") from exc
    from engine.analysis import load_model
    from engine.service.settings import ServiceSettings, checked_settings, read_token

    settings = checked_settings(ServiceSettings(
        host=args.host, port=args.port, token=read_token(args.token_file) if args.token_file else None,
        workers=args.workers, queue=args.queue, max_upload_bytes=int(args.max_upload_mb * 2**20)))
    model = load_model(args.model, args.engine)  # as every other command loads a bundle
    app = create_app(model, settings)
    sock = _listening_socket(settings.host, settings.port)
    _log_to_stderr()
    # No access log: uvicorn's names the client and the full path with its query string; the
    # gate logs what may be logged. Its own messages only from warnings up. No proxy headers: no
    # proxy stands in front, so X-Forwarded-For is whatever a client claims. limit_concurrency is
    # only a backstop against connection floods; the pool's admission answers first.
    config = uvicorn.Config(app, access_log=False, log_level="warning", lifespan="on", proxy_headers=False,
                            server_header=False, limit_concurrency=4 * (settings.workers + settings.queue) + 32,
                            timeout_graceful_shutdown=10)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lantern-engine serve: {model.bundle.name} {model.bundle.version} ({model.engine}) on "
          f"http://{shown}:{port} ({settings.workers} workers, queue {settings.queue}, "
          f"{'token required' if settings.token else 'loopback, no token'}); API at http://{shown}:{port}/docs",
          flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
