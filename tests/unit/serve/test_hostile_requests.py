"""Issue 14, findings 1-5: one request must not kill, silence or hang the stdio backend.

Each test sends what a careless or hostile client might through the real
`serve --stdio` process (address space capped at 3 GiB, so a runaway allocation fails
fast instead of taking the machine down) and then checks the server still answers
`ping` and serves a normal direct generation.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hostile import StdioServer
from serve_process import ROOT, backend_env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("hostile") / "model", seed=0)


@pytest.fixture()
def server(request, backend_python, model_dir):
    """One server per module, started again when a test left it dead."""
    holder = request.module.__dict__.setdefault("_server", {})
    current = holder.get("server")
    if current is None or current.proc.poll() is not None:
        current = holder["server"] = StdioServer(backend_python, model_dir)
        request.addfinalizer(lambda: None)
    yield current


@pytest.fixture(scope="module", autouse=True)
def _stop_server(request):
    yield
    current = request.module.__dict__.get("_server", {}).get("server")
    if current is not None:
        current.close()


def _first_answer(server: StdioServer, rid) -> dict:
    """The first event about `rid` (an `error` refusal, or the `ack` of an accepted request)."""
    return server.until(lambda e: e.get("id") == rid or e.get("refused_id") == rid)[-1]


def _refused(server: StdioServer, rid, *needles: str) -> dict:
    event = _first_answer(server, rid)
    if event["event"] == "ack":  # accepted: let it end so the next test starts clean
        server.send({"type": "cancel", "target": rid})
        server.finished(rid, timeout=120)
    assert event["event"] == "error" and event["code"] == "bad_request", event
    for needle in needles:
        assert needle in event["message"], (needle, event["message"])
    return event


def _joints(frames: int, fps: float) -> dict:
    data = np.zeros((frames, 22, 3), dtype="<f4")
    data[:, :, 2] = np.linspace(0, 1.7, 22)[None, :]
    return {"dtype": "float32", "shape": list(data.shape), "b64": base64.b64encode(data.tobytes()).decode()}


# ---------------------------------------------------------------- finding 1: unbounded lengths

def test_f1_a_100kb_direct_prompt_is_refused_before_it_is_queued(server):
    prompt = "a person walks " * 7000  # 105 KB
    server.send({"type": "generate", "id": "long-direct", "prompt": prompt, "mode": "direct"})
    event = _refused(server, "long-direct", "prompt", str(len(prompt)))
    assert "2000" in event["message"]  # the bound itself is named
    server.check_healthy("f1a")


@pytest.mark.parametrize("request_fields", [
    {"type": "caption"},
    {"type": "critique", "prompt": "a person walks", "form": "stage1"},
    {"type": "decode"},
])
def test_f1_twenty_thousand_motion_tokens_are_refused_before_they_are_queued(server, request_fields):
    rid = f"many-{request_fields['type']}"
    server.send({**request_fields, "id": rid, "tokens": [7] * 20000})
    _refused(server, rid, "20000", "tokens")
    server.check_healthy("f1b")


@pytest.mark.parametrize("frames, fps", [(40, 0.002), (40, 1e-9), (20_000, 20.0)])
def test_f1_joints_whose_resampled_length_explodes_are_refused(server, frames, fps):
    rid = f"enc-{frames}-{fps}"
    server.send({"type": "encode", "id": rid, "joints": _joints(frames, fps), "fps": fps})
    _refused(server, rid)
    server.check_healthy("f1c")


def test_f1_max_new_tokens_beyond_what_the_model_attends_to_is_refused(server):
    server.send({"type": "generate", "id": "huge-budget", "prompt": "a person walks", "max_new_tokens": 65536})
    _refused(server, "huge-budget", "max_new_tokens", "65536", "8192")
    server.check_healthy("f1d")


# ---------------------------------------------------------------- finding 2: lines that crash the parser

@pytest.mark.parametrize("line", [
    '{"type": "ping", "id": ' + "[" * 2000 + "]" * 2000 + "}",
    '{"type": "ping", "id": ' + "1" * 5000 + "}",
    '{"type": "generate", "id": "x", "prompt": "a", "seed": ' + "9" * 5000 + "}",
])
def test_f2_deep_json_or_huge_integers_get_an_error_and_the_server_lives(server, line):
    server.send_line(line)
    event = server.until(lambda e: e["event"] == "error")[-1]
    assert event["id"] is None and event["code"] in ("bad_json", "bad_request"), event
    server.check_healthy("f2")


def test_f2_a_crashing_line_during_a_generation_leaves_that_generation_to_end_normally(server):
    server.send({"type": "generate", "id": "runs", "prompt": "a person walks", "max_new_tokens": 4000})
    server.until(lambda e: e.get("id") == "runs" and e["event"] == "ack")
    server.send_line('{"type": "ping", "id": ' + "[" * 3000 + "]" * 3000 + "}")
    server.until(lambda e: e["event"] == "error" and e["id"] is None)
    server.send({"type": "cancel", "target": "runs"})
    ends = [e for e in server.finished("runs", timeout=60) if e.get("id") == "runs" and e["event"] in ("done", "error")]
    assert [e["event"] for e in ends] == ["done"] and ends[0]["stop_reason"] == "cancelled"
    server.check_healthy("f2b")


# ---------------------------------------------------------------- finding 3: events that cannot be encoded

def test_f3_a_lone_surrogate_id_is_echoed_escaped_and_the_server_keeps_answering(server):
    server.send_line('{"type": "ping", "id": "\\ud800"}')
    pong = server.until(lambda e: e["event"] == "pong")[-1]
    assert pong["id"] == "\ud800"  # the same id comes back (as a JSON escape)
    server.send_line('{"type": "generate", "id": "x\\udfff", "prompt": "a person jumps", "mode": "direct", '
                     '"max_motion_tokens": 4}')
    events = server.finished("x\udfff")
    assert events[-1]["event"] == "done"
    server.check_healthy("f3")


# ---------------------------------------------------------------- finding 4: quadratic sanitising

def test_f4_removing_nested_special_tokens_is_linear():
    """200 KB of `<bo<bos>s>`-style nesting: the old pass-per-layer loop needs minutes (120 KB took
    180 s); one linear pass needs well under a second. The subprocess gets 60 s."""
    code = ("from model_backend.llm.prompts import sanitize_user_text\n"
            "t = '<bo' * 20000 + '<bos>' + 's>' * 20000\n"
            "t = (t + ' x ') * 5\n"
            "print(repr(sanitize_user_text(t)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=backend_env(PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr("x x x x x")


# ---------------------------------------------------------------- finding 5: duplicate ids

def test_f5_a_duplicate_id_is_refused_without_ending_the_running_request(server):
    server.send({"type": "generate", "id": "dup", "prompt": "a person walks", "max_new_tokens": 4000})
    server.until(lambda e: e.get("id") == "dup" and e["event"] == "ack")
    server.send({"type": "generate", "id": "dup", "prompt": "a person runs", "mode": "direct"})
    refusal = server.until(lambda e: e["event"] == "error")[-1]
    assert refusal["id"] is None and refusal["refused_id"] == "dup" and "already in use" in refusal["message"]
    server.send({"type": "cancel", "target": "dup"})
    seen = server.finished("dup", timeout=60)
    ends = [e for e in seen if e.get("id") == "dup" and e["event"] in ("done", "error")]
    assert [e["event"] for e in ends] == ["done"] and ends[0]["stop_reason"] == "cancelled"
    server.check_healthy("f5")
