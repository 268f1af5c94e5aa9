"""The gate every request passes before the app: request id, Host, token, size, admission, log.

Pure ASGI middleware rather than FastAPI dependencies, because dependencies run after FastAPI
has read the whole multipart body: here a refused request costs no body at all. In order:

1. Host: a service without a token answers only requests addressed to a loopback name, so a web
   page the user opens cannot reach it through DNS rebinding (its Host would be the page's name).
2. Token: with one, every request (even /healthz and /docs) must carry
   ``Authorization: Bearer <token>``; compared with hmac.compare_digest (no timing leak). 401.
3. Size: a Content-Length over the limit gets 413 before a byte of the body is read; a body
   without one (chunked) or longer than it said is counted while it streams, and the request
   ends with 413 as soon as it passes the limit.
4. Admission: an analysis request takes a place in the pool (engine.service.pool) or gets 503
   with Retry-After.

The log gets one line per request: id, method, route, status, bytes received, milliseconds.
Never the query string, a header, a file name or any content: those can name a patient. A path
that is not one of the service's routes is logged as ``-`` for the same reason.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.service.pool import WorkerPool
from engine.service.settings import is_loopback

log = logging.getLogger("lantern.service")
ANALYSIS_ROUTES = frozenset({"/classify", "/classify/batch", "/explain"})
LOGGED_ROUTES = ANALYSIS_ROUTES | {"/healthz", "/model", "/docs", "/openapi.json"}
LOGGED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID_HEADER = b"x-request-id"


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; FastAPI passes an
    HTTPException raised while it reads a body through as it is, so the client gets 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"the upload is larger than this service accepts ({_size(limit)}); "
                              "the limit is set with --max-upload-mb")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


def _host_name(value: str) -> str:
    """The name in a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class ServiceGate:
    def __init__(self, app: ASGIApp, *, pool: WorkerPool, max_body: int, token: str | None):
        self.app, self.pool, self.max_body = app, pool, max_body
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id
        started, status, received = time.perf_counter(), [0], [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    raise UploadTooLarge(self.max_body)
            return message

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
            holds_place = scope["method"] == "POST" and scope["path"] in ANALYSIS_ROUTES
            if holds_place and not self.pool.try_admit():
                await _json(503, "every worker is busy and the queue is full; try again shortly",
                            {"Retry-After": str(self.pool.retry_after_s())})(scope, receive, send_with_id)
                return
            try:
                await self.app(scope, counted_receive, send_with_id)
            except UploadTooLarge as exc:  # only if the app let it through before answering
                if not status[0]:
                    await _json(413, exc.detail)(scope, receive, send_with_id)
            finally:
                if holds_place:
                    self.pool.release()
        finally:
            method = scope["method"] if scope["method"] in LOGGED_METHODS else "-"
            route = scope["path"] if scope["path"] in LOGGED_ROUTES else "-"
            log.info("request %s %s %s status %s, %d bytes in, %.1f ms", request_id, method, route,
                     status[0] or "none (client gone)", received[0], (time.perf_counter() - started) * 1000)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = {}
        for name, value in scope["headers"]:  # the last one wins, as in starlette.Headers
            headers[name.decode("latin-1")] = value.decode("latin-1")
        if self.token is None:
            host = headers.get("host")
            if host is not None and not is_loopback(_host_name(host)):
                return _json(421, "this service listens on loopback only and answers only requests addressed to "
                                  "127.0.0.1, localhost or ::1")
        else:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self.token)
            if not ok:
                return _json(401, "this service needs a token: send 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": 'Bearer realm="lantern"'})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _json(400, "the Content-Length header is not a number")
            if int(length) > self.max_body:
                return _json(413, UploadTooLarge(self.max_body).detail)
        return None


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
