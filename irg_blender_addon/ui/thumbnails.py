"""Thumbnails and Compare: the strip popover of a version, rebuilding and packing the strips,
and a ghost armature playing a second version beside the first."""
from __future__ import annotations

import bpy

from ..anim import actions, ghost
from ..jobs import thumbnails
from ..rig.mapping import target_armature
from ..registration import register_classes, unregister_classes
from .versions import ActionOperator, active_action
from .widgets import refuse

POPOVER_SCALE = 14.0


class IRG_PT_version_thumbnail(bpy.types.Panel):
    """The playing version's strip, large; rebuild and pack the strips"""

    bl_space_type = "VIEW_3D"
    bl_region_type = "HEADER"
    bl_label = "Version Thumbnail"
    bl_ui_units_x = 24

    def draw(self, context):
        layout = self.layout
        armature = target_armature(context)
        action = active_action(armature)
        if action is None or not actions.version_info(action):
            layout.label(text="The armature plays no version.")
            return
        icon = thumbnails.icon_id(action)
        if icon:
            layout.template_icon(icon_value=icon, scale=POPOVER_SCALE)
        elif thumbnails.queue.busy:
            layout.label(text="Rendering the thumbnails...", icon="SORTTIME")
        else:
            layout.label(text="No thumbnail yet: press Rebuild Thumbnails.", icon="INFO")
        layout.label(text=action.name)
        row = layout.row(align=True)
        row.operator("irg.rebuild_thumbnails", icon="FILE_REFRESH")
        row.operator("irg.pack_thumbnails", icon="PACKAGE")


class IRG_OT_compare_version(ActionOperator, bpy.types.Operator):
    """Compare: play this version on a ghost copy of the armature beside it (press again to remove the ghost)"""

    bl_idname = "irg.compare_version"
    bl_label = "Compare Version"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        armature = target_armature(context)
        try:
            action = self._action()
            if armature is None:
                raise ValueError("Select the armature to compare on.")
            shown = ghost.ghost_armature(armature)
            if shown is not None and shown.animation_data is not None and shown.animation_data.action == action:
                ghost.hide(armature)
            else:
                ghost.show(armature, action)
        except ValueError as exc:
            return refuse(self, exc, context)
        return {"FINISHED"}


class IRG_OT_rebuild_thumbnails(bpy.types.Operator):
    """Make the strips of this armature's versions again (packed strips are unpacked first, without a render)"""

    bl_idname = "irg.rebuild_thumbnails"
    bl_label = "Rebuild Thumbnails"

    force: bpy.props.BoolProperty(name="Render All", default=False, options={"SKIP_SAVE"},
                                  description="Render even the versions whose strip is cached")

    def execute(self, context):
        armature = target_armature(context)
        if armature is None:
            return refuse(self, "Select an armature with versions.", context)
        restored = thumbnails.restore_packed()
        found = actions.versions(armature)
        thumbnails.release_previews()  # icons are loaded again from the files
        thumbnails.queue.request([a.name for a in found], force=self.force)
        self.report({"INFO"}, f"Rendering the thumbnails of {len(found)} version(s)"
                              + (f"; {restored} unpacked" if restored else "") + ".")
        return {"FINISHED"}


class IRG_OT_pack_thumbnails(bpy.types.Operator):
    """Keep the versions' thumbnails inside the .blend (packed images), so they travel with the file"""

    bl_idname = "irg.pack_thumbnails"
    bl_label = "Pack Thumbnails"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        armature = target_armature(context)
        if armature is None:
            return refuse(self, "Select an armature with versions.", context)
        count = thumbnails.pack(actions.versions(armature))
        self.report({"INFO"}, f"Packed {count} thumbnail(s) into the .blend.")
        return {"FINISHED"}


CLASSES = (IRG_PT_version_thumbnail, IRG_OT_compare_version, IRG_OT_rebuild_thumbnails, IRG_OT_pack_thumbnails)


@bpy.app.handlers.persistent
def _before_load(_dummy=None) -> None:
    """Another file opens: the strips still waiting belong to the old one."""
    thumbnails.queue.cancel()


def register() -> None:
    register_classes(CLASSES)
    if _before_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_before_load)


def unregister() -> None:
    if _before_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_before_load)
    thumbnails.queue.cancel()
    thumbnails.release_previews()
    unregister_classes(CLASSES)
