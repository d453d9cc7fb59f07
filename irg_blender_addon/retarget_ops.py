"""Retarget options (per scene), "Apply to Selected Armature", "Check Rig", and the panel section.

Wiring (irg_blender_addon/__init__.py): call `register()` after the add-on's own
classes and `unregister()` before them; both are idempotent, and `CLASSES` lists
what they register. The generation job passes `retarget_options(context)` to
actions.write_version so new versions use the panel's settings; the versions
list calls `draw_apply_button(layout, action)` per version.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, PointerProperty, StringProperty

from . import actions, presets, retarget, rig

ROOT_MODE_ITEMS = (
    ("root_motion", "Root Motion", "The hips carry the whole translation"),
    ("in_place", "In Place", "The ground trajectory is removed; the body's own sway stays"),
    ("root_bone", "Root Bone", "A separate root bone (named by the rig preset) carries the ground trajectory and "
                               "the facing"),
)
_preset_items: list[tuple[str, str, str]] = []  # Blender needs the enum strings kept alive


def _presets_enum(self, context) -> list[tuple[str, str, str]]:
    if not _preset_items:
        loaded = presets.load_presets()
        _preset_items.append(("AUTO", "Auto-detect", "Pick the preset from the armature's bone names"))
        for pid, preset in sorted(loaded.items(), key=lambda kv: kv[1].name.casefold()):
            _preset_items.append((pid, preset.name, preset.description or preset.name))
    return _preset_items


class IRG_PG_retarget(bpy.types.PropertyGroup):
    """How motion is put on the armature (saved with the scene)."""

    preset: EnumProperty(name="Rig Preset", items=_presets_enum,
                         description="Which bone takes each joint: detected from the bone names, or a preset")
    root_mode: EnumProperty(name="Root", items=ROOT_MODE_ITEMS, default="root_motion",
                            description="Where the translation goes")
    foot_lock: BoolProperty(name="Foot Locking", default=False,
                            description="Pin the feet while they touch the floor (legs re-solved with two-bone IK)")
    smoothing: BoolProperty(name="Smoothing", default=False,
                            description="Savitzky-Golay filter on the joint positions (window 11, order 5)")
    last_check: StringProperty(name="Rig Check", description="What Check Rig found for the armature")


def retarget_options(context=None) -> dict:
    """The scene's retarget settings as keyword arguments of actions.write_version."""
    settings = getattr((context or bpy.context).scene, "irg_retarget", None)
    if settings is None:
        return {"preset": "auto", "root_mode": "root_motion", "foot_lock": False, "smoothing": False}
    return {"preset": "auto" if settings.preset == "AUTO" else settings.preset, "root_mode": settings.root_mode,
            "foot_lock": bool(settings.foot_lock), "smoothing": bool(settings.smoothing)}


def check_rig(armature, preset="auto") -> str:
    """One line on how motion maps onto the armature; ValueError with the fix when it cannot."""
    rig.check_armature(armature)
    found = retarget.bone_map(armature, preset)
    plan = retarget.make_plan(retarget.read_rest(armature), found.mapping, found.root_bone)
    between = len(plan.shares)
    root = f", root bone {found.root_bone!r}" if found.root_bone else ""
    return (f"{armature.name}: preset {found.preset}, {len(found.mapping)} of 22 joints mapped, "
            f"{len(plan.keyed)} bones keyed ({between} sharing a span's twist){root}.")


class IRG_OT_check_rig(bpy.types.Operator):
    """Detect the rig preset of the selected armature and check that motion can be put on it"""

    bl_idname = "irg.check_rig"
    bl_label = "Check Rig"

    @classmethod
    def poll(cls, context):
        return rig.find_target_armature(context) is not None

    def execute(self, context):
        settings = context.scene.irg_retarget
        try:
            text = check_rig(rig.find_target_armature(context), retarget_options(context)["preset"])
        except ValueError as exc:
            settings.last_check = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        settings.last_check = text
        self.report({"INFO"}, text)
        return {"FINISHED"}


class IRG_OT_apply_version(bpy.types.Operator):
    """Retarget this version onto the selected armature as a new version, with the panel's retarget options"""

    bl_idname = "irg.apply_version"
    bl_label = "Apply to Selected Armature"
    bl_options = {"REGISTER", "UNDO"}

    version: StringProperty(name="Version", description="Name of the version's Action")

    @classmethod
    def poll(cls, context):
        return rig.find_target_armature(context) is not None

    def execute(self, context):
        action = bpy.data.actions.get(self.version)
        target = rig.find_target_armature(context)
        if action is None:
            self.report({"ERROR"}, f"No Action named {self.version!r}: pick an existing version.")
            return {"CANCELLED"}
        try:
            new = actions.apply_version(action, target, **retarget_options(context))
        except (ValueError, TypeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        info = actions.version_info(new)
        changed = info.get("rotation_mode_changed", [])
        note = f"; {len(changed)} bones switched to quaternion rotation" if changed else ""
        self.report({"INFO"}, f"Applied {action.name} to {target.name} as {new.name} "
                              f"(preset {info.get('preset')}){note}.")
        return {"FINISHED"}


def draw_retarget(layout, context) -> None:
    """The panel section: retarget options, Check Rig and its last result."""
    settings = getattr(context.scene, "irg_retarget", None)
    if settings is None:
        return
    box = layout.box()
    box.label(text="Retarget", icon="ARMATURE_DATA")
    box.prop(settings, "preset")
    box.prop(settings, "root_mode")
    row = box.row()
    row.prop(settings, "foot_lock")
    row.prop(settings, "smoothing")
    box.operator(IRG_OT_check_rig.bl_idname, icon="VIEWZOOM")
    for line in settings.last_check.splitlines()[:4]:
        box.label(text=line)


def draw_apply_button(layout, action, text: str = "") -> None:
    """A button applying one version to the selected armature."""
    op = layout.operator(IRG_OT_apply_version.bl_idname, text=text, icon="MOD_ARMATURE")
    op.version = action.name


CLASSES = (IRG_PG_retarget, IRG_OT_check_rig, IRG_OT_apply_version)


def register() -> None:
    """Register the classes (those not yet registered) and attach Scene.irg_retarget."""
    for cls in CLASSES:
        if not getattr(cls, "is_registered", False):
            bpy.utils.register_class(cls)
    bpy.types.Scene.irg_retarget = PointerProperty(type=IRG_PG_retarget)


def unregister() -> None:
    """Detach Scene.irg_retarget and unregister the classes."""
    if hasattr(bpy.types.Scene, "irg_retarget"):
        del bpy.types.Scene.irg_retarget
    for cls in reversed(CLASSES):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
