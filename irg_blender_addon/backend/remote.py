"""A backend on another machine: `irg-motion serve --http` spoken to over HTTP with `requests`.

Plain Python (no bpy; `requests` ships with Blender's Python). `RemoteBackendClient`
implements `base.Backend`, so a job drives it exactly like the local process:

- `start()` reads `GET /v1/info` (bounded by the connect timeout) and queues its fields
  as the `ready` handshake; a server of another protocol version is refused.
- `send()` of a work request opens `POST /v1/{type}` in a thread and turns the NDJSON
  stream into events for `poll()`; `cancel` becomes `DELETE /v1/requests/{id}`, `ping`
  a `GET /v1/health` answered `pong`, `info` a `GET /v1/info`. Work requests go out at
  once (the server queues and schedules them).
- Hang watchdog: the server writes a keep-alive line after 10 s of silence, so a stream
  that brings nothing for `read_timeout` (60 s) means a hung server or a dead network:
  that request ends with one `error` (`server_hung`).
- A lost server (refused, reset or cut mid-stream) ends each open request with one
  `error` (`connection_lost`) naming the URL and the fix; the state becomes "dead" and
  the next request connects afresh. Jobs write nothing on an error, so the scene is
  left as the local backend would leave it.
- The token goes only into the `Authorization` header: never into a log, a repr or a
  status line (the registry keys clients by a fingerprint of it).
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import queue
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

from ..core import protocol
from .base import Backend, BackendError

__all__ = ["RemoteBackendClient", "parse_url", "CONNECT_TIMEOUT_S", "READ_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0    # silence (no event, no keep-alive) this long means the server hangs
CONTROL_TIMEOUT_S = 10.0  # info, health and cancel calls
LOG_LINES = 200
WORK_TYPES = ("generate", "critique", "refine", "caption", "encode", "decode")
FIX_URL = "fix the Server URL in Preferences > Add-ons > IRG Motion"
FIX_TOKEN = ("set Preferences > Add-ons > IRG Motion > Server Token to a token from the server's "
             "--token-file (ask whoever runs the server)")


def parse_url(url: str) -> str:
    """`http(s)://HOST[:PORT]` -> the base URL without a trailing slash; BackendError naming the form."""
    text = (url or "").strip().rstrip("/")
    example = "http://HOST:PORT, e.g. http://gpu-box:7700 or https://irg.studio.example"
    if not text:
        raise BackendError(f"The server URL is empty: give it as {example} ({FIX_URL}).")
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise BackendError(f"The server URL {text!r} is not valid ({exc}): give it as {example}.") from None
    if parts.scheme == "tcp":
        raise BackendError(f"The server URL {text!r} is a raw TCP address; that transport was retired: start the "
                           f"server with `irg-motion serve --http HOST:PORT` and give its URL as {example}.")
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment \
            or parts.username is not None:
        raise BackendError(f"The server URL {text!r} is not valid: give it as {example}.")
    if port == 0:
        raise BackendError(f"The server URL {text!r} has port 0: give the port the server printed "
                           "(`listening on http://HOST:PORT`).")
    return text


def _fingerprint(token: str | None) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


class RemoteBackendClient(Backend):
    """One IRG Motion HTTP server; see the module docstring."""

    def __init__(self, url: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S):
        self.url = (url or "").strip().rstrip("/")
        self._token = (token or "").strip() or None
        self.timeout = float(timeout)
        self.read_timeout = float(read_timeout)
        self.ready_info: dict[str, Any] | None = None
        self._state = "stopped"
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._open: dict[Any, Any] = {}  # request id -> its streaming response (None until it answers)
        self._lock = threading.Lock()
        self._session: Any = None
        self._ids = itertools.count(1)
        self._generation = 0  # bumped by stop(): threads of an earlier session stay quiet
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._last_problem = ""

    def __repr__(self) -> str:  # never the token
        return f"RemoteBackendClient({self.url!r}, token={'set' if self._token else None}, state={self._state!r})"

    # -- Backend facts

    @property
    def key(self) -> tuple[str, str, str]:
        return "remote", self.url, _fingerprint(self._token)

    @property
    def state(self) -> str:
        return self._state

    @property
    def pid(self) -> None:
        return None

    @property
    def batching(self) -> bool:
        """True when the server batches concurrent requests (its /v1/info says so)."""
        return bool(((self.ready_info or {}).get("server") or {}).get("batching"))

    @property
    def max_per_client(self) -> int:
        """How many unfinished requests the server accepts from one client (1 before the handshake)."""
        limits = ((self.ready_info or {}).get("server") or {}).get("limits") or {}
        return max(1, int(limits.get("max_per_client") or 1))

    def validate(self) -> None:
        parse_url(self.url)

    def new_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    # -- connection

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/x-ndjson, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def start(self) -> None:
        """Read the server's /v1/info (the handshake); BackendError naming the fix when that fails."""
        import requests

        base = parse_url(self.url)
        self.stop()
        self._session = requests.Session()
        self._state = "starting"
        self._last_problem = ""
        try:
            info = self._get_json("/v1/info")
        except BackendError as exc:
            self._die(str(exc), code=None)
            raise
        version = info.get("protocol_version")
        if version != protocol.PROTOCOL_VERSION:
            message = (f"The server at {base} speaks protocol version {version}, this add-on speaks "
                       f"{protocol.PROTOCOL_VERSION}: run the server and the add-on from the same release.")
            self._die(message, code=None)
            raise BackendError(message)
        self.ready_info = {**info, "event": "ready", "id": None}
        self._state = "ready"
        model, device = info.get("model") or {}, info.get("device") or {}
        server = info.get("server") or {}
        self._note(f"ready: irg-motion {info.get('backend_version', '?')}, model {model.get('name', '?')} on "
                   f"{device.get('type', '?')} ({device.get('precision', '?')}), engine {server.get('engine', '?')}")
        self._events.put(self.ready_info)

    def _get_json(self, path: str) -> dict[str, Any]:
        import requests

        try:
            response = self._session.get(self.url + path, headers=self._headers(),
                                         timeout=(self.timeout, CONTROL_TIMEOUT_S))
        except requests.RequestException as exc:
            raise BackendError(self._unreachable(exc)) from None
        if response.status_code != 200:
            raise BackendError(self._refused(response))
        try:
            return response.json()
        except ValueError:
            raise BackendError(f"The server at {self.url} did not answer JSON on {path}: is the URL an IRG Motion "
                               f"server (`irg-motion serve --http`)? {FIX_URL}.") from None

    def ensure_started(self) -> None:
        if self._state != "ready":
            self.start()

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """The handshake (start() is synchronous); BackendError when the server cannot be reached."""
        self.ensure_started()
        return self.ready_info

    def stop(self, timeout: float = 2.0) -> None:
        """Close every open stream (the server cancels those requests) and forget the session."""
        with self._lock:
            self._generation += 1
            streams, self._open = list(self._open.values()), {}
            self._events = queue.Queue()  # what the closed streams had queued is stale
        for response in streams:
            _close(response)
        if self._session is not None:
            self._session.close()
            self._session = None
            self._note("disconnected")
        self._state = "stopped"

    # -- requests

    def send(self, request: dict[str, Any]) -> str:
        """Send one request (an `id` is added if missing); returns its id. Never blocks on the network."""
        if self._session is None or self._state != "ready":
            raise BackendError(f"Not connected to the IRG Motion server (state {self._state}): generate again "
                               "to reconnect.")
        request = dict(request)
        request.setdefault("id", self.new_id())
        kind, rid = request.get("type"), request["id"]
        if kind in WORK_TYPES:
            with self._lock:
                self._open[rid] = None
            target, args = self._stream, (request,)
        elif kind in ("cancel", "ping", "info"):
            target, args = self._control, (request,)
        else:
            return rid  # shutdown: a client never stops a shared server
        threading.Thread(target=target, args=(*args, self._generation), daemon=True,
                         name=f"irg-motion-http-{kind}").start()
        return rid

    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < max_events:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

    def _stream(self, request: dict[str, Any], generation: int) -> None:
        """POST one work request and queue its events until its `done` or `error`."""
        import requests

        rid, kind = request["id"], request["type"]
        body = {k: v for k, v in request.items() if k != "type"}
        ended = False
        try:
            response = self._session.post(f"{self.url}/v1/{kind}", data=protocol.dumps(body).encode("utf-8"),
                                          headers={**self._headers(), "Content-Type": "application/json"},
                                          stream=True, timeout=(self.timeout, self.read_timeout))
            with self._lock:
                if rid not in self._open:  # stopped meanwhile
                    _close(response)
                    return
                self._open[rid] = response
            if response.status_code != 200:
                ended = True
                return self._put_error(rid, self._refusal_code(response), self._refused(response), generation)
            for line in response.iter_lines(chunk_size=None):  # each chunk as it comes, not 512 bytes
                if not line:
                    continue  # keep-alive
                event = protocol.loads(line)
                ended = event.get("id") == rid and event.get("event") in ("done", "error")
                self._queue(event, generation)
                if ended:
                    break
            if not ended:
                self._lost(rid, "the server closed the stream before the request ended", generation)
        except requests.exceptions.ConnectTimeout as exc:
            self._lost(rid, self._unreachable(exc), generation)
        except requests.exceptions.Timeout:
            self._hung(rid, generation)
        except requests.exceptions.ConnectionError as exc:  # a read timeout mid-stream comes as this too
            if "read timed out" in str(exc).lower():
                self._hung(rid, generation)
            elif not ended:
                self._lost(rid, self._unreachable(exc), generation)
        except (requests.RequestException, protocol.ProtocolError, AttributeError, ValueError) as exc:
            if not ended:
                self._lost(rid, f"the stream broke ({type(exc).__name__}: {exc})", generation)
        finally:
            with self._lock:
                response = self._open.pop(rid, None)
            if response is not None:
                _close(response)

    def _control(self, request: dict[str, Any], generation: int) -> None:
        import requests

        kind, rid = request["type"], request.get("id")
        try:
            if kind == "cancel":
                target = str(request.get("target"))
                self._session.delete(f"{self.url}/v1/requests/{quote(target, safe='')}", headers=self._headers(),
                                     timeout=(self.timeout, CONTROL_TIMEOUT_S))
                return  # the cancelled stream ends with its `done`
            if kind == "ping":
                health = self._get_json("/v1/health")
                event = {"event": "pong", "id": rid, "protocol_version": health.get("protocol_version")}
            else:
                event = {**self._get_json("/v1/info"), "event": "info", "id": rid}
        except (requests.RequestException, BackendError, AttributeError) as exc:
            self._note(f"{kind} failed: {exc}")
            return
        self._queue(event, generation)

    def _queue(self, event: dict[str, Any], generation: int) -> bool:
        """Queue an event of a session still current (checked under the lock stop() takes); True if queued."""
        with self._lock:
            if generation != self._generation:
                return False
            self._events.put(event)
            return True

    # -- problems

    def _unreachable(self, exc: Exception) -> str:
        text = str(exc)
        if "Connection refused" in text or "Errno 111" in text:
            return (f"No IRG Motion server answers at {self.url}: start it with `irg-motion serve --http HOST:PORT "
                    f"--model DIR` on that machine, or {FIX_URL}.")
        if "Name or service not known" in text or "getaddrinfo" in text or "Failed to resolve" in text:
            return f"Cannot find the server host of {self.url}: {FIX_URL}."
        if "SSL" in text or "certificate" in text.lower():
            return (f"The TLS connection to {self.url} failed ({text[:200]}): check the server's certificate, or "
                    "point REQUESTS_CA_BUNDLE at the studio's CA file.")
        if "timed out" in text.lower():
            return (f"No answer from {self.url} within {self.timeout:g} s: check the host, the port and any "
                    f"firewall between the machines, or {FIX_URL}.")
        return f"The connection to the IRG Motion server at {self.url} failed ({text[:200]})."

    @staticmethod
    def _refusal_code(response: Any) -> str:
        try:
            return str(response.json().get("code") or "http_error")
        except ValueError:
            return "http_error"

    def _refused(self, response: Any) -> str:
        """The message of a refused request (one `error` event as JSON, or something that is not our server)."""
        try:
            event = response.json()
            message = str(event.get("message") or "")
        except ValueError:
            event, message = {}, ""
        status = response.status_code
        if status == 401:
            return f"The server at {self.url} refused the token ({event.get('reason') or 'wrong token'}): {FIX_TOKEN}."
        if status == 429:
            wait = response.headers.get("Retry-After")
            return (f"The server at {self.url} is busy: {message}" + (f" (retry after {wait} s)" if wait else ""))
        if not message:
            return (f"The server at {self.url} answered HTTP {status}, not as an IRG Motion server: "
                    f"{FIX_URL}.")
        return message

    def _put_error(self, rid: Any, code: str, message: str, generation: int) -> None:
        if self._queue(protocol.error_event(code, message, rid), generation):
            self._note(message)

    def _lost(self, rid: Any, why: str, generation: int) -> None:
        if generation != self._generation:
            return  # stopped on purpose
        message = (f"The connection to the IRG Motion server at {self.url} was lost ({why}); the request stopped "
                   "and nothing was written. Check that the server still runs, then try again.")
        self._die(message, code=None)
        self._put_error(rid, "connection_lost", message, generation)

    def _hung(self, rid: Any, generation: int) -> None:
        message = (f"The IRG Motion server at {self.url} sent nothing for {self.read_timeout:g} s (not even its "
                   "keep-alive): it hangs or the network dropped. The request stopped and nothing was written; "
                   "check the server, then try again.")
        if generation == self._generation:
            self._die(message, code=None)
        self._put_error(rid, "server_hung", message, generation)

    def _die(self, message: str, code: str | None) -> None:
        self._state = "dead"
        self._last_problem = message
        self._note(message)

    # -- text for people

    def status_text(self) -> str:
        if self._state == "dead":
            return f"Connection lost: {self.death_message()}"
        if self._state == "ready":
            engine = ((self.ready_info or {}).get("server") or {}).get("engine", "?")
            return f"Connected to {self.url} ({engine} engine{', batching' if self.batching else ''})"
        return f"Not connected to {self.url}"

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(list(self._log)[-n:])

    def death_message(self) -> str:
        return self._last_problem or f"The connection to the IRG Motion server at {self.url} ended."

    def _note(self, text: str) -> None:
        self._log.append(f"{time.strftime('%H:%M:%S')} {text}")


def _close(response: Any) -> None:
    """Close a streaming response, unblocking a thread that reads it (urllib3 >= 2.3 has shutdown())."""
    if response is None:
        return
    shutdown = getattr(getattr(response, "raw", None), "shutdown", None)
    try:
        if shutdown is not None:
            shutdown()
        response.close()
    except Exception:  # already closed or broken: nothing left to free
        pass
