"""The bone mapping of an armature (Object.irg_bone_map) and the scene's retarget options.

The mapping holds one row per HumanML3D joint: the bone that takes it on this armature.
`detect_mapping` fills it from the rig presets, the user fixes it by hand (ui.retarget
draws it), `mapping_problems` lists what presets.validate_mapping finds wrong, the
"Custom (this rig)" preset option retargets with it, and `save_mapping` writes it to
the user preset folder, which detection searches from then on.

`retarget_options(context, armature)` is what the jobs pass to actions.write_version so
new versions use the panel's settings (Scene.irg_retarget, registered by ui.retarget).
"""
from __future__ import annotations

from pathlib import Path

import bpy

from ..settings import ADDON_ID
from . import armature as rig
from . import presets, retarget

AUTO, CUSTOM = "AUTO", "CUSTOM"


# ---------------------------------------------------------------- where user presets live

def user_preset_folder(create: bool = False) -> Path:
    """The folder user presets are saved to: the extension's user folder when installed as an
    extension, else irg_motion/ in Blender's config folder (BLENDER_USER_RESOURCES moves it)."""
    if "." in ADDON_ID:  # bl_ext.<repo>.irg_motion
        base = bpy.utils.extension_path_user(ADDON_ID, create=create)
    else:
        base = bpy.utils.user_resource("CONFIG", path="irg_motion", create=create)
    if not base:
        raise ValueError("Blender reports no user folder for presets: check the user resources folder "
                         "(BLENDER_USER_RESOURCES) is writable.")
    return presets.user_presets_dir(base)


# ---------------------------------------------------------------- the mapping on an armature

def bone_map_state(obj):
    """The object's mapping property group, or None (not registered, or not an object)."""
    return getattr(obj, "irg_bone_map", None)


def fill_mapping(armature, mapping: dict[str, str], base: str = "", report: str = "") -> None:
    """Set the armature's mapping: one row per joint (empty bone where `mapping` has none)."""
    unknown = sorted(set(mapping) - set(presets.JOINTS))
    if unknown:
        raise ValueError(f"Unknown joints {unknown}: joints are HumanML3D's ({', '.join(presets.JOINTS)}).")
    state = armature.irg_bone_map
    state.joints.clear()
    for joint in presets.JOINTS:
        row = state.joints.add()
        row.joint, row.bone = joint, mapping.get(joint) or ""
    state.base, state.report = base, report


def joint_mapping(armature) -> dict[str, str]:
    """The armature's mapping as {joint: bone}, unmapped joints left out ({} when none)."""
    state = bone_map_state(armature)
    if state is None:
        return {}
    return {row.joint: row.bone for row in state.joints if row.bone}


def mapping_problems(armature) -> list[str]:
    """What is wrong with the armature's mapping (presets.validate_mapping); [] when usable."""
    bones = armature.data.bones
    parents = {b.name: b.parent.name if b.parent else None for b in bones}
    return presets.validate_mapping(joint_mapping(armature), parents, parents)


def detect_mapping(armature, preset_id: str | None = None) -> presets.Detection:
    """Fill the armature's mapping from the preset that fits its bone names (or from `preset_id`),
    user presets included, and keep the detection report with it. When no preset fits, the rows
    start from the closest one (or empty) for the user to fix by hand."""
    rig.check_armature(armature)
    names = [b.name for b in armature.data.bones]
    known = retarget.available_presets()
    if preset_id in known:
        found = presets.match_preset(known[preset_id], names)
    else:
        found = presets.detect_preset(names, known)
    start, report = found, found.report()
    if found.preset is None and found.ranking and found.ranking[0][1] > 0:
        start = presets.match_preset(found.ranking[0][0], names)
        report += f"\nThe rows start from {start.preset.name}: fix them by hand."
    fill_mapping(armature, start.mapping, start.preset.id if start.preset else "", report)
    return found


def save_mapping(armature, name: str) -> tuple[Path, bool]:
    """Save the armature's mapping as a user preset; (its file, whether it replaced one).

    Refuses (presets.PresetError) an empty or invalid mapping and bundled presets' ids."""
    rig.check_armature(armature)
    mapping = joint_mapping(armature)
    if not mapping:
        raise presets.PresetError(f"Armature {armature.name!r} has no bone mapping to save: press Detect Mapping, "
                                  "fix the rows, then save.")
    problems = mapping_problems(armature)
    if problems:
        raise presets.PresetError(f"Cannot save {name!r}: fix the mapping first. " + " ".join(problems))
    folder = user_preset_folder(create=True)
    replaced = (folder / f"{presets.preset_id(name)}.json").exists()
    base = retarget.available_presets().get(armature.irg_bone_map.base)
    return presets.save_user_preset(mapping, name, folder, base=base), replaced


def retarget_options(context=None, armature=None) -> dict:
    """The scene's retarget settings as keyword arguments of actions.write_version.

    With the Custom preset option, `preset` is the mapping ({joint: bone}) of `armature`
    (default: the target armature of the context), {} when it has none."""
    context = context or bpy.context
    settings = getattr(getattr(context, "scene", None), "irg_retarget", None)
    if settings is None:
        return {"preset": "auto", "root_mode": "root_motion", "foot_lock": False, "smoothing": False, "ik_legs": False}
    choice = settings.preset or AUTO  # '' when the saved choice names a preset that is gone
    if choice == CUSTOM:
        target = armature if armature is not None else target_armature(context)
        preset = joint_mapping(target) if target is not None else {}
    else:
        preset = "auto" if choice == AUTO else choice
    return {"preset": preset, "root_mode": settings.root_mode,
            "foot_lock": bool(settings.foot_lock), "smoothing": bool(settings.smoothing),
            "ik_legs": bool(settings.ik_legs)}


def check_rig(armature, preset="auto") -> str:
    """One line on how motion maps onto the armature; ValueError with the fix when it cannot."""
    rig.check_armature(armature)
    found = retarget.bone_map(armature, preset)
    plan = retarget.plan_for(armature, found)
    between = len(plan.shares)
    root = f", root bone {found.root_bone!r}" if found.root_bone else ""
    return (f"{armature.name}: preset {found.preset}, {len(found.mapping)} of 22 joints mapped, "
            f"{len(plan.keyed)} bones keyed ({between} sharing a span's twist){root}.")


def target_armature(context):
    """The target armature (rig.find_target_armature), None when the context has none."""
    try:
        return rig.find_target_armature(context)
    except (AttributeError, ReferenceError):  # a context without a view layer
        return None
