"""A version's `irg` metadata, read through one validating function (plain Python, no bpy).

Versions keep their metadata in `action["irg"]` (actions.py writes it). A .blend can
carry anything there: an edited file, an older add-on, a hostile file. `read_metadata`
keeps each known field only when it has the type and range the add-on writes; a malformed
field reads as missing (the callers' defaults apply) and is reported once per Action and
field as a warning that names the Action. Unknown fields pass through unchanged.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

from ..core import protocol

log = logging.getLogger("irg_motion.metadata")

Check = Callable[[Any], bool]


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _flag(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rate(value: Any) -> bool:
    return _number(value) and value > 0


def _tokens(value: Any) -> bool:
    """Codebook indices. A list longer than the backend takes is kept (its length alone is checked
    where it would be sent, so the animator hears why), its items are not inspected one by one."""
    if not isinstance(value, list):
        return False
    if len(value) > 10_000:
        return all(isinstance(t, int) and not isinstance(t, bool) for t in value[:100])
    return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < protocol.NUM_MOTION_CODES for t in value)


def _seed(value: Any) -> bool:  # stored as text: a seed may exceed the 32 bits of an int ID property
    return value == "" or (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What anim/actions.py writes: field -> check.
FIELDS: dict[str, Check] = {
    "prompt": _text, "round": _count, "tokens": _tokens, "assessment": _text, "refinement": _text,
    "model": _text, "seed": _seed, "parent": _text, "source": _text, "extra": lambda v: isinstance(v, dict),
    "keep": _flag, "caption": _text, "slug": _text, "version": _count, "serial": _count, "created": _text,
    "fps": _rate, "src_fps": _rate, "frames": _count, "frame_start": _number, "frame_end": _number,
    "armature": _text, "armature_id": _text, "scale": _number, "preset": _text, "root_mode": _text,
    "foot_lock": _flag, "smoothing": _flag, "ik_legs": _flag, "rotation_mode_changed": _names,
    "keys_digest": _text,
}

_warned: set[tuple[str, str, str]] = set()


def read_metadata(raw: Any, action_name: str) -> dict[str, Any]:
    """The metadata `raw` (a mapping, e.g. `action["irg"].to_dict()`) with every malformed known
    field left out, `seed` as an int or None and `extra` a dict; {} when `raw` is no mapping."""
    if not isinstance(raw, Mapping):
        return {}
    info: dict[str, Any] = {}
    for key, value in raw.items():
        check = FIELDS.get(key)
        if check is None or check(value):
            info[key] = value
        else:
            _warn(action_name, key, value)
    info["seed"] = int(info["seed"]) if info.get("seed", "") != "" else None
    if "keep" in info:
        info["keep"] = bool(info["keep"])
    info.setdefault("extra", {})
    return info


def _warn(action_name: str, key: str, value: Any) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if (action_name, key, shown) in _warned:  # panels read metadata on every redraw: say it once
        return
    _warned.add((action_name, key, shown))
    log.warning("Action %r: its IRG metadata field %r holds %s, which is not valid; it is treated as missing "
                "(edit or delete the field in the Action's custom properties)", action_name, key, shown)
