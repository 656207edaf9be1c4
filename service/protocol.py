"""The HTTP connection protocol ``dapsearch serve`` runs: uvicorn's, with a deadline for the head.

uvicorn's keep-alive timeout only covers idle time between requests and restarts with every
byte received, so a client trickling a request head one byte at a time holds a connection (and
its slot) for ever (slowloris). These protocols give each request head a fixed time from the
connection's start, or from the end of the previous response, and close the connection when
it is not complete by then. Bodies are not bounded in time here: uploads may be large and slow.

Nor does either parser bound a head's size: a header value of 64 MiB held the event loop for
seconds, stalling every other client. A head (request line and headers) longer than
``head_max_bytes`` is answered 431 and the connection closed, before the parser sees the excess.

The parser is httptools (llhttp, in C) where it is installed, which is what a small request
costs most of in Python; h11 (pure Python) otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import envelope

Parser = Literal["auto", "httptools", "h11"]


HEAD_END = b"\r\n\r\n"


def _too_large_reply(limit: int) -> bytes:
    """The 431 in the service's error envelope, closing the connection (written here, below the
    app: the head never reaches it)."""
    body = bytes(
        envelope(431, f"the request line and headers exceed {limit} bytes (DAPSEARCH_MAX_HEAD_BYTES)").body
    )
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _HeadDeadline:
    """What both protocols share while the connection waits for a request head: the timer, armed
    meanwhile, and the count of the head's bytes."""

    head_timeout_s = 10.0
    head_max_bytes = 65_536
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    logger: Any
    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_tail = b""  # the last bytes seen, for a head end split across two reads

    def _arm(self) -> None:
        self._disarm()
        self._head_bytes, self._head_tail = 0, b""
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_too_large(self, data: bytes) -> bool:
        """Counts ``data`` toward the awaited head; True, with a 431 sent and the connection
        closing, once the head is over the limit. Bytes after the head's end are not counted."""
        if self._head_timer is None or self.transport.is_closing():
            return False
        seen = self._head_tail + data
        end = seen.find(HEAD_END)
        self._head_bytes += len(data) if end < 0 else max(0, end + len(HEAD_END) - len(self._head_tail))
        self._head_tail = seen[-(len(HEAD_END) - 1) :]
        if self._head_bytes <= self.head_max_bytes:
            return False
        self._disarm()
        self.logger.info("closing a connection: request head over %d bytes", self.head_max_bytes)
        self.transport.write(_too_large_reply(self.head_max_bytes))
        self.transport.close()
        return True

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.info("closing a connection: no complete request head in %g s", self.head_timeout_s)
            self.transport.close()

    def _waiting_for_head(self) -> bool:
        return True


class HeadDeadlineProtocol(_HeadDeadline, H11Protocol):
    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._head_too_large(data):
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head arrived: the request is under way
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's head gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _httptools_protocol() -> type[Any]:
    """Defined on demand: the module imports httptools, which is optional."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeadDeadlineProtocol(_HeadDeadline, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._head_too_large(data):
                super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()  # a head arrived: the request is under way
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # the next head is already here: nothing to wait for
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HttpToolsHeadDeadlineProtocol


def head_deadline_protocol(seconds: float, parser: Parser, max_bytes: int) -> type[Any]:
    """The protocol class with this deadline and head size (uvicorn takes a class, not an
    instance); ``auto`` is httptools where it is installed."""
    if parser == "auto":
        parser = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    base = _httptools_protocol() if parser == "httptools" else HeadDeadlineProtocol
    return type(base.__name__, (base,), {"head_timeout_s": seconds, "head_max_bytes": max_bytes})
