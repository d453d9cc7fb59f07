"""RemoteBackendClient against the real `python -m model_backend serve --listen 127.0.0.1:0` process.

Everything runs on 127.0.0.1. Generations are tiny (direct, 4 motion tokens) except
the "long" ones, which the untrained fixture would run for minutes: they exist to be
cancelled, so a prompt finish proves the cancel.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from irg_blender_addon.backend import registry
from irg_blender_addon.backend.base import BackendError
from irg_blender_addon.backend.remote import RemoteBackendClient, parse_url
from irg_blender_addon.backend.registry import get_remote_client
from model_backend.wire.protocol import PROTOCOL_VERSION, decode_array
from serve_process import STEP_S, TcpServer, write_token_file

TOKEN = "Zt5-remote-client-test-token-0042"
DIRECT = {"type": "generate", "prompt": "a person jumps", "mode": "direct", "max_motion_tokens": 4}
LONG = {"type": "generate", "prompt": "a person walks forward", "max_new_tokens": 60000}  # ~6 min unless cancelled


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("remote") / "model", seed=0)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("token"), TOKEN)


@pytest.fixture(scope="module")
def server(backend_python, model_dir, token_file):
    srv = TcpServer(backend_python, model_dir, "--token-file", str(token_file))
    yield srv
    srv.end()


@pytest.fixture()
def clients():
    """Clients made by a test; all disconnected afterwards."""
    made: list[RemoteBackendClient] = []
    yield made
    for client in made:
        client.stop()
    registry.shutdown_all()


def connect(clients: list, url: str, token: str | None = TOKEN) -> RemoteBackendClient:
    client = RemoteBackendClient(url, token, timeout=5.0)
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


# ---------------------------------------------------------------- URLs and unreachable servers (no server)

@pytest.mark.parametrize("url, expected", [
    ("tcp://127.0.0.1:7700", ("127.0.0.1", 7700)), (" tcp://gpu-box:9 ", ("gpu-box", 9)),
    ("tcp://[::1]:7700", ("::1", 7700)), ("tcp://127.0.0.1:7700/", ("127.0.0.1", 7700)),
])
def test_urls_are_tcp_host_port(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["", "127.0.0.1:7700", "http://127.0.0.1:7700", "tcp://127.0.0.1",
                                 "tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "tcp://:7700", "tcp://h:1/x"])
def test_bad_urls_name_the_expected_form(url):
    with pytest.raises(BackendError) as err:
        parse_url(url)
    assert "tcp://" in str(err.value)


def test_nothing_listening_says_how_to_start_a_server(clients):
    with socket.socket() as probe:  # a port that was just free on 127.0.0.1
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = connect(clients, f"tcp://127.0.0.1:{port}")
    with pytest.raises(BackendError) as err:
        client.ensure_started()
    message = str(err.value)
    assert message.startswith(f"No IRG Motion server at 127.0.0.1:{port}: start it with `irg-motion serve --listen")
    assert "fix the Server URL in Preferences" in message
    assert client.state == "dead" and message in client.log_tail()


def test_a_server_of_another_protocol_version_is_refused(clients):
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def other_server() -> None:
        conn, _ = listener.accept()
        with conn:
            received.append(conn.makefile("rb").readline())
            conn.sendall(json.dumps({"event": "ready", "protocol_version": PROTOCOL_VERSION + 1}).encode() + b"\n")
            conn.recv(1)  # until the client hangs up
    thread = threading.Thread(target=other_server, daemon=True)
    thread.start()
    client = connect(clients, f"tcp://127.0.0.1:{listener.getsockname()[1]}", token=None)
    with pytest.raises(BackendError) as err:
        client.wait_ready(STEP_S)
    assert f"speaks protocol version {PROTOCOL_VERSION + 1}" in str(err.value)
    assert client.state == "dead" and client.ready_info is None
    assert [e["code"] for e in client.poll() if e["event"] == "error"] == ["protocol_mismatch"]
    assert json.loads(received[0]) == {"type": "auth"}  # a client without a token still opens with auth
    thread.join(5)
    listener.close()


# ---------------------------------------------------------------- the real server

def test_handshake_after_auth_then_a_direct_generation_streams_a_motion(server, clients, model_dir):
    client = connect(clients, server.url)
    assert client.state == "stopped" and client.pid is None
    ready = client.wait_ready(STEP_S)
    assert client.state == "ready" and ready["protocol_version"] == PROTOCOL_VERSION
    assert ready["model"]["dir"] == str(model_dir) and ready["model"]["fixture"] is True
    assert "ready: irg-motion" in client.log_tail() and TOKEN not in client.log_tail() + repr(client)
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
    assert events[-1]["motions"] == 1 and events[-1]["stop_reason"] == "eos"
    client.ensure_started()  # already connected: nothing changes
    assert client.state == "ready" and client.ready_info is ready


@pytest.mark.parametrize("token, needle", [(TOKEN[:-1] + "!", "wrong token"), (None, "no token")])
def test_a_wrong_or_missing_token_is_refused_clearly(server, clients, token, needle):
    client = connect(clients, server.url, token)
    with pytest.raises(BackendError) as err:
        client.wait_ready(STEP_S)
    message = str(err.value)
    assert message == (f"The server at {server.url} refused the token ({needle}): set Preferences > Add-ons > "
                       "IRG Motion > Server Token to the content of the server's --token-file (ask whoever runs "
                       "the server).")
    assert client.state == "dead"
    errors = [e for e in client.poll() if e["event"] == "error"]
    assert [(e["code"], e["id"]) for e in errors] == [("unauthorized", None)] and errors[0]["message"] == message
    with pytest.raises(BackendError, match="Not connected"):
        client.send(DIRECT)


def test_disconnecting_mid_generation_cancels_it_and_the_server_serves_the_next_client(server, clients):
    first = connect(clients, server.url)
    first.wait_ready(STEP_S)
    rid = first.send(LONG)
    events_until(first, lambda e: e.get("id") == rid and e.get("event") in ("text", "motion_tokens"))
    first.stop()
    assert first.state == "stopped"
    with pytest.raises(BackendError):
        first.send(DIRECT)

    second = connect(clients, server.url)
    second.wait_ready(STEP_S)
    started = time.monotonic()
    rid2 = second.send(DIRECT)
    events = events_until(second, ended(rid2), timeout=15.0)
    # Had the long request kept the engine, this would wait for minutes.
    assert events[-1]["event"] == "done" and events[-1]["motions"] == 1
    assert time.monotonic() - started < 10.0
    assert "end of its input; cancelling its requests" in "".join(server.log)


def test_two_clients_queue_one_request_at_a_time(server, clients):
    first, second = connect(clients, server.url), connect(clients, server.url)
    first.wait_ready(STEP_S)
    second.wait_ready(STEP_S)
    long_id = first.send(LONG)
    events_until(first, lambda e: e.get("id") == long_id and e.get("event") in ("text", "motion_tokens"))
    queued_id = second.send(DIRECT)
    ack = events_until(second, lambda e: e.get("event") == "ack")[-1]
    assert ack["id"] == queued_id and ack["queued"] == 1  # the other client's request runs first
    time.sleep(0.5)
    assert [e["event"] for e in second.poll()] == []  # it waits while the first one streams
    assert any(e.get("event") in ("text", "motion_tokens") for e in first.poll(1000))

    first.send({"type": "cancel", "target": long_id})
    first_done = events_until(first, ended(long_id))[-1]
    assert first_done["event"] == "done" and first_done["stop_reason"] == "cancelled"
    events = events_until(second, ended(queued_id))
    assert events[-1]["event"] == "done" and events[-1]["motions"] == 1


def test_registry_reuses_a_client_per_url_and_token(server):
    try:
        client = get_remote_client(server.url, TOKEN)
        assert get_remote_client(server.url, f" {TOKEN}\n") is client  # pasted with whitespace: same token
        client.wait_ready(STEP_S)
        assert registry.running_clients() == [client]
        other = get_remote_client(server.url, TOKEN + "x")
        assert other is not client and client.state == "stopped"  # switching servers disconnects
        assert TOKEN not in repr(client.key)
    finally:
        registry.shutdown_all()
    assert registry.running_clients() == []


def test_losing_the_server_mid_generation_leaves_a_dead_client_with_a_clear_message(backend_python, model_dir,
                                                                                   token_file, clients):
    srv = TcpServer(backend_python, model_dir, "--token-file", str(token_file))
    try:
        client = connect(clients, srv.url)
        client.wait_ready(STEP_S)
        rid = client.send(LONG)
        events_until(client, lambda e: e.get("id") == rid and e.get("event") in ("text", "motion_tokens"))
        srv.proc.kill()  # no bye: the machine went away
        srv.proc.wait(STEP_S)
        error = events_until(client, lambda e: e.get("event") == "error")[-1]
        assert (error["code"], error["id"]) == ("connection_lost", None)
        assert error["message"].startswith(f"The connection to the IRG Motion server at {srv.url} was lost")
        assert "a running generation stopped" in error["message"]
        assert client.state == "dead" and client.death_message() == error["message"]
        with pytest.raises(BackendError, match="Not connected"):
            client.send(DIRECT)
        with pytest.raises(BackendError, match="No IRG Motion server at"):
            client.ensure_started()  # reconnecting finds nothing listening any more
    finally:
        srv.end()
