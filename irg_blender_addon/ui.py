"""The N-panel (3D Viewport > Sidebar > IRG Motion): prompt, Generate/Cancel, status,
the model's reasoning trace and the active armature's versions.

draw() must never raise: it runs on every redraw, in every state (no armature,
no model set, backend down, a job running)."""
from __future__ import annotations

import textwrap

import bpy

from . import actions, rig
from .jobs import manager
from .prefs import ADDON_ID, get_settings

LEVEL_ICONS = {"IDLE": "INFO", "RUNNING": "SORTTIME", "DONE": "CHECKMARK", "ERROR": "ERROR",
               "CANCELLED": "CANCEL"}
WRAP = 48  # characters per label line in the sidebar


def wrapped_labels(layout, text: str, *, icon: str = "NONE", width: int = WRAP, max_lines: int = 30) -> None:
    """Draw text as labels, wrapped, first line with the icon; long text keeps its end."""
    lines = [piece for para in text.splitlines() for piece in (textwrap.wrap(para, width) or [""])]
    if len(lines) > max_lines:
        lines = ["..."] + lines[-max_lines:]
    col = layout.column(align=True)
    for i, line in enumerate(lines):
        col.label(text=line, icon=icon if i == 0 else "NONE")


def setup_problem() -> str:
    """'' when a backend and model are configured, else what to set (never raises)."""
    try:
        s = get_settings()
    except ValueError as exc:
        return str(exc)
    missing = [name for name, value in (("Backend Python", s.backend_python), ("Model Folder", s.model_dir))
               if not value]
    if missing:
        return f"Set {' and '.join(missing)} in Preferences > Add-ons > IRG Motion."
    return ""


class IRG_PT_generate(bpy.types.Panel):
    """Prompt, Generate/Cancel and the status line."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Generate"

    def draw(self, context):
        layout = self.layout
        scene_props = getattr(context.scene, "irg_motion", None)
        rt = getattr(context.window_manager, "irg_motion", None)
        if scene_props is None or rt is None:
            layout.label(text="IRG Motion is not registered.", icon="ERROR")
            return
        layout.prop(scene_props, "prompt", text="")
        row = layout.row(align=True)
        row.scale_y = 1.4
        if manager.busy():
            row.operator("irg.cancel", text="Cancel", icon="CANCEL")
        else:
            row.operator("irg.generate", text="Generate", icon="PLAY")
        target = rig.find_target_armature(context)
        layout.label(text=f"Armature: {target.name}" if target is not None
                     else "No armature: a default rig will be created", icon="ARMATURE_DATA")
        problem = setup_problem()
        if problem:
            wrapped_labels(layout.box(), problem, icon="PREFERENCES")
            layout.operator("preferences.addon_show", text="Open Preferences").module = ADDON_ID
        if rt.status:
            box = layout.box()
            if rt.running:
                box.prop(rt, "progress", text="Progress", slider=True)
            wrapped_labels(box, rt.status, icon=LEVEL_ICONS.get(rt.level, "INFO"))


class IRG_PT_trace(bpy.types.Panel):
    """The model's analysis, assessment and refinement of the last generation."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Reasoning"
    bl_parent_id = "IRG_PT_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        rt = getattr(context.window_manager, "irg_motion", None)
        if rt is None or not (rt.trace or rt.assessment):
            self.layout.label(text="No reasoning yet.")
            return
        if rt.assessment:
            wrapped_labels(self.layout.box(), rt.assessment, icon="VIEWZOOM")
        if rt.trace:
            wrapped_labels(self.layout, rt.trace, max_lines=40)


class IRG_PT_versions(bpy.types.Panel):
    """The target armature's versions; the active one is highlighted."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Versions"
    bl_parent_id = "IRG_PT_generate"

    def draw(self, context):
        layout = self.layout
        armature = rig.find_target_armature(context)
        if armature is None:
            layout.label(text="No armature selected.")
            return
        try:
            found = actions.versions(armature)
        except Exception as exc:  # a redraw must not raise; show why instead
            layout.label(text=f"Cannot list versions: {exc}", icon="ERROR")
            return
        if not found:
            layout.label(text="No versions yet.")
            return
        anim = armature.animation_data
        active = anim.action if anim is not None else None
        col = layout.column(align=True)
        for action in reversed(found):
            info = actions.version_info(action)
            row = col.row(align=True)
            is_active = action == active
            op = row.operator("irg.set_active_version", text=action.name,
                              icon="RADIOBUT_ON" if is_active else "RADIOBUT_OFF", depress=is_active)
            op.armature, op.action = armature.name, action.name
            row.label(text=_version_note(info))


def _version_note(info: dict) -> str:
    """A short note beside a version: round and duration."""
    parts = []
    if info.get("round"):
        parts.append(f"round {info['round']}")
    if info.get("frames"):
        parts.append(f"{info['frames']} fr")
    return ", ".join(parts)


CLASSES = (IRG_PT_generate, IRG_PT_trace, IRG_PT_versions)
