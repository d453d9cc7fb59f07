"""A backend on another machine: the same protocol as local.py, over TCP to `irg-motion serve --listen`.

Plain Python (no bpy). `RemoteBackendClient` implements `base.Backend`, as
`local.BackendClient` does (state, ready_info, start/ensure_started/send/poll/
wait_ready/stop/log_tail/death_message/status_text), so a GenerateJob drives either one.

The server URL is `tcp://HOST:PORT` (an IPv6 address in brackets: `tcp://[::1]:7700`).
On start the client connects (bounded by `timeout`), always opens with
`{"type": "auth", "token": ...}` (a server without a token skips it), then a
reader thread parses the server's lines into a queue that `poll()` drains; the
`ready` handshake must carry our protocol version. Differences from a local
process: there is no pid and no log file (`log_tail` returns this client's own
connection log), and `stop()` only disconnects (the server cancels this
client's requests and keeps serving the others): it never sends `shutdown`,
which a server started with `--allow-remote-shutdown` would obey.
"""
from __future__ import annotations

import collections
import hashlib
import ipaddress
import queue
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from ..core import protocol
from .base import Backend, BackendError

__all__ = ["RemoteBackendClient", "parse_url"]

CONNECT_TIMEOUT_S = 5.0
MAX_LINE_BYTES = 256 << 20   # a server line longer than this is not our protocol
LOG_LINES = 200
FIX_URL = "fix the Server URL in Preferences > Add-ons > IRG Motion"
FIX_TOKEN = ("set Preferences > Add-ons > IRG Motion > Server Token to the content of the server's "
             "--token-file (ask whoever runs the server)")


def parse_url(url: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (host, port); BackendError naming the expected form otherwise."""
    text = (url or "").strip()
    example = "tcp://HOST:PORT, e.g. tcp://gpu-box:7700 or tcp://127.0.0.1:7700"
    if not text:
        raise BackendError(f"The server URL is empty: give it as {example} ({FIX_URL}).")
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise BackendError(f"The server URL {text!r} is not valid ({exc}): give it as {example}.") from None
    if parts.scheme != "tcp" or not host or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        raise BackendError(f"The server URL {text!r} is not valid: give it as {example}.")
    if port == 0:
        raise BackendError(f"The server URL {text!r} has port 0: give the port the server printed "
                           "(`listening on HOST:PORT`).")
    return host, port


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve_hint(host: str, port: int) -> str:
    """How to start a server this URL reaches (beyond loopback the server needs a token)."""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local:
        return f"`irg-motion serve --listen {_address(host, port)} --model DIR`"
    return f"`irg-motion serve --listen 0.0.0.0:{port} --token-file FILE --model DIR` on {host}"


def _fingerprint(token: str | None) -> str:
    """Identifies a token in keys and logs without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else ""


class RemoteBackendClient(Backend):
    """One connection to an IRG Motion server speaking the JSON-lines protocol over TCP."""

    def __init__(self, url: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S):
        super().__init__()
        self.url = (url or "").strip()
        self._token = (token or "").strip() or None
        self.timeout = float(timeout)
        self.log_path = None  # no process here: the log is in memory (log_tail)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._last_problem = ""

    def __repr__(self) -> str:  # never the token
        return f"RemoteBackendClient({self.url!r}, token={'set' if self._token else None}, state={self._state!r})"

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies this server in the registry (the token only as a fingerprint)."""
        return "remote", self.url, _fingerprint(self._token)

    @property
    def pid(self) -> None:
        """No local process."""
        return None

    @property
    def address(self) -> str:
        """HOST:PORT of the server (BackendError if the URL is not valid)."""
        return _address(*parse_url(self.url))

    def validate(self) -> None:
        """Check the URL before connecting (BackendError)."""
        parse_url(self.url)

    # -- connection

    def start(self) -> None:
        """Connect, authenticate and start the reader; the `ready` handshake arrives later via poll().

        BackendError when nothing answers at the URL (the message says how to start a server)."""
        host, port = parse_url(self.url)
        self.stop()
        sock = self._connect(host, port)
        self._events = queue.Queue()
        self._ready_event = threading.Event()
        self.ready_info = None
        self._last_problem = ""
        self._sock = sock
        self._state = "starting"
        self._note(f"connected to {self.url}")
        try:
            self._write(sock, {"type": "auth", "token": self._token} if self._token else {"type": "auth"})
        except OSError as exc:
            self._sock, self._state = None, "dead"
            sock.close()
            raise BackendError(f"The IRG Motion server at {_address(host, port)} closed the connection at once "
                               f"({exc}): check its log (it may serve too many clients).") from None
        self._reader = threading.Thread(target=self._read, args=(sock,), daemon=True,
                                        name="irg-motion-remote-reader")
        self._reader.start()

    def _connect(self, host: str, port: int) -> socket.socket:
        where = _address(host, port)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except ConnectionRefusedError:
            message = f"No IRG Motion server at {where}: start it with {_serve_hint(host, port)}, or {FIX_URL}."
        except socket.gaierror as exc:
            message = f"Cannot find the server host {host!r} ({exc.strerror or exc}): {FIX_URL}."
        except (socket.timeout, TimeoutError):
            message = (f"No answer from {where} within {self.timeout:g} s: check the host, the port and any "
                       f"firewall between the machines, or {FIX_URL}.")
        except OSError as exc:
            message = f"Cannot connect to the IRG Motion server at {where} ({exc.strerror or exc}): {FIX_URL}."
        else:
            sock.settimeout(None)  # the reader waits as long as generations take
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return sock
        self._state = "dead"
        self._note(message)
        raise BackendError(message)

    def ensure_started(self) -> None:
        """Connect unless already connecting or connected (reuses the connection)."""
        if self._state in ("starting", "ready") and self._sock is not None:
            return
        self.start()

    def send(self, request: dict[str, Any]) -> str:
        """Write one request (an `id` is added if missing); returns its id."""
        sock = self._sock
        if sock is None or self._state not in ("starting", "ready"):
            raise BackendError(f"Not connected to the IRG Motion server (state {self._state}): "
                               "generate again to reconnect.")
        request = dict(request)
        request.setdefault("id", self.new_id())
        try:
            self._write(sock, request)
        except OSError as exc:
            raise BackendError(f"Sending to the IRG Motion server at {self.url} failed ({exc}): the connection "
                               "is lost; generate again to reconnect.") from None
        return request["id"]

    def _write(self, sock: socket.socket, message: dict[str, Any]) -> None:
        line = (protocol.dumps(message) + "\n").encode("utf-8")
        with self._send_lock:
            sock.sendall(line)

    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        """Up to max_events parsed events, without blocking."""
        out: list[dict[str, Any]] = []
        while len(out) < max_events:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the handshake (for scripts and tests); BackendError on failure.

        Events other than the handshake stay queued for poll()."""
        self.ensure_started()
        self._ready_event.wait(timeout)
        if self._state == "ready" and self.ready_info is not None:
            return self.ready_info
        if self._state == "dead":
            raise BackendError(self.death_message())
        raise BackendError(f"The IRG Motion server at {self.url} did not send its handshake within "
                           f"{timeout:.0f} s: is it still loading its model? Check its log.")

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect: the server cancels this client's requests and keeps serving others."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self._note("disconnected")
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        self._state = "stopped"

    def status_text(self) -> str:
        """One line for the panel: the connection's state."""
        if self._state == "dead":
            return f"Connection lost: {self.death_message()}"
        return {"ready": f"Connected to {self.url}", "starting": f"Connecting to {self.url}..."}.get(
            self._state, f"Not connected to {self.url}")

    def log_tail(self, n: int = 20) -> str:
        """The last n lines of this client's connection log (connects, handshakes, problems)."""
        return "\n".join(list(self._log)[-n:])

    def death_message(self) -> str:
        """Why the connection ended and what to do."""
        return self._last_problem or f"The connection to the IRG Motion server at {self.url} ended."

    def _note(self, text: str) -> None:
        self._log.append(f"{time.strftime('%H:%M:%S')} {text}")

    # -- reader thread -------------------------------------------------------------

    def _read(self, sock: socket.socket) -> None:
        """Parse the server's lines into events until the connection ends, then say why."""
        said_bye, why = False, ""
        try:
            with sock.makefile("rb") as stream:
                while True:
                    raw = stream.readline(MAX_LINE_BYTES)
                    if not raw:
                        break
                    if not raw.endswith(b"\n"):
                        why = f"the server sent a line longer than {MAX_LINE_BYTES >> 20} MiB"
                        break
                    try:
                        event = protocol.loads(raw)
                    except protocol.ProtocolError:
                        why = "the server sent a line that is not JSON: is the URL an IRG Motion server?"
                        break
                    said_bye = said_bye or event.get("event") == "bye"
                    if not self._accept(sock, event):
                        return
        except (OSError, ValueError) as exc:  # reset by the peer, or stop() closed the socket under us
            why = why or str(exc)
        finally:
            self._ready_event.set()
        if sock is self._sock:  # not stopped on purpose (stop() forgets the socket first)
            self._lost(sock, said_bye, why)

    def _accept(self, sock: socket.socket, event: dict[str, Any]) -> bool:
        """Queue one event (the handshake and refusals checked first); False ends the reader."""
        kind = event.get("event")
        if kind == "ready":
            return self._handshake(sock, event)
        if kind == "error" and event.get("id") is None and self._state == "starting" \
                and event.get("code") in ("unauthorized", "busy"):
            if event["code"] == "unauthorized":
                reason = event.get("reason") or ("no token" if self._token is None else "wrong token")
                message = f"The server at {self.url} refused the token ({reason}): {FIX_TOKEN}."
            else:
                message = f"The server at {self.url} is busy: {event.get('message', '')}"
            self._die(sock, event["code"], message)
            return False
        self._events.put(event)
        return True

    def _handshake(self, sock: socket.socket, event: dict[str, Any]) -> bool:
        """Accept a `ready` of our protocol version; anything else ends the connection."""
        version = event.get("protocol_version")
        if version != protocol.PROTOCOL_VERSION:
            self._die(sock, "protocol_mismatch", (
                f"The server at {self.url} speaks protocol version {version}, this add-on speaks "
                f"{protocol.PROTOCOL_VERSION}: run the server and the add-on from the same release."))
            return False
        self.ready_info = event
        self._state = "ready"
        model, device = event.get("model") or {}, event.get("device") or {}
        self._note(f"ready: irg-motion {event.get('backend_version', '?')}, model {model.get('name', '?')} "
                   f"on {device.get('type', '?')} ({device.get('precision', '?')})")
        self._events.put(event)
        self._ready_event.set()
        return True

    def _die(self, sock: socket.socket, code: str, message: str) -> None:
        """End the connection with one `error` event (id null) that says why and how to fix it."""
        if sock is not self._sock:
            return
        self._state = "dead"
        self._last_problem = message
        self._note(message)
        self._events.put(protocol.error_event(code, message, None))
        self._sock = None
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self._ready_event.set()

    def _lost(self, sock: socket.socket, said_bye: bool, why: str) -> None:
        where = self.url
        if said_bye:
            message = (f"The IRG Motion server at {where} ended the session (it is shutting down): "
                       "generate again once it runs.")
        elif self._state == "starting":
            message = (f"The server at {where} closed the connection before its handshake"
                       f"{f' ({why})' if why else ''}: check that the URL points at `irg-motion serve --listen` "
                       "and see the server's log.")
        else:
            message = (f"The connection to the IRG Motion server at {where} was lost"
                       f"{f' ({why})' if why else ''}; a running generation stopped. Check that the server "
                       "still runs, then generate again.")
        self._die(sock, "connection_lost", message)
