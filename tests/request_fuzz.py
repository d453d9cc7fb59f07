"""Request strategies of the fuzz harness, shared by the stdio and HTTP tests: valid requests
with small budgets, mutated ones, hostile strings, numbers and nesting depths, raw lines; and
the `Ledger` that checks every acknowledged request ends exactly once. Imported as
`request_fuzz` (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from hypothesis import strategies as st

HOSTILE_TEXT = st.sampled_from([
    "\ud800", "x\udfff", "<bo<bos>s>" * 50, "<Motion_12><Motion>", "</Motion>" * 3, "<start_of_turn>user",
    "\x00\x01\x1b[2J", "\u2028\u2029", "a" * 2001, "é" * 700, "😀" * 600, "", " ", "[@BOS@]", "<unused99>",
])
TEXT = st.one_of(st.text(max_size=40), HOSTILE_TEXT, st.text(st.characters(codec=None), max_size=20))
NUMBER = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 1e-9, 0.002, 1e308, -0.0, 65536, 8193]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
TYPES = ["generate", "critique", "refine", "caption", "encode", "decode", "cancel", "ping", "info"]
FIELDS = ["type", "id", "prompt", "mode", "max_rounds", "max_motion_tokens", "temperature", "top_p", "seed",
          "max_new_tokens", "preview", "tokens", "joints", "fps", "form", "instruction", "target", "extra"]


def _array(shape: list[Any], dtype: str = "float32", data: bytes | None = None) -> dict[str, Any]:
    if data is None:
        data = np.zeros(int(np.prod(shape)), dtype="<f4").tobytes()
    return {"dtype": dtype, "shape": shape, "b64": base64.b64encode(data).decode()}


@st.composite
def valid_request(draw) -> dict[str, Any]:
    """A request the server must accept (small budgets, so each runs briefly)."""
    kind = draw(st.sampled_from(["generate", "critique", "refine", "caption", "encode", "decode"]))
    tokens = draw(st.lists(st.integers(0, 511), min_size=1, max_size=60))
    frames = draw(st.integers(5, 80))
    joints = {"joints": _array([frames, 22, 3]), "fps": draw(st.sampled_from([20, 24, 30.0, 60]))}
    motion = draw(st.sampled_from([{"tokens": tokens}, joints]))
    sampling = {"temperature": draw(st.sampled_from([0, 0.7])), "seed": draw(st.integers(0, 2**40)),
                "max_new_tokens": draw(st.integers(300, 400))}
    request: dict[str, Any] = {"type": kind, "id": draw(st.one_of(st.integers(0, 99), st.text(min_size=1, max_size=8)))}
    if kind == "generate":
        request.update(prompt=draw(st.sampled_from(["a person jumps", "someone waves <bos>", "walk"])),
                       mode=draw(st.sampled_from(["direct", "interleaved", "stage1_loop"])),
                       max_motion_tokens=draw(st.integers(2, 8)), max_rounds=2, **sampling)
    elif kind in ("critique", "refine"):
        request.update(prompt="a person walks", form=draw(st.sampled_from(["stage1", "interleaved"])), **motion,
                       **sampling)
    elif kind == "caption":
        request.update(motion, temperature=0)
    elif kind == "encode":
        request.update(joints)
    else:
        request.update(tokens=tokens)
    return request


@st.composite
def mutated_request(draw) -> dict[str, Any]:
    """A valid request with fields dropped, replaced by hostile values, or added."""
    request = dict(draw(valid_request()))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "array"]))
        key = draw(st.sampled_from(sorted(request) if action in ("drop", "replace") else FIELDS))
        if action == "drop":
            request.pop(key, None)
        elif action == "array":
            shape = draw(st.lists(st.integers(-3, 2**40), max_size=5))
            request[draw(st.sampled_from(["joints", "tokens"]))] = {
                "dtype": draw(st.sampled_from(["float32", "int32", "float64", 7])), "shape": shape,
                "b64": draw(st.sampled_from(["", "AAAA", "!!", "A" * 4000]))}
        else:
            request[key] = draw(VALUE)
    return request


def _line(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def hostile_line(draw) -> bytes:
    """A raw line: deep nesting, huge numbers, broken UTF-8, not JSON at all."""
    kind = draw(st.sampled_from(["deep", "digits", "bytes", "valid", "mutated", "mutated", "control"]))
    if kind == "deep":
        depth = draw(st.integers(5, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return b'{"type": "ping", "id": ' + (opener * depth + "1" + closer * depth).encode() + b"}"
    if kind == "digits":
        digits = "9" * draw(st.integers(15, 6000))
        field = draw(st.sampled_from(["id", "seed", "max_new_tokens", "temperature"]))
        return f'{{"type": "generate", "id": "d", "prompt": "a", "{field}": {digits}}}'.encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200)).replace(b"\n", b" ")
    if kind == "control":
        return _line({"type": draw(st.sampled_from(TYPES)), "id": draw(VALUE), "target": draw(VALUE)},
                     draw(st.booleans()))
    request = draw(valid_request() if kind == "valid" else mutated_request())
    return _line(request, draw(st.booleans()))


class Ledger:
    """Every acknowledged id must end with exactly one done/error, and nothing may follow it."""

    def __init__(self) -> None:
        self.open: set[Any] = set()

    def see(self, event: dict[str, Any]) -> None:
        rid, kind = event.get("id"), event["event"]
        key = json.dumps(rid)
        if kind == "ack":
            assert key not in self.open, f"a second ack for an unfinished id: {event}"
            self.open.add(key)
        elif kind in ("done", "error") and key in self.open:
            self.open.discard(key)
        elif kind not in ("error", "pong", "info", "done", "bye") and rid is not None:
            assert key in self.open, f"an event of a request that is not running: {event}"
