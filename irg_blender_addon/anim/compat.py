"""Slotted Actions across Blender versions (4.5 LTS and 5.0).

Since 4.4 an Action holds layers -> strips -> channelbags, one channelbag per
slot (the slot says which ID the curves animate); 5.0 removed `Action.fcurves`.
Everything the add-on does with Actions and F-Curves goes through here.

Known Blender crash (4.5 and 5.0): setting `AnimData.action_slot` on an armature
object whose pose was never built (new object, no depsgraph evaluation yet) while
another slot is assigned segfaults. So slots are never switched here: a slot is
only set when none is assigned.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import bpy
import numpy as np

try:  # Blender 5.0+
    from bpy_extras.anim_utils import action_ensure_channelbag_for_slot as _ensure_channelbag
except ImportError:  # Blender 4.4 / 4.5
    _ensure_channelbag = None

FCurveSpec = tuple[str, int, str]  # (data_path, array index, group name or "")

_INTERPOLATION = {item.identifier: item.value
                  for item in bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items}


def new_action(name: str) -> bpy.types.Action:
    """A new, empty Action (Blender appends .001 etc. if the name is taken)."""
    return bpy.data.actions.new(name)


def slot_identifier(obj: bpy.types.Object) -> str:
    """The identifier a slot for this object gets by default ("OB" + object name)."""
    return "OB" + obj.name


def action_slot(action: bpy.types.Action, obj: bpy.types.Object, *, create: bool = True):
    """The slot of `action` that animates `obj`: the assigned one, else the one named for
    the object, else the first object slot (a version made for another armature with the
    same bones plays on this one), else a new one (None when `create` is False)."""
    anim = obj.animation_data
    if anim is not None and anim.action == action and anim.action_slot is not None:
        return anim.action_slot
    wanted = slot_identifier(obj)
    for slot in action.slots:
        if slot.identifier == wanted:
            return slot
    for slot in action.slots:
        if slot.target_id_type in ("OBJECT", "UNSPECIFIED"):
            return slot
    if not create:
        return None
    return action.slots.new(id_type="OBJECT", name=obj.name)


def assign_action(obj: bpy.types.Object, action: bpy.types.Action | None) -> None:
    """Make `action` the object's active Action, with a slot for the object (None: unassign)."""
    anim = obj.animation_data or obj.animation_data_create()
    if anim.action != action:
        anim.action = action  # Blender picks a suitable slot (ours is named for the object)
    if action is not None and anim.action_slot is None:
        anim.action_slot = action_slot(action, obj)


def channelbag(action: bpy.types.Action, slot):
    """The channelbag holding `slot`'s F-Curves, created if needed."""
    if _ensure_channelbag is not None:
        return _ensure_channelbag(action, slot)
    layer = action.layers[0] if action.layers else action.layers.new("Layer")
    strip = layer.strips[0] if layer.strips else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True)


def ensure_fcurves(action: bpy.types.Action, obj: bpy.types.Object,
                   specs: Sequence[FCurveSpec]) -> list[bpy.types.FCurve]:
    """The F-Curves for `specs` [(data_path, index, group)] in obj's channelbag, made if missing."""
    bag = channelbag(action, action_slot(action, obj))
    groups = {g.name: g for g in bag.groups}
    curves = []
    for data_path, index, group in specs:
        fcurve = bag.fcurves.find(data_path, index=index)
        if fcurve is None:
            fcurve = bag.fcurves.new(data_path, index=index)  # 4.5 has no group_name here
            if group:
                if group not in groups:
                    groups[group] = bag.groups.new(group)
                fcurve.group = groups[group]
        curves.append(fcurve)
    return curves


def find_fcurve(action: bpy.types.Action, data_path: str, index: int = 0) -> bpy.types.FCurve | None:
    """The Action's F-Curve for (data_path, index) in any channelbag, or None."""
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                found = bag.fcurves.find(data_path, index=index)
                if found is not None:
                    return found
    return None


def action_fcurves(action: bpy.types.Action) -> list[bpy.types.FCurve]:
    """Every F-Curve of the action, over all layers, strips and channelbags."""
    curves = []
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                curves.extend(bag.fcurves)
    return curves


def write_keys(fcurve: bpy.types.FCurve, frames: Iterable[float], values: Iterable[float],
               interpolation: str = "LINEAR") -> None:
    """Replace the F-Curve's keys with (frames, values) in bulk (no per-key Python calls)."""
    frames = np.asarray(frames, dtype=np.float32).ravel()
    values = np.asarray(values, dtype=np.float32).ravel()
    if frames.shape != values.shape:
        raise ValueError(f"{len(frames)} frames but {len(values)} values for {fcurve.data_path}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {', '.join(_INTERPOLATION)}")
    points = fcurve.keyframe_points
    points.clear()
    points.add(len(frames))
    points.foreach_set("co", np.column_stack([frames, values]).ravel())
    points.foreach_set("interpolation", np.full(len(frames), _INTERPOLATION[interpolation], dtype=np.int32))
    fcurve.update()  # sorts and recomputes handles
