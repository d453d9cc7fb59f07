"""The backend as a network server: the protocol of docs/protocol.md as JSON lines over TCP.

One process loads the model once and serves many clients (the artists of a studio).
Each connection gets its own `Dispatcher` (its own request ids, queue and cancel), and
every Dispatcher runs its work on one shared Engine through a first-come-first-served
gate, so the GPU serves one request at a time across all connections: a second
client's request is acknowledged at once and waits its turn (its `ack.queued` counts
the requests of other clients ahead of it too).

Security: the server binds to loopback unless told otherwise and refuses to bind any
other address without a token. With a token every connection must open with
`{"type": "auth", "token": "..."}` (compared in constant time) before anything else;
the `ready` handshake follows. Unauthenticated peers get a small line limit and a
short deadline; authenticated ones a 64 MiB line limit (joints arrays). A `shutdown`
request ends only the sender's session unless the server was started with
`--allow-remote-shutdown`. A client that disconnects mid-generation has its requests
cancelled. Tokens are never logged.

Only the standard library is imported at module level, so the CLI can refuse a bad
`--listen`/token combination without importing torch.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..wire import protocol
from ..wire.protocol import error_event

__all__ = ["ServerConfig", "ServerConfigError", "TcpServer", "TOKEN_ENV", "is_loopback", "parse_listen",
           "read_token", "server_config", "serve_tcp"]

log = logging.getLogger("irg_motion.net_server")

TOKEN_ENV = "IRG_SERVER_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_LINE_BYTES = 64 << 20        # one request line (a long joints array is a few MiB)
AUTH_LINE_BYTES = 64 << 10       # before authentication: nobody gets to make us buffer more
AUTH_TIMEOUT_S = 10.0            # the whole first line must arrive within this
AUTH_FAIL_DELAY_S = 0.25         # slows token guessing; tokens are long and random anyway
SEND_TIMEOUT_S = 60.0            # a client that stops reading for this long is dropped
MAX_CLIENTS = 16
ACCEPT_POLL_S = 0.25             # how often the accept loop notices a stop request
GATE_POLL_S = 0.05               # how often a request waiting for the engine notices its cancel
CLOSE_TIMEOUT_S = 30.0
GATED_METHODS = frozenset({"generate", "critique", "refine", "caption", "encode", "decode", "encode_tokens"})
TOKEN_HINT = ('make one with `python -c "import secrets; print(secrets.token_urlsafe(32))" > token.txt; '
              'chmod 600 token.txt`')


class ServerConfigError(ValueError):
    """A `--listen` address, token or bind problem, with a message naming the fix."""


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and who may connect (`token` None: loopback only, no authentication)."""

    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = field(default=None, repr=False)  # never shown in logs or tracebacks
    allow_remote_shutdown: bool = False
    max_clients: int = MAX_CLIENTS


# ---------------------------------------------------------------- configuration

def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` -> (host, port); the host defaults to 127.0.0.1."""
    spec = text.strip()
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            raise ServerConfigError(f"--listen {text!r}: write an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:7700")
    elif spec.count(":") > 1:
        raise ServerConfigError(f"--listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:7700")
    else:
        host, _, port = spec.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServerConfigError(f"--listen {text!r}: the port must be a number 0..65535 (0 picks a free port), "
                                "e.g. --listen 127.0.0.1:7700")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when `host` (an address or a name) means only this machine; a name counts only if every
    address it resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ServerConfigError(f"--listen: cannot resolve the host {host!r} ({exc}); give an address such as "
                                "127.0.0.1") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def read_token(token_file: str | os.PathLike | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The server token from `token_file` (first choice) or $IRG_SERVER_TOKEN; None when neither is given.

    Surrounding whitespace is dropped. A missing or empty file, or a token shorter than
    16 characters, is a ServerConfigError. A file others can read is logged as a warning.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = "it is a folder" if path.is_dir() else f"{type(exc).__name__}: {exc.args[-1]}"
            raise ServerConfigError(f"--token-file {path}: cannot read it ({reason}); {TOKEN_HINT}") from None
        if not token:
            raise ServerConfigError(f"--token-file {path} is empty; {TOKEN_HINT}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file %s can be read by other users: run `chmod 600 %s`", path, path)
        source = f"--token-file {path}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        source = f"${TOKEN_ENV}"
    if len(token) < MIN_TOKEN_CHARS:
        raise ServerConfigError(f"the token in {source} has {len(token)} characters; use at least "
                                f"{MIN_TOKEN_CHARS} random ones: {TOKEN_HINT}")
    return token


def server_config(listen: str, token_file: str | os.PathLike | None = None,
                  environ: Mapping[str, str] = os.environ, *, allow_remote_shutdown: bool = False,
                  max_clients: int = MAX_CLIENTS) -> ServerConfig:
    """Check `--listen`, the token and the exposure rule; ServerConfigError names the fix.

    A non-loopback address without a token is refused: anyone who can reach the
    machine could otherwise use its GPU and read what the artists send.
    """
    host, port = parse_listen(listen)
    token = read_token(token_file, environ)
    if token is None and not is_loopback(host):
        raise ServerConfigError(
            f"refusing to listen on {_address(host, port)} without a token: anyone who can reach this machine "
            f"could use it. Give --token-file FILE (or set ${TOKEN_ENV}; {TOKEN_HINT}), or listen on "
            "127.0.0.1 and let remote users connect through an SSH tunnel (ssh -L 7700:127.0.0.1:7700 HOST)")
    if max_clients < 1:
        raise ServerConfigError(f"--max-clients must be at least 1, not {max_clients}")
    return ServerConfig(host, port, token, allow_remote_shutdown, max_clients)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_token(given: Any, expected: str) -> bool:
    """Constant-time comparison (hashing first also hides the expected token's length)."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# ---------------------------------------------------------------- one engine, one request at a time

class EngineGate:
    """First come, first served: the head of the queue holds the engine, the others wait in order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[object, Any]] = collections.deque()

    def acquire(self, owner: Any, cancel: threading.Event | None = None) -> object | None:
        """Wait for the engine; a ticket to pass to release(), or None if `cancel` was set while waiting."""
        ticket = object()
        with self._cond:
            self._queue.append((ticket, owner))
            while self._queue[0][0] is not ticket:
                if cancel is not None and cancel.is_set():
                    self._queue.remove(next(t for t in self._queue if t[0] is ticket))
                    self._cond.notify_all()
                    return None
                self._cond.wait(GATE_POLL_S)
        return ticket

    def release(self, ticket: object) -> None:
        with self._cond:
            assert self._queue and self._queue[0][0] is ticket, "released a ticket that does not hold the engine"
            self._queue.popleft()
            self._cond.notify_all()

    def others(self, owner: Any) -> int:
        """Requests of other owners running on or waiting for the engine."""
        with self._cond:
            return sum(1 for _, o in self._queue if o is not owner)


class GatedEngine:
    """An Engine as one connection sees it: every task passes the shared gate first.

    A request cancelled while it waits returns without running; the Dispatcher then
    answers its `done` (`cancelled`). Everything else (`info`, ...) is the engine's.
    """

    def __init__(self, engine: Any, gate: EngineGate, owner: Any):
        self._engine, self._gate, self._owner = engine, gate, owner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if name not in GATED_METHODS:
            return value

        def gated(*args: Any, **kwargs: Any) -> Any:
            ticket = self._gate.acquire(self._owner, kwargs.get("cancel"))
            if ticket is None:
                return None
            try:
                return value(*args, **kwargs)
            finally:
                self._gate.release(ticket)
        return gated


# ---------------------------------------------------------------- one connection

class LineTooLong(Exception):
    """A peer sent more than the allowed bytes without a newline."""


class SocketLines:
    """Reads newline-terminated lines from a socket with a size cap (our own buffer, so a recv
    timeout loses nothing)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = bytearray()
        self._scanned = 0  # bytes already known to hold no newline

    def readline(self, limit: int, deadline: float | None = None) -> bytes | None:
        """One line without its newline; None at end of input; LineTooLong past `limit` bytes;
        TimeoutError when `deadline` (time.monotonic) passes first."""
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline >= 0:
                if newline > limit:
                    raise LineTooLong()
                line = bytes(self._buffer[:newline])
                del self._buffer[:newline + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            if len(self._buffer) > limit:
                raise LineTooLong()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no complete line in time")
                self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 16)
            except socket.timeout:
                if deadline is not None:
                    raise TimeoutError("no complete line in time") from None
                continue  # the send timeout also bounds recv: being idle is fine
            if not chunk:
                return None
            self._buffer += chunk


class SocketStream:
    """A write-only text stream on a socket for `server.LineWriter`; a failed send ends the connection
    (the reader then sees end of input and cancels the client's requests)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.peer_left = False  # the peer closed its side: failed sends are expected, not worth a warning

    def write(self, text: str) -> int:
        try:
            self._sock.sendall(text.encode("utf-8"))
        except OSError:
            _quiet_shutdown(self._sock, socket.SHUT_RDWR)
            if not self.peer_left:
                raise
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _send_error(sock: socket.socket, code: str, message: str, **extra: Any) -> None:
    """One error line straight to the socket (before a Dispatcher exists, or instead of one)."""
    try:
        sock.sendall((protocol.dumps(error_event(code, message, None, **extra)) + "\n").encode("utf-8"))
    except OSError:
        pass


def _quiet_shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:  # already disconnected
        pass


class Connection:
    """One client: authenticate, handshake, then lines to a Dispatcher until it leaves."""

    def __init__(self, server: "TcpServer", sock: socket.socket, peer: str):
        self.server, self.sock, self.peer = server, sock, peer
        self.lines = SocketLines(sock)
        self.stopping = False  # the server is shutting down (not the peer leaving)
        self.thread = threading.Thread(target=self.run, name=f"irg-motion-client-{peer}", daemon=True)

    def run(self) -> None:
        try:
            if self.authenticate():
                self.serve()
        except Exception:  # one client's trouble never takes the server down
            log.exception("client %s: unexpected error", self.peer)
        finally:
            _quiet_shutdown(self.sock, socket.SHUT_RDWR)
            self.sock.close()
            self.server.forget(self)
            log.info("client %s disconnected", self.peer)

    # -- before the handshake

    def authenticate(self) -> bool:
        """With a token: the first line must be a matching `auth`. Without: `ready` goes out at once and a
        first-line `auth` (sent by clients that always send one) is skipped."""
        token = self.server.config.token
        if token is None:
            return True
        try:
            line = self.lines.readline(AUTH_LINE_BYTES, time.monotonic() + AUTH_TIMEOUT_S)
        except (TimeoutError, LineTooLong, OSError) as exc:
            why = {TimeoutError: f"no auth line within {AUTH_TIMEOUT_S:.0f} s",
                   LineTooLong: f"the first line is longer than {AUTH_LINE_BYTES} bytes"}.get(type(exc), str(exc))
            return self.refuse(why)
        if line is None:
            log.info("client %s left before authenticating", self.peer)
            return False
        try:
            request = protocol.loads(line)
        except protocol.ProtocolError:
            request = {}
        if request.get("type") != "auth":
            return self.refuse("the first line was not an auth request")
        if not _same_token(request.get("token"), token):
            return self.refuse("no token" if request.get("token") is None else "wrong token")
        log.info("client %s authenticated", self.peer)
        return True

    def refuse(self, why: str) -> bool:
        """Answer `unauthorized` (after a short delay, with `why` as its `reason`); the caller closes."""
        log.warning("client %s refused: %s", self.peer, why)  # never the token itself
        time.sleep(AUTH_FAIL_DELAY_S)
        _send_error(self.sock, "unauthorized",
                    f'this server needs a token ({why}): send {{"type": "auth", "token": "..."}} as the '
                    "first line, with the content of the server's --token-file; the connection is closed",
                    reason=why)
        return False

    # -- after it

    def serve(self) -> None:
        from .server import Dispatcher, LineWriter, ready_event

        self.sock.settimeout(SEND_TIMEOUT_S)  # bounds sendall to a client that stopped reading
        stream = SocketStream(self.sock)
        writer = LineWriter(stream)
        gate = self.server.gate

        def emit(event: dict[str, Any]) -> None:
            if event.get("event") == "ack":  # count other clients' requests ahead of it too
                event = {**event, "queued": event["queued"] + gate.others(self)}
            writer(event)

        dispatcher = Dispatcher(GatedEngine(self.server.engine, gate, self), emit)
        dispatcher.send(ready_event(self.server.engine))
        dispatcher.start()
        first = self.server.config.token is None
        try:
            while not writer.broken:
                try:
                    line = self.lines.readline(MAX_LINE_BYTES)
                except LineTooLong:
                    dispatcher.send(error_event("line_too_long", f"a line longer than {MAX_LINE_BYTES >> 20} MiB: "
                                                "send smaller requests; the connection is closed"))
                    break
                except OSError as exc:
                    log.info("client %s: %s", self.peer, exc)
                    break
                if line is None:
                    if not self.stopping:
                        log.info("client %s: end of its input; cancelling its requests", self.peer)
                        stream.peer_left = True  # `bye` still goes out to a peer that only half-closed
                    break
                if first and _is_auth(line):  # a client that always authenticates; this server needs none
                    first = False
                    continue
                first = False
                dispatcher.handle_line(line)
                if dispatcher.shutdown_requested.is_set():
                    self.on_shutdown_request()
                    break
        finally:
            dispatcher.close(CLOSE_TIMEOUT_S)  # cancels the running request, drops the queued ones, says bye

    def on_shutdown_request(self) -> None:
        if self.server.config.allow_remote_shutdown:
            log.info("client %s asked the server to shut down (--allow-remote-shutdown)", self.peer)
            self.server.stop()
        else:
            log.info("client %s sent shutdown: ending its session only (the server keeps serving; start it "
                     "with --allow-remote-shutdown to let clients stop it)", self.peer)


def _is_auth(line: bytes) -> bool:
    try:
        return protocol.loads(line).get("type") == "auth"
    except protocol.ProtocolError:
        return False


# ---------------------------------------------------------------- the server

class TcpServer:
    """Accepts connections on a bound socket and serves each in its own thread until stop()."""

    def __init__(self, engine: Any, listener: socket.socket, config: ServerConfig):
        self.engine = engine
        self.listener = listener
        self.config = config
        self.gate = EngineGate()
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        """HOST:PORT actually listened on (the real port when 0 was asked)."""
        host, port = self.listener.getsockname()[:2]
        return _address(host, port)

    def stop(self) -> None:
        """Ask the accept loop to end (thread- and signal-safe)."""
        self._stop.set()

    def forget(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def serve_forever(self) -> None:
        """Accept until stop(), then end every session (each client gets its `bye`)."""
        self.listener.settimeout(ACCEPT_POLL_S)
        try:
            while not self._stop.is_set():
                try:
                    sock, peer = self.listener.accept()
                except socket.timeout:
                    continue
                except OSError as exc:  # e.g. too many open files: keep serving the others
                    log.warning("accept failed: %s", exc)
                    time.sleep(ACCEPT_POLL_S)
                    continue
                self._admit(sock, _address(*peer[:2]))
        finally:
            self.listener.close()
            self._end_sessions()

    def _admit(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # notices peers that vanished
        with self._lock:
            full = len(self._connections) >= self.config.max_clients
            connection = None if full else Connection(self, sock, peer)
            if connection is not None:
                self._connections.add(connection)
        if connection is None:
            log.warning("client %s refused: %d clients already connected", peer, self.config.max_clients)
            _send_error(sock, "busy", f"the server already serves {self.config.max_clients} clients: try again later")
            sock.close()
            return
        log.info("client %s connected", peer)
        connection.thread.start()

    def _end_sessions(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.stopping = True
            _quiet_shutdown(connection.sock, socket.SHUT_RD)  # its reader sees end of input, then says bye
        for connection in connections:
            connection.thread.join(CLOSE_TIMEOUT_S)


def bind(config: ServerConfig) -> socket.socket:
    """The listening socket; ServerConfigError naming the fix when the address cannot be used."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        return socket.create_server((config.host, config.port), family=family, backlog=config.max_clients)
    except OSError as exc:
        raise ServerConfigError(f"cannot listen on {_address(config.host, config.port)}: {exc.strerror or exc}; "
                                "pick another port (0 picks a free one) or stop the program using it") from None


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call `stop` while the block runs (main thread only; handlers restored after)."""
    def handler(signum: int, frame: Any) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop()

    saved = {}
    if threading.current_thread() is threading.main_thread():
        saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def serve_tcp(model_dir: str | os.PathLike, device: str, precision: str, config: ServerConfig) -> int:
    """Bind, load the model once, print `listening on HOST:PORT` on stderr and serve until SIGINT,
    SIGTERM or (with allow_remote_shutdown) a `shutdown` request; return the exit status.

    0 after a clean shutdown; 2 when the address cannot be used or the model cannot be loaded.
    """
    from .server import StartupError, backend_version, configure_logging, load_engine

    configure_logging()
    try:
        listener = bind(config)  # before the slow model load, so a taken port fails at once
    except ServerConfigError as exc:
        log.error("%s", exc)
        return 2
    log.info("irg-motion %s loading %s (device %s, precision %s)", backend_version(), model_dir, device, precision)
    try:
        engine = load_engine(model_dir, device, precision)
    except StartupError as exc:
        log.error("%s", exc.message)
        listener.close()
        return 2
    server = TcpServer(engine, listener, config)
    auth = "every client must send the token first" if config.token else "no token (loopback only)"
    log.info("one request at a time on the engine; %s; remote shutdown %s", auth,
             "allowed" if config.allow_remote_shutdown else "refused")
    print(f"listening on {server.address}", file=sys.stderr, flush=True)
    with _stop_on_signals(server.stop):
        server.serve_forever()
    log.info("shut down")
    return 0
