"""Fuzz harness, network: generated requests through the real HTTP server
(`serve --http 127.0.0.1:0`, two client tokens, small bounds).

Each case is one of: a body (a valid request, a mutated one, or a hostile raw line) POSTed
to a task path or a wrong one, with the right token, a wrong one or none; a DELETE of a
generated id; or raw bytes on a socket (broken request lines and headers, lying or huge
Content-Length, broken chunked bodies). Whatever happens, the answer is a 2xx/4xx/5xx-but-
never-500 status with a JSON error body, or a stream whose lines are JSON objects ending
with exactly one `done` or `error`. After every case: the process is alive, `/v1/health`
answers with no unfinished request, the other client's direct generation is served to its
`done`, and the server's peak memory (VmHWM) stays under PEAK_BOUND_KB.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from fuzz_profiles import fuzz_settings
from hostile import peak_memory_kb
from request_fuzz import TEXT, TYPES, hostile_line, mutated_request, valid_request
from serve_process import STEP_S, HttpServer, write_token_file

ALICE = "alice-fuzz-token-0123456789"
BOB = "bob-fuzz-token-0123456789ab"
PEAK_BOUND_KB = 1_500_000  # the fixture server touches about 0.45 GB
READ_S = 5.0               # a case's stream is read this long, then cancelled
REFUSALS = {400, 401, 404, 405, 408, 409, 411, 413, 414, 415, 422, 429, 431}
TASKS = ["generate", "critique", "refine", "caption", "encode", "decode"]
PATHS = st.one_of(st.sampled_from(TASKS), st.sampled_from(TYPES + ["", "generate/", "../v1/info", "%00", "x" * 3000]))


@pytest.fixture(scope="module")
def http_server(backend_python, tmp_path_factory):
    from model_backend.convert.fixture import make_fixture

    model = make_fixture(tmp_path_factory.mktemp("fuzz-http") / "model", seed=0)
    tokens = write_token_file(tmp_path_factory.mktemp("tokens"), f"{ALICE}\n{BOB}\n")
    server = HttpServer(backend_python, model, "--token-file", str(tokens), "--max-body-mb", "1",
                        "--max-per-client", "4", "--max-queue", "8", "--header-timeout", "1", "--body-timeout", "2",
                        "--send-timeout", "2", "--time-slice", "0.2")
    server.peak_kb = 0
    yield server
    print(f"\nfuzz http: peak memory of the HTTP server {server.peak_kb / 1024:.0f} MB")
    assert server.end() == 0


@st.composite
def post_case(draw) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one POST: a valid request at its own path (its id a string or
    none, as HTTP takes it), a mutated one at its own or another path, or a hostile raw line."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "raw"]))
    if kind == "raw":
        path, body = draw(PATHS), draw(hostile_line())
    else:
        request = dict(draw(valid_request() if kind == "valid" else mutated_request()))
        own = request.pop("type", None)
        path = own if kind == "valid" or draw(st.booleans()) else draw(PATHS)
        if kind == "valid":
            request["id"] = draw(st.sampled_from([None, f"v{request['id']}"]))
            request = {k: v for k, v in request.items() if v is not None}
        body = json.dumps(request).encode("utf-8", "surrogatepass")
    path = path if isinstance(path, str) else "generate"
    token = draw(st.sampled_from([ALICE, ALICE, ALICE, BOB, "wrong-token-0123456789", None, "", "Basic x"]))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "application/json; x"]))}
    if token is not None:
        headers["Authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
    return path, body, headers


@st.composite
def raw_case(draw) -> bytes:
    """Bytes written to a fresh socket: broken HTTP of several kinds."""
    kind = draw(st.sampled_from(["line", "length", "chunked", "headers", "bytes"]))
    auth = f"Authorization: Bearer {ALICE}\r\n"
    if kind == "line":
        return draw(st.sampled_from([b"GET\r\n\r\n", b"POST /v1/generate HTTP/9.9\r\n\r\n", b"\x00\xff\r\n\r\n",
                                     b"POST " + b"/a" * 5000 + b" HTTP/1.1\r\n\r\n", b"\r\n" * 50]))
    if kind == "length":
        length = draw(st.sampled_from(["-1", "99999999999999999999", "abc", "10", "1 2", str(2 << 20)]))
        return (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n\r\n"
                '{"prompt": "a"}').encode()
    if kind == "chunked":
        size = draw(st.sampled_from(["zz", "-5", "ffffffffffffffff", "3", "100000"]))
        return (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
                f"{size}\r\nabc\r\n0\r\n\r\n").encode()
    if kind == "headers":
        name = draw(st.sampled_from(["X-A", "Content-Length", "Authorization", "\x01", ""]))
        count = draw(st.integers(1, 300))
        return (f"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" + f"{name}: {'v' * 100}\r\n" * count
                + "\r\n").encode("utf-8", "surrogateescape")
    return draw(st.binary(max_size=300))


def _check_stream(response: requests.Response, server: HttpServer) -> None:
    """A 200 stream: JSON lines, `ack` first, exactly one terminal event, last. Cancelled after READ_S."""
    events: list[dict[str, Any]] = []
    deadline, cancelled = time.monotonic() + READ_S, False
    for line in response.iter_lines():
        if line:
            events.append(json.loads(line))
            assert isinstance(events[-1], dict) and "event" in events[-1], events[-1]
        if not cancelled and time.monotonic() > deadline and events:
            requests.delete(f"{server.url}/v1/requests/{events[0]['id']}",
                            headers={"Authorization": response.request.headers["Authorization"]}, timeout=STEP_S)
            cancelled = True
    assert events and events[0]["event"] == "ack", events[:3]
    ends = [i for i, e in enumerate(events) if e["event"] in ("done", "error")]
    assert ends == [len(events) - 1], events[-3:]


def _send_raw(server: HttpServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=STEP_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""  # the server closed first: refusing early is allowed
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _healthy(server: HttpServer) -> None:
    assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}:\n{server.text()[-3000:]}"
    deadline = time.monotonic() + STEP_S
    while requests.get(f"{server.url}/v1/health", timeout=STEP_S).json()["requests"]:
        assert time.monotonic() < deadline, "a request of the case never ended"
        time.sleep(0.05)
    response = requests.post(f"{server.url}/v1/generate", json={"prompt": "a person jumps", "mode": "direct",
                                                                "max_motion_tokens": 4},
                             headers={"Authorization": f"Bearer {BOB}"}, stream=True, timeout=STEP_S)
    events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[-1]["event"] == "done" and events[-1]["motions"] == 1, events[-1]
    server.peak_kb = max(server.peak_kb, peak_memory_kb(server.proc.pid))
    assert server.peak_kb < PEAK_BOUND_KB, f"peak memory {server.peak_kb} kB"


def test_fuzz_requests_through_the_http_server(http_server):
    server = http_server

    @fuzz_settings("http")
    @given(case=st.one_of(post_case(), raw_case(), TEXT))
    def case(case) -> None:
        if isinstance(case, tuple):  # a POST
            path, body, headers = case
            response = requests.post(f"{server.url}/v1/{path}", data=body, headers=headers, stream=True,
                                     timeout=STEP_S)
            assert response.status_code != 500 and response.status_code < 600, response.text[:500]
            if response.status_code == 200 and path in TASKS:
                _check_stream(response, server)
            else:
                assert response.status_code in REFUSALS, (response.status_code, response.text[:500])
                json.loads(response.content)  # every refusal is a JSON body
        elif isinstance(case, bytes):
            answer = _send_raw(server, case)
            assert not answer.startswith(b"HTTP/1.1 500"), answer[:300]
        else:  # a DELETE of a generated id
            response = requests.delete(f"{server.url}/v1/requests/{quote(case, safe='', errors='surrogatepass')}",
                                       headers={"Authorization": f"Bearer {ALICE}"}, timeout=STEP_S)
            assert response.status_code in REFUSALS, (response.status_code, response.text[:300])
        _healthy(server)

    case()
