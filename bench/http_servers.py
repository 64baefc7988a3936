"""Conformance and overhead of candidate ASGI HTTP servers, with http.server as the baseline.

    python bench/http_servers.py [--rounds 3] [--only uvicorn-h11,granian] [--skip-probes] [--skip-overhead]

One tiny raw ASGI app (``POST /invocations`` -> ``{"n": <body length>}``, ``GET /ping``, else 404)
runs under uvicorn (h11 and httptools), hypercorn (asyncio) and granian (ASGI), each in its own
subprocess (``--serve NAME --port N``, this file importing itself) on a free 127.0.0.1 port with
one worker; ``http.server.ThreadingHTTPServer`` with an equivalent minimal handler (Content-Length
bodies only, not serve/gateway.py) is the baseline. Raw-socket conformance probes (smuggling,
chunked bodies, pipelining, 100-continue, error bodies, header trickle, 1000 connections) print as
a matrix; overhead (30 KB body: p50/p99 on one keep-alive connection, requests/s over 32 keep-alive
connections) runs in rounds of alternating order and prints medians. Loopback only; prints, never
asserts. Packages that are missing skip their candidates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import select
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
IDLE_S = 0.8  # a probe's read ends after this long without data ("open")
CANDIDATES: dict[str, tuple[str, ...]] = {  # name -> modules it needs
    "stdlib": ("http.server",),
    "uvicorn-h11": ("uvicorn", "h11"),
    "uvicorn-httptools": ("uvicorn", "httptools"),
    "hypercorn": ("hypercorn", "h11"),
    "granian": ("granian",),
}
DISTRIBUTIONS = ("uvicorn", "h11", "httptools", "hypercorn", "granian")


# --- the app under test ----------------------------------------------------------------------------


async def _send_json(send: Callable[..., Any], status: int, payload: dict[str, Any]) -> None:
    """Send one complete JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Acknowledge lifespan startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Raw ASGI app: POST /invocations counts the body, GET /ping is healthy, anything else 404."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    route = (scope["method"], scope["path"])
    if route == ("POST", "/invocations"):
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        await _send_json(send, 200, {"n": size})
    elif route == ("GET", "/ping"):
        await _send_json(send, 200, {"status": "Healthy"})
    else:
        await _send_json(send, 404, {"error": "not found"})


class StdlibHandler(BaseHTTPRequestHandler):
    """The baseline: the same routes on http.server, keep-alive, Content-Length bodies only."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without it, 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """GET /ping, else 404."""
        self._reply(*((200, {"status": "Healthy"}) if self.path == "/ping" else (404, {"error": "not found"})))

    def do_POST(self) -> None:
        """POST /invocations: read Content-Length bytes and count them."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(*((200, {"n": len(body)}) if self.path == "/invocations" else (404, {"error": "not found"})))


# --- serving (the --serve side) --------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _serve_stdlib(port: int) -> None:
    server = ThreadingHTTPServer((HOST, port), StdlibHandler)
    server.daemon_threads = True
    server.serve_forever()


def _serve_uvicorn(port: int, http: str) -> None:
    """uvicorn with http="h11" or "httptools", plain asyncio loop, one process."""
    import uvicorn

    config = uvicorn.Config(app, host=HOST, port=port, http=http, loop="asyncio", ws="none", lifespan="on",
                            access_log=False, log_level="warning")  # fmt: skip
    uvicorn.Server(config).run()


def _serve_hypercorn(port: int) -> None:
    """hypercorn's asyncio worker, in this process (hypercorn.asyncio.serve)."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:{port}"]
    config.accesslog, config.errorlog, config.loglevel = None, "-", "WARNING"
    asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]


def _serve_granian(port: int) -> None:
    """granian, ASGI interface, 1 worker process with 1 runtime thread (2 cores here)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    sys.path.insert(0, str(ROOT))
    Granian("bench.http_servers:app", address=HOST, port=port, interface=Interfaces.ASGI, workers=1,
            runtime_threads=1, log_level=LogLevels.warning, working_dir=ROOT).serve()  # fmt: skip


def serve(name: str, port: int) -> None:
    """Run the app under one candidate on 127.0.0.1:port until killed (one process/worker)."""
    raise_nofile()
    if name == "stdlib":
        _serve_stdlib(port)
    elif name.startswith("uvicorn-"):
        _serve_uvicorn(port, name.removeprefix("uvicorn-"))
    elif name == "hypercorn":
        _serve_hypercorn(port)
    elif name == "granian":
        _serve_granian(port)


# --- managing server subprocesses ------------------------------------------------------------------


@dataclass
class ServerProc:
    """One candidate's server subprocess."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def available(name: str) -> str | None:
    """None when every module the candidate needs imports, else the missing one."""
    for module in CANDIDATES[name]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def start_server(name: str, logdir: Path) -> ServerProc:
    """Start a candidate and wait until GET /ping answers."""
    port = free_port()
    log = logdir / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", name, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProc(name, port, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            if exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", idle=0.3).statuses == [200]:
                return server
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"{name} did not answer /ping in 20 s: {log.read_text()[-2000:]}")


def stop_server(server: ServerProc) -> None:
    """Stop the subprocess and anything it started (its own session's process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


# --- raw HTTP/1.1 on sockets -----------------------------------------------------------------------


@dataclass
class Response:
    """One parsed response."""

    status: int
    headers: dict[str, str]
    body: bytes


def _parse_chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body from pos; None while incomplete."""
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", pos - 2)
            return (bytes(body), trailer_end + 4) if trailer_end >= 0 else None
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


def parse_one(data: bytes, pos: int = 0, eof: bool = False) -> tuple[Response, int] | None:
    """Parse the response starting at pos; None while incomplete. Raises ValueError on garbage."""
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        return None
    lines = data[pos:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if 100 <= status < 200 or status in (204, 304):
        return Response(status, headers, b""), start
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parsed = _parse_chunked(data, start)
        return None if parsed is None else (Response(status, headers, parsed[0]), parsed[1])
    if "content-length" in headers:
        stop = start + int(headers["content-length"])
        return (Response(status, headers, data[start:stop]), stop) if len(data) >= stop else None
    return (Response(status, headers, data[start:]), len(data)) if eof else None


def parse_all(data: bytes, eof: bool) -> tuple[list[Response], bytes]:
    """Every complete response in data, and what is left unparsed."""
    responses: list[Response] = []
    pos = 0
    while pos < len(data):
        try:
            parsed = parse_one(data, pos, eof)
        except (ValueError, IndexError):
            break
        if parsed is None:
            break
        responses.append(parsed[0])
        pos = parsed[1]
    return responses, data[pos:]


@dataclass
class Exchange:
    """What came back on one connection: the responses and how the connection ended."""

    responses: list[Response]
    end: str  # "close" (EOF), "reset" or "open" (still open after IDLE_S without data)
    leftover: bytes = b""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def describe(self) -> str:
        """E.g. '400+close', '200,404 open', 'no answer+reset'."""
        got = ",".join(map(str, self.statuses)) or "no answer"
        junk = "+junk" if self.leftover else ""
        return got + junk + {"close": "+close", "reset": "+reset", "open": " open"}[self.end]

    def junk_detail(self) -> str:
        """The first line of what did not parse as a response, if anything."""
        return f"unparsed: {self.leftover.splitlines()[0][:60]!r}" if self.leftover else ""


def read_until_quiet(sock: socket.socket, idle: float, cap: float) -> tuple[bytes, str]:
    """Read until EOF, reset, idle seconds without data or cap seconds in all."""
    return _read(sock, cap, idle, until=None)


def read_head(sock: socket.socket, cap: float) -> tuple[bytes, str]:
    """Read until a blank line (one response head), EOF, reset or cap seconds."""
    return _read(sock, cap, cap, until=b"\r\n\r\n")


def _read(sock: socket.socket, cap: float, idle: float, until: bytes | None) -> tuple[bytes, str]:
    """(what came, how it ended: "open", "close" or "reset") within ``cap`` seconds, waiting at
    most ``idle`` for each piece, stopping early once ``until`` has arrived."""
    buf = bytearray()
    deadline = time.monotonic() + cap
    while (until is None or until not in buf) and (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(min(idle, remaining))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(buf), "reset"
        if not chunk:
            return bytes(buf), "close"
        buf += chunk
    return bytes(buf), "open"


def exchange(port: int, payload: bytes, idle: float = IDLE_S, cap: float = 5.0) -> Exchange:
    """Send payload in one write on a fresh connection and collect whatever comes back."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        data, end = read_until_quiet(sock, idle, cap)
    responses, leftover = parse_all(data, eof=end != "open")
    return Exchange(responses, end, leftover)


def post(body: bytes, extra: bytes = b"") -> bytes:
    """A POST /invocations with a Content-Length body."""
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --- conformance probes ----------------------------------------------------------------------------


@dataclass
class Cell:
    """One matrix cell: what happened and the verdict (None: recorded, not graded)."""

    text: str
    ok: bool | None = None
    detail: str = ""


SMUGGLED = b"GET /models HTTP/1.1\r\nHost: x\r\n\r\n"
PING = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


def _one_400_closed(ex: Exchange) -> Cell:
    """PASS = exactly one 400 and the connection closed (what is behind never answered)."""
    text = ex.describe() + (" (read on!)" if len(ex.responses) > 1 else "")
    bodies = " | ".join(r.body.decode("latin-1")[:40] for r in ex.responses)
    return Cell(text, ex.statuses == [400] and ex.end != "open", f"bodies: {bodies} {ex.junk_detail()}".strip())


def probe_two_cl(port: int) -> Cell:
    """Two different Content-Length fields, a second request behind: RFC 9112 §6.3 wants 400 + close."""
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
    return _one_400_closed(exchange(port, head + b"hello" + SMUGGLED))


def probe_cl_te(port: int) -> Cell:
    """Content-Length and Transfer-Encoding: chunked with a request smuggled behind the chunked end."""
    rest = b"0\r\n\r\n" + SMUGGLED
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
    return _one_400_closed(exchange(port, head % len(rest) + rest))


def probe_chunked(port: int) -> Cell:
    """A chunked body in 3 chunks (12 bytes): PASS = 200 {"n": 12}."""
    chunks = b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n"
    ex = exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    body = ex.responses[0].body.decode("latin-1") if ex.responses else ""
    ok = ex.statuses == [200] and json.loads(body or "{}").get("n") == 12
    return Cell(f"{ex.describe()} {body}"[:40], ok, ex.junk_detail())


def probe_pipeline(port: int) -> Cell:
    """POST, GET /ping, POST in one write: PASS = three answers, in order."""
    ex = exchange(port, post(b"hello") + PING + post(b"abc"))
    bodies = [r.body for r in ex.responses]
    ok = bodies == [b'{"n":5}', b'{"status":"Healthy"}', b'{"n":3}']
    return Cell(ex.describe(), ok, ex.junk_detail())


def probe_expect(port: int) -> Cell:
    """Expect: 100-continue, the body sent only once the 100 arrives: PASS = 100 then 200."""
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(head)
        started = time.monotonic()
        first, end = read_head(sock, 2.0)
        waited = time.monotonic() - started
        got_100 = first.startswith(b"HTTP/1.1 100")
        if end == "open":
            sock.sendall(b"hello")
            rest, end = read_until_quiet(sock, IDLE_S, 5.0)
            first += rest
    ex = Exchange(parse_all(first, eof=end != "open")[0], end)
    note = f"100 after {waited * 1000:.0f} ms" if got_100 else "no 100 in 2 s, body sent anyway"
    return Cell(ex.describe(), got_100 and ex.statuses == [100, 200], note)


def probe_bad_line(port: int) -> Cell:
    """An invalid request line: record status, content type and the body's first line."""
    ex = exchange(port, b"NOT A REQUEST\r\n\r\n")
    if not ex.responses:
        return Cell(ex.describe(), None, ex.junk_detail())
    r = ex.responses[0]
    first = r.body.decode("latin-1").strip().splitlines()[0][:60] if r.body.strip() else "(empty body)"
    ctype = r.headers.get("content-type", "no content-type")
    return Cell(f"{ex.describe()} {ctype.split(';')[0]}", None, f"{r.status} {ctype!r} body: {first!r}")


def probe_ws_colon(port: int) -> Cell:
    """'Content-Length : 5' (whitespace before the colon): RFC 9112 §5.1 wants 400."""
    ex = exchange(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello")
    return Cell(ex.describe(), ex.statuses == [400])


def probe_obs_fold(port: int) -> Cell:
    """A folded header line (obs-fold): recorded; RFC 9112 §5.2 allows 400 or unfolding."""
    ex = exchange(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n")
    return Cell(ex.describe(), None, ex.junk_detail())


def _recorded(ex: Exchange) -> Cell:
    """An ungraded cell, with the response bodies as detail."""
    bodies = " | ".join(r.body.decode("latin-1")[:40] for r in ex.responses)
    return Cell(ex.describe(), None, f"bodies: {bodies} {ex.junk_detail()}".strip())


def probe_te_gzip(port: int) -> Cell:
    """Transfer-Encoding: gzip, chunked: recorded (RFC 9112 §6.1: SHOULD 501 + close)."""
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    return _recorded(exchange(port, head + b"5\r\nhello\r\n0\r\n\r\n"))


def probe_te_identity(port: int) -> Cell:
    """Transfer-Encoding: identity with a Content-Length, a GET /ping behind: recorded."""
    return _recorded(exchange(port, post(b"hello", b"Transfer-Encoding: identity\r\n") + PING))


def probe_trickle(port: int, limit_s: float) -> Cell:
    """Header trickle: one header byte a second; does the server ever close, and when."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Trickle: ")
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < limit_s:
            try:
                sock.sendall(b"a")
            except OSError:
                return Cell(f"closed@{elapsed:.0f}s (send failed)", None)
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                data, end = read_until_quiet(sock, IDLE_S, 3.0)
                statuses = ",".join(str(r.status) for r in parse_all(data, eof=True)[0]) or "no answer"
                return Cell(f"{statuses}+{end}@{time.monotonic() - started:.0f}s", None)
    return Cell(f"open@{limit_s:.0f}s", None)


def _open_many(port: int, count: int, deadline: float) -> tuple[list[socket.socket], int]:
    """Open count non-blocking connections at once; the connected ones and the number refused."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    failed = 0
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex((HOST, port)) not in (0, errno.EINPROGRESS):
            failed += 1
            sock.close()
            continue
        sel.register(sock, selectors.EVENT_WRITE)
        socks.append(sock)
    connected = []
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            sel.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):  # type: ignore[union-attr]
                failed += 1
                sock.close()  # type: ignore[union-attr]
            else:
                connected.append(sock)
    failed += len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return connected, failed  # type: ignore[return-value]


def _collect_many(socks: list[socket.socket], deadline: float) -> dict[str, int]:
    """Send GET /ping on every socket, then count answers, resets, EOFs and timeouts."""
    counts = {"ok": 0, "other": 0, "reset": 0, "eof": 0, "timeout": 0}
    sel = selectors.DefaultSelector()
    for sock in socks:
        try:
            sock.send(PING)
            sel.register(sock, selectors.EVENT_READ, bytearray())
        except OSError:
            counts["reset"] += 1
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            outcome = _read_ping(key.fileobj, key.data)  # type: ignore[arg-type]
            if outcome:
                counts[outcome] += 1
                sel.unregister(key.fileobj)
    counts["timeout"] += len(sel.get_map())
    sel.close()
    return counts


def _read_ping(sock: socket.socket, buf: bytearray) -> str | None:
    """One read on a ping connection: its outcome, or None while the answer is incomplete."""
    try:
        chunk = sock.recv(4096)
    except ConnectionResetError:
        return "reset"
    except BlockingIOError:
        return None
    buf += chunk
    with contextlib.suppress(ValueError, IndexError):
        parsed = parse_one(bytes(buf), 0, eof=not chunk)
        if parsed:
            return "ok" if parsed[0].status == 200 else "other"
    return None if chunk else "eof"


def probe_many(port: int, count: int = 1000) -> Cell:
    """count connections opened at once, then one GET /ping each: PASS = count answers, 0 resets."""
    started = time.monotonic()
    socks, refused = _open_many(port, count, started + 20)
    opened = time.monotonic() - started
    counts = _collect_many(socks, time.monotonic() + 20)
    for sock in socks:
        sock.close()
    took = time.monotonic() - started
    counts["reset"] += refused
    bad = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "ok")
    text = f"{counts['ok']} ok{', ' + bad if bad else ''} ({took:.1f}s)"
    return Cell(text, counts["ok"] == count and counts["reset"] == 0, f"all open after {opened:.2f}s")


PROBES: dict[str, Callable[[int], Cell]] = {
    "2x Content-Length + smuggled": probe_two_cl,
    "CL + TE:chunked + smuggled": probe_cl_te,
    "chunked body (3 chunks)": probe_chunked,
    "3 pipelined requests": probe_pipeline,
    "Expect: 100-continue": probe_expect,
    "invalid request line [rec]": probe_bad_line,
    "'Content-Length : 5'": probe_ws_colon,
    "obs-fold header [rec]": probe_obs_fold,
    "TE: gzip, chunked [rec]": probe_te_gzip,
    "TE: identity + CL [rec]": probe_te_identity,
    "1000 concurrent connections": probe_many,
}
TRICKLE = "header trickle 1 B/s [rec]"

# Where each library's header-read timeout lives (found in the installed source at run time).
TIMEOUT_SOURCES: dict[str, list[tuple[str, str]]] = {
    "stdlib": [("socketserver", r"^    timeout = None")],
    "uvicorn-h11": [("uvicorn.protocols.http.h11_impl", r"call_later\(self.timeout_keep_alive")],
    "uvicorn-httptools": [("uvicorn.protocols.http.httptools_impl", r"self.timeout_keep_alive, self")],
    "hypercorn": [
        ("hypercorn.config", r"keep_alive_timeout = "),
        ("hypercorn.asyncio.tcp_server", r"idle_task.restart\(task_group"),
        ("hypercorn.protocol.h11", r"Updated\(idle=False\)"),
        ("hypercorn.config", r"read_timeout: int"),
    ],
    "granian": [("granian.http", r"header_read_timeout: int =")],
}
TIMEOUT_NOTES = {
    "stdlib": "StreamRequestHandler.timeout (None = no limit)",
    "uvicorn-h11": "no header/body read timeout; Config.timeout_keep_alive (5 s) is armed only after a response",
    "uvicorn-httptools": "same as uvicorn-h11",
    "hypercorn": (
        "Config.keep_alive_timeout (5 s): the idle timer runs from connect until a request's headers parse,"
        " so it bounds header reads; Config.read_timeout (None = off) bounds each recv"
    ),
    "granian": "Granian(http1_settings=HTTP1Settings(header_read_timeout=ms)), default 30000 ms",
}


BACKLOG_SOURCES: dict[str, tuple[str, str]] = {  # default listen backlog (matters for 1000 connections)
    "stdlib": ("socketserver", r"request_queue_size = "),
    "uvicorn-h11": ("uvicorn.config", r"backlog: int = "),
    "uvicorn-httptools": ("uvicorn.config", r"backlog: int = "),
    "hypercorn": ("hypercorn.config", r"backlog = "),
    "granian": ("granian.server.common", r"backlog: int = "),
}


def source_ref(module: str, pattern: str) -> str:
    """'path:line: text' of the first line matching pattern in module's installed source."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return f"{module}: not found"
    path = Path(spec.origin)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.search(pattern, line):
            shown = str(path).split("site-packages/")[-1]
            return f"{shown}:{number}: {line.strip()}"
    return f"{path.name}: {pattern!r} not found"


# --- overhead --------------------------------------------------------------------------------------


class KeepAliveClient:
    """Sequential requests on one keep-alive connection; reconnects when the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.reconnects = 0

    def request(self, payload: bytes) -> int:
        """Send one request and return the response's status."""
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf.clear()
        self.sock.sendall(payload)
        while (parsed := parse_one(bytes(self.buf))) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed mid-response")
            self.buf += chunk
        response, used = parsed
        del self.buf[:used]
        if response.headers.get("connection", "").lower() == "close":
            self.close()
            self.reconnects += 1
        return response.status

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run_sequential(port: int, payload: bytes, count: int, warmup: int) -> tuple[float, float, int]:
    """p50 and p99 in ms over count requests after warmup, and the reconnections the server forced."""
    client = KeepAliveClient(port)
    for _ in range(warmup):
        client.request(payload)
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        if client.request(payload) != 200:
            raise RuntimeError("non-200 answer")
        times.append((time.perf_counter_ns() - started) / 1e6)
    client.close()
    cuts = statistics.quantiles(times, n=100)
    return statistics.median(times), cuts[98], client.reconnects


def _connect_and_send(port: int, payload: bytes, sel: selectors.BaseSelector) -> None:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(payload)
    sel.register(sock, selectors.EVENT_READ, bytearray())


def _on_readable(key: selectors.SelectorKey, port: int, payload: bytes, sel: selectors.BaseSelector) -> int:
    """Handle one readable connection; 1 when a response completed."""
    sock, buf = key.fileobj, key.data
    chunk = sock.recv(65536)  # type: ignore[union-attr]
    buf += chunk
    parsed = parse_one(bytes(buf)) if chunk else None
    if parsed is None and chunk:
        return 0
    if parsed is not None:
        del buf[: parsed[1]]
    if not chunk or parsed[0].headers.get("connection", "").lower() == "close":  # type: ignore[index]
        sel.unregister(sock)
        sock.close()  # type: ignore[union-attr]
        _connect_and_send(port, payload, sel)
    else:
        sock.sendall(payload)  # type: ignore[union-attr]
    return 0 if parsed is None else 1


def run_concurrent(port: int, payload: bytes, connections: int, duration: float) -> tuple[float, float]:
    """Requests/s with `connections` keep-alive connections driven by one selector loop, and the client's CPU share."""
    sel = selectors.DefaultSelector()
    for _ in range(connections):
        _connect_and_send(port, payload, sel)
    done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    end = started + duration
    while (now := time.perf_counter()) < end:
        for key, _ in sel.select(timeout=end - now):
            done += _on_readable(key, port, payload, sel)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return done / elapsed, cpu / elapsed


@dataclass
class Overhead:
    """One server's overhead samples, one per round."""

    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    reconnects: int = 0


def measure_overhead(servers: list[ServerProc], args: argparse.Namespace) -> dict[str, Overhead]:
    """Rounds in alternating order (forward, backward, ...); per round each server: sequential then concurrent."""
    payload = post(os.urandom(args.body_kb * 1024))
    results = {s.name: Overhead() for s in servers}
    for number in range(args.rounds):
        order = servers if number % 2 == 0 else servers[::-1]
        for server in order:
            p50, p99, reconnects = run_sequential(server.port, payload, args.requests, args.warmup)
            rps, client_cpu = run_concurrent(server.port, payload, args.connections, args.duration)
            result = results[server.name]
            result.p50.append(p50)
            result.p99.append(p99)
            result.rps.append(rps)
            result.reconnects += reconnects
            line = f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  {rps:7.0f} req/s (client CPU {client_cpu:4.0%})"
            print(f"  round {number + 1} {server.name:<18} {line}", flush=True)
    return results


# --- running and printing --------------------------------------------------------------------------


def run_probes(servers: list[ServerProc], trickle_s: float) -> dict[str, dict[str, Cell]]:
    """Every probe against every server; the header trickles run in the background meanwhile."""
    matrix: dict[str, dict[str, Cell]] = {name: {} for name in [*PROBES, TRICKLE]}
    threads = []
    for server in servers:

        def trickle(s: ServerProc = server) -> None:
            matrix[TRICKLE][s.name] = probe_trickle(s.port, trickle_s)

        threads.append(threading.Thread(target=trickle, daemon=True))
        threads[-1].start()
    for probe_name, probe in PROBES.items():
        for server in servers:
            try:
                matrix[probe_name][server.name] = probe(server.port)
            except Exception as error:  # a probe's crash is its result
                matrix[probe_name][server.name] = Cell(f"client error: {type(error).__name__}", False)
        print(".", end="", flush=True)
    for thread in threads:
        thread.join()
    print()
    return matrix


def print_matrix(matrix: dict[str, dict[str, Cell]], names: list[str]) -> None:
    """Rows = probe, columns = server; PASS/FAIL for graded rows, [rec] rows only recorded."""
    width = 25
    print(f"{'probe':<29}" + "".join(f"{n:<{width}}" for n in names))
    for probe_name, row in matrix.items():
        cells = []
        for name in names:
            cell = row.get(name, Cell("-"))
            mark = {True: "PASS ", False: "FAIL ", None: ""}[cell.ok]
            cells.append(f"{(mark + cell.text)[: width - 1]:<{width}}")
        print(f"{probe_name:<29}" + "".join(cells))
    print("Details (failures, error bodies, cut-off cells):")
    for probe_name, row in matrix.items():
        for name in names:
            cell = row.get(name)
            shown = cell and (cell.ok is False or probe_name.startswith("invalid") or len(cell.text) > width - 6)
            if cell and shown:
                print(f"  {probe_name} / {name}: {cell.text}{'; ' + cell.detail if cell.detail else ''}")


def print_timeouts(names: list[str]) -> None:
    """Name the header-read timeout setting of each library, with where it is in the source."""
    print("\nHeader-read timeout settings (installed source):")
    for name in names:
        print(f"  {name}: {TIMEOUT_NOTES[name]}")
        for module, pattern in TIMEOUT_SOURCES[name]:
            print(f"      {source_ref(module, pattern)[:110]}")


def print_backlogs(names: list[str]) -> None:
    """The default listen backlog of each server (its accept queue when 1000 connect at once)."""
    refs = []
    for name in names:
        ref = source_ref(*BACKLOG_SOURCES[name])
        number = re.search(r"= (\d+)", ref)
        refs.append(f"{name} {number.group(1) if number else '?'} ({ref.split(': ')[0].split('/')[-1]})")
    print("Default listen backlog: " + ", ".join(refs))


def print_summary(names: list[str], matrix: dict[str, dict[str, Cell]], overhead: dict[str, Overhead]) -> None:
    """One line per server: graded probes passed, median p50/p99/req/s, header trickle."""
    print(f"\n{'server':<20}{'probes passed':>14}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}  {'reconn.':>7}  trickle")
    for name in names:
        graded = [row[name].ok for row in matrix.values() if name in row and row[name].ok is not None]
        passed = f"{sum(bool(ok) for ok in graded)}/{len(graded)}" if graded else "-"
        numbers = f"{'-':>9}{'-':>9}{'-':>9}  {'-':>7}"
        if result := overhead.get(name):
            medians = (statistics.median(result.p50), statistics.median(result.p99), statistics.median(result.rps))
            numbers = f"{medians[0]:9.3f}{medians[1]:9.3f}{medians[2]:9.0f}  {result.reconnects:>7}"
        trickle = matrix.get(TRICKLE, {}).get(name, Cell("-")).text
        print(f"{name:<20}{passed:>14}{numbers}  {trickle}")


def print_versions() -> None:
    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs")
    for dist in DISTRIBUTIONS:
        try:
            print(f"  {dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"  {dist}: not installed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=list(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated candidates (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of concurrent load per round")
    parser.add_argument("--body-kb", type=int, default=30)
    parser.add_argument("--trickle-s", type=float, default=20.0)
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    return parser.parse_args()


def start_all(names: list[str], logdir: Path) -> list[ServerProc]:
    """Start every available candidate; say which are skipped and why."""
    servers = []
    for name in names:
        missing = available(name)
        if missing:
            print(f"skipped {name}: module {missing!r} is not installed")
            continue
        try:
            servers.append(start_server(name, logdir))
        except RuntimeError as error:
            print(f"skipped {name}: {error}")
    return servers


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    print_versions()
    print(f"RLIMIT_NOFILE raised to {raise_nofile()} (client; each server raises its own)")
    names = args.only.split(",") if args.only else list(CANDIDATES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="http-servers-") as logdir:
        servers = start_all(names, Path(logdir))
        try:
            live = [s.name for s in servers]
            matrix: dict[str, dict[str, Cell]] = {}
            if not args.skip_probes:
                print(f"\nConformance ({len(PROBES) + 1} probes; the header trickle runs meanwhile)")
                matrix = run_probes(servers, args.trickle_s)
                print_matrix(matrix, live)
                print_timeouts(live)
                print_backlogs(live)
            overhead: dict[str, Overhead] = {}
            if not args.skip_overhead:
                print(
                    f"\nOverhead: {args.body_kb} KB POST, {args.requests} sequential after {args.warmup} warm-up; "
                    f"{args.connections} connections x {args.duration:.0f} s; {args.rounds} rounds"
                )
                overhead = measure_overhead(servers, args)
            print("\nSummary (medians over rounds; reconn. = server-forced reconnections in sequential runs)")
            print_summary(live, matrix, overhead)
        finally:
            for server in servers:
                stop_server(server)
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
