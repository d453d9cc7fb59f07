"""The backend protocol: JSON objects, one per line, whatever the transport.

Requests go in (`{"type": "generate", "id": "r1", ...}`), events come out
(`{"event": "motion", "id": "r1", ...}`). numpy arrays travel as
`{"dtype": "float32", "shape": [T, 22, 3], "b64": "..."}` so they are exact and
cheap to parse. This module is plain Python + numpy: the add-on imports it too.
See docs/protocol.md for every request and event.
"""
from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np

from .limits import MAX_ARRAY_DIMS, MAX_ARRAY_ELEMENTS, LimitError, check, parse_json

PROTOCOL_VERSION = 1
NUM_MOTION_CODES = 512  # motion tokens are codebook indices 0..511

WORK_TYPES = ("generate", "critique", "refine", "caption", "encode", "decode")  # queued, one at a time
CONTROL_TYPES = ("cancel", "ping", "info", "shutdown")                           # answered at once
REQUEST_TYPES = WORK_TYPES + CONTROL_TYPES
EVENT_TYPES = (
    "ready", "info", "ack", "text", "motion_tokens", "preview", "motion", "assessment",
    "caption", "encoded", "done", "error", "pong", "bye",
)


class ProtocolError(ValueError):
    """A line that is not a valid request or event, with a message a person can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A numpy array as a JSON-safe dict (little-endian bytes, base64)."""
    a = np.ascontiguousarray(array)
    if a.dtype.kind == "f":
        a = a.astype("<f4")
    elif a.dtype.kind in "iu":
        a = a.astype("<i4")
    else:
        raise TypeError(f"cannot send arrays of dtype {a.dtype}")
    return {"dtype": a.dtype.name, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(obj: dict[str, Any]) -> np.ndarray:
    """Inverse of encode_array; raises ProtocolError on a malformed object or one past the bounds.

    The shape is checked against MAX_ARRAY_DIMS and MAX_ARRAY_ELEMENTS, and the base64
    text against the length that shape needs, before anything is decoded.
    """
    try:
        dtype = {"float32": "<f4", "int32": "<i4"}[obj["dtype"]]
        shape, text = obj["shape"], obj["b64"]
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise ValueError(f"shape must be a list of non-negative integers, got {shape!r:.60}")
        check("the array's dimension count", len(shape), MAX_ARRAY_DIMS, "MAX_ARRAY_DIMS")
        check("the array's element count", math.prod(shape), MAX_ARRAY_ELEMENTS, "MAX_ARRAY_ELEMENTS")
        need = 4 * math.ceil(math.prod(shape) * 4 / 3)
        if not isinstance(text, str) or len(text) != need:
            raise ValueError(f"b64 must be {need} characters for shape {shape}, got "
                             f"{len(text) if isinstance(text, str) else type(text).__name__}")
        raw = base64.b64decode(text, validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except LimitError as exc:
        raise ProtocolError("bad_request", f"array: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("bad_array", f"malformed array in message: {exc}") from None


def dumps(message: dict[str, Any]) -> str:
    """One message as one line of JSON (no newline inside, none at the end), always valid UTF-8.

    Text that UTF-8 cannot carry (a lone surrogate, e.g. an id a client sent as "\\ud800")
    is written as its JSON escape, so the reader gets back exactly the string it sent.
    """
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # only lone surrogates fail, and only inside JSON strings
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    return line


def loads(line: str | bytes) -> dict[str, Any]:
    """Parse one line into a message dict; ProtocolError if it is not a JSON object.

    `bad_json` for text that is not JSON; `bad_request` past a bound of
    model_backend.wire.limits (line length, number length, nesting depth).
    """
    try:
        obj = parse_json(line)
    except LimitError as exc:
        raise ProtocolError("bad_request", str(exc)) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError("bad_json", f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "each line must be a JSON object")
    return obj


def error_event(code: str, message: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An `error` event: `code` is machine-readable, `message` names the problem and the fix."""
    return {"event": "error", "id": request_id, "code": code, "message": message, **extra}
