"""The HTTP server (`python -m model_backend serve --http 127.0.0.1:0`) as a real subprocess, spoken to with
`requests` and raw sockets on 127.0.0.1, plus its pure parts (tokens, addresses, the fair gate).

Every fault is checked for what it must not disturb: while it happens, another client's request is
served to its `done`. Generations are tiny (direct, a few motion tokens) except the "long" ones, which
the untrained fixture would run for minutes: they exist to be cancelled, interrupted or overtaken.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from model_backend.serve.access import AccessError, TokenSet, parse_address, read_tokens
from model_backend.serve.gate import FairGate
from model_backend.wire.protocol import EVENT_TYPES, PROTOCOL_VERSION
from serve_process import STEP_S, HttpServer, write_token_file

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
DIRECT = {"prompt": "a person jumps", "mode": "direct", "max_motion_tokens": 4}
LONG = {"prompt": "a person walks forward", "max_new_tokens": 8000}  # minutes unless stopped
# stage-1 rounds with previews: about 0.5 MB of events a round, to fill a slow reader's buffers
BULKY = {"prompt": "a person walks", "mode": "stage1_loop", "max_rounds": 20, "max_motion_tokens": 50,
         "preview": True}


# ---------------------------------------------------------------- pure parts

def test_tokens_are_one_per_line_and_matched_to_their_own_identity(tmp_path):
    path = write_token_file(tmp_path, f"# studio tokens\n{ALICE}\n\n  {BOB}  \n")
    tokens = read_tokens(path, environ={})
    assert len(tokens) == 2 and ALICE not in repr(tokens)
    alice, bob = tokens.match(ALICE), tokens.match(BOB)
    assert alice and bob and alice != bob and ALICE not in alice
    assert tokens.match(ALICE[:-1]) is None and tokens.match(None) is None and tokens.match("") is None
    assert not read_tokens(None, environ={}) and len(read_tokens(None, environ={"IRG_SERVER_TOKEN": BOB})) == 1
    with pytest.raises(AccessError, match="has 5 characters"):
        read_tokens(write_token_file(tmp_path, f"{ALICE}\nshort\n"), environ={})
    with pytest.raises(AccessError, match="holds no token"):
        read_tokens(write_token_file(tmp_path, "# nothing\n"), environ={})


@pytest.mark.parametrize("text, expected", [("127.0.0.1:7700", ("127.0.0.1", 7700)), ("7700", ("127.0.0.1", 7700)),
                                            ("[::1]:9", ("::1", 9)), ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_addresses_default_to_loopback(text, expected):
    assert parse_address(text) == expected


def test_the_gate_gives_a_waiting_request_the_engine_within_one_slice():
    gate = FairGate(max_active=2, time_slice_s=0.05)
    order: list[str] = []
    long_started = threading.Event()

    def long_request() -> None:
        with gate.hold() as admitted:
            assert admitted
            long_started.set()
            for _ in range(400):  # 400 "tokens" of 1 ms: it would hold the engine 0.4 s without turns
                gate.pace()
                order.append("long")
                time.sleep(0.001)

    thread = threading.Thread(target=long_request)
    thread.start()
    long_started.wait(5)
    with gate.hold() as admitted:
        assert admitted
        order.append("short")
    thread.join(5)
    assert gate.handovers >= 1 and "long" in order[order.index("short"):]  # it ran before the long one ended


def test_a_cancelled_waiter_leaves_the_gate_at_once():
    gate = FairGate(max_active=1, time_slice_s=10.0)
    cancel = threading.Event()
    result: list[bool] = []
    with gate.hold():
        waiter = threading.Thread(target=lambda: result.append(gate.hold(cancel).__enter__()))
        waiter.start()
        time.sleep(0.1)
        cancel.set()
        waiter.join(2)
        assert result == [False] and gate.load == 1


# ---------------------------------------------------------------- the real server

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("http") / "model", seed=0)


@pytest.fixture(scope="module")
def server(backend_python, model_dir, tmp_path_factory):
    tokens = write_token_file(tmp_path_factory.mktemp("tokens"), f"{ALICE}\n{BOB}\n")
    srv = HttpServer(backend_python, model_dir, "--token-file", str(tokens), "--max-queue", "8",
                     "--max-per-client", "4", "--max-body-mb", "1", "--send-timeout", "2", "--header-timeout", "1",
                     "--time-slice", "0.2", "--max-active", "6")
    yield srv
    srv.end()


def auth(token: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(server, kind: str, body: Any, token: str = ALICE, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/v1/{kind}", json=body, headers=auth(token), timeout=STEP_S, **kwargs)


def events_of(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line]


def direct_works(server, token: str = BOB) -> list[dict[str, Any]]:
    """A small generation served to its end (what every fault must leave working)."""
    events = events_of(post(server, "generate", DIRECT, token, stream=True))
    assert events[-1]["event"] == "done" and events[-1]["motions"] == 1, events[-1]
    return events


class Stream:
    """A streaming request read in the background (so the test can act while it runs)."""

    def __init__(self, server, body: dict[str, Any], kind: str = "generate", token: str = ALICE):
        self.response = post(server, kind, body, token, stream=True)
        assert self.response.status_code == 200, self.response.text
        self.events: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line:
                    self.events.append(json.loads(line))
        except requests.RequestException as exc:
            self.error = exc

    def wait_for(self, kinds: tuple[str, ...], timeout: float = STEP_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events if e["event"] in kinds]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {kinds} within {timeout} s: {self.events[-3:]}")

    @property
    def id(self) -> str:
        return self.wait_for(("ack",))["id"]


def idle(server, timeout: float = STEP_S) -> None:
    """Wait until the server has no unfinished request (every cancelled one has ended)."""
    deadline = time.monotonic() + timeout
    while requests.get(f"{server.url}/v1/health", timeout=STEP_S).json()["requests"]:
        assert time.monotonic() < deadline, "requests still unfinished"
        time.sleep(0.05)


def test_info_health_and_openapi(server, model_dir):
    info = requests.get(f"{server.url}/v1/info", headers=auth(), timeout=STEP_S).json()
    assert info["event"] == "info" and info["protocol_version"] == PROTOCOL_VERSION
    assert info["model"]["dir"] == str(model_dir) and info["model"]["fixture"] is True
    assert info["server"]["engine"] == "transformers" and info["server"]["batching"] is False
    limits = info["server"]["limits"]
    assert (limits["max_queue"], limits["max_per_client"], limits["max_body_bytes"]) == (8, 4, 1 << 20)
    health = requests.get(f"{server.url}/v1/health", timeout=STEP_S).json()  # no token needed
    assert health["status"] == "ok" and health["requests"] == 0
    paths = requests.get(f"{server.url}/openapi.json", timeout=STEP_S).json()["paths"]
    assert {"/v1/generate", "/v1/decode", "/v1/info", "/v1/requests/{request_id}"} <= set(paths)


def test_a_generation_streams_the_stdio_events_as_ndjson(server):
    response = post(server, "generate", {**DIRECT, "id": "mine-1"}, stream=True)
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["x-request-id"] == "mine-1"
    events = events_of(response)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ack" and kinds[-1] == "done" and kinds.count("motion") == 1
    assert set(kinds) <= set(EVENT_TYPES) and {e["id"] for e in events} == {"mine-1"}
    motion = next(e for e in events if e["event"] == "motion")
    assert 2 <= len(motion["tokens"]) <= 4 and motion["joints"]["shape"] == [4 * len(motion["tokens"]), 22, 3]
    assert events[0] == {"event": "ack", "id": "mine-1", "type": "generate", "queued": 0}


@pytest.mark.parametrize("headers, reason", [({}, "no token"), (auth(ALICE + "x"), "wrong token"),
                                             ({"Authorization": f"Basic {ALICE}"}, "not `Bearer TOKEN`")])
def test_a_missing_or_wrong_token_is_refused_before_the_body_is_read(server, headers, reason):
    started = time.monotonic()
    response = requests.post(f"{server.url}/v1/generate", data=b"x" * (4 << 20), headers=headers, timeout=STEP_S)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    error = response.json()
    assert (error["event"], error["code"], error["id"]) == ("error", "unauthorized", None)
    assert reason in error["reason"] and ALICE not in response.text
    assert time.monotonic() - started < 5.0
    assert ALICE not in server.text() and BOB not in server.text()


@pytest.mark.parametrize("body, status, code, needle", [
    (b'{"prompt": "a person', 400, "bad_json", "not a JSON line"),
    (b'[1, 2]', 400, "bad_json", "each line must be a JSON object"),
    (json.dumps({**DIRECT, "temprature": 0.5}).encode(), 400, "bad_request", "unknown field(s) temprature"),
    (json.dumps({**DIRECT, "type": "caption"}).encode(), 400, "bad_request", "this is /v1/generate"),
    (json.dumps({"prompt": "x" * 2_000_000}).encode(), 413, "bad_request", "more than the server's bound"),
])
def test_bad_bodies_are_refused_without_disturbing_a_running_request(server, body, status, code, needle):
    other = Stream(server, LONG, token=BOB)
    other.wait_for(("text", "motion_tokens"))
    response = requests.post(f"{server.url}/v1/generate", data=body, headers=auth(), timeout=STEP_S)
    assert response.status_code == status
    error = response.json()
    assert error["code"] == code and needle in error["message"]
    assert other.error is None and not [e for e in other.events if e["event"] in ("done", "error")]
    assert requests.delete(f"{server.url}/v1/requests/{other.id}", headers=auth(BOB), timeout=STEP_S).ok
    assert other.wait_for(("done",))["stop_reason"] == "cancelled"
    idle(server)


def test_an_oversized_chunked_body_is_cut_off_at_the_bound(server):
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB in all, no Content-Length
    response = requests.post(f"{server.url}/v1/generate", data=chunks(), headers=auth(), timeout=STEP_S)
    assert response.status_code == 413 and "1048576 bytes" in response.json()["message"]


def test_cancel_is_scoped_to_the_callers_token(server):
    mine = Stream(server, LONG)
    mine.wait_for(("text", "motion_tokens"))
    assert requests.delete(f"{server.url}/v1/requests/{mine.id}", headers=auth(BOB), timeout=STEP_S).status_code == 404
    assert not [e for e in mine.events if e["event"] == "done"]
    answer = requests.delete(f"{server.url}/v1/requests/{mine.id}", headers=auth(), timeout=STEP_S)
    assert answer.json() == {"cancelled": True, "id": mine.id}
    done = mine.wait_for(("done",))
    assert done["stop_reason"] == "cancelled" and done["id"] == mine.id
    idle(server)


def test_a_duplicate_id_and_the_per_client_bound_are_refused(server):
    first = Stream(server, {**LONG, "id": "dup"})
    first.wait_for(("text", "motion_tokens"))
    duplicate = post(server, "generate", {**DIRECT, "id": "dup"})
    assert duplicate.status_code == 409 and "already in use" in duplicate.json()["message"]
    assert post(server, "generate", {**DIRECT, "id": "dup"}, token=BOB).status_code == 200  # ids are per client
    more = [Stream(server, LONG) for _ in range(3)]  # alice now has 4 unfinished requests: her bound
    refused = post(server, "generate", DIRECT)
    assert refused.status_code == 429 and refused.json()["code"] == "busy"
    assert int(refused.headers["retry-after"]) >= 1 and "the bound per client" in refused.json()["message"]
    direct_works(server)  # bob is not limited by alice's requests
    for stream in [first, *more]:
        requests.delete(f"{server.url}/v1/requests/{stream.id}", headers=auth(), timeout=STEP_S)
    idle(server)


def test_a_short_request_overtakes_a_long_one(server):
    long = Stream(server, LONG)
    long.wait_for(("text", "motion_tokens"))
    started = time.monotonic()
    direct_works(server)
    assert time.monotonic() - started < 10.0  # a turn of 0.2 s, not the long request's minutes
    assert not [e for e in long.events if e["event"] == "done"]  # it is still running
    requests.delete(f"{server.url}/v1/requests/{long.id}", headers=auth(), timeout=STEP_S)
    long.wait_for(("done",))
    idle(server)


def test_a_client_that_vanishes_mid_stream_has_its_generation_cancelled(server):
    vanishing = post(server, "generate", {**LONG, "id": "gone"}, stream=True)
    lines = vanishing.iter_lines()
    assert json.loads(next(lines))["event"] == "ack"
    next(lines)
    vanishing.close()
    server.wait_log("request 'gone': the client went away; cancelled")
    idle(server)
    direct_works(server)


def test_a_client_that_stops_reading_is_dropped_and_its_request_cancelled(server):
    body = json.dumps({**BULKY, "id": "slow"}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {ALICE}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        direct_works(server)  # served while the slow reader's request runs
        server.wait_log("request 'slow': the client took nothing for 2 s; dropped", timeout=60.0)
        idle(server)
    finally:
        sock.close()


def test_connections_that_never_send_a_request_are_closed_and_hold_nothing(server):
    idle_sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    partial = socket.create_connection(("127.0.0.1", server.port))
    partial.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: test\r\n")  # headers never finished
    try:
        direct_works(server)  # 21 open connections take nothing from a real client
        partial.settimeout(5.0)
        started = time.monotonic()
        assert partial.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 5.0
    finally:
        for sock in [*idle_sockets, partial]:
            sock.close()


def test_sigterm_ends_open_streams_with_done_and_exits_cleanly(backend_python, model_dir):
    srv = HttpServer(backend_python, model_dir)
    try:
        stream = Stream(srv, LONG)
        stream.wait_for(("text", "motion_tokens"))
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(STEP_S) == 0
        stream.thread.join(STEP_S)
        assert stream.events[-1]["event"] == "done" and stream.events[-1]["stop_reason"] == "cancelled"
    finally:
        srv.end()


def test_tls_serves_https_with_the_given_certificate(backend_python, model_dir, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    srv = HttpServer(backend_python, model_dir, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        assert requests.get(f"{srv.url}/v1/health", verify=str(cert), timeout=STEP_S).json()["status"] == "ok"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{srv.url}/v1/health", timeout=STEP_S)  # an unknown certificate is not trusted
    finally:
        srv.end()


def test_no_token_means_loopback_only(backend_python, model_dir):
    result = subprocess.run([str(backend_python), "-m", "model_backend", "serve", "--http", "0.0.0.0:0",
                             "--model", str(model_dir)], capture_output=True, text=True, timeout=STEP_S)
    assert result.returncode == 2 and "without a token" in result.stderr


def test_the_raw_tcp_transport_is_retired(backend_python, model_dir):
    result = subprocess.run([str(backend_python), "-m", "model_backend", "serve", "--listen", "127.0.0.1:0",
                             "--model", str(model_dir)], capture_output=True, text=True, timeout=STEP_S)
    assert result.returncode == 2 and "--http" in result.stderr
