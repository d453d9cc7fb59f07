"""Properties: the prompt lives on the Scene (saved with the file); the running job's
status and trace live on the WindowManager (runtime only, never saved)."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, PointerProperty, StringProperty

STATUS_LEVELS = (("IDLE", "Idle", ""), ("RUNNING", "Running", ""), ("DONE", "Done", ""),
                 ("ERROR", "Error", ""), ("CANCELLED", "Cancelled", ""))


class IRG_PG_scene(bpy.types.PropertyGroup):
    """Per-scene inputs, saved in the .blend."""

    prompt: StringProperty(name="Prompt", description="Describe the motion, e.g. "
                           "'a person walks forward and waves with the right hand'")


class IRG_PG_runtime(bpy.types.PropertyGroup):
    """What the running (or last) generation is doing; the panel draws it."""

    status: StringProperty(name="Status")
    level: bpy.props.EnumProperty(name="Level", items=STATUS_LEVELS, default="IDLE")
    running: BoolProperty(name="Running")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    trace: StringProperty(name="Trace", description="The model's reasoning text so far")
    assessment: StringProperty(name="Assessment", description="The last assessment and refinement")


CLASSES = (IRG_PG_scene, IRG_PG_runtime)


def register_properties() -> None:
    """Attach the property groups (their classes must be registered first)."""
    bpy.types.Scene.irg_motion = PointerProperty(type=IRG_PG_scene)
    bpy.types.WindowManager.irg_motion = PointerProperty(type=IRG_PG_runtime)


def unregister_properties() -> None:
    """Detach the property groups (before their classes are unregistered)."""
    for owner in (bpy.types.Scene, bpy.types.WindowManager):
        if hasattr(owner, "irg_motion"):
            del owner.irg_motion


def runtime(context=None) -> IRG_PG_runtime | None:
    """The WindowManager's runtime properties (None before registration)."""
    wm = (context or bpy.context).window_manager
    return getattr(wm, "irg_motion", None) if wm is not None else None
