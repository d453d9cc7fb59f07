"""Retarget: the scene's retarget options, each armature's bone mapping, their operators and panel sections.

The property groups live here (Scene.irg_retarget, Object.irg_bone_map, saved in the
.blend); what reads and fills them without drawing is rig.mapping (the jobs read
`mapping.retarget_options(context, armature)`). The versions list calls
`draw_apply_button(layout, action)` per version; the Retarget panel calls
`draw_retarget(layout, context)` and `draw_mapping(layout, context)`. `register()` also
lets detection see the user presets (retarget.set_preset_dirs).
"""
from __future__ import annotations

import re
import textwrap
import zlib

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, PointerProperty, StringProperty

from ..anim import actions
from ..rig import presets, retarget, armature as rig
from ..registration import register_classes, unregister_classes
from ..rig import mapping
from ..rig.mapping import AUTO, CUSTOM, target_armature

ROOT_MODE_ITEMS = (
    ("root_motion", "Root Motion", "The hips carry the whole translation"),
    ("in_place", "In Place", "The ground trajectory is removed; the body's own sway stays"),
    ("root_bone", "Root Bone", "A separate root bone (named by the rig preset) carries the ground trajectory and "
                               "the facing"),
)
WRAP = 52  # characters per label line in the N-panel
# What each joint's bone is on a usual rig (the bone whose head sits at the joint).
PART = {"pelvis": "hips", "spine1": "spine", "spine2": "spine", "spine3": "chest", "neck": "neck",
        "head": "head", "collar": "clavicle", "shoulder": "upper arm", "elbow": "forearm", "wrist": "hand",
        "hip": "thigh", "knee": "shin", "ankle": "foot", "foot": "toes"}
GROUPS = (("Torso", ("pelvis", "spine1", "spine2", "spine3", "neck", "head")),
          *((f"{side.title()} {limb}", tuple(f"{side}_{j}" for j in joints))
            for limb, joints in (("Arm", ("collar", "shoulder", "elbow", "wrist")),
                                 ("Leg", ("hip", "knee", "ankle", "foot")))
            for side in ("left", "right")))
from .widgets import SubPanel, refuse


# ---------------------------------------------------------------- the preset option

_preset_items: list[tuple] = []  # Blender needs the enum strings kept alive while it shows them
_retired: list[list[tuple]] = []  # earlier lists, kept alive too (only grows when presets change)


def _enum_number(pid: str, taken: set[int]) -> int:
    """A number for a preset id that does not change when presets are added or removed, so the
    choice saved in a .blend (Blender stores the number) keeps naming the same preset."""
    number = zlib.crc32(pid.encode("utf-8")) & 0x7FFFFFFF
    while number in taken:
        number = (number + 1) & 0x7FFFFFFF
    return number


def preset_items() -> list[tuple[str, str, str, str, int]]:
    """The preset option's items: Auto, Custom, the bundled presets, then the user's."""
    items = [(AUTO, "Auto-detect", "Pick the preset from the armature's bone names (user presets included)",
              "NONE", 0),
             (CUSTOM, "Custom (this rig)", "The armature's own bone mapping (Bone Mapping: detect, then fix by "
                                           "hand)", "NONE", 1)]
    taken = {0, 1}
    known = retarget.available_presets()
    for preset in sorted(known.values(), key=lambda p: (not p.bundled, p.name.casefold())):
        number = _enum_number(preset.id, taken)
        taken.add(number)
        label = preset.name if preset.bundled else f"{preset.name} (user)"
        items.append((preset.id, label, preset.description or preset.name,
                      "NONE" if preset.bundled else "USER", number))
    return items


def _presets_enum(self, context) -> list[tuple]:
    global _preset_items
    try:
        items = preset_items()
    except Exception:  # called while drawing: never raise; Auto and Custom still work
        items = _preset_items[:2] or [(AUTO, "Auto-detect", "", "NONE", 0), (CUSTOM, "Custom (this rig)", "",
                                                                              "NONE", 1)]
    if items != _preset_items:
        _retired.append(_preset_items)
        _preset_items = items
    return _preset_items


# ---------------------------------------------------------------- properties

class IRG_PG_joint_bone(bpy.types.PropertyGroup):
    """One row of a bone mapping: a HumanML3D joint and the bone that takes it."""

    joint: StringProperty(name="Joint", description="HumanML3D joint")
    bone: StringProperty(name="Bone", description="The bone whose head sits at this joint (empty: not driven, "
                                                  "it follows its parent)")


class IRG_PG_bone_map(bpy.types.PropertyGroup):
    """An armature's own joint -> bone mapping (saved with the object)."""

    joints: CollectionProperty(type=IRG_PG_joint_bone)
    base: StringProperty(name="Based On", description="The rig preset the mapping was detected from")
    report: StringProperty(name="Detection", description="What Detect Mapping found")


class IRG_PG_retarget(bpy.types.PropertyGroup):
    """How motion is put on the armature (saved with the scene)."""

    preset: EnumProperty(name="Rig Preset", items=_presets_enum,
                         description="Which bone takes each joint: detected from the bone names, a preset, or "
                                     "the armature's own mapping (Custom)")
    root_mode: EnumProperty(name="Root", items=ROOT_MODE_ITEMS, default="root_motion",
                            description="Where the translation goes")
    foot_lock: BoolProperty(name="Foot Locking", default=False,
                            description="Pin the feet while they touch the floor (legs re-solved with two-bone IK)")
    ik_legs: BoolProperty(name="IK Legs", default=False,
                          description="On control rigs whose preset has IK leg controls (Rigify): also key the IK "
                                      "feet at the ankles, planted during foot contacts, and the knee poles, with "
                                      "the legs switched to IK")
    smoothing: BoolProperty(name="Smoothing", default=False,
                            description="Savitzky-Golay filter on the joint positions (window 11, order 5)")
    last_check: StringProperty(name="Rig Check", description="What Check Rig found for the armature")
    show_mapping: BoolProperty(name="Bone Mapping", default=False,
                               description="Show the armature's joint -> bone mapping")


# ---------------------------------------------------------------- operators

def _editable_target(context):
    target = target_armature(context)
    return target if target is not None and target.mode != "EDIT" else None


class IRG_OT_check_rig(bpy.types.Operator):
    """Detect the rig preset of the selected armature and check that motion can be put on it"""

    bl_idname = "irg.check_rig"
    bl_label = "Check Rig"

    @classmethod
    def poll(cls, context):
        return target_armature(context) is not None

    def execute(self, context):
        settings = context.scene.irg_retarget
        target = target_armature(context)
        try:
            text = mapping.check_rig(target, mapping.retarget_options(context, target)["preset"])
        except ValueError as exc:
            settings.last_check = str(exc)
            return refuse(self, exc)
        settings.last_check = text
        self.report({"INFO"}, text)
        return {"FINISHED"}


class IRG_OT_detect_mapping(bpy.types.Operator):
    """Fill the armature's bone mapping from the rig preset that fits its bone names (or the preset picked above)"""

    bl_idname = "irg.detect_mapping"
    bl_label = "Detect Mapping"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _editable_target(context) is not None

    def execute(self, context):
        target = target_armature(context)
        choice = context.scene.irg_retarget.preset
        try:
            found = mapping.detect_mapping(target, None if choice in (AUTO, CUSTOM, "") else choice)
        except ValueError as exc:
            return refuse(self, exc)
        self.report({"INFO"} if found.ok else {"WARNING"}, found.report().replace("\n", " "))
        return {"FINISHED"}


class IRG_OT_save_mapping_preset(bpy.types.Operator):
    """Save the armature's bone mapping as a rig preset of your own (detection prefers it on rigs it fits)"""

    bl_idname = "irg.save_mapping_preset"
    bl_label = "Save as Preset"
    bl_options = {"REGISTER"}

    name: StringProperty(name="Name", description="The preset's name (its file name is made from it)")

    @classmethod
    def poll(cls, context):
        target = _editable_target(context)
        return target is not None and bool(mapping.joint_mapping(target))

    def invoke(self, context, event):
        if not self.name:
            self.name = f"{target_armature(context).name} rig"
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        target = target_armature(context)
        try:
            path, replaced = mapping.save_mapping(target, self.name)
        except (ValueError, OSError) as exc:  # PresetError is a ValueError
            return refuse(self, exc)
        verb = "Replaced" if replaced else "Saved"
        self.report({"INFO"}, f"{verb} rig preset {self.name.strip()!r} ({path.stem}) in {path.parent}.")
        return {"FINISHED"}


class IRG_OT_apply_version(bpy.types.Operator):
    """Retarget this version onto the selected armature as a new version, with the panel's retarget options"""

    bl_idname = "irg.apply_version"
    bl_label = "Apply to Selected Armature"
    bl_options = {"REGISTER", "UNDO"}

    version: StringProperty(name="Version", description="Name of the version's Action")

    @classmethod
    def poll(cls, context):
        return target_armature(context) is not None

    def execute(self, context):
        action = bpy.data.actions.get(self.version)
        target = target_armature(context)
        if action is None:
            return refuse(self, f"No Action named {self.version!r}: pick an existing version.")
        try:
            new = actions.apply_version(action, target, **mapping.retarget_options(context, target))
        except (ValueError, TypeError) as exc:
            return refuse(self, exc)
        info = actions.version_info(new)
        changed = info.get("rotation_mode_changed", [])
        note = f"; {len(changed)} bones switched to quaternion rotation" if changed else ""
        self.report({"INFO"}, f"Applied {action.name} to {target.name} as {new.name} "
                              f"(preset {info.get('preset')}){note}.")
        return {"FINISHED"}


# ---------------------------------------------------------------- drawing (never raises)

def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _lines(layout, text: str, icon: str = "NONE", limit: int = 8) -> None:
    """Labels for `text`, wrapped to the panel width (at most `limit` lines)."""
    wrapped = [w for para in text.splitlines() for w in (textwrap.wrap(para, WRAP) or [""])]
    for k, line in enumerate(wrapped[:limit]):
        layout.label(text=line, icon=icon if k == 0 else "NONE")


def _state_problem(context) -> tuple[object, str]:
    """(the target armature, '') when its mapping can be shown, else (None or it, why not)."""
    target = target_armature(context)
    if target is None:
        active = getattr(context, "active_object", None)
        if active is not None and getattr(active, "type", "ARMATURE") != "ARMATURE":
            return None, f"The active object {active.name!r} is a {active.type.lower()}: select an armature."
        return None, "Select an armature to map its bones."
    if target.mode == "EDIT":
        return target, f"{target.name} is in Edit Mode: switch to Object or Pose Mode to map its bones."
    if mapping.bone_map_state(target) is None:
        return target, "The bone mapping is not registered: enable the IRG Motion add-on again."
    return target, ""


def _flagged_joints(problems: list[str]) -> set[str]:
    """The joints a problem is about (quoted bone names and the ancestor a problem compares
    with are not counted), for red rows."""
    flagged = set()
    for problem in problems:
        text = re.sub(r"'[^']*'|\"[^\"]*\"", "", problem.split(" is not below ")[0])
        flagged |= {j for j in presets.JOINTS if re.search(rf"\b{j}\b", text)}
    return flagged


def _draw_rows(layout, target, problems: list[str]) -> None:
    rows = {row.joint: row for row in target.irg_bone_map.joints}
    flagged = _flagged_joints(problems)
    for title, joints in GROUPS:
        col = layout.column(align=True)
        col.label(text=title)
        for joint in joints:
            row = rows.get(joint)
            if row is None:
                continue
            line = col.split(factor=0.45, align=True)
            line.alert = joint in flagged
            part = PART.get(joint) or PART.get(joint.split("_", 1)[-1], "")
            line.label(text=f"{joint.replace('_', ' ').title()} ({part})")
            line.prop_search(row, "bone", target.data, "bones", text="")


def _draw_mapping_body(box, context, settings) -> None:
    target, why = _state_problem(context)
    if why:
        box.label(text=why, icon="INFO")
        return
    state = target.irg_bone_map
    problems = mapping.mapping_problems(target) if len(state.joints) else []
    buttons = box.row(align=True)
    buttons.operator(IRG_OT_detect_mapping.bl_idname, icon="VIEWZOOM")
    save = buttons.row(align=True)
    save.enabled = bool(len(state.joints)) and not problems
    save.operator(IRG_OT_save_mapping_preset.bl_idname, icon="PRESET_NEW")
    if not len(state.joints):
        box.label(text=f"No bone mapping on {target.name} yet: press Detect Mapping.")
        return
    if state.report:
        _lines(box.column(align=True), state.report, icon="INFO", limit=6)
    _draw_rows(box, target, problems)
    if problems:
        col = box.column(align=True)
        col.alert = True
        col.label(text=f"{_count(len(problems), 'problem')}:", icon="ERROR")
        for problem in problems:
            _lines(col, problem, limit=4)
    else:
        box.label(text=f"{len(mapping.joint_mapping(target))} of 22 joints mapped; the mapping can be used.",
                  icon="CHECKMARK")
    if settings.preset != CUSTOM:
        box.label(text="Used when Rig Preset is 'Custom (this rig)'.", icon="INFO")
    errors = retarget.available_presets().errors
    if errors:
        _lines(box.column(align=True), f"{len(errors)} preset file(s) could not be read: {errors[0]}",
               icon="ERROR", limit=4)


def draw_mapping(layout, context) -> None:
    """The collapsible Bone Mapping box: Detect Mapping, one bone field per joint, the
    mapping's problems, Save as Preset. Never raises (a panel draw must not)."""
    settings = getattr(getattr(context, "scene", None), "irg_retarget", None)
    box = layout.box()
    if settings is None:
        box.label(text="Bone Mapping: the add-on's properties are not registered.", icon="ERROR")
        return
    box.prop(settings, "show_mapping", emboss=False, icon="TRIA_DOWN" if settings.show_mapping else "TRIA_RIGHT")
    if not settings.show_mapping:
        return
    try:
        _draw_mapping_body(box, context, settings)
    except Exception as exc:  # a redraw must never raise; show what broke instead
        box.label(text=f"Cannot show the bone mapping: {exc}", icon="ERROR")


def _custom_status(context) -> str:
    """One line on the target's own mapping, for the Custom preset option."""
    target, why = _state_problem(context)
    if why:
        return why
    if not mapping.joint_mapping(target):
        return f"{target.name} has no bone mapping: open Bone Mapping and press Detect Mapping."
    problems = mapping.mapping_problems(target)
    if problems:
        return f"{target.name}'s bone mapping has {_count(len(problems), 'problem')}: see Bone Mapping."
    return f"{target.name}: its own bone mapping, {len(mapping.joint_mapping(target))} of 22 joints."


def draw_retarget(layout, context) -> None:
    """The panel section: retarget options, Check Rig and its last result. Never raises."""
    settings = getattr(getattr(context, "scene", None), "irg_retarget", None)
    if settings is None:
        return
    box = layout.box()
    box.label(text="Retarget", icon="ARMATURE_DATA")
    box.prop(settings, "preset")
    if not settings.preset:  # the saved choice names a preset whose file is gone
        _lines(box, "The rig preset picked before is gone (its file was removed): pick another. "
                    "Auto-detect is used meanwhile.", icon="ERROR", limit=3)
    elif settings.preset == CUSTOM:
        try:
            status = _custom_status(context)
        except Exception as exc:  # a redraw must never raise
            status = f"Cannot read the bone mapping: {exc}"
        _lines(box, status, icon="BONE_DATA", limit=3)
    box.prop(settings, "root_mode")
    row = box.row()
    row.prop(settings, "foot_lock")
    row.prop(settings, "smoothing")
    box.prop(settings, "ik_legs")
    box.operator(IRG_OT_check_rig.bl_idname, icon="VIEWZOOM")
    for line in settings.last_check.splitlines()[:4]:
        box.label(text=line)


def draw_apply_button(layout, action, text: str = "") -> None:
    """A button applying one version to the selected armature."""
    op = layout.operator(IRG_OT_apply_version.bl_idname, text=text, icon="MOD_ARMATURE")
    op.version = action.name


class IRG_PT_retarget(SubPanel, bpy.types.Panel):
    """Retarget options and the armature's bone mapping."""

    bl_label = "Retarget"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        draw_retarget(self.layout, context)  # preset, root mode, foot locking, smoothing, IK legs
        draw_mapping(self.layout, context)  # the collapsible "Bone Mapping" box


CLASSES = (IRG_PG_joint_bone, IRG_PG_bone_map, IRG_PG_retarget, IRG_OT_check_rig, IRG_OT_detect_mapping,
           IRG_OT_save_mapping_preset, IRG_OT_apply_version, IRG_PT_retarget)


def register() -> None:
    """Register the classes (those not yet registered), attach Scene.irg_retarget and
    Object.irg_bone_map, and let detection see the user presets."""
    register_classes(CLASSES)
    bpy.types.Scene.irg_retarget = PointerProperty(type=IRG_PG_retarget)
    bpy.types.Object.irg_bone_map = PointerProperty(type=IRG_PG_bone_map)
    try:
        retarget.set_preset_dirs([mapping.user_preset_folder()])
    except ValueError:  # no user folder: the bundled presets still work
        retarget.set_preset_dirs(())


def unregister() -> None:
    """Detach the properties, unregister the classes, forget the user preset folder."""
    retarget.set_preset_dirs(())
    for owner, name in ((bpy.types.Object, "irg_bone_map"), (bpy.types.Scene, "irg_retarget")):
        if hasattr(owner, name):
            delattr(owner, name)
    unregister_classes(CLASSES)
