"""Rigs: the default SMPL-proportioned armature, finding the target armature, rest joints.

Bone layout of the default rig (the contract with pose.py): one bone per
HumanML3D joint, named as the joint; a joint's bone runs from the joint to its
main child (pelvis -> spine1, spine3 -> neck, else the only child), so rotating
it moves that child. Leaf joints get short bones: head up, hands along the
forearm, toes forward. Every bone's local Z axis points to the character's front
(up for ankles and toes, which point forward), so limbs and spine bend about
their local X axis. Blender axes: Z up, the character faces -Y, its left is +X.
"""
from __future__ import annotations

import bpy
import numpy as np

from ..core import skeleton

SKELETON = skeleton.HUMANML3D
JOINT_NAMES: tuple[str, ...] = SKELETON.joint_names

# SMPL neutral template joints (betas = 0, T-pose), SMPL axes (Y up, facing +Z), mm.
_SMPL_NEUTRAL_MM = np.array([
    [-1.8, -223.3, 28.2], [67.7, -314.3, 21.9], [-69.8, -314.0, 23.9], [-4.3, -114.4, -1.5],
    [102.1, -689.7, 16.9], [-107.5, -696.0, 15.0], [5.3, 20.2, 2.0], [88.3, -1087.0, -26.7],
    [-91.1, -1090.8, -32.4], [1.9, 74.1, 27.1], [118.7, -1149.6, 95.7], [-117.4, -1149.5, 101.8],
    [-13.6, 286.6, -14.7], [71.3, 191.3, -8.7], [-83.0, 191.6, -13.9], [10.2, 353.1, 38.9],
    [163.8, 234.7, -18.6], [-151.4, 238.8, -15.1], [418.6, 218.8, -41.0], [-422.6, 218.3, -43.0],
    [670.6, 226.4, -46.4], [-672.6, 224.5, -44.1],
])

MAIN_CHILD = {"pelvis": "spine1", "spine3": "neck"}  # joints with several children
FRONT = np.array([0.0, -1.0, 0.0])  # the character's front in Blender axes
UP = np.array([0.0, 0.0, 1.0])
UP_FRONT_JOINTS = ("left_ankle", "right_ankle", "left_foot", "right_foot")  # bones that point forward
HEAD_LENGTH, HAND_LENGTH, TOE_LENGTH = 0.16, 0.09, 0.06  # leaf bone lengths, metres


def _mirror_pairs() -> list[tuple[int, int]]:
    return [(j, JOINT_NAMES.index("right_" + n[5:])) for j, n in enumerate(JOINT_NAMES) if n.startswith("left_")]


def default_rest_joints() -> np.ndarray:
    """The default rig's rest joints (22, 3), Blender axes, metres: the SMPL neutral
    template made left/right symmetric, pelvis above the origin, lowest joint at z = 0."""
    j = _SMPL_NEUTRAL_MM / 1000.0
    sym = j.copy()
    for left, right in _mirror_pairs():  # average each pair with its mirror image
        mean = (j[left] + j[right] * [-1.0, 1.0, 1.0]) / 2.0
        sym[left], sym[right] = mean, mean * [-1.0, 1.0, 1.0]
    paired = {k for pair in _mirror_pairs() for k in pair}
    sym[[k for k in range(len(j)) if k not in paired], 0] = 0.0  # centre line on x = 0
    b = skeleton.to_blender(sym)
    b[:, :2] -= b[SKELETON.index("pelvis"), :2]
    b[:, 2] -= b[:, 2].min()
    return b


def main_child(joint: int) -> int | None:
    """The child joint a joint's bone points at (None for leaf joints)."""
    name = JOINT_NAMES[joint]
    if name in MAIN_CHILD:
        return SKELETON.index(MAIN_CHILD[name])
    children = SKELETON.children(joint)
    return children[0] if children else None


def _bone_tail(joints: np.ndarray, j: int) -> np.ndarray:
    child = main_child(j)
    if child is not None:
        return joints[child]
    name = JOINT_NAMES[j]
    if name == "head":
        return joints[j] + UP * HEAD_LENGTH
    if name.endswith("_foot"):
        return joints[j] + FRONT * TOE_LENGTH
    along = joints[j] - joints[SKELETON.parents[j]]  # hands continue the forearm
    return joints[j] + along / np.linalg.norm(along) * HAND_LENGTH


def bone_front(name: str) -> np.ndarray:
    """The direction a bone's local Z axis points to in the rest pose."""
    return UP if name in UP_FRONT_JOINTS else FRONT


def check_armature(obj) -> None:
    """Raise ValueError unless obj is an armature object that is not in Edit Mode."""
    if obj is None or getattr(obj, "type", None) != "ARMATURE":
        kind = getattr(obj, "type", type(obj).__name__)
        what = "nothing" if obj is None else f"{getattr(obj, 'name', obj)!r} ({kind})"
        raise ValueError(f"Expected an armature object, got {what}: select an armature.")
    if obj.mode == "EDIT":
        raise ValueError(f"Armature {obj.name!r} is in Edit Mode: switch to Object or Pose Mode first.")


def ensure_pose(armature: bpy.types.Object) -> bpy.types.Pose:
    """The armature's pose, built by a view layer update if the object was never evaluated."""
    if armature.pose is None:
        bpy.context.view_layer.update()
    if armature.pose is None:
        raise ValueError(f"Armature {armature.name!r} has no pose yet: link it to the active view layer first.")
    return armature.pose


def _to_object_mode(context) -> None:
    obj = context.view_layer.objects.active
    if obj is not None and obj.mode != "OBJECT":
        with context.temp_override(active_object=obj, object=obj):
            bpy.ops.object.mode_set(mode="OBJECT")


def create_default_rig(context, name: str = "IRG_SMPL", collection=None) -> bpy.types.Object:
    """A new SMPL-proportioned 22-bone armature (see module doc), active and selected.

    Linked to `collection` (default: the active collection). Any object in Edit or
    Pose Mode is switched to Object Mode first (bones can only be made in Edit Mode)."""
    collection = collection or context.collection or context.scene.collection
    view_layer = context.view_layer
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    _to_object_mode(context)
    try:
        view_layer.objects.active = obj
    except RuntimeError:  # the collection is excluded from (or not in) the view layer
        bpy.data.objects.remove(obj)
        bpy.data.armatures.remove(data)
        raise ValueError(f"Collection {collection.name!r} is not in the view layer {view_layer.name!r}: "
                         "include it, or pick another collection.") from None
    for other in view_layer.objects:
        other.select_set(other == obj)
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            _build_bones(data, default_rest_joints())
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    for pose_bone in obj.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    data.display_type = "OCTAHEDRAL"
    obj.show_in_front = True
    return obj


def _build_bones(data: bpy.types.Armature, joints: np.ndarray) -> None:
    bones = []
    for j, name in enumerate(JOINT_NAMES):
        bone = data.edit_bones.new(name)
        bone.head, bone.tail = joints[j], _bone_tail(joints, j)
        bone.align_roll(bone_front(name))
        parent = SKELETON.parents[j]
        if parent >= 0:
            bone.parent = bones[parent]
            bone.use_connect = main_child(parent) == j
        bones.append(bone)


def find_target_armature(context) -> bpy.types.Object | None:
    """The active object if it is an armature, else the first selected armature, else None."""
    view_layer = context.view_layer
    active = view_layer.objects.active
    if active is not None and active.type == "ARMATURE":
        return active
    for obj in view_layer.objects:
        if obj.type == "ARMATURE" and obj.select_get(view_layer=view_layer):
            return obj
    return None


def ensure_armature(context) -> bpy.types.Object:
    """The target armature (find_target_armature), or a new default rig."""
    return find_target_armature(context) or create_default_rig(context)


def missing_bones(armature: bpy.types.Object, names=JOINT_NAMES) -> list[str]:
    """The joint names that have no bone in the armature."""
    return [n for n in names if n not in armature.data.bones]


def rest_joint_positions(armature: bpy.types.Object) -> np.ndarray:
    """Rest joint positions (22, 3) in armature space: the heads of the joints' bones.

    For rigs laid out like create_default_rig (a bone named for every joint)."""
    check_armature(armature)
    missing = missing_bones(armature)
    if missing:
        raise ValueError(f"Armature {armature.name!r} has no bones named {', '.join(missing)}: "
                         "only rigs with the 22 HumanML3D joint names (like the default IRG rig) are supported.")
    bones = armature.data.bones
    return np.array([bones[n].head_local for n in JOINT_NAMES], dtype=np.float64)
