"""The backend as an HTTP server: `irg-motion serve --http HOST:PORT` (FastAPI on uvicorn).

Each work request is one `POST /v1/{type}` whose JSON body holds the request's fields
(as on stdio, without `type`); the answer streams the protocol's events for it as NDJSON
(one JSON object per line, the stdio event schema), from `ack` to its one `done` or
`error`. Blank lines are keep-alives. Refusals before the stream starts are one `error`
event as a JSON body with an HTTP status (400, 401, 404, 408, 409, 413, 429, 503).
See docs/protocol.md#http for every endpoint and bound.

How requests share the model: an engine that batches (vLLM) takes every request at once;
the transformers engine decodes one sequence at a time, so a `FairGate` admits a few
requests and gives each a bounded time slice in turn (a long request yields between
tokens). Every request runs in its own worker thread; events reach the client through
an asyncio queue. A client that goes away has its request cancelled at once; one that
stops reading for `send_timeout_s` is dropped and its request cancelled; a connection
that does not finish its request headers within `header_timeout_s` is closed; a request
without a valid token is refused before its body is read.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..wire import protocol
from ..wire.protocol import PROTOCOL_VERSION, WORK_TYPES, ProtocolError, error_event
from .access import AccessError, TokenSet, check_exposure, format_address, parse_address, read_tokens
from .gate import FairGate

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

__all__ = ["HttpConfig", "HttpLimits", "Service", "build_app", "http_config", "serve_http"]

log = logging.getLogger("irg_motion.http")

LOCAL_CLIENT = "local"          # the one client identity of a server without tokens
AUTH_FAIL_DELAY_S = 0.25        # slows token guessing (tokens are long and random anyway)
PUBLIC_PATHS = frozenset({"/v1/health", "/docs", "/openapi.json"})
NDJSON = "application/x-ndjson"
SEND_BUFFER_BYTES = 256 << 10   # kernel send buffer per connection (see bind)


@dataclass(frozen=True)
class HttpLimits:
    """Every bound of the HTTP server (docs/protocol.md#http lists them)."""

    max_body_bytes: int = 64 << 20   # one request body (a long joints array is a few MiB)
    max_queue: int = 64              # unfinished work requests on the server; past it: 429
    max_per_client: int = 16         # unfinished work requests of one token; past it: 429
    max_active: int = 4              # transformers engine: requests holding a KV cache at once
    time_slice_s: float = 1.0        # transformers engine: decoding time a request holds the engine per turn
    send_timeout_s: float = 30.0     # a client that takes none of our bytes this long is dropped
    header_timeout_s: float = 10.0   # a connection must complete its request headers within this
    body_timeout_s: float = 30.0     # and its request body within this
    heartbeat_s: float = 10.0        # a blank line after this much silence on a stream


@dataclass(frozen=True)
class HttpConfig:
    """Where to listen, who may connect and the bounds."""

    host: str = "127.0.0.1"
    port: int = 0
    tokens: TokenSet = field(default_factory=lambda: TokenSet([]), repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: HttpLimits = HttpLimits()

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def http_config(address: str, token_file: str | None = None, *, tls_cert: str | None = None,
                tls_key: str | None = None, limits: HttpLimits = HttpLimits()) -> HttpConfig:
    """Check `--http`, the tokens, TLS files and the exposure rule; AccessError names the fix."""
    host, port = parse_address(address)
    tokens = read_tokens(token_file)
    check_exposure(host, port, tokens)
    if bool(tls_cert) != bool(tls_key):
        raise AccessError("TLS needs both --tls-cert FILE and --tls-key FILE (PEM)")
    cert, key = (Path(p).expanduser() for p in (tls_cert, tls_key)) if tls_cert else (None, None)
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path is not None and not path.is_file():
            raise AccessError(f"{option} {path}: no such file (a PEM certificate or private key)")
    bad = [name for name, value in asdict(limits).items() if not value > 0]
    if bad:
        raise AccessError(f"{', '.join(bad)} must be positive")
    return HttpConfig(host, port, tokens, cert, key, limits)


# ---------------------------------------------------------------- refusals

class Refusal(Exception):
    """A request answered with one `error` event and an HTTP status instead of a stream."""

    def __init__(self, status: int, code: str, message: str, request_id: Any = None,
                 headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.event = error_event(code, message, request_id, **extra)
        self.headers = headers or {}


_STATUS = {"bad_json": 400, "bad_request": 400, "bad_array": 400, "unknown_type": 404, "busy": 429}


def _encode(event: dict[str, Any]) -> str:
    """One event as one JSON line; one that cannot be serialised (a bug) becomes an `internal` error."""
    from .server import to_wire

    try:
        return protocol.dumps(to_wire(event))
    except (TypeError, ValueError) as exc:
        log.error("cannot serialise a %s event: %s", event.get("event"), exc)
        return protocol.dumps(error_event("internal", f"the backend built a {event.get('event')} event it cannot "
                                                      f"send ({exc}); this is a bug in irg-motion", event.get("id")))


def _refusal(exc: ProtocolError, request_id: Any = None) -> Refusal:
    return Refusal(_STATUS.get(exc.code, 400), exc.code, exc.message, request_id)


# ---------------------------------------------------------------- the service (threads, no asyncio)

class HttpJob:
    """One accepted work request and the queue its event lines travel through to the client."""

    def __init__(self, job: Any, client: str, loop: asyncio.AbstractEventLoop, encode: Callable[[dict], str]):
        self.job = job
        self.client = client
        self.loop = loop
        self.encode = encode
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def key(self) -> tuple[str, Any]:
        return self.client, self.job.id

    def send(self, event: dict[str, Any]) -> None:
        """Thread-safe: one event to the client's stream."""
        line = (self.encode(event) + "\n").encode("utf-8")
        self.loop.call_soon_threadsafe(self.lines.put_nowait, line)

    def finish(self) -> None:
        self.loop.call_soon_threadsafe(self.lines.put_nowait, None)


class Service:
    """The loaded engine and the requests in flight; everything the endpoints do, transport aside."""

    def __init__(self, engine: Any, limits: HttpLimits, engine_name: str = "transformers"):
        self.engine = engine
        self.limits = limits
        self.engine_name = engine_name
        self.batching = bool(getattr(engine, "batches", False))
        self.gate = None if self.batching else FairGate(limits.max_active, limits.time_slice_s)
        if self.gate is not None:
            engine.pace = self.gate.pace  # the engine yields its turn between tokens
        model = engine.info.get("model", {})
        self._num_joints = int(model.get("num_joints") or 22)
        self._fps = float(model.get("fps") or 20.0)
        self._jobs: dict[tuple[str, Any], HttpJob] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._ids = itertools.count(1)
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self.started = time.monotonic()

    # -- requests

    def submit(self, client: str, kind: str, body: Any, loop: asyncio.AbstractEventLoop) -> HttpJob:
        """Validate (the stdio validator), check the bounds, acknowledge and start one work request."""
        from .server import Job, check_work_request

        if not isinstance(body, dict):
            raise Refusal(400, "bad_json", "the body must be one JSON object with the request's fields")
        given = body.get("type")
        if given is not None and given != kind:
            raise Refusal(400, "bad_request", f'the body says "type": {given!r} but this is /v1/{kind}: '
                                              "leave type out (the path says it)")
        request = {**body, "type": kind}
        request.setdefault("id", f"h{next(self._ids)}")
        try:
            rid = request["id"]
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                raise ProtocolError("bad_request", '"id" must be a string or an integer')
            args = check_work_request(self.engine, request)
        except ProtocolError as exc:
            raise _refusal(exc, request.get("id") if isinstance(request.get("id"), (str, int)) else None) from None
        with self._lock:
            self._check_room(client, kind, rid)
            job = HttpJob(Job(rid, kind, args), client, loop, _encode)
            ahead = self._ahead()
            self._jobs[job.key] = job
        job.send({"event": "ack", "id": rid, "type": kind, "queued": ahead})
        threading.Thread(target=self._run, args=(job,), name=f"irg-motion-http-{rid}", daemon=True).start()
        return job

    def _check_room(self, client: str, kind: str, rid: Any) -> None:
        if self._closing:
            raise Refusal(503, "busy", f"{kind}: the server is shutting down; try again once it runs", rid)
        if (client, rid) in self._jobs:
            raise Refusal(409, "bad_request", f"{kind}: id {rid!r} is already in use by an unfinished request "
                                              "of yours; give every request its own id (or none)", rid)
        mine = sum(1 for c, _ in self._jobs if c == client)
        if mine >= self.limits.max_per_client:
            raise Refusal(429, "busy", f"{kind}: you already have {mine} unfinished requests (the bound per "
                                       "client); wait for one to finish", rid, self._retry_after())
        if len(self._jobs) >= self.limits.max_queue:
            raise Refusal(429, "busy", f"{kind}: the server already has {len(self._jobs)} unfinished requests "
                                       "(its queue depth); try again later", rid, self._retry_after())

    def _retry_after(self) -> dict[str, str]:
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 5.0
        return {"Retry-After": str(max(1, math.ceil(typical)))}

    def _ahead(self) -> int:
        return 0 if self.batching else len(self._jobs)

    def _run(self, job: HttpJob) -> None:
        from .server import cancelled_done, run_job

        started = time.monotonic()
        try:
            if self.gate is None:
                run_job(self.engine, job.job, job.send)
            else:
                with self.gate.hold(job.job.cancel) as admitted:
                    if admitted:
                        run_job(self.engine, job.job, job.send)
                    else:
                        job.send(cancelled_done(job.job))
        finally:
            with self._lock:
                self._jobs.pop(job.key, None)
                self._durations.append(time.monotonic() - started)
            job.finish()

    def cancel(self, client: str, rid: Any) -> bool:
        """Cancel the caller's unfinished request `rid` (False when it has none by that id)."""
        with self._lock:
            job = self._jobs.get((client, rid))
        if job is None:
            return False
        job.job.cancel.set()
        return True

    def close(self) -> None:
        """Refuse new work and cancel every request (each stream ends with its `done`)."""
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.job.cancel.set()

    # -- facts

    def info(self) -> dict[str, Any]:
        """The handshake's fields (event `info`) and how this server serves."""
        from .server import ready_event

        return {**ready_event(self.engine), "event": "info", "id": None,
                "server": {"transport": "http", "engine": self.engine_name, "batching": self.batching,
                           "limits": asdict(self.limits)}}

    def health(self) -> dict[str, Any]:
        with self._lock:
            unfinished = len(self._jobs)
        return {"status": "shutting_down" if self._closing else "ok", "protocol_version": PROTOCOL_VERSION,
                "requests": unfinished, "uptime_s": round(time.monotonic() - self.started, 1)}


# ---------------------------------------------------------------- ASGI: auth, bodies, streams

class Guard:
    """Pure ASGI middleware: the bearer token, checked before anything is read or queued."""

    def __init__(self, app: Callable, tokens: TokenSet):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = LOCAL_CLIENT
        if self.tokens and scope["path"] not in PUBLIC_PATHS:
            given, why = _bearer(scope)
            client = self.tokens.match(given) if given is not None else None
            if client is None:
                why = why or "wrong token"
                peer = scope.get("client") or ("?", 0)
                log.warning("%s %s from %s refused: %s", scope["method"], scope["path"], peer[0], why)
                await asyncio.sleep(AUTH_FAIL_DELAY_S)
                refusal = Refusal(401, "unauthorized", f"this server needs a token ({why}): send the header "
                                  "`Authorization: Bearer TOKEN` with a token from the server's --token-file",
                                  reason=why, headers={"WWW-Authenticate": "Bearer"})
                return await _send_refusal(send, refusal)
        scope.setdefault("state", {})["client"] = client
        await self.app(scope, receive, send)


def _bearer(scope: dict) -> tuple[str | None, str]:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "the Authorization header is not `Bearer TOKEN`"
            return token.strip(), ""
    return None, "no token"


async def _send_refusal(send: Callable, refusal: Refusal) -> None:
    body = (protocol.dumps(refusal.event) + "\n").encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(request: Any, limits: HttpLimits) -> Any:
    """The JSON body, within the size and time bounds (Refusal 413, 408 or 400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise Refusal(413, "bad_request", _too_large(int(declared), limits))
    chunks, size = [], 0
    deadline = time.monotonic() + limits.body_timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise Refusal(408, "bad_request", f"the request body did not arrive within {limits.body_timeout_s:g} s; "
                                              "send it at once") from None
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise Refusal(413, "bad_request", _too_large(size, limits))
        chunks.append(chunk)
    try:
        return protocol.loads(b"".join(chunks))
    except ProtocolError as exc:
        raise Refusal(400, "bad_json", f"{exc.message}; the body must be one JSON object") from None


def _too_large(size: int, limits: HttpLimits) -> str:
    return (f"the request body has {'at least ' if size > limits.max_body_bytes else ''}{size} bytes, more than "
            f"the server's bound of {limits.max_body_bytes} bytes (--max-body-mb): send a shorter motion")


class EventStream(Response):
    """The NDJSON answer of one work request: its event lines as they come, keep-alives in silences.

    A client that disconnects has the request cancelled; one that takes none of our bytes
    for `send_timeout_s` is dropped (the connection closed) and the request cancelled.
    """

    media_type = NDJSON

    def __init__(self, job: HttpJob, limits: HttpLimits):  # noqa: the stream sends its own headers
        self.job = job
        self.limits = limits
        self.background = None
        self.status_code = 200

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        job = self.job.job
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", NDJSON.encode()), (b"cache-control", b"no-store"),
                                (b"x-request-id", str(job.id).encode("utf-8", "replace"))]})
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            while True:
                try:
                    line = await asyncio.wait_for(self.job.lines.get(), self.limits.heartbeat_s)
                except asyncio.TimeoutError:
                    line = b"\n"  # keep-alive: the client's read timeout measures silence
                if line is None:
                    break
                try:
                    await asyncio.wait_for(send({"type": "http.response.body", "body": line, "more_body": True}),
                                           self.limits.send_timeout_s)
                except asyncio.TimeoutError:
                    log.warning("request %r: the client took nothing for %g s; dropped and its request cancelled",
                                job.id, self.limits.send_timeout_s)
                    job.cancel.set()
                    return  # uvicorn closes a connection whose response did not complete
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()

    async def _watch_disconnect(self, receive: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self.job.job.ended:
                    log.info("request %r: the client went away; cancelled", self.job.job.id)
                self.job.job.cancel.set()
                return


# ---------------------------------------------------------------- the app

_EXAMPLES = {
    "generate": {"prompt": "a person jumps", "mode": "direct", "max_motion_tokens": 49},
    "critique": {"prompt": "a person jumps", "tokens": [1, 2, 3, 4]},
    "refine": {"prompt": "a person jumps", "tokens": [1, 2, 3, 4], "instruction": "jump higher"},
    "caption": {"tokens": [1, 2, 3, 4]},
    "encode": {"joints": {"dtype": "float32", "shape": [8, 22, 3], "b64": "..."}, "fps": 20},
    "decode": {"tokens": [1, 2, 3, 4]},
}


def _openapi_body(kind: str) -> dict[str, Any]:
    schema = {"type": "object", "description": f"The fields of a `{kind}` request (docs/protocol.md#requests), "
                                              "without `type`; `id` is optional (the server picks one).",
              "example": _EXAMPLES[kind]}
    stream = {"description": "the request's events, one JSON object per line (blank lines are keep-alives)",
              "content": {NDJSON: {"schema": {"type": "string"}}}}
    refusal = {"description": "one `error` event", "content": {"application/json": {"schema": {"type": "object"}}}}
    responses = {"200": stream, **{str(s): refusal for s in (400, 401, 408, 409, 413, 429, 503)}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": responses}


def build_app(service: Service, tokens: TokenSet) -> Any:
    """The ASGI app: the endpoints of docs/protocol.md#http behind the token guard."""
    app = FastAPI(title="IRG Motion", version=str(PROTOCOL_VERSION), redoc_url=None,
                  description="The IRG Motion backend protocol over HTTP: each work request streams its events "
                              "as NDJSON. Send `Authorization: Bearer TOKEN` when the server has tokens.")

    @app.exception_handler(Refusal)
    async def refused(_request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse(exc.event, status_code=exc.status, headers=exc.headers)

    def work(kind: str) -> Callable:
        async def endpoint(request: Request) -> Response:
            body = await read_body(request, service.limits)
            job = service.submit(request.state.client, kind, body, asyncio.get_running_loop())
            return EventStream(job, service.limits)
        endpoint.__name__ = kind
        endpoint.__doc__ = f"Run a `{kind}` request and stream its events (NDJSON)."
        return endpoint

    for kind in WORK_TYPES:
        app.add_api_route(f"/v1/{kind}", work(kind), methods=["POST"], openapi_extra=_openapi_body(kind),
                          response_class=JSONResponse, tags=["work"])

    @app.get("/v1/info", tags=["server"])
    async def info() -> dict[str, Any]:
        """The model, device and protocol version (the `ready` handshake's fields), and the server's bounds."""
        return service.info()

    @app.get("/v1/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness and load; needs no token (for load balancers)."""
        return service.health()

    @app.delete("/v1/requests/{request_id}", tags=["work"])
    async def cancel(request_id: str, request: Request) -> dict[str, Any]:
        """Cancel one of your unfinished requests; its stream ends with `done` (`stop_reason` cancelled)."""
        client = request.state.client
        found = service.cancel(client, request_id) or (request_id.isdigit() and
                                                        service.cancel(client, int(request_id)))
        if not found:
            raise Refusal(404, "not_found", f"you have no unfinished request {request_id!r} (it may have ended)",
                          request_id)
        return {"cancelled": True, "id": request_id}

    return Guard(app, tokens)


# ---------------------------------------------------------------- uvicorn

def _protocol_class(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for a connection's request headers (uvicorn has none)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        _waits = 0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self._waits += 1
            self.loop.call_later(header_timeout_s, self._expire, self._waits)

        def _expire(self, wait: int) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if wait == self._waits and idle and self.conn.their_state is h11.IDLE \
                    and not self.transport.is_closing():
                log.info("closed a connection from %s: no complete request within %g s",
                         (self.client or ("?",))[0], header_timeout_s)
                self.transport.close()

    return DeadlineH11Protocol


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the slow model load so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise AccessError(f"cannot listen on {format_address(host, port)}: {exc.strerror or exc}; pick another "
                          "port (0 picks a free one) or stop the program using it") from None
    # Accepted sockets inherit this: a client that stops reading blocks our sends after about this
    # much instead of megabytes, so the send deadline notices it soon (a motion event is ~0.4 MiB).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return listener


def serve_http(model_dir: str, device: str, precision: str, config: HttpConfig, engine_name: str = "transformers",
               engine_options: dict[str, Any] | None = None) -> int:
    """Bind, load the model once, print `listening on URL` on stderr and serve until SIGINT or SIGTERM.

    Returns 0 after a clean shutdown, 2 when the address cannot be used or the model not loaded.
    """
    import uvicorn

    from .server import StartupError, backend_version, configure_logging, load_engine

    configure_logging()
    try:
        listener = bind(config.host, config.port)
    except AccessError as exc:
        log.error("%s", exc)
        return 2
    log.info("irg-motion %s loading %s (engine %s, device %s, precision %s)", backend_version(), model_dir,
             engine_name, device, precision)
    try:
        engine = load_engine(model_dir, device, precision, engine=engine_name, options=engine_options)
    except StartupError as exc:
        log.error("%s", exc.message)
        listener.close()
        return 2
    service = Service(engine, config.limits, engine_name)
    app = build_app(service, config.tokens)
    uv_config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                               http=_protocol_class(config.limits.header_timeout_s),
                               timeout_keep_alive=5, timeout_graceful_shutdown=10,
                               ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
                               ssl_keyfile=str(config.tls_key) if config.tls_key else None)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn re-raises the signal after shutdown: exit 0
            saved = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            service.close()  # every stream ends with its `done` (cancelled) before the connections close
            super().handle_exit(sig, frame)

    host, port = listener.getsockname()[:2]
    auth = f"{len(config.tokens)} token(s)" if config.tokens else "no token (loopback only)"
    mode = "batching" if service.batching else (f"{config.limits.max_active} active requests in turns of "
                                                f"{config.limits.time_slice_s:g} s")
    log.info("engine %s, %s; %s; queue depth %d, %d per client", engine_name, mode, auth,
             config.limits.max_queue, config.limits.max_per_client)
    if config.tokens and not config.tls_cert:
        log.warning("tokens travel in clear text without TLS: give --tls-cert/--tls-key, or keep the server "
                    "behind a TLS proxy or tunnel")
    print(f"listening on {config.scheme}://{format_address(host, port)}", file=sys.stderr, flush=True)
    Server(uv_config).run(sockets=[listener])
    close = getattr(engine, "close", None)
    if close is not None:
        close()
    log.info("shut down")
    return 0
