"""The serving port: the only socket of the container on the network.

SageMaker talks to this gateway. On a single-model endpoint it hands requests to MMS's Python
workers itself (``serve.workers``); on a multi-model one MMS listens on Unix sockets behind it
(``serve.mms``). It answers ``/ping`` itself, truthfully, and passes on the few routes
SageMaker uses:

| mode | route | goes to |
|---|---|---|
| both | ``GET /ping`` | 200 only while every model's workers are running (and, single, the model is loaded) |
| single | ``POST /invocations`` | a model worker (``serve.workers``) |
| single | ``GET /execution-parameters`` | answered here: batch transform's defaults (``execution_parameters``) |
| multi | ``POST /models/<name>/invoke`` | MMS inference |
| multi | ``GET /models``, ``GET /models/<name>``, ``DELETE /models/<name>`` | MMS management |
| multi | ``POST /models`` ``{"model_name", "url"}`` | checked and staged (``ModelRegistry``), then MMS |

Anything else is a 404 (405 for a known path with another method) with a one-line JSON body;
so are the workers' and MMS's own errors, reworded. Each request has bounded costs: headers (431), body size
(413 before it is read), idle time, open connections, and bodies held at once. Each request
but ``/ping`` gets an access line, written once its answer is sent (``log_access``).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import re
import shutil
import socketserver
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import model_artifact
from serve import codecs, logs, mms, workers
from serve.settings import Settings

log = logging.getLogger("serve.gateway")
MAX_HEADER_BYTES = 16384
DRAIN_BYTES = 64 << 20  # an oversize body up to this size is read (and dropped) before the 413
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
TRANSFORM_PAYLOAD_MB = 100  # batch transform's ceiling for MaxPayloadInMB, and for it times MaxConcurrentTransforms


def execution_parameters(settings: Settings) -> dict:
    """What batch transform asks once before a job (``GET /execution-parameters``) when the job
    leaves these unset: mini-batches of lines up to our payload limit, and as many requests at
    once as there are model workers, within batch transform's 100 MB for both together."""
    payload_mb = min(settings.max_payload_mb, TRANSFORM_PAYLOAD_MB)
    concurrency = max(1, min(settings.workers, settings.max_inflight, TRANSFORM_PAYLOAD_MB // payload_mb))
    return {"MaxConcurrentTransforms": concurrency, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": payload_mb}


class Refused(Exception):
    """A request answered by the gateway itself: HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def error_body(status: int, reason: str) -> bytes:
    """The one-line JSON error body, as the handler writes it."""
    return codecs.encode_error(status, reason).encode()


def escaped(text: str, limit: int = 300) -> str:
    """``text`` shortened, control and non-ASCII characters escaped as in JSON: a client's
    request line or path cannot write terminal escapes or fake lines into the log."""
    return json.dumps(text[:limit])[1:-1]


def header_value(text: str, default: str) -> str:
    """``text`` if it can be a header's value (printable ASCII: no line break), else ``default``."""
    return text if text and text.isascii() and text.isprintable() else default


def one_line(text: str, limit: int = 300) -> str:
    """The first line of ``text``, shortened."""
    lines = str(text).strip().splitlines()
    return (lines[0] if lines else "")[:limit]


class ModelRegistry:
    """Multi-model mode: a model SageMaker registers must be a folder under the models root;
    only its artifact files are copied (``model_artifact.copy_files``) into a private folder,
    and MMS loads that copy. No URL is ever fetched, no handler or option is passed on."""

    def __init__(self, root: Path, staging: Path, management: Path, timeout: float):
        self.root, self.staging, self.management, self.timeout = root, staging, management, timeout
        self.sources: dict[str, str] = {}  # model name -> the url SageMaker registered

    def register(self, body: bytes) -> tuple[int, dict]:
        """Check, stage and load the model of a ``POST /models`` body."""
        name, url = self._parse(body)
        staged = self.staging / name
        try:
            source = Path(url).resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused(404, f"model folder {url!r} not found") from None
        root = self.root.resolve()
        if root not in source.parents or not source.is_dir():
            raise Refused(400, f"url must be a model folder under {root}, got {url!r}")
        try:
            model_artifact.copy_files(source, staged)
        except FileExistsError:
            raise Refused(409, f"model {name!r} is already registered") from None
        except model_artifact.ArtifactError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise Refused(400, one_line(exc)) from None
        status, answer = mms.call(self.management, "POST", "/models", self.timeout, url=str(staged), model_name=name)
        if status == 200:
            self.sources[name] = url
        else:
            shutil.rmtree(staged, ignore_errors=True)
        return status, answer

    def describe(self, name: str | None = None) -> tuple[int, dict]:
        """MMS's list (or one model's description), with the urls SageMaker registered."""
        status, answer = mms.call(self.management, "GET", f"/models/{name}" if name else "/models", self.timeout)
        for model in answer.get("models", [answer]) if status == 200 else []:
            if isinstance(model, dict) and model.get("modelName") in self.sources:
                model["modelUrl"] = self.sources[model["modelName"]]
        return status, answer

    def unregister(self, name: str) -> tuple[int, dict]:
        """Unload a model and delete its staged copy."""
        status, answer = mms.call(self.management, "DELETE", f"/models/{name}", self.timeout)
        if status == 200:
            shutil.rmtree(self.staging / name, ignore_errors=True)
            self.sources.pop(name, None)
        return status, answer

    @staticmethod
    def _parse(body: bytes) -> tuple[str, str]:
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            raise Refused(400, 'a registration is a JSON body {"model_name": ..., "url": ...}') from None
        if not isinstance(request, dict) or set(request) - {"model_name", "url"}:
            extra = sorted(set(request) - {"model_name", "url"}) if isinstance(request, dict) else []
            raise Refused(400, f"a registration takes model_name and url only{f', not {extra}' if extra else ''}")
        name, url = request.get("model_name"), request.get("url")
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise Refused(400, "model_name must be 1-255 letters, digits, '_', '.' or '-'")
        if not isinstance(url, str) or not url.startswith("/"):
            raise Refused(400, "url must be the absolute path of a local model folder")
        return name, url


class Gateway(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server with a cap on open connections and on bodies held at once."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, settings: Settings, sockets: Path, registry: ModelRegistry | None, pool: workers.WorkerPool | None = None
    ):
        self.settings, self.registry, self.pool = settings, registry, pool
        self.inference, self.management = mms.inference_socket(sockets), mms.management_socket(sockets)
        self.inflight = threading.BoundedSemaphore(settings.max_inflight)
        self.active, self.lock = 0, threading.Lock()
        super().__init__(("0.0.0.0", settings.port), Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version does a reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self.lock:
            if self.active >= self.settings.max_connections:
                self.shutdown_request(request)
                return
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.active -= 1

    def handle_error(self, request, client_address) -> None:
        import sys

        log.warning("connection from %s ended: %s", client_address[0], one_line(repr(sys.exc_info()[1])))


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes one connection's requests (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a body larger than wbufsize is a second write: no 40 ms delayed-ACK stall
    wbufsize = 1 << 16  # status line, headers and body leave in one write (``reply`` flushes)
    server_version = "serve"
    sys_version = ""
    server: Gateway

    def setup(self) -> None:
        self.timeout = self.server.settings.timeout_seconds  # idle limit while reading a request
        self.upstream: dict[Path, mms.UnixHTTPConnection] = {}
        super().setup()

    def parse_request(self) -> bool:
        self.started = time.perf_counter()  # the request line is in; the access line's duration starts
        return super().parse_request()

    def do_GET(self) -> None:
        self.route()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = do_GET

    def route(self) -> None:
        self.body_read = False
        try:
            if sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_HEADER_BYTES:
                raise Refused(431, f"request headers over {MAX_HEADER_BYTES} bytes")
            try:
                path = urlsplit(self.path).path
            except ValueError:  # "http://[/" and the like
                raise Refused(400, "the request target is not a valid path") from None
            self.dispatch(path)
        except Refused as refused:
            if not self.body_read and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # its unread body must not be taken for the next request
            path = escaped(self.path, 100)  # the reply ends this request's fields (log_access)
            self.reply(refused.status, error_body(refused.status, refused.reason), reason=refused.reason)
            log.info("%s %s refused with %d: %s", self.command, path, refused.status, escaped(refused.reason))
        except Exception:
            log.exception("gateway error on %s %s", self.command, escaped(self.path, 100))
            self.close_connection = True
            self.reply(500, error_body(500, "internal error; see the endpoint's log"))

    def dispatch(self, path: str) -> None:
        parts = path.split("/")[1:]
        method, registry = self.command, self.server.registry
        if parts == ["ping"]:
            self.allow("GET", "HEAD")
            return self.ping()
        if registry is None and parts == ["invocations"]:
            self.allow("POST")
            return self.forward("/invocations")
        if registry is None and parts == ["execution-parameters"]:
            self.allow("GET", "HEAD")
            return self.reply(200, json.dumps(execution_parameters(self.server.settings)).encode())
        if registry is not None and parts[:1] == ["models"] and len(parts) <= 3:
            name = parts[1] if len(parts) > 1 else None
            if name is not None and not MODEL_NAME.fullmatch(name):
                raise Refused(404, "no such model")
            if len(parts) == 3 and parts[2] == "invoke":
                self.allow("POST")
                return self.forward(f"/models/{name}/invoke")
            if len(parts) == 1:
                self.allow("GET", "POST")
                if method == "POST":
                    return self.relay(*registry.register(self.body()))
                return self.relay(*registry.describe())
            if len(parts) == 2:
                self.allow("GET", "DELETE")
                if method == "DELETE":
                    return self.relay(*registry.unregister(name))
                return self.relay(*registry.describe(name))
        routes = "/ping, /execution-parameters and /invocations" if registry is None else "/ping and /models"
        raise Refused(404, f"no such endpoint: {method} {path[:100]}; this endpoint serves {routes}")

    def allow(self, *methods: str) -> None:
        if self.command not in methods:
            raise Refused(405, f"{self.command} is not allowed here; use {' or '.join(methods)}")

    def body(self) -> bytes:
        """The request body, refused before it is read when it is over the payload limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise Refused(411, "send the body with a Content-Length")
        raw = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw.isdigit() or len(raw) > 15:
            self.close_connection = True
            raise Refused(400, "Content-Length is not a number of bytes")
        limit = self.server.settings.max_payload_mb * 1024 * 1024
        if int(raw) > limit:
            self.close_connection = True
            self.discard(int(raw))
            raise Refused(
                413, f"request body of {raw} bytes is over the {limit}-byte limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
            )
        data = self.rfile.read(int(raw))
        self.body_read = True
        if len(data) < int(raw):
            self.close_connection = True
            raise Refused(400, "the request body ended early")
        return data

    def discard(self, length: int) -> None:
        """Read and drop an oversize body (up to ``DRAIN_BYTES``), so that the client, still
        sending, gets the 413 rather than a broken pipe; larger ones are cut off."""
        if length > DRAIN_BYTES:
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                return
            length -= len(chunk)

    def forward(self, url: str) -> None:
        """Pass the request to a worker (single model) or to MMS's ``url`` (multi-model), with
        the bodies held at once bounded, and relay the answer."""
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind in FORM_TYPES:  # MMS's own form decoders would fail on them with a 500 echoing the body
            self.close_connection = True
            raise Refused(415, f"unsupported content type {kind!r}; send an image, application/json or jsonlines")
        if not self.server.inflight.acquire(timeout=self.server.settings.timeout_seconds):
            raise Refused(503, "the server is busy; try again")
        try:
            body = self.body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_FORWARDED}
            if self.server.pool is not None:
                answer = self.ask_worker(headers, body)
            else:
                response, data = self.exchange(self.server.inference, url, body, headers)
                content_type = response.getheader("Content-Type", "application/json")
                answer = workers.Reply(response.status, response.reason, content_type, data)
        finally:
            self.server.inflight.release()
        if answer.status < 400:  # a script's output_fn chooses the type: it must be a valid header
            return self.reply(answer.status, answer.body, header_value(answer.content_type, "application/json"))
        self.relay(answer.status, mms.parse(answer.body), answer.phrase)

    def ask_worker(self, headers: dict, body: bytes) -> workers.Reply:
        """A single-model endpoint's answer, from the next free model worker."""
        try:
            return self.server.pool.predict(headers, body, self.headers.get("Content-Type", ""))
        except workers.WorkerError as exc:  # a failure's reason is in the log (serve.workers), not for the client
            reason = "the model worker failed; see the endpoint's log" if exc.status == 500 else str(exc)
            raise Refused(exc.status, reason) from None

    def exchange(self, socket: Path, url: str, body: bytes, headers: dict) -> tuple[http.client.HTTPResponse, bytes]:
        """One request to MMS on this client connection's own MMS connection (kept alive: a new
        one per request costs about a millisecond); a kept one that MMS closed is replaced once."""
        kept = self.upstream.pop(socket, None)
        if kept is not None:
            try:
                return self._send(kept, socket, url, body, headers)
            except (OSError, http.client.HTTPException):
                kept.close()
        connection = mms.UnixHTTPConnection(socket, self.server.settings.timeout_seconds + 10)
        try:
            return self._send(connection, socket, url, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise Refused(503, f"the model server is not available ({type(exc).__name__})") from None

    def _send(self, connection, socket: Path, url: str, body: bytes, headers: dict):
        connection.request(self.command, url, body, headers)
        response = connection.getresponse()
        data = response.read()
        if response.will_close:
            connection.close()
        else:
            self.upstream[socket] = connection
        return response, data

    def finish(self) -> None:
        for connection in self.upstream.values():
            connection.close()
        super().finish()

    def relay(self, status: int, answer: dict, reason: str | None = None) -> None:
        """An MMS answer: success as it is, errors as our one-line JSON."""
        if status < 400:
            return self.reply(status, json.dumps(answer).encode())
        if set(answer) == {"error", "status"}:  # already ours (the handler's)
            message = str(answer["error"])
        else:
            message = one_line(answer.get("message") or reason or http.client.responses.get(status, "error"))
        self.reply(status, error_body(status, message), reason=message)

    def ping(self) -> None:
        healthy = self.healthy()
        body = json.dumps({"status": "Healthy" if healthy else "Unhealthy"}).encode()
        self.reply(200 if healthy else 503, body)

    def healthy(self) -> bool:
        """Single model: every worker loaded and running. Multi-model: MMS's own verdict (it
        answers 200 even when "Unhealthy": all workers of every model running, else not)."""
        if self.server.pool is not None:
            return self.server.pool.healthy()
        try:
            status, answer = mms.call(self.server.inference, "GET", "/ping", 5)
            return status == 200 and answer.get("status") == "Healthy"
        except (OSError, http.client.HTTPException, AttributeError):
            return False

    def reply(self, status: int, body: bytes, content_type: str = "application/json", reason: str | None = None):
        phrase = codecs.reason_phrase(reason or "") or None
        self.send_response(status, phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client left: nobody to answer, not our error
        finally:
            self.log_access(status)

    def log_access(self, status: int) -> None:
        """The access line of an answered request (none for a health check): client, request
        line (escaped, shortened), status, milliseconds. Written after the answer is sent (or
        failed to send), off the request's path: MMS's line, which this replaces, came before
        it. Then the request's fields are cleared, so that a malformed next request on the
        connection (which never reaches ``parse_request``) is not logged with this one's."""
        path, command = getattr(self, "path", "").partition("?")[0], getattr(self, "command", "")
        if not (path == "/ping" and command in ("GET", "HEAD")):
            now = time.perf_counter()
            took = (now - (getattr(self, "started", None) or now)) * 1000
            line = escaped(getattr(self, "requestline", ""))
            logs.access_log.info('%s "%s" %d %.0f', self.client_address[0], line, status, took)
        self.path, self.requestline, self.started = "", "", None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, too many headers): one-line JSON, then close."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # an unparsable request line leaves "HTTP/0.9": no status line
        reason = message or http.client.responses.get(code, "error")
        with contextlib.suppress(OSError):
            self.reply(code, error_body(code, one_line(reason)), reason=reason)

    def log_message(self, format: str, *args) -> None:  # log_access writes the access line
        pass
