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
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1

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
    """Inverse of encode_array; raises ProtocolError on a malformed object."""
    try:
        dtype = {"float32": "<f4", "int32": "<i4"}[obj["dtype"]]
        raw = base64.b64decode(obj["b64"], validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(obj["shape"]).copy()
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("bad_array", f"malformed array in message: {exc}") from None


def dumps(message: dict[str, Any]) -> str:
    """One message as one line of JSON (no newline inside, none at the end)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def loads(line: str | bytes) -> dict[str, Any]:
    """Parse one line into a message dict; ProtocolError if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "each line must be a JSON object")
    return obj


def error_event(code: str, message: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An `error` event: `code` is machine-readable, `message` names the problem and the fix."""
    return {"event": "error", "id": request_id, "code": code, "message": message, **extra}
