"""Running a job to its end from a script (the api and bake_batch): option names, the armature
a call means, pumping until done (timers never run in background mode), GenerationError."""
from __future__ import annotations

import time

import bpy

from ..rig import armature as rig

# api keyword -> Settings field
OPTION_NAMES = {"model_dir": "model_dir", "backend_python": "backend_python", "device": "device",
                "precision": "precision", "mode": "mode", "rounds": "max_rounds",
                "max_motion_tokens": "max_motion_tokens", "max_trace_tokens": "max_trace_tokens",
                "temperature": "temperature", "top_p": "top_p",
                "seed": "seed", "thumbnails": "thumbnails", "batch_parallel": "batch_parallel"}


class GenerationError(RuntimeError):
    """A generation that ended without a motion; the message names the problem and the fix."""


def resolve_armature(armature, *, create: bool) -> bpy.types.Object | None:
    """An armature Object from an Object, a name or None (the target armature, or a new default rig)."""
    if isinstance(armature, str):
        obj = bpy.data.objects.get(armature)
        if obj is None or obj.type != "ARMATURE":
            raise ValueError(f"no armature object named {armature!r} in this file")
        return obj
    if armature is not None:
        if getattr(armature, "type", None) != "ARMATURE":
            raise ValueError(f"{armature!r} is not an armature object")
        return armature
    found = rig.find_target_armature(bpy.context)
    if found is None and create:
        found = rig.ensure_armature(bpy.context)
    return found


def option_overrides(options: dict) -> dict:
    """api keywords -> Settings overrides (TypeError naming the known ones)."""
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(OPTION_NAMES)}")
    return {OPTION_NAMES[k]: v for k, v in options.items()}


def pump_until_done(job, timeout: float) -> bool:
    """Pump a job until it ends (what the UI timer does): True; after `timeout` seconds it is
    stopped at once and False is returned."""
    deadline = time.monotonic() + timeout
    while job.pump():
        if time.monotonic() > deadline:
            job.cancel()
            job.cancel()  # the second call stops the backend at once
            return False
        time.sleep(0.01)
    return True
