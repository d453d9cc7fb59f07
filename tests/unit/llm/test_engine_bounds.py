"""Bounded work in the engine (issue 14, finding 1): the memory a sequence needs is checked
before its prefill, so "too long for this machine" is an answer, not a kill; and the prefill
runs in chunks, so cancel works during it.

The memory test runs the real engine on the fixture model in a child process whose address
space is capped (RLIMIT_AS) a few hundred MB above what it holds after loading: a 100k-token
sequence needs more than that, and must be refused with `too_long` while a normal request
in the same process still runs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from model_backend.llm.engine import Engine, stream_tokens

CHILD = textwrap.dedent("""
    import json, resource, sys
    import psutil, torch
    from model_backend.llm.engine import Engine, EngineError, stream_tokens

    torch.set_num_threads(1)
    engine = Engine(sys.argv[1], device="cpu", precision="fp32")
    engine.model.config.max_position_embeddings = 1 << 20  # memory, not the context, is the limit here
    headroom = int(sys.argv[2])
    limit = psutil.Process().memory_info().vms + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    eos = engine.eos_ids
    result = {}
    try:
        stream_tokens(engine.model, [5] * 100_000, max_new_tokens=8, eos_ids=eos)
        result["long"] = "ran"
    except EngineError as exc:
        result["long"] = [exc.code, str(exc)]
    new, reason = stream_tokens(engine.model, [5] * 20, max_new_tokens=8, eos_ids=eos)
    result["short"] = [len(new), reason]
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_backend.convert.fixture import make_fixture
    return make_fixture(tmp_path_factory.mktemp("bounds") / "model", seed=0)


def test_a_sequence_larger_than_free_memory_is_refused_as_too_long_under_a_memory_limit(model_dir):
    run = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(400 << 20)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]  # not killed, no MemoryError
    result = json.loads(run.stdout.strip().splitlines()[-1])
    code, message = result["long"]
    assert code == "too_long" and "GB is free on this machine" in message and "100008 positions" in message
    assert result["short"][0] >= 1 and result["short"][1] in ("eos", "max_tokens")  # the process still serves


def test_cancel_during_the_prefill_stops_after_the_chunk_that_is_running(model_dir):
    engine = Engine(model_dir, device="cpu", precision="fp32")
    cancel, forwards = threading.Event(), []

    def cancel_after_first_chunk(*_hook_args):
        forwards.append(1)
        cancel.set()  # as a client's cancel arriving while the first chunk runs

    hook = engine.model.register_forward_hook(cancel_after_first_chunk)
    try:
        new, reason = stream_tokens(engine.model, [5] * 1000, max_new_tokens=8, eos_ids=engine.eos_ids,
                                    cancel=cancel, prefill_chunk=64)
    finally:
        hook.remove()
    assert (new, reason) == ([], "cancelled")
    assert len(forwards) == 1  # one chunk of the 16 ran; the prompt was never prefilled whole
