"""Connection-level limits of the service: how many connections, how long each may idle.

uvicorn bounds an idle keep-alive connection (`timeout_keep_alive`) and, with
`limit_concurrency`, the requests it serves at once, but not a client that opens a connection
and sends its headers slowly or never (slowloris). The protocol here adds a deadline for a
request's headers and refuses connections beyond the limit as they arrive, both with the
service's JSON error shape; uvicorn's own plain-text 400 for a malformed request is given the
same shape. The upload body's own deadline is `guards.AdmissionMiddleware`'s.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cadx.errors import ConfigError


@dataclass(frozen=True)
class ConnectionLimits:
    """`max_connections` open at once (more are answered 503 and closed); `header_timeout_s`
    for a request's headers to arrive (408); `body_timeout_s` of silence while an upload is
    read (408); `keep_alive_s` an idle connection stays open between requests."""

    max_connections: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    keep_alive_s: int = 5

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max connections must be at least 1, got {self.max_connections}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise ConfigError(f"{name.removesuffix('_s').replace('_', ' ')} must be a "
                                  f"positive number of seconds, got {value}")

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for `uvicorn.run`."""
        # uvicorn's own limit stays as a backstop (it also counts running requests); this
        # protocol refuses the connection over the limit before uvicorn's check is reached.
        return {"http": guarded_protocol(self), "limit_concurrency": self.max_connections + 1,
                "timeout_keep_alive": self.keep_alive_s, "timeout_graceful_shutdown": 10}


def raw_error(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 `{"error": message}` response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class LingeringTransport:
    """A transport whose `close` first sends FIN and discards what the client still sends, for
    `linger_s` at most, before closing: closing a socket with unread input sends a reset,
    and the client's kernel then drops the refusal (401, 413, 503...) it has not read yet."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 linger_s: float = 2.0) -> None:
        self._transport, self._loop, self._linger_s = transport, loop, linger_s
        self._closing = False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._transport.is_closing() or not self._transport.can_write_eof():
            self._transport.close()
            return
        try:
            self._transport.write_eof()
            self._transport.resume_reading()  # to discard input: the client's FIN ends it
        except OSError:  # the client is gone already
            self._transport.close()
            return
        self._loop.call_later(self._linger_s, self._transport.close)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `limits`' connection cap and header deadline."""

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _header_timer: asyncio.TimerHandle | None = None
        _cycle_at_arm: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(LingeringTransport(transport, self.loop))  # type: ignore
            if len(self.connections) > limits.max_connections:  # this one included
                self._refuse(503, f"too many connections (at most {limits.max_connections}); "
                                  "retry later", {"retry-after": "1"})
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            if not self._refused and not self.transport.is_closing():  # else: lingering
                super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # the next request's headers: a new deadline
                self._arm_header_timer()

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, "malformed HTTP request")

        def _refuse(self, status: int, message: str,
                    headers: dict[str, str] | None = None) -> None:
            self._refused = True
            self._cancel_header_timer()
            if not self.transport.is_closing():
                self.transport.write(raw_error(status, message, headers))
                self.transport.close()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._cycle_at_arm = self.cycle
            self._header_timer = self.loop.call_later(limits.header_timeout_s,
                                                      self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            # A request that began since the timer was armed has its headers: nothing to do.
            if self.cycle is not self._cycle_at_arm or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.conn.trailing_data[0]:
                # An idle keep-alive connection: closed without a word, as uvicorn does, so
                # that a client reusing it does not take a 408 for its next request's answer.
                self._refused = True
                self.transport.close()
                return
            self._refuse(408, f"the request's headers did not arrive within "
                              f"{limits.header_timeout_s:g} s")

    return GuardedH11Protocol
