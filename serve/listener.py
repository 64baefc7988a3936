"""The serving port's HTTP server: uvicorn (h11), with the gateway as its application.

uvicorn is the maintained server; h11 parses HTTP/1.1 strictly (it refuses differing
``Content-Length`` headers, bad header lines and missing ``Host``; it bounds the request head),
and answers pipelined requests in order. ``bench/http_servers.py`` measured it against the
alternatives (the choice and the figures: constraints.txt, docs/serving.md). Three things it
does not do the way an endpoint must are changed here, in ``GatewayProtocol``:

- a malformed request gets uvicorn's plain-text 400; here it is our one-line JSON error;
- a client may take as long as it likes to send a request's head, one byte at a time,
  holding its connection; here a head must be complete within ``SERVE_HEADER_TIMEOUT``
  seconds of its first byte, or the connection gets 408 and is closed; an idle kept-alive
  connection is closed after the timeout (``SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS``, 60 s),
  longer than common clients' own idle limits, so that the client closes first;
- connections over ``SERVE_MAX_CONNECTIONS`` get a 503 with ``Retry-After`` at once, rather
  than uvicorn's ``limit_concurrency`` answer (plain text, no ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve import codecs, logs
from serve.gateway import escaped
from serve.settings import Settings

log = logging.getLogger("serve.listener")
HEAD_LIMIT = 64 * 1024  # h11 refuses a request head over this; the gateway answers 431 above 16 KB
BACKLOG = 4096  # connections the kernel queues before they are accepted: a burst of callers waits, not refused


def _error(status: int, reason: str, retry_after: bool = False) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection."""
    body = codecs.encode_error(status, reason).encode()
    phrase = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}[status]
    extra = "Retry-After: 1\r\n" if retry_after else ""
    head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "Connection: close\r\n\r\n").encode() + body


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol, with a header deadline, a connection cap and JSON errors."""

    settings: Settings  # set by ``protocol_for``

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_timer: asyncio.TimerHandle | None = None
        self.waiting_idle = False  # the timer is the idle one (no byte of the next request yet)
        self.parse_error = ""  # h11's reason for the last request it could not parse
        next_event = self.conn.next_event

        def remembering_next_event():
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self.parse_error = str(exc)
                raise

        self.conn.next_event = remembering_next_event

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            log.warning("%d open connections: a new one gets 503 (SERVE_MAX_CONNECTIONS)", len(self.connections) - 1)
            transport.write(_error(503, "too many connections; try again", retry_after=True))
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.waiting_idle and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer(idle=False)  # a new request has begun: its head has the shorter limit
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a request head arrived
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # for the next request on this connection

    def connection_lost(self, exc) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: our JSON answer, then the connection closes; the access
        line shows the offending line (as Python writes bytes: escapes stay escaped), or h11's reason."""
        with contextlib.suppress(RuntimeError):
            self.transport.write(_error(400, "the request is not valid HTTP/1.1"))
        self.transport.close()
        quoted = re.search(r"bytearray\(b(['\"])(.*)\1\)", self.parse_error)
        line = quoted.group(2) if quoted else self.parse_error or msg
        logs.access_log.info('%s "%s" 400 0', (self.client or ("-",))[0], escaped(line))

    def _arm_head_timer(self, idle: bool = True) -> None:
        """Wait for a request: idle (``idle``: the timeout, then a silent close), or for the
        rest of a head that has begun (``SERVE_HEADER_TIMEOUT``, then 408)."""
        self._disarm_head_timer()
        self.waiting_idle = idle
        seconds = self.settings.timeout_seconds if idle else self.settings.header_timeout
        self.head_timer = self.loop.call_later(seconds, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if getattr(self, "head_timer", None) is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: the gateway bounds its body's time
        started = bool(self.conn.trailing_data[0]) or self.conn.their_state is not h11.IDLE
        if started and not self.transport.is_closing():
            reason = f"the request head did not arrive within {self.settings.header_timeout} s"
            self.transport.write(_error(408, reason))
        self.transport.close()


def protocol_for(settings: Settings) -> type[GatewayProtocol]:
    """``GatewayProtocol`` bound to these settings."""
    return type("BoundGatewayProtocol", (GatewayProtocol,), {"settings": settings})


def bind(port: int) -> socket.socket:
    """The serving socket on every interface (bound while ``serve`` may still be root).

    Its protocol is named (IPPROTO_TCP), not left 0: asyncio turns Nagle's algorithm off only
    on sockets that say they are TCP, and with it on, an answer's body (a second write, after
    its head) waits for the client's delayed ACK: 40 ms on every request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


class Listener(uvicorn.Server):
    """uvicorn's server on our socket; ``serve.server`` handles the signals (``stop``)."""

    def __init__(self, app, settings: Settings, grace: float):
        config = uvicorn.Config(
            app, http=protocol_for(settings), lifespan="off", access_log=False, log_config=None,
            server_header=False, timeout_keep_alive=settings.timeout_seconds, backlog=BACKLOG,
            h11_max_incomplete_event_size=HEAD_LIMIT, timeout_graceful_shutdown=grace, ws="none",
        )  # fmt: skip
        super().__init__(config)

    @contextlib.contextmanager
    def capture_signals(self):
        yield  # serve.server's own handlers call stop(); uvicorn's would re-raise the signal at exit

    def stop(self) -> None:
        """Stop accepting, finish the requests in flight (up to the grace), then return from ``run``."""
        self.should_exit = True
