"""Every bound on the work one request may ask for, in one place (docs/protocol.md#bounds).

Plain Python (the add-on imports it too). A request is checked against these bounds when it
arrives, before anything is allocated for it or it is queued; past a bound the answer is
`bad_request` naming the bound and the value (`LimitError`). The numbers are chosen so the
largest request the bounds allow fits the 2B model's context (8192 positions) and a few GB.
"""
from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["LimitError", "MAX_LINE_BYTES", "MAX_JSON_DEPTH", "MAX_NUMBER_CHARS", "MAX_ID_CHARS", "MAX_TEXT_CHARS",
           "MAX_PROMPT_TOKENS", "MAX_MOTION_TOKENS_IN", "MAX_FRAMES_IN", "MAX_RESAMPLED_FRAMES", "MIN_FPS", "MAX_FPS", "MAX_ARRAY_DIMS",
           "MAX_ARRAY_ELEMENTS", "DEFAULT_CONTEXT", "check", "check_joints_size", "parse_json", "resampled_frames", "tokens_for_frames"]

MAX_LINE_BYTES = 16 << 20       # one request line (a joints array of MAX_FRAMES_IN frames is about 4.3 MB)
MAX_JSON_DEPTH = 8              # nesting of objects and lists (a request needs 3: request, array, shape)
MAX_NUMBER_CHARS = 40           # characters of one JSON number (an int64 seed has at most 20)
MAX_ID_CHARS = 256              # a request id
MAX_TEXT_CHARS = 2000           # a prompt or an instruction (a caption is about 100)
MAX_PROMPT_TOKENS = 1024       # a prompt or an instruction in the model's tokens, after sanitising
MAX_MOTION_TOKENS_IN = 250      # a given motion: 50 s at 5 tokens per second (the model was trained on <= 50)
FRAMES_PER_TOKEN = 4
MAX_RESAMPLED_FRAMES = MAX_MOTION_TOKENS_IN * FRAMES_PER_TOKEN + 2  # joints after resampling to the model's fps
MAX_FRAMES_IN = 12_000          # joints as sent: 100 s at 120 fps
MIN_FPS, MAX_FPS = 1.0, 1000.0  # the frame rate of given joints
MAX_ARRAY_DIMS = 3
MAX_ARRAY_ELEMENTS = MAX_FRAMES_IN * 64 * 3  # any array object (joints: frames x joints x 3)
DEFAULT_CONTEXT = 8192          # Gemma-2's max_position_embeddings; the engine passes the loaded model's


class LimitError(ValueError):
    """A value past one of the bounds above; the message names the bound and the value."""


def check(what: str, value: float, bound: float, name: str, unit: str = "") -> None:
    """Raise LimitError when `value` exceeds `bound` (named `name` in docs/protocol.md)."""
    if value > bound:
        raise LimitError(f"{what} is {_text(value)}{unit}, more than the bound {name} = {_text(bound)}{unit} "
                         "(docs/protocol.md#bounds)")


def _text(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _number(kind: type) -> Any:
    def parse(text: str) -> Any:
        check("a JSON number", len(text), MAX_NUMBER_CHARS, "MAX_NUMBER_CHARS", " characters")
        return kind(text)
    return parse


def _no_constant(text: str) -> Any:
    raise LimitError(f"{text} is not a JSON number; send finite numbers only")


def parse_json(line: str | bytes) -> Any:
    """json.loads with the bounds: line length, number length, nesting depth; no NaN/Infinity.

    Raises LimitError past a bound, ValueError (json.JSONDecodeError, UnicodeDecodeError)
    for text that is not JSON.
    """
    check("the line", len(line), MAX_LINE_BYTES, "MAX_LINE_BYTES", " bytes")
    try:
        obj = json.loads(line, parse_int=_number(int), parse_float=_number(float), parse_constant=_no_constant)
    except RecursionError:  # deeper than the decoder's own recursion limit (about 1000)
        raise LimitError(_too_deep()) from None
    _check_depth(obj)
    return obj


def _too_deep() -> str:
    return f"the JSON nests deeper than the bound MAX_JSON_DEPTH = {MAX_JSON_DEPTH} (docs/protocol.md#bounds)"


def _check_depth(obj: Any) -> None:
    """Fail when lists and objects nest deeper than MAX_JSON_DEPTH (an explicit stack: no recursion)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise LimitError(_too_deep())
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))


def resampled_frames(frames: int, src_fps: float, dst_fps: float) -> int:
    """How many frames `frames` at `src_fps` become at `dst_fps` (motion.resample's count)."""
    return int(round((frames - 1) * dst_fps / src_fps)) + 1


def tokens_for_frames(frames: int) -> int:
    """Motion tokens the VQ-VAE encoder makes of `frames` frames at the model's rate."""
    return max(1, int(round((frames - 1) / FRAMES_PER_TOKEN)))


def check_joints_size(frames: int, fps: float, model_fps: float) -> int:
    """Bounds of a joints motion (frames in, fps, frames after resampling); its token count."""
    check("the joints' frame count", frames, MAX_FRAMES_IN, "MAX_FRAMES_IN")
    if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise LimitError(f"fps is {_text(fps)}, outside the bounds MIN_FPS..MAX_FPS = {MIN_FPS:g}..{MAX_FPS:g} "
                         "(docs/protocol.md#bounds)")
    resampled = resampled_frames(frames, fps, model_fps)
    check(f"{frames} frames at {fps:g} fps resampled to {model_fps:g} fps", resampled, MAX_RESAMPLED_FRAMES,
          "MAX_RESAMPLED_FRAMES", " frames")
    return tokens_for_frames(resampled)
