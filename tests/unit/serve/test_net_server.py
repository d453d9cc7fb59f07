"""The TCP server: address and token rules, the engine gate, line reading, and the real
`python -m model_backend serve --listen 127.0.0.1:0` process spoken to with raw sockets.

Sockets only ever touch 127.0.0.1. Generations are tiny (direct, 4 motion tokens)
except the "long" ones, which the untrained fixture would run for minutes (it never
ends a trace): they exist to be cancelled.
"""
from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from model_backend.serve.net_server import (AUTH_LINE_BYTES, MAX_LINE_BYTES, EngineGate, LineTooLong,
                                            ServerConfigError, SocketLines, _same_token, is_loopback, parse_listen,
                                            read_token, server_config)
from model_backend.wire.protocol import PROTOCOL_VERSION
from serve_process import ROOT, STEP_S, TcpServer, backend_env, write_token_file

TOKEN = "k3-Vq8sT0pXc1mN7bR4yL9zW2aE5hJ6u"


# ---------------------------------------------------------------- configuration (pure)

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7700", ("127.0.0.1", 7700)), (":7700", ("127.0.0.1", 7700)), ("7700", ("127.0.0.1", 7700)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9", ("::1", 9)), ("gpu-box:65535", ("gpu-box", 65535)),
])
def test_parse_listen_defaults_the_host_to_loopback(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, needle", [
    ("127.0.0.1:99999", "0..65535"), ("127.0.0.1:http", "must be a number"), ("::1:7700", "in brackets"),
    ("[::1]7700", "[ADDRESS]:PORT"), ("127.0.0.1:", "must be a number"),
])
def test_parse_listen_names_the_expected_form(text, needle):
    with pytest.raises(ServerConfigError) as err:
        parse_listen(text)
    assert needle in str(err.value)


def test_loopback_means_only_this_machine():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.20")
    assert not is_loopback("10.0.0.1")


def test_token_comes_from_the_file_first_then_the_environment(tmp_path):
    token_file = tmp_path / "token.txt"
    token_file.write_text(f"  {TOKEN}\n")
    token_file.chmod(0o600)
    env = {"IRG_SERVER_TOKEN": "e" * 20}
    assert read_token(token_file, env) == TOKEN
    assert read_token(None, env) == "e" * 20
    assert read_token(None, {}) is None and read_token(None, {"IRG_SERVER_TOKEN": "  "}) is None


@pytest.mark.parametrize("content, needle", [
    ("", "is empty"), ("short-token", "has 11 characters; use at least 16"), (None, "cannot read it"),
])
def test_bad_token_files_are_refused_with_the_fix(tmp_path, content, needle):
    token_file = tmp_path / "token.txt"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ServerConfigError) as err:
        read_token(token_file, {})
    assert needle in str(err.value) and "secrets.token_urlsafe" in str(err.value)


def test_non_loopback_needs_a_token_and_loopback_does_not(tmp_path):
    with pytest.raises(ServerConfigError) as err:
        server_config("0.0.0.0:7700", None, {})
    assert "refusing to listen on 0.0.0.0:7700 without a token" in str(err.value)
    assert "--token-file" in str(err.value)
    config = server_config("0.0.0.0:7700", None, {"IRG_SERVER_TOKEN": TOKEN})
    assert (config.host, config.port, config.token) == ("0.0.0.0", 7700, TOKEN)
    assert TOKEN not in repr(config)  # never in logs or tracebacks
    assert server_config("127.0.0.1:0", None, {}).token is None


def test_token_comparison_is_exact():
    assert _same_token(TOKEN, TOKEN)
    assert not _same_token(TOKEN[:-1], TOKEN) and not _same_token(TOKEN + "x", TOKEN)
    assert not _same_token(None, TOKEN) and not _same_token(12, TOKEN) and not _same_token("", TOKEN)


# ---------------------------------------------------------------- the engine gate (threads, no model)

def test_gate_serves_owners_first_come_first_served_and_counts_the_others():
    gate, order = EngineGate(), []
    first = gate.acquire("a")
    assert gate.others("a") == 0 and gate.others("b") == 1

    def worker(owner: str) -> None:
        ticket = gate.acquire(owner)
        order.append(owner)
        gate.release(ticket)

    threads = []
    for owner in ("b", "c", "d"):
        threads.append(threading.Thread(target=worker, args=(owner,)))
        threads[-1].start()
        while gate.others("a") < len(threads):  # each is queued before the next starts
            time.sleep(0.001)
    assert gate.others("b") == 3 and order == []
    gate.release(first)
    for t in threads:
        t.join(5)
    assert order == ["b", "c", "d"] and gate.others("x") == 0


def test_a_request_cancelled_while_waiting_for_the_gate_leaves_the_queue():
    gate, cancel, result = EngineGate(), threading.Event(), []
    held = gate.acquire("a")
    waiter = threading.Thread(target=lambda: result.append(gate.acquire("b", cancel)))
    waiter.start()
    while gate.others("a") == 0:
        time.sleep(0.001)
    cancel.set()
    waiter.join(2)
    assert result == [None] and gate.others("a") == 0
    gate.release(held)
    assert gate.acquire("c") is not None  # the gate is free again


# ---------------------------------------------------------------- reading lines

def test_socket_lines_split_chunks_cap_the_length_and_honour_the_deadline():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        lines = SocketLines(ours)
        theirs.sendall(b'{"a": 1}\n{"b"')
        assert lines.readline(100) == b'{"a": 1}'
        theirs.sendall(b': 2}\n\n')
        assert lines.readline(100) == b'{"b": 2}' and lines.readline(100) == b""
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            lines.readline(100, time.monotonic() + 0.2)
        assert 0.15 < time.monotonic() - started < 2.0
        theirs.sendall(b"x" * 101)
        with pytest.raises(LineTooLong):
            lines.readline(100)
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"exactly 15 byte\n")
        theirs.close()
        lines = SocketLines(ours)
        assert lines.readline(15) == b"exactly 15 byte" and lines.readline(15) is None


# ---------------------------------------------------------------- the real server process

class Peer:
    """A raw protocol connection: JSON lines over a socket to 127.0.0.1."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_S)
        self.stream = self.sock.makefile("rb")

    def send(self, obj: dict[str, Any] | bytes) -> None:
        self.sock.sendall(obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n")

    def next(self, timeout: float = STEP_S) -> dict[str, Any] | None:
        """The next event; None when the server closed the connection."""
        self.sock.settimeout(timeout)
        raw = self.stream.readline()
        return json.loads(raw) if raw else None

    def until(self, rid: Any, kinds: tuple[str, ...] = ("done", "error")) -> list[dict[str, Any]]:
        events = []
        while True:
            event = self.next()
            assert event is not None, f"connection closed while waiting for {rid}; got {events[-3:]}"
            events.append(event)
            if event.get("id") == rid and event["event"] in kinds:
                return events

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def _long(rid: str) -> dict[str, Any]:
    # The whole context (8192 positions) of tokens on the fixture: it only ends early if cancelled.
    return {"type": "generate", "id": rid, "prompt": "a person walks forward", "max_new_tokens": 8192}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("net") / "model", seed=0)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("token"), TOKEN + "\n")


@pytest.fixture(scope="module")
def server(backend_python, model_dir, token_file):
    srv = TcpServer(backend_python, model_dir, "--token-file", str(token_file))
    yield srv
    srv.end()


def _authed(port: int) -> tuple[Peer, dict[str, Any]]:
    peer = Peer(port)
    peer.send({"type": "auth", "token": TOKEN})
    return peer, peer.next()


def test_ready_comes_only_after_the_token(server, model_dir):
    peer = Peer(server.port)
    readable, _, _ = select.select([peer.sock], [], [], 0.4)
    assert readable == []  # nothing, not even the handshake, before authentication
    peer.send({"type": "auth", "token": TOKEN})
    ready = peer.next()
    assert ready["event"] == "ready" and ready["protocol_version"] == PROTOCOL_VERSION
    assert ready["model"]["dir"] == str(model_dir) and ready["device"]["type"] == "cpu"
    peer.send({"type": "generate", "id": 7, "prompt": "a person jumps", "mode": "direct", "max_motion_tokens": 4})
    events = peer.until(7)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ack" and kinds[-1] == "done" and kinds.count("motion") == 1
    motion = next(e for e in events if e["event"] == "motion")
    assert motion["joints"]["shape"] == [4 * len(motion["tokens"]), 22, 3]
    peer.close()


@pytest.mark.parametrize("first_line, why", [
    ({"type": "auth", "token": TOKEN[:-1] + "?"}, "wrong token"),
    ({"type": "auth"}, "no token"),
    ({"type": "ping", "id": 1}, "the first line was not an auth request"),
    (b"not json at all\n", "the first line was not an auth request"),
    (b"x" * (AUTH_LINE_BYTES + 10), "longer than"),
])
def test_anything_but_the_right_token_first_is_unauthorized_and_closed(server, first_line, why):
    peer = Peer(server.port)
    peer.send(first_line)
    error = peer.next()
    assert (error["event"], error["id"], error["code"]) == ("error", None, "unauthorized")
    assert why in error["message"] and '"type": "auth"' in error["message"] and why in error["reason"]
    assert peer.next() is None  # closed: no ready, no second chance
    peer.close()
    assert TOKEN not in server.text()  # tokens are never logged


def test_a_line_over_64_mib_ends_only_that_connection(server):
    peer, ready = _authed(server.port)
    assert ready["event"] == "ready"
    peer.send(b" " * (MAX_LINE_BYTES + 1))  # no newline: the server stops reading just past the limit
    error = peer.next()
    assert (error["event"], error["code"]) == ("error", "line_too_long") and "64 MiB" in error["message"]
    assert peer.next()["event"] == "bye" and peer.next() is None
    peer.close()
    other, ready = _authed(server.port)
    assert ready["event"] == "ready"
    other.close()


def test_shutdown_from_a_client_ends_only_its_session(server):
    peer, _ = _authed(server.port)
    peer.send(_long("long"))
    assert peer.next()["event"] == "ack"
    peer.send({"type": "shutdown"})
    events = peer.until("long")
    assert events[-1]["event"] == "done" and events[-1]["stop_reason"] == "cancelled"
    assert peer.next()["event"] == "bye" and peer.next() is None
    peer.close()
    other, ready = _authed(server.port)  # the server keeps serving
    assert ready["event"] == "ready" and server.proc.poll() is None
    other.send({"type": "ping", "id": "p"})
    assert other.next() == {"event": "pong", "id": "p", "protocol_version": PROTOCOL_VERSION}
    other.close()
    assert "ending its session only" in server.text()


def test_sigterm_cancels_running_work_says_bye_to_everyone_and_exits_0(server):
    busy, _ = _authed(server.port)
    idle, _ = _authed(server.port)
    busy.send(_long("long"))
    busy.until("long", kinds=("text", "motion_tokens"))
    server.proc.send_signal(signal.SIGTERM)
    events = busy.until("long")
    assert events[-1]["event"] == "done" and events[-1]["stop_reason"] == "cancelled"
    assert busy.next()["event"] == "bye" and idle.next()["event"] == "bye"
    assert server.proc.wait(STEP_S) == 0
    assert "SIGTERM: shutting down" in server.text()
    busy.close()
    idle.close()


def test_loopback_without_token_says_ready_at_once_and_remote_shutdown_only_when_allowed(backend_python,
                                                                                        model_dir):
    srv = TcpServer(backend_python, model_dir, "--allow-remote-shutdown")
    try:
        first = Peer(srv.port)
        assert first.next()["event"] == "ready"  # no auth needed on loopback without a token
        first.send({"type": "auth", "token": "whatever-a-client-sends-first"})  # skipped
        first.send(_long("long"))
        assert first.next()["event"] == "ack"
        second = Peer(srv.port)
        assert second.next()["event"] == "ready"
        second.send({"type": "shutdown"})
        assert second.next()["event"] == "bye"
        events = first.until("long")
        assert events[-1]["stop_reason"] == "cancelled" and first.next()["event"] == "bye"
        assert srv.proc.wait(STEP_S) == 0
        first.close()
        second.close()
    finally:
        srv.end()


def test_serving_a_non_loopback_address_without_a_token_is_refused_before_anything_loads(backend_python, model_dir):
    out = subprocess.run([str(backend_python), "-m", "model_backend", "serve", "--listen", "0.0.0.0:0", "--model",
                          str(model_dir)], capture_output=True, text=True, env=backend_env(), cwd=ROOT, timeout=STEP_S)
    assert out.returncode == 2
    assert out.stderr.startswith("irg-motion serve: error: refusing to listen on 0.0.0.0:0 without a token")
    assert "listening on" not in out.stderr


@pytest.mark.parametrize("argv, needle", [
    (["--listen", "127.0.0.1:0", "--token-file", "{tmp}/none.txt"], "cannot read it"),
    (["--stdio", "--token-file", "{tmp}/none.txt"], "only apply to --listen"),
    (["--listen", "127.0.0.1:0", "--max-clients", "0"], "at least 1"),
    ([], "--listen HOST:PORT"),
])
def test_serve_option_mistakes_exit_2_with_the_fix(model_dir, tmp_path, capsys, argv, needle):
    from model_backend.cli import main

    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["serve", "--model", str(model_dir), *argv]) == 2
    assert needle in capsys.readouterr().err
