"""RemoteBackendClient (the add-on's client on `requests`) against the real
`python -m model_backend serve --http 127.0.0.1:0` process.

Everything runs on 127.0.0.1. Generations are tiny (direct, 4 motion tokens) except the
"long" ones, which the untrained fixture would run for minutes: they exist to be cancelled
or cut off, so a prompt finish proves the point.
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from irg_blender_addon.backend.base import BackendError
from irg_blender_addon.backend.remote import RemoteBackendClient, parse_url
from model_backend.wire.protocol import PROTOCOL_VERSION, decode_array
from serve_process import STEP_S, HttpServer, write_token_file

TOKEN = "Zt5-remote-client-test-token-0042"
DIRECT = {"type": "generate", "prompt": "a person jumps", "mode": "direct", "max_motion_tokens": 4}
LONG = {"type": "generate", "prompt": "a person walks forward", "max_new_tokens": 8000}  # minutes unless stopped


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("remote") / "model", seed=0)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("token"), TOKEN)


@pytest.fixture(scope="module")
def server(backend_python, model_dir, token_file):
    srv = HttpServer(backend_python, model_dir, "--token-file", str(token_file))
    yield srv
    srv.end()


@pytest.fixture()
def clients():
    made: list[RemoteBackendClient] = []
    yield made
    for client in made:
        client.stop()


def connect(clients: list, url: str, token: str | None = TOKEN, **kwargs) -> RemoteBackendClient:
    client = RemoteBackendClient(url, token, timeout=5.0, **kwargs)
    clients.append(client)
    return client


def events_until(client: RemoteBackendClient, done: Callable[[dict[str, Any]], bool],
                 timeout: float = STEP_S) -> list[dict[str, Any]]:
    """Poll (as the add-on's timer does) until an event matches; every event seen."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll(16):
            seen.append(event)
            if done(event):
                return seen
        time.sleep(0.005)
    raise AssertionError(f"no matching event within {timeout} s; last events: {seen[-3:]}")


def ended(rid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("id") == rid and e.get("event") in ("done", "error")


def running(rid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("id") == rid and e.get("event") in ("text", "motion_tokens")


# ---------------------------------------------------------------- URLs and unreachable servers

@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:7700", "http://127.0.0.1:7700"), (" https://gpu-box/ ", "https://gpu-box"),
    ("http://[::1]:7700/", "http://[::1]:7700"),
])
def test_urls_are_http_or_https(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url, needle", [("", "empty"), ("127.0.0.1:7700", "http://HOST:PORT"),
                                         ("tcp://127.0.0.1:7700", "retired"), ("http://h:0", "port 0"),
                                         ("http://h:99999", "not valid"), ("ftp://h:1", "http://HOST:PORT")])
def test_bad_urls_name_the_expected_form(url, needle):
    with pytest.raises(BackendError, match=needle):
        parse_url(url)


def test_nothing_listening_says_how_to_start_a_server(clients):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = connect(clients, f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError) as err:
        client.ensure_started()
    assert str(err.value).startswith(f"No IRG Motion server answers at http://127.0.0.1:{port}: start it with "
                                     "`irg-motion serve --http")
    assert client.state == "dead" and str(err.value) in client.log_tail()


def _fake_server(handler_body: Callable[[BaseHTTPRequestHandler], None]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler_body(self)
        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_a_server_of_another_protocol_version_is_refused(clients):
    def answer(handler: BaseHTTPRequestHandler) -> None:
        body = ('{"event": "info", "protocol_version": %d}' % (PROTOCOL_VERSION + 1)).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    httpd = _fake_server(answer)
    try:
        client = connect(clients, f"http://127.0.0.1:{httpd.server_address[1]}")
        with pytest.raises(BackendError, match=f"speaks protocol version {PROTOCOL_VERSION + 1}"):
            client.wait_ready()
        assert client.state == "dead" and client.ready_info is None
    finally:
        httpd.shutdown()


def test_a_server_that_goes_silent_trips_the_watchdog(clients):
    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "GET":
            body = ('{"event": "info", "protocol_version": %d}' % PROTOCOL_VERSION).encode()
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        line = b'{"event": "ack", "id": "r1", "type": "generate", "queued": 0}\n'
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        handler.wfile.flush()
        time.sleep(5)  # then nothing, not even a keep-alive: hung
    httpd = _fake_server(answer)
    try:
        client = connect(clients, f"http://127.0.0.1:{httpd.server_address[1]}", read_timeout=1.0)
        client.wait_ready()
        rid = client.send({**DIRECT, "id": "r1"})
        events = events_until(client, ended(rid))
        assert [e["event"] for e in events] == ["ready", "ack", "error"]
        assert events[-1]["code"] == "server_hung" and "sent nothing for 1 s" in events[-1]["message"]
        assert client.state == "dead"
    finally:
        httpd.shutdown()


# ---------------------------------------------------------------- the real server

def test_handshake_then_a_direct_generation_streams_a_motion(server, clients, model_dir):
    client = connect(clients, server.url)
    assert client.state == "stopped" and client.pid is None
    ready = client.wait_ready(STEP_S)
    assert client.state == "ready" and ready["event"] == "ready" and ready["protocol_version"] == PROTOCOL_VERSION
    assert ready["model"]["dir"] == str(model_dir) and ready["model"]["fixture"] is True
    assert client.batching is False and client.max_per_client == 16
    assert "ready: irg-motion" in client.log_tail() and TOKEN not in client.log_tail() + repr(client)
    assert TOKEN not in repr(client.key)
    assert client.poll()[0]["event"] == "ready"  # the handshake is also an event, as with the local client

    rid = client.send(DIRECT)
    events = events_until(client, ended(rid))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ack" and kinds[-1] == "done" and kinds.count("motion") == 1
    motion = next(e for e in events if e["event"] == "motion")
    streamed = [t for e in events if e["event"] == "motion_tokens" for t in e["tokens"]]
    assert 2 <= len(motion["tokens"]) <= 4 and streamed == motion["tokens"]
    joints = decode_array(motion["joints"])
    assert joints.shape == (4 * len(motion["tokens"]), 22, 3) and np.isfinite(joints).all()
    client.send({"type": "ping", "id": "p1"})
    assert events_until(client, lambda e: e.get("event") == "pong")[-1]["id"] == "p1"


@pytest.mark.parametrize("token, needle", [(TOKEN[:-1] + "!", "wrong token"), (None, "no token")])
def test_a_wrong_or_missing_token_is_refused_clearly(server, clients, token, needle):
    client = connect(clients, server.url, token)
    with pytest.raises(BackendError) as err:
        client.wait_ready(STEP_S)
    assert str(err.value) == (f"The server at {server.url} refused the token ({needle}): set Preferences > "
                              "Add-ons > IRG Motion > Server Token to a token from the server's --token-file "
                              "(ask whoever runs the server).")
    assert client.state == "dead"
    with pytest.raises(BackendError, match="Not connected"):
        client.send(DIRECT)


def test_cancel_and_stop_end_requests_on_the_server(server, clients):
    client = connect(clients, server.url)
    client.wait_ready(STEP_S)
    rid = client.send(LONG)
    events_until(client, running(rid))
    client.send({"type": "cancel", "target": rid})
    done = events_until(client, ended(rid))[-1]
    assert done["event"] == "done" and done["stop_reason"] == "cancelled"

    rid = client.send(LONG)
    events_until(client, running(rid))
    client.stop()  # closing the stream cancels the request on the server
    assert client.state == "stopped" and client.poll() == []
    server_log = server.wait_log(f"request '{rid}': the client went away; cancelled")
    assert rid in server_log


def test_concurrent_requests_of_one_client_all_finish(server, clients):
    client = connect(clients, server.url)
    client.wait_ready(STEP_S)
    ids = [client.send(DIRECT) for _ in range(3)]
    ends: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + STEP_S * 2
    while len(ends) < 3 and time.monotonic() < deadline:
        for event in client.poll():
            if event.get("event") in ("done", "error"):
                ends[event["id"]] = event
        time.sleep(0.01)
    assert sorted(ends) == sorted(ids) and all(e["event"] == "done" for e in ends.values())


def test_losing_the_server_mid_generation_gives_one_clear_error(backend_python, model_dir, token_file, clients):
    srv = HttpServer(backend_python, model_dir, "--token-file", str(token_file))
    try:
        client = connect(clients, srv.url)
        client.wait_ready(STEP_S)
        rid = client.send(LONG)
        events_until(client, running(rid))
        srv.proc.kill()  # no goodbye: the machine went away
        srv.proc.wait(STEP_S)
        events = events_until(client, ended(rid))
        errors = [e for e in events if e["event"] == "error"]
        assert len(errors) == 1 and (errors[0]["code"], errors[0]["id"]) == ("connection_lost", rid)
        assert errors[0]["message"].startswith(f"The connection to the IRG Motion server at {srv.url} was lost")
        assert "nothing was written" in errors[0]["message"]
        assert client.state == "dead" and client.death_message() == errors[0]["message"]
        time.sleep(0.2)
        assert client.poll() == []  # exactly one error
        with pytest.raises(BackendError, match="No IRG Motion server answers"):
            client.ensure_started()
    finally:
        srv.end()
