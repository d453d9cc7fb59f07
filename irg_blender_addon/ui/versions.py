"""Versions: the target armature's versions list, the selected one's details, and use/keep/rename/delete."""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from .. import props
from ..anim import actions, ghost
from ..jobs import thumbnails
from ..jobs.base import set_meta
from ..jobs.review import resolve_action
from ..rig.mapping import target_armature
from .retarget import draw_apply_button
from ..registration import register_classes, unregister_classes
from .widgets import SubPanel, one_line, refuse, wrapped_labels


def draw_thumbnail_label(layout, action: bpy.types.Action, text: str) -> None:
    """A label with the version's strip as its icon (the Action icon while it has none)."""
    try:
        icon = thumbnails.icon_id(action)
    except Exception:  # a redraw must not raise (e.g. an unreadable cache file)
        icon = 0
    if icon:
        layout.label(text=text, icon_value=icon)
    else:
        layout.label(text=text, icon="ACTION")


def draw_compare_button(layout, armature, action) -> None:
    """The row button that shows (or hides) `action` on a ghost beside the armature."""
    shown = ghost.ghost_armature(armature)
    on = shown is not None and shown.animation_data is not None and shown.animation_data.action == action
    op = layout.operator("irg.compare_version", text="", icon="GHOST_ENABLED" if on else "GHOST_DISABLED",
                         emboss=False, depress=on)
    op.action = action.name


def active_action(armature):
    anim = armature.animation_data if armature is not None else None
    return anim.action if anim is not None else None

class IRG_UL_versions(bpy.types.UIList):
    """The target armature's versions, newest first: keep flag, name, round, prompt, assessment.

    Listed from bpy.data.actions; the active row is the Action the armature plays
    (Object.irg_version_index), so clicking a row plays that version."""

    bl_idname = "IRG_UL_versions"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        info = actions.version_info(item)
        row = layout.row(align=True)
        keep = bool(info.get("keep"))
        op = row.operator("irg.toggle_keep", text="", icon="LOCKED" if keep else "UNLOCKED", emboss=False)
        op.action = item.name
        split = row.split(factor=0.4, align=True)
        draw_thumbnail_label(split, item, item.name)
        cols = split.split(factor=0.15, align=True)
        cols.label(text=f"R{info.get('round', '?')}")
        cols = cols.split(factor=0.5, align=True)
        cols.label(text=one_line(info.get("prompt", "")))
        cols.label(text=one_line(info.get("assessment", "")) or "-")
        armature = target_armature(context)
        if armature is not None and item != active_action(armature):
            draw_compare_button(row, armature, item)
        draw_apply_button(row, item)

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        armature = target_armature(context)
        try:
            found = actions.versions(armature) if armature is not None else []
        except ValueError:  # e.g. the armature is in Edit Mode
            found = []
        order = {a.name: i for i, a in enumerate(reversed(found))}  # newest first
        pattern = self.filter_name.lower()
        flags, new_order = [], []
        for k, item in enumerate(items):
            shown = item.name in order and (not pattern or pattern in item.name.lower())
            flags.append(self.bitflag_filter_item if shown else 0)
            new_order.append(order.get(item.name, len(order) + k))
        # new_order must be a permutation: rank the keys.
        ranks = sorted(range(len(new_order)), key=new_order.__getitem__)
        positions = [0] * len(ranks)
        for position, k in enumerate(ranks):
            positions[k] = position
        return flags, positions

class IRG_PT_versions(SubPanel, bpy.types.Panel):
    """The target armature's versions; the selected one's details and actions."""

    bl_label = "Versions"

    def draw(self, context):
        layout = self.layout
        armature = target_armature(context)
        if armature is None:
            layout.label(text="No armature selected.")
            return
        try:
            found = actions.versions(armature)
        except ValueError as exc:  # a redraw must not raise; show why instead
            layout.label(text=f"Cannot list versions: {exc}", icon="ERROR")
            return
        if not found:
            layout.label(text="No versions yet.")
            return
        layout.template_list("IRG_UL_versions", "", bpy.data, "actions", armature, "irg_version_index", rows=4)
        action = active_action(armature)
        if action is None or action not in found:
            layout.label(text="The armature plays no version: click one to play it.", icon="INFO")
            return
        info = actions.version_info(action)
        row = layout.row(align=True)
        keep = bool(info.get("keep"))
        row.operator("irg.toggle_keep", text="Kept" if keep else "Keep", icon="LOCKED" if keep else "UNLOCKED",
                     depress=keep).action = action.name
        row.operator("irg.rename_version", text="Rename", icon="GREASEPENCIL").action = action.name
        sub = row.row(align=True)
        sub.enabled = not keep
        sub.operator("irg.delete_version", text="", icon="TRASH").action = action.name
        row.popover("IRG_PT_version_thumbnail", text="", icon="IMAGE_DATA")
        _draw_details(layout.box(), action, info)

def _draw_details(layout, action, info: dict) -> None:
    """What a version is: prompt, round, parent, how it was made, caption."""
    wrapped_labels(layout, f"Prompt: {info.get('prompt', '')}", icon="TEXT", max_lines=6)
    parent = info.get("parent") or ""
    made = {"generate": "generated", "refine": "refined", "apply": "applied", "retarget": "retargeted"}
    how = made.get(info.get("source", ""), info.get("source", "") or "made")
    line = f"Round {info.get('round', '?')}, {how}"
    if parent:
        line += f" from {parent}" + ("" if bpy.data.actions.get(parent) is not None else " (deleted)")
    layout.label(text=line, icon="FILE_PARENT" if parent else "BLANK1")
    extra = info.get("extra") or {}
    if extra.get("instruction"):
        wrapped_labels(layout, f"Instruction: {extra['instruction']}", max_lines=4)
    if info.get("caption"):
        wrapped_labels(layout, f"Caption: {info['caption']}", icon="INFO", max_lines=6)


class ActionOperator:
    """An operator on one Action, named by its `action` property."""

    action: StringProperty(name="Action", options={"SKIP_SAVE"})

    def _action(self) -> bpy.types.Action:
        return resolve_action(self.action)

class IRG_OT_set_active_version(bpy.types.Operator):
    """Make this version the armature's active Action"""

    bl_idname = "irg.set_active_version"
    bl_label = "Use Version"
    bl_options = {"REGISTER", "UNDO"}

    armature: StringProperty(name="Armature")
    action: StringProperty(name="Action")

    def execute(self, context):
        armature = bpy.data.objects.get(self.armature)
        action = bpy.data.actions.get(self.action)
        if armature is None or armature.type != "ARMATURE" or action is None:
            return refuse(self, f"No armature {self.armature!r} or version {self.action!r}: it was renamed or deleted.")
        actions.set_active_version(armature, action)
        props.review(action)
        return {"FINISHED"}

class IRG_OT_toggle_keep(ActionOperator, bpy.types.Operator):
    """Keep this version: a kept version cannot be deleted"""

    bl_idname = "irg.toggle_keep"
    bl_label = "Keep Version"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            action = self._action()
            set_meta(action, keep=not actions.version_info(action).get("keep", False))
        except ValueError as exc:
            return refuse(self, exc, context)
        return {"FINISHED"}

class IRG_OT_rename_version(ActionOperator, bpy.types.Operator):
    """Rename this version; its metadata and its children's parent links follow"""

    bl_idname = "irg.rename_version"
    bl_label = "Rename Version"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", options={"SKIP_SAVE"})

    def invoke(self, context, event):
        action = bpy.data.actions.get(self.action)
        if action is not None and not self.name:
            self.name = action.name
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        try:
            action = self._action()
            rename_version(action, self.name)
        except ValueError as exc:
            return refuse(self, exc, context)
        return {"FINISHED"}

def rename_version(action: bpy.types.Action, name: str) -> None:
    """Rename a version (ValueError for an empty or taken name); children keep pointing at it."""
    name = (name or "").strip()
    if not name:
        raise ValueError("The new name is empty: type a name for the version.")
    if name == action.name:
        return
    if bpy.data.actions.get(name) is not None:
        raise ValueError(f"An Action named {name!r} already exists: pick another name.")
    old = action.name
    action.name = name
    for other in bpy.data.actions:
        if actions.version_info(other).get("parent") == old:
            actions.update_info(other, parent=action.name)
    rt = props.runtime()
    if rt is not None and rt.review_action == old:
        rt.review_action = action.name

class IRG_OT_delete_version(ActionOperator, bpy.types.Operator):
    """Delete this version (asks first; kept versions are never deleted)"""

    bl_idname = "irg.delete_version"
    bl_label = "Delete Version"
    bl_options = {"REGISTER", "UNDO"}

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        try:
            action = self._action()
            info = actions.version_info(action)
            if not info:
                raise ValueError(f"{action.name!r} is not an IRG Motion version: delete it in the Action editor.")
            if info.get("keep"):
                raise ValueError(f"{action.name!r} is marked Keep: clear its Keep flag first to delete it.")
        except ValueError as exc:
            return refuse(self, exc, context)
        name = action.name
        actions.delete_version(action)
        self.report({"INFO"}, f"Deleted {name}.")
        return {"FINISHED"}


CLASSES = (IRG_UL_versions, IRG_PT_versions, IRG_OT_set_active_version, IRG_OT_toggle_keep, IRG_OT_rename_version,
           IRG_OT_delete_version)


def register() -> None:
    register_classes(CLASSES)


def unregister() -> None:
    unregister_classes(CLASSES)
