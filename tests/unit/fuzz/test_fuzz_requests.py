"""Fuzz harness, requests: generated lines (valid requests, mutated ones, hostile strings,
numbers and nesting depths, raw bytes) go through the real `serve --stdio` process.

After every case: every stdout line is one JSON object, the process is alive, it answers
`ping` and serves a normal direct generation, every acknowledged request ended with
exactly one `done` or `error` and nothing after it, and its peak memory (VmHWM) stays
under PEAK_BOUND_KB. Case counts: tests/fuzz_profiles.py; figures: docs/benchmarks.md.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given

from fuzz_profiles import fuzz_settings
from hostile import StdioServer
from request_fuzz import Ledger, hostile_line

# The fixture server touches about 0.4 GB; the bounds keep every request far below this.
PEAK_BOUND_KB = 1_500_000


@pytest.fixture(scope="module")
def fuzz_server(backend_python, tmp_path_factory):
    from model_backend.convert.fixture import make_fixture

    model = make_fixture(tmp_path_factory.mktemp("fuzz") / "model", seed=0)
    server = StdioServer(backend_python, model)
    yield server
    code = server.close()
    print(f"\nfuzz requests: peak memory of the stdio server {server.peak_kb / 1024:.0f} MB")
    assert code == 0


def test_fuzz_request_lines_through_the_stdio_server(fuzz_server):
    server, ledger, counter = fuzz_server, Ledger(), iter(range(10**9))

    def drain_until(predicate) -> list[dict[str, Any]]:
        events = []
        while True:
            event = server.next(60)
            assert event is not None, f"stdout closed (exit {server.proc.poll()}):\n{server.log()}"
            ledger.see(event)
            events.append(event)
            if predicate(event):
                return events

    @fuzz_settings("requests")
    @given(line=hostile_line())
    def case(line: bytes) -> None:
        n = next(counter)
        server.send_line(line)
        server.send({"type": "ping", "id": f"sync{n}"})
        drain_until(lambda e: e["event"] == "pong" and e.get("id") == f"sync{n}")
        for key in list(ledger.open):  # stop whatever the case started
            server.send({"type": "cancel", "target": json.loads(key)})
        if ledger.open:
            drain_until(lambda e: not ledger.open)
        gen = f"gen{n}"
        server.send({"type": "generate", "id": gen, "prompt": "a person jumps", "mode": "direct",
                     "max_motion_tokens": 4})
        events = [e for e in drain_until(lambda e: e.get("id") == gen and e["event"] in ("done", "error"))
                  if e.get("id") == gen]
        assert events[-1]["event"] == "done" and sum(e["event"] == "motion" for e in events) == 1, events[-1]
        assert server.proc.poll() is None
        assert server.memory_kb() < PEAK_BOUND_KB, f"peak memory {server.peak_kb} kB"

    case()
