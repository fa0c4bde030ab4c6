"""What the service checks before a request reaches a route, as plain ASGI middleware.

A request is refused on its headers, before its body is read, when its Host is not this
machine's (tokenless loopback mode), its bearer token is missing or wrong, it names an unknown
model, its upload is too large or of unknown size, or the pool has no slot left; a stranger's
200 MiB upload thus costs the service nothing. An upload that stops arriving is cut off with a
408, and any error the code did not expect becomes a JSON 500 that names a request id, the
traceback going to the server log only. Every error body has one shape: `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cadx.serve.auth import token_matches
from cadx.serve.pool import InferencePool, PoolFullError

log = logging.getLogger("cadx.serve")
SLOT_KEY = "cadx_slot"  # where the admitted request's pool slot waits for the route


async def send_error(send: Send, status: int, message: str,
                     headers: dict[str, str] | None = None, *, close: bool = False) -> None:
    """Answer `{"error": message}` with `status`; `close` when the body is left unread (the
    server then closes the connection instead of draining the upload)."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class ErrorMiddleware:
    """Outermost: gives each request an id (the `X-Request-ID` response header) and turns an
    unexpected exception into `{"error": "internal error", "request_id": ...}` (500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = secrets.token_hex(6)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s %s failed", request_id, scope["method"], scope["path"])
            if not started:  # otherwise the server closes the half-sent response
                body = json.dumps({"error": "internal error", "request_id": request_id})
                await send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode())]})
                await send({"type": "http.response.body", "body": body.encode()})


class HostMiddleware:
    """Only requests whose Host header names one of `allowed_hosts` (no port) are served;
    others get a 400 (DNS rebinding: a foreign page pointing its own name at 127.0.0.1)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app, self.allowed = app, {h.lower() for h in allowed_hosts}

    def _allowed(self, host_header: str) -> bool:
        host = host_header.lower()
        if host.startswith("["):  # [::1]:8000
            host = host[: host.find("]") + 1]
        else:
            host = host.split(":")[0]
        return host in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(
                _header(scope, b"host") or ""):
            return await send_error(send, 400, "invalid host header: this service answers "
                                               "only requests addressed to this machine",
                                    close=True)
        await self.app(scope, receive, send)


class AdmissionMiddleware:
    """The header checks of /v1 requests and the body guards of uploads.

    On /v1: the bearer `token` (401). On POSTs: a Content-Length (411) of at most `max_bytes`
    (413). On `diagnose_path`: the `?model=` query parameter, if given, must name a loaded
    model (404), and the request takes a pool slot (503 with Retry-After when none is free),
    kept in the scope for the route and released when the request ends. While a body is read,
    a gap of more than `body_timeout_s` between its chunks ends the request with a 408.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_bytes: int, diagnose_path: str,
                 model_ids: Callable[[], list[str]], pool: InferencePool,
                 body_timeout_s: float) -> None:
        self.app, self.token, self.max_bytes = app, token, max_bytes
        self.diagnose_path, self.model_ids, self.pool = diagnose_path, model_ids, pool
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        has_body = method in ("POST", "PUT", "PATCH")
        if (path.startswith("/v1/") and self.token is not None
                and not token_matches(_header(scope, b"authorization"), self.token)):
            return await send_error(send, 401, "missing or wrong bearer token",
                                    {"WWW-Authenticate": "Bearer"}, close=has_body)
        if has_body:
            length = _header(scope, b"content-length")
            if length is None or not length.isdigit():
                return await send_error(send, 411, "the request needs a Content-Length header",
                                        close=True)
            if int(length) > self.max_bytes:
                return await send_error(send, 413, f"upload of {int(length) / 2**20:.1f} MiB "
                                        f"exceeds the limit of {self.max_bytes / 2**20:.0f} MiB",
                                        close=True)
        slot = None
        if method == "POST" and path == self.diagnose_path:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            model = query.get("model", [None])[0]
            if model is not None and model not in self.model_ids():
                return await send_error(send, 404, f"unknown model {model[:80]!r}; loaded: "
                                        f"{', '.join(self.model_ids())}", close=True)
            try:
                slot = self.pool.admit()
            except PoolFullError as exc:
                log.warning("diagnose refused before the upload: pool full")
                return await send_error(send, 503, str(exc),
                                        {"Retry-After": str(exc.retry_after_s)}, close=True)
            scope.setdefault("state", {})[SLOT_KEY] = slot
        try:
            if has_body:
                await self._with_body_timeout(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            if slot is not None:
                slot.release()

    async def _with_body_timeout(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_done = timed_out = response_started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                timed_out = True
                log.warning("%s %s: upload stalled for %g s; cut off", scope["method"],
                            scope["path"], self.body_timeout_s)
                if not response_started:
                    await send_error(send, 408, f"the upload stalled: no data for "
                                     f"{self.body_timeout_s:g} s", close=True)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out:  # the 408 is the answer; whatever the app says after it is dropped
                return
            response_started = True
            await send(message)

        await self.app(scope, timed_receive, guarded_send)
