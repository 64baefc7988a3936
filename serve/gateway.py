"""The serving port's application (ASGI): routes, request limits, admission, answers.

``serve.listener`` runs it on uvicorn, the only socket of the container on the network. It
answers ``/ping`` itself, truthfully, and passes requests to the models' worker pools
(``serve.registry``, ``serve.workers``):

| mode | route | goes to |
|---|---|---|
| both | ``GET /ping`` | 200 only while every model's workers are loaded and running |
| single | ``POST /invocations`` | the model's queue |
| single | ``GET /execution-parameters`` | answered here: batch transform's defaults (``execution_parameters``) |
| multi | ``POST /models/<name>/invoke`` | that model's queue |
| multi | ``GET /models`` (paginated), ``GET /models/<name>``, ``DELETE /models/<name>`` | the registry |
| multi | ``POST /models`` ``{"model_name", "url"}`` | checked, staged and loaded (``Registry.register``) |

Anything else is a 404 (405 for a known path with another method) with a one-line JSON body;
so are the workers' errors. Each request has bounded costs: headers (431; the listener bounds
their size and time), body size (413, before it is read when its length is declared), body
time, and admission: at most ``SERVE_MAX_QUEUE`` requests and ``SERVE_MAX_QUEUE_MB`` of bodies
at once, beyond which a request gets 503 with ``Retry-After``. Framing that RFC 9112 calls
unrecoverable (``Content-Length`` with ``Transfer-Encoding``, differing lengths) is a 400 and
the connection is closed. Each request but ``/ping`` gets an access line, written once its
answer is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

from serve import codecs, logs, workers
from serve.codecs import first_line
from serve.mms import Job, Reply, parse
from serve.registry import PAGE_LIMIT, Registry, RegistryError
from serve.settings import TRANSFORM_PAYLOAD_MB, Settings

log = logging.getLogger("serve.gateway")
MAX_HEADER_BYTES = 16384
DRAIN_BYTES = 64 << 20  # an oversize body up to this size is read (and dropped) before the 413
RETRY_AFTER_SECONDS = 1
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def execution_parameters(settings: Settings) -> dict:
    """What batch transform asks once before a job (``GET /execution-parameters``) when the job
    leaves these unset: mini-batches of lines up to our payload limit, and as many requests at
    once as the workers take in a round, within batch transform's 100 MB for both together."""
    payload_mb = min(settings.max_payload_mb or TRANSFORM_PAYLOAD_MB, TRANSFORM_PAYLOAD_MB)
    concurrency = max(1, min(settings.workers, TRANSFORM_PAYLOAD_MB // payload_mb))
    return {"MaxConcurrentTransforms": concurrency, "BatchStrategy": "MultiRecord", "MaxPayloadInMB": payload_mb}


class Refused(Exception):
    """A request answered by the gateway itself: HTTP ``status``, a one-line reason, and
    whether the connection must close after the answer (its body was not read)."""

    def __init__(self, status: int, reason: str, close: bool = False):
        super().__init__(reason)
        self.status, self.reason, self.close = status, reason, close


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


class Exchange:
    """One request and its answer: the ASGI scope, its headers, the body as read, the reply."""

    def __init__(self, scope: dict, receive, send):
        self.scope, self.receive, self.send = scope, receive, send
        self.started = time.perf_counter()
        self.method, self.path = scope["method"], scope["path"]
        self.raw = scope["headers"]
        self.headers: dict[str, str] = {}
        for name, value in self.raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.body_done = False  # the whole request body was read
        self.close = False  # close the connection after the answer
        self.status = 0

    @property
    def target(self) -> str:
        raw = self.scope.get("raw_path") or self.path.encode()
        query = self.scope.get("query_string") or b""
        return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")

    async def body(self, limit: int, timeout: float) -> bytes:
        """The whole body, at most ``limit`` bytes, within ``timeout`` seconds (413 or 408 and close)."""
        parts, size, deadline = [], 0, time.monotonic() + timeout
        while True:
            try:
                message = await asyncio.wait_for(self.receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Refused(408, f"the request body did not arrive within {timeout:.0f} s", close=True) from None
            if message["type"] == "http.disconnect":
                raise Refused(400, "the client closed the connection before its body ended", close=True)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"request body over the {limit}-byte limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)", True)
            parts.append(chunk)
            if not message.get("more_body", False):
                self.body_done = True
                return b"".join(parts)

    async def drain(self, limit: int) -> None:
        """Read and drop up to ``limit`` bytes of body, so that a client still sending gets the
        answer rather than a reset."""
        size = 0
        while size <= limit:
            try:
                message = await asyncio.wait_for(self.receive(), 5)
            except TimeoutError:
                return
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def reply(self, status: int, body: bytes, content_type: str = codecs.JSON, extra=()) -> None:
        """The answer, in one piece; ``Connection: close`` when the connection must end."""
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra]
        if self.close:
            headers.append((b"connection", b"close"))
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    def log_access(self) -> None:
        """The access line: client, request line (escaped, shortened), status, milliseconds."""
        if self.path == "/ping" and self.method in ("GET", "HEAD"):
            return
        took = (time.perf_counter() - self.started) * 1000
        client = (self.scope.get("client") or ("-",))[0]
        line = escaped(f"{self.method} {self.target} HTTP/{self.scope.get('http_version', '1.1')}")
        logs.access_log.info('%s "%s" %d %.0f', client, line, self.status, took)


class Gateway:
    """The ASGI application; ``registry`` holds the model(s), ``multi_model`` picks the routes."""

    def __init__(self, settings: Settings, registry: Registry):
        self.settings, self.registry, self.multi_model = settings, registry, settings.multi_model
        self.admitted, self.admitted_bytes = 0, 0  # requests and body bytes held (event loop only)
        self.queue_bytes = settings.max_queue_mb * 1024 * 1024

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return
        exchange = Exchange(scope, receive, send)
        try:
            await self.answer(exchange)
        except Refused as refused:
            exchange.close = exchange.close or refused.close or (not exchange.body_done and _has_body(exchange))
            extra = [("retry-after", str(RETRY_AFTER_SECONDS))] if refused.status == 503 else []
            await exchange.reply(refused.status, error_body(refused.status, refused.reason), extra=extra)
            log.info("%s %s refused with %d: %s", exchange.method, escaped(exchange.path, 100), refused.status,
                     escaped(refused.reason))  # fmt: skip
        except Exception:
            log.exception("gateway error on %s %s", exchange.method, escaped(exchange.path, 100))
            exchange.close = True
            await exchange.reply(500, error_body(500, "internal error; see the endpoint's log"))
        finally:
            exchange.log_access()

    async def answer(self, exchange: Exchange) -> None:
        check_framing(exchange)
        parts = route_path(exchange.path).split("/")[1:]
        if parts == ["ping"]:
            allow(exchange, "GET", "HEAD")
            return await self.ping(exchange)
        if self.multi_model:
            return await self.multi_model_route(exchange, parts)
        if parts == ["invocations"]:
            allow(exchange, "POST")
            return await self.invoke(exchange, "model")
        if parts == ["execution-parameters"]:
            allow(exchange, "GET", "HEAD")
            return await exchange.reply(200, json.dumps(execution_parameters(self.settings)).encode())
        routes = "/ping, /execution-parameters and /invocations"
        raise Refused(404, f"no such endpoint: {exchange.method} {exchange.path[:100]}; this endpoint serves {routes}")

    async def multi_model_route(self, exchange: Exchange, parts: list[str]) -> None:
        name = parts[1] if len(parts) > 1 else None
        if parts[:1] != ["models"] or len(parts) > 3 or (len(parts) == 3 and parts[2] != "invoke"):
            raise Refused(404, f"no such endpoint: {exchange.method} {exchange.path[:100]}; this endpoint serves "
                          "/ping and /models")  # fmt: skip
        if name is not None and not MODEL_NAME.fullmatch(name):
            raise Refused(404, "no such model")
        if len(parts) == 3:
            allow(exchange, "POST")
            return await self.invoke(exchange, name)
        if len(parts) == 2:
            allow(exchange, "GET", "DELETE")
            if exchange.method == "DELETE":
                await asyncio.to_thread(self._registry_call, self.registry.remove, name)
                return await reply_json(exchange, {"status": f'Model "{name}" unregistered'})
            return await reply_json(exchange, describe(self._model(name), detail=True))
        allow(exchange, "GET", "POST")
        if exchange.method == "POST":
            return await self.register(exchange)
        return await reply_json(exchange, self.list_models(exchange))

    async def register(self, exchange: Exchange) -> None:
        body = await exchange.body(1 << 16, self.settings.timeout_seconds)
        name, url = parse_registration(body)
        await asyncio.to_thread(self._registry_call, self.registry.register, name, url)
        await reply_json(exchange, {"status": f'Model "{name}" registered'})

    @staticmethod
    def _registry_call(function, *args):
        try:
            return function(*args)
        except RegistryError as exc:
            raise Refused(exc.status, exc.reason) from None

    def _model(self, name: str):
        model = self.registry.get(name)
        if model is None:
            raise Refused(404, f"model {name!r} is not loaded")
        return model

    def list_models(self, exchange: Exchange) -> dict:
        query = parse_qs(exchange.scope.get("query_string", b"").decode("latin-1"))
        raw_limit = (query.get("limit") or ["100"])[0]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= PAGE_LIMIT:
            raise Refused(400, f"limit must be a number from 1 to {PAGE_LIMIT}")
        models, token = self.registry.page(int(raw_limit), (query.get("next_page_token") or [""])[0])
        answer: dict = {"models": [describe(model) for model in models]}
        return answer | ({"nextPageToken": token} if token else {})

    async def ping(self, exchange: Exchange) -> None:
        healthy = self.registry.healthy()
        body = json.dumps({"status": "Healthy" if healthy else "Unhealthy"}).encode()
        await exchange.reply(200 if healthy else 503, body)

    async def invoke(self, exchange: Exchange, name: str) -> None:
        """Admit the request, read its body, queue it for the model, send the answer."""
        kind = codecs.media_type(exchange.headers.get("content-type"))
        if kind in FORM_TYPES:  # MMS's own form decoders would fail on them with a 500 echoing the body
            raise Refused(415, f"unsupported content type {kind!r}; send an image, application/json or jsonlines")
        model = self._model(name)  # a single-model endpoint's is added before the port answers
        declared = await self.check_length(exchange)
        if self.admitted >= self.settings.max_queue or self.admitted_bytes + declared > self.queue_bytes:
            raise Refused(503, "the server is busy; try again", close=not exchange.body_done)
        self.admitted, self.admitted_bytes = self.admitted + 1, self.admitted_bytes + declared
        try:
            body = await exchange.body(self.settings.payload_limit, self.settings.timeout_seconds)
            self.admitted_bytes += len(body) - declared  # a chunked body declared nothing: count what it held
            declared = len(body)
            reply = await self.predict(model.pool, exchange, body, kind)
        finally:
            self.admitted, self.admitted_bytes = self.admitted - 1, self.admitted_bytes - declared
        if reply.status >= 400:
            answer = mms_error(reply)
            raise Refused(reply.status, answer)
        content_type = header_value(reply.content_type, codecs.JSON)  # a script's output_fn chooses it
        await exchange.reply(reply.status, reply.body, content_type)

    async def check_length(self, exchange: Exchange) -> int:
        """The declared body length (0 for a chunked body), refused with 413 when over the limit."""
        raw = exchange.headers.get("content-length", "").strip()
        if not raw:
            return 0
        if not raw.isdigit() or len(raw) > 15:
            raise Refused(400, "Content-Length is not a number of bytes", close=True)
        limit = self.settings.payload_limit
        if int(raw) > limit:
            if int(raw) <= DRAIN_BYTES and "100-continue" not in exchange.headers.get("expect", "").lower():
                await exchange.drain(int(raw))
            raise Refused(
                413, f"request body of {raw} bytes is over the {limit}-byte limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)", True
            )
        return int(raw)

    async def predict(self, pool: workers.WorkerPool, exchange: Exchange, body: bytes, kind: str) -> Reply:
        """The worker's answer to one request (WorkerError → Refused)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def answer(result) -> None:  # from a worker's thread
            loop.call_soon_threadsafe(_settle, future, result)

        headers = {k.title(): v for k, v in exchange.headers.items() if k not in NOT_FORWARDED}
        timeout = self.settings.timeout_seconds
        job = Job(headers, body, exchange.headers.get("content-type", ""))
        batchable = kind.startswith("image/") or kind in codecs.IMAGE_TYPES
        pool.submit(workers.Pending(job, answer, time.monotonic() + timeout, batchable))
        try:
            result = await asyncio.wait_for(future, 2 * timeout + 5)  # waiting, then the worker's own limit
        except TimeoutError:
            raise Refused(503, "the server is busy; try again") from None
        if isinstance(result, workers.WorkerError):  # a failure's reason is in the log, not for the client
            reason = "the model worker failed; see the endpoint's log" if result.status == 500 else str(result)
            raise Refused(result.status, reason)
        return result


def _settle(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


def _has_body(exchange: Exchange) -> bool:
    declared = exchange.headers.get("content-length", "0").strip() not in ("", "0")
    return declared or "transfer-encoding" in exchange.headers


def check_framing(exchange: Exchange) -> None:
    """RFC 9112 §6.3: a body's length must be unambiguous; else 400 and the connection closes."""
    lengths = {value.strip() for key, value in exchange.raw if key.lower() == b"content-length"}
    if len(lengths) > 1:
        raise Refused(400, "conflicting Content-Length headers", close=True)
    if lengths and "transfer-encoding" in exchange.headers:
        raise Refused(400, "Content-Length and Transfer-Encoding together", close=True)
    size = sum(len(k) + len(v) for k, v in exchange.raw)
    if size > MAX_HEADER_BYTES:
        raise Refused(431, f"request headers over {MAX_HEADER_BYTES} bytes", close=True)


def route_path(target: str) -> str:
    """The path to route: the target's, or an absolute-form target's (``http://host/path``)."""
    if target.startswith("/"):
        return target
    try:
        return urlsplit(target).path or "/"
    except ValueError:  # "http://[/" and the like
        raise Refused(400, "the request target is not a valid path") from None


def allow(exchange: Exchange, *methods: str) -> None:
    if exchange.method not in methods:
        raise Refused(405, f"{exchange.method} is not allowed here; use {' or '.join(methods)}")


def mms_error(reply: Reply) -> str:
    """A worker's error answer as one line: ours (the handler's) as it is, MMS's reworded."""
    answer = parse(reply.body)
    if set(answer) == {"error", "status"}:
        return str(answer["error"])
    return first_line(answer.get("message") or reply.phrase or "error")


async def reply_json(exchange: Exchange, answer: dict) -> None:
    await exchange.reply(200, json.dumps(answer).encode())


def describe(model, detail: bool = False) -> dict:
    """A model as MMS's management API lists it (``detail``: with its workers)."""
    answer = {"modelName": model.name, "modelUrl": model.url}
    if detail:
        queue = model.pool.queue
        answer |= {"batchSize": queue.batch_size, "maxBatchDelay": int(queue.delay * 1000), "workers": [
            {"id": w.index, "status": "READY" if w.ready else "LOADING", "gpu": w.gpu >= 0} for w in model.pool.workers
        ]}  # fmt: skip
    return answer


def parse_registration(body: bytes) -> tuple[str, str]:
    """``{"model_name", "url"}`` of a ``POST /models``; any other field is refused."""
    try:
        fields = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise Refused(400, 'expected JSON {"model_name": ..., "url": ...}') from None
    if not isinstance(fields, dict) or set(fields) - {"model_name", "url"}:
        raise Refused(400, 'only {"model_name": ..., "url": ...} may be given')
    name, url = fields.get("model_name"), fields.get("url")
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise Refused(400, "model_name must be 1-255 letters, digits, '_', '.' or '-'")
    if not isinstance(url, str) or not url.startswith("/"):
        raise Refused(400, "url must be the absolute path of a local model folder")
    return name, url
