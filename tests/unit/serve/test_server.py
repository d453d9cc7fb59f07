"""The backend server: request validation, and the real `python -m model_backend serve --stdio` process.

The subprocess tests talk to the server exactly as the add-on does (JSON lines on
stdin/stdout) on a tiny fixture model. Its weights are random, so the interleaved
mode never finishes a trace on its own: that makes it a reliable long job for the
cancel and ping tests.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_backend.wire.protocol import PROTOCOL_VERSION, ProtocolError, decode_array, encode_array
from model_backend.serve.server import validate_request
from hostile import StdioServer

STARTUP_S = 120.0  # importing torch + loading, on a busy 2-core machine
STEP_S = 30.0


# ---------------------------------------------------------------- validate_request (pure)

def test_generate_keeps_only_given_fields_so_engine_defaults_apply():
    args = validate_request({"type": "generate", "id": "r", "prompt": "a man walks", "mode": "direct",
                             "max_motion_tokens": 6, "seed": None, "temperature": 0})
    assert args == {"prompt": "a man walks", "mode": "direct", "max_motion_tokens": 6, "temperature": 0.0}


@pytest.mark.parametrize("request_fields, needle", [
    ({"type": "generate"}, '"prompt" is required'),
    ({"type": "generate", "prompt": "   "}, '"prompt" must be a non-empty string'),
    ({"type": "generate", "prompt": "x", "max_motion_tokens": 99}, '"max_motion_tokens" must be an integer in 2..50'),
    ({"type": "generate", "prompt": "x", "mode": "fast"}, '"mode" must be one of interleaved, direct, stage1_loop'),
    ({"type": "generate", "prompt": "x", "top_p": 0}, '"top_p" must be a number in (0.0, 1.0]'),
    ({"type": "generate", "prompt": "x", "preview": "yes"}, '"preview" must be true or false'),
    ({"type": "generate", "prompt": "x", "max_motion_token": 6}, "unknown field(s) max_motion_token"),
    ({"type": "decode"}, 'give the motion as "tokens"'),
    ({"type": "decode", "tokens": [1, 512]}, "codebook indices 0..511, got 512"),
    ({"type": "decode", "tokens": [1, True]}, "non-empty list of codebook indices"),
    ({"type": "critique", "prompt": "x", "tokens": [1], "joints": encode_array(np.zeros((8, 22, 3)))},
     "exactly one of"),
    ({"type": "encode", "joints": encode_array(np.zeros((8, 21, 3)))}, "shape (frames, 22, 3) for this model"),
    ({"type": "encode", "joints": encode_array(np.full((8, 22, 3), np.nan))}, "NaN"),
    ({"type": "encode", "joints": encode_array(np.zeros((8, 22, 3))), "fps": -5}, '"fps" must be a number'),
])
def test_bad_fields_are_named_in_bad_request(request_fields, needle):
    with pytest.raises(ProtocolError) as err:
        validate_request({"id": "r", **request_fields})
    assert err.value.code == "bad_request"
    assert needle in err.value.message


def test_arrays_arrive_as_numpy_and_motion_defaults_to_the_model_fps():
    joints = np.random.default_rng(0).normal(size=(9, 22, 3)).astype(np.float32)
    args = validate_request({"type": "caption", "id": 1, "joints": encode_array(joints)}, 22, 12.5)
    assert args["fps"] == 12.5 and np.array_equal(args["joints"], joints)
    args = validate_request({"type": "decode", "id": 1, "tokens": encode_array(np.array([5, 6], np.int32))})
    assert args == {"tokens": [5, 6]}
    with pytest.raises(ProtocolError) as err:
        validate_request({"type": "decode", "id": 1, "tokens": {"dtype": "int32", "shape": [3], "b64": "!!"}})
    assert err.value.code == "bad_array"


# ---------------------------------------------------------------- the real process

def Backend(python: Path, model_dir: Path, *args: str, prelude: str | None = None) -> StdioServer:
    """The server subprocess these tests drive; each test reads the handshake itself."""
    return StdioServer(python, model_dir, *args, memory_limit=None, prelude=prelude, wait_ready=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("server") / "model", seed=0)


@pytest.fixture(scope="module")
def backend(backend_python, model_dir):
    server = Backend(backend_python, model_dir, "--device", "cpu")
    server.ready = server.next(STARTUP_S)
    yield server
    server.close()


def _long_generate(rid: str) -> dict[str, Any]:
    # The untrained fixture never ends a trace: this runs for thousands of tokens unless cancelled.
    return {"type": "generate", "id": rid, "prompt": "a person walks forward", "max_new_tokens": 8000}


def test_handshake_names_protocol_model_and_device(backend, model_dir):
    ready = backend.ready
    assert ready["event"] == "ready"
    assert ready["protocol_version"] == PROTOCOL_VERSION == 1
    assert ready["backend_version"]
    assert ready["model"]["dir"] == str(model_dir)
    assert (ready["model"]["dataset"], ready["model"]["num_joints"], ready["model"]["fps"]) == ("HumanML3D", 22, 20.0)
    assert ready["model"]["fixture"] is True and ready["model"]["stage"] == 2
    assert ready["device"]["type"] == "cpu" and ready["device"]["precision"] in ("fp32", "bf16")


def test_direct_generate_streams_tokens_then_one_motion_then_done(backend):
    backend.send({"type": "generate", "id": "g1", "prompt": "a person jumps", "mode": "direct",
                  "max_motion_tokens": 6})
    events = backend.finished("g1")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "ack" and events[0]["type"] == "generate"
    assert kinds[-1] == "done" and kinds.count("motion") == 1
    streamed = [t for e in events if e["event"] == "motion_tokens" for t in e["tokens"]]
    motion = next(e for e in events if e["event"] == "motion")
    assert kinds.index("motion") > max(i for i, k in enumerate(kinds) if k == "motion_tokens")
    assert 2 <= len(motion["tokens"]) <= 6 and streamed == motion["tokens"]
    joints = decode_array(motion["joints"])
    assert joints.shape == (4 * len(motion["tokens"]), 22, 3) and joints.dtype == np.float32
    assert decode_array(motion["contacts"]).shape == (len(joints), 4)
    assert decode_array(motion["features"]).shape == (len(joints), 263)
    assert motion["fps"] == 20.0 and motion["round"] == 1 and motion["source"] == "direct"
    assert events[-1]["motions"] == 1 and events[-1]["stop_reason"] == "eos"

    # A second request on the same process (the id is free again after its done):
    # decoding the same tokens gives the same joints.
    backend.send({"type": "decode", "id": "g1", "tokens": motion["tokens"]})
    events = backend.finished("g1")
    assert [e["event"] for e in events] == ["ack", "motion", "done"]
    assert events[1]["source"] == "decode"
    assert np.array_equal(decode_array(events[1]["joints"]), joints)


def test_encode_takes_blender_axis_joints_exactly(backend, model_dir):
    from model_backend.vq.codec import MotionCodec

    codec = MotionCodec.from_dir(model_dir)
    joints = codec.decode([5, 9, 300, 41, 41, 7]).joints_blender
    backend.send({"type": "encode", "id": "e1", "joints": encode_array(joints), "fps": 20})
    events = backend.finished("e1")
    assert [e["event"] for e in events] == ["ack", "encoded", "done"]
    assert events[1]["tokens"] == codec.encode_joints(joints, 20.0)
    assert len(events[1]["tokens"]) == 6


def test_cancel_ends_a_running_generation_promptly_and_ping_is_answered_meanwhile(backend):
    backend.send(_long_generate("long"))
    backend.until(lambda e: e.get("id") == "long" and e["event"] in ("text", "motion_tokens"))
    backend.send({"type": "ping", "id": "p1"})
    seen = backend.until(lambda e: e["event"] == "pong" or e["event"] in ("done", "error"))
    assert seen[-1] == {"event": "pong", "id": "p1", "protocol_version": PROTOCOL_VERSION}, \
        "the generation ended before the ping was answered"
    sent = time.monotonic()
    backend.send({"type": "cancel", "target": "long"})
    done = backend.finished("long")[-1]
    assert time.monotonic() - sent < 5.0
    assert done["event"] == "done" and done["stop_reason"] == "cancelled"


def test_cancelling_a_queued_request_drops_it_at_once_and_ids_must_be_unique(backend):
    backend.send(_long_generate("busy"))
    backend.send({"type": "decode", "id": "busy", "tokens": [1, 2, 3]})
    error = backend.until(lambda e: e["event"] == "error")[-1]  # not an event of the running "busy"
    assert error["id"] is None and error["refused_id"] == "busy" and error["code"] == "bad_request"
    assert "already in use" in error["message"]
    backend.send({"type": "decode", "id": "queued", "tokens": [1, 2, 3]})
    backend.send({"type": "cancel", "target": "queued"})
    events = backend.until(lambda e: e.get("id") == "queued" and e["event"] == "done")
    queued = [e for e in events if e.get("id") == "queued"]
    assert [e["event"] for e in queued] == ["ack", "done"] and queued[0]["queued"] == 1
    assert queued[-1]["stop_reason"] == "cancelled" and queued[-1]["motions"] == 0
    assert not any(e.get("id") == "busy" and e["event"] == "done" for e in events)
    backend.send({"type": "cancel", "target": "busy"})
    assert backend.finished("busy")[-1]["stop_reason"] == "cancelled"


def test_malformed_lines_and_bad_requests_get_errors_and_the_server_keeps_serving(backend):
    backend.send("{not json")
    error = backend.next()
    assert (error["event"], error["id"], error["code"]) == ("error", None, "bad_json")
    backend.send("[1, 2]")
    assert backend.next()["code"] == "bad_json"
    backend.send({"type": "dance", "id": "u1"})
    error = backend.next()
    assert (error["id"], error["code"]) == ("u1", "unknown_type") and "dance" in error["message"]
    backend.send({"type": "generate", "id": "b1", "prompt": "x", "max_motion_tokens": 500})
    error = backend.next()
    assert (error["id"], error["code"]) == ("b1", "bad_request") and "max_motion_tokens" in error["message"]
    backend.send({"type": "generate", "prompt": "x"})
    assert "id" in backend.next()["message"]
    backend.send({"type": "ping", "id": "alive"})
    assert backend.next() == {"event": "pong", "id": "alive", "protocol_version": PROTOCOL_VERSION}


def test_info_repeats_the_handshake(backend):
    backend.send({"type": "info", "id": "i1"})
    info = backend.next()
    assert info["event"] == "info" and info["id"] == "i1"
    assert info["model"] == backend.ready["model"] and info["protocol_version"] == PROTOCOL_VERSION


def test_shutdown_stops_the_running_job_says_bye_and_exits_0(backend_python, model_dir):
    server = Backend(backend_python, model_dir)
    try:
        assert server.next(STARTUP_S)["event"] == "ready"
        server.send(_long_generate("g"))
        server.until(lambda e: e.get("id") == "g" and e["event"] in ("text", "motion_tokens"))
        server.send({"type": "shutdown", "id": "s"})
        events = server.until(lambda e: e["event"] == "bye")
        done = [e for e in events if e.get("id") == "g" and e["event"] == "done"]
        assert len(done) == 1 and done[0]["stop_reason"] == "cancelled"
        assert server.next() is None  # stdout closed after bye
        assert server.proc.wait(STEP_S) == 0
    finally:
        server.close()


def test_end_of_input_exits_0_and_stray_prints_never_reach_stdout(backend_python, model_dir):
    # Code inside the engine that prints (Python print and a C-level write to fd 1) during serving.
    prelude = ("import os\nimport model_backend.llm.engine as engine\n_decode = engine.Engine.decode\n"
               "def noisy(self, *a, **k):\n    print('stray python print')\n"
               "    os.write(1, b'stray fd-1 write\\n')\n    return _decode(self, *a, **k)\n"
               "engine.Engine.decode = noisy")
    server = Backend(backend_python, model_dir, prelude=prelude)
    try:
        server.until(lambda e: e["event"] == "ready", STARTUP_S)
        server.send({"type": "decode", "id": "d", "tokens": [3, 4]})
        assert server.finished("d")[-1]["event"] == "done"
        server.proc.stdin.close()
        assert server.until(lambda e: e["event"] == "bye")[-1] == {"event": "bye", "id": None}
        assert server.proc.wait(STEP_S) == 0
        time.sleep(0.2)
        stderr = server.stderr.decode()
        assert "stray python print" in stderr and "stray fd-1 write" in stderr
        assert server.bad_lines == []
    finally:
        server.close()


def test_missing_model_folder_is_one_error_event_and_exit_2(backend_python, tmp_path):
    folder = tmp_path / "nowhere"
    server = Backend(backend_python, folder)
    try:
        error = server.next(STARTUP_S)
        assert error["event"] == "error" and error["id"] is None and error["code"] == "model_missing"
        assert str(folder) in error["message"] and "make-fixture" in error["message"]
        assert server.next() is None
        assert server.proc.wait(STEP_S) == 2
    finally:
        server.close()


def test_a_device_that_cannot_be_served_is_model_load_failed_and_exit_2(backend_python, model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda loads")
    server = Backend(backend_python, model_dir, "--device", "cuda")
    try:
        error = server.next(STARTUP_S)
        assert (error["event"], error["id"], error["code"]) == ("error", None, "model_load_failed")
        assert str(model_dir) in error["message"] and "CUDA is not available" in error["message"]
        assert server.proc.wait(STEP_S) == 2
    finally:
        server.close()


def test_prefix_tokens_are_validated_like_any_field():
    ok = validate_request({"type": "generate", "id": 1, "prompt": "then he sits", "prefix_tokens": [1, 2, 3]})
    assert ok["prefix_tokens"] == [1, 2, 3]
    for value, message in (("1,2", "must be a non-empty list"), ([1, 600], "codebook indices 0..511, got 600"),
                           (list(range(49)), "at most 48 fit"), ([True], "non-empty list")):
        with pytest.raises(ProtocolError, match=message):
            validate_request({"type": "generate", "id": 1, "prompt": "x", "prefix_tokens": value})
    with pytest.raises(ProtocolError, match='"max_motion_tokens" \\(12\\) counts them too'):
        validate_request({"type": "generate", "id": 1, "prompt": "x", "prefix_tokens": list(range(11)),
                          "max_motion_tokens": 12})
    with pytest.raises(ProtocolError, match="unknown field"):
        validate_request({"type": "refine", "id": 1, "prompt": "x", "tokens": [1, 2], "prefix_tokens": [1]})
