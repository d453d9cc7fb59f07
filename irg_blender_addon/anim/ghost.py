"""Compare two versions: the second plays on a ghost copy of the armature, beside the first.

The ghost is a copy of the armature object (sharing its bones) and of the meshes
bound to it (sharing their mesh data), moved sideways by `offset` along the
armature's own X axis, drawn as wire and in front, playing the compared version.
Every object it adds is marked `GHOST_MARK` (the armature's name), so turning it
off removes exactly those and leaves no object, Action, datablock or driver
behind: it makes no Action (it plays an existing version) and no new data.
"""
from __future__ import annotations

import bpy
from mathutils import Vector

from . import compat

GHOST_MARK = "irg_ghost_of"
DEFAULT_OFFSET = 1.5       # metres to the side


def ghosts(armature: bpy.types.Object | None = None) -> list[bpy.types.Object]:
    """The ghost objects (of one armature, or of any)."""
    return [o for o in bpy.data.objects if o.get(GHOST_MARK) is not None
            and (armature is None or o.get(GHOST_MARK) == armature.name)]


def ghost_armature(armature: bpy.types.Object) -> bpy.types.Object | None:
    """The ghost armature comparing against `armature`, if it is shown."""
    return next((o for o in ghosts(armature) if o.type == "ARMATURE"), None)


def _bound_meshes(armature: bpy.types.Object) -> list[bpy.types.Object]:
    return [o for o in bpy.data.objects if o.type == "MESH" and o.get(GHOST_MARK) is None and (
        o.parent == armature or any(m.type == "ARMATURE" and m.object == armature for m in o.modifiers))]


def _link_like(copy: bpy.types.Object, original: bpy.types.Object) -> None:
    collections = list(original.users_collection) or [bpy.context.scene.collection]
    for collection in collections:
        collection.objects.link(copy)


def _retarget_constraints(ghost: bpy.types.Object, armature: bpy.types.Object) -> None:
    """Bone constraints that read the armature itself (Rigify's DEF bones follow its controls)
    read the ghost instead, or the ghost would follow the original's pose."""
    for bone in ghost.pose.bones:
        for constraint in bone.constraints:
            if getattr(constraint, "target", None) == armature:
                constraint.target = ghost
            for target in getattr(constraint, "targets", ()):  # Armature constraints
                if target.target == armature:
                    target.target = ghost


def show(armature: bpy.types.Object, version: bpy.types.Action, offset: float = DEFAULT_OFFSET) -> bpy.types.Object:
    """Show `version` on a ghost of `armature`, `offset` metres along its X axis (an old ghost is replaced).

    ValueError when `armature` is not an armature or `version` is not an Action."""
    if getattr(armature, "type", None) != "ARMATURE":
        raise ValueError(f"{armature!r} is not an armature object: select the armature to compare on")
    if not isinstance(version, bpy.types.Action):
        raise ValueError(f"{version!r} is not an Action: pick a version to compare with")
    hide(armature)
    ghost = armature.copy()
    ghost.name = f"{armature.name} (ghost: {version.name})"
    ghost[GHOST_MARK] = armature.name
    if ghost.animation_data is not None:
        ghost.animation_data_clear()    # no copied drivers or NLA tracks: only the compared version plays
    shift = armature.matrix_world.to_3x3().normalized() @ Vector((offset, 0.0, 0.0))
    ghost.matrix_world = armature.matrix_world.copy()
    ghost.location = ghost.location + shift
    ghost.show_in_front = True
    _retarget_constraints(ghost, armature)
    _link_like(ghost, armature)
    for mesh in _bound_meshes(armature):
        copy = mesh.copy()
        copy[GHOST_MARK] = armature.name
        if copy.animation_data is not None:
            copy.animation_data_clear()
        for modifier in copy.modifiers:
            if modifier.type == "ARMATURE" and modifier.object == armature:
                modifier.object = ghost
        if mesh.parent == armature:
            copy.parent = ghost
        else:
            copy.location = copy.location + shift
        copy.display_type = "WIRE"
        _link_like(copy, mesh)
    bpy.context.view_layer.update()   # the ghost's pose exists before a slot is assigned (see compat)
    compat.assign_action(ghost, version)
    return ghost


def hide(armature: bpy.types.Object | None = None) -> int:
    """Remove the ghost objects (of one armature, or all); how many were removed."""
    found = ghosts(armature)
    for obj in found:
        bpy.data.objects.remove(obj)
    return len(found)


def toggle(armature: bpy.types.Object, version: bpy.types.Action | None,
           offset: float = DEFAULT_OFFSET) -> bpy.types.Object | None:
    """Compare on: the ghost (when none is shown); off: None (the ghost removed)."""
    if ghosts(armature):
        hide(armature)
        return None
    if version is None:
        raise ValueError("pick a version in the list to compare with")
    return show(armature, version, offset)


__all__ = ["GHOST_MARK", "DEFAULT_OFFSET", "ghosts", "ghost_armature", "show", "hide", "toggle"]
