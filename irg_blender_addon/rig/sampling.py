"""Any Action on an armature -> the 22 HumanML3D joints per frame (Blender axes, metres).

This is how hand-keyed or imported animation reaches the model ("Critique & refine",
"Describe motion"): the armature is evaluated at every frame of the Action (so
constraints, IK and drivers count, exactly as the animator sees it) and the
joints are read off the bones. A joint sits at the head of its bone: for the
default rig the bone named after the joint, for other rigs the bone the rig
preset maps it to (retarget.bone_map: detected from the bone names, or given).
Joints a preset leaves unmapped (extra spine segments, collars, toes, neck or
head) are placed from their neighbours (see `fill_missing`).

Positions are world space (object transforms and unit scale count), then
scaled so the rig's rest leg length matches the default rig's: the motion
tokenizer was trained on human-sized skeletons in metres, and a rig built in
centimetres, or a giant, would otherwise look like a different motion to it.
The scene's frame, the armature's Action and its pose are restored afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import bpy
import numpy as np

from ..anim import compat
from . import pose, retarget, armature as rig

SKELETON = rig.SKELETON
JOINTS = rig.JOINT_NAMES
MAX_FRAMES = 2000  # 100 s at 20 fps: far beyond what the model takes (about 10 s)


@dataclass
class Sampled:
    """Joints read off an armature: (T, 22, 3) Blender axes, metres, at `fps`."""

    joints: np.ndarray
    fps: float
    frame_start: int
    frame_end: int
    scale: float                   # the factor applied to reach human size
    mapping: dict[str, str]        # joint -> bone the joint was read from
    filled: tuple[str, ...]        # joints placed from their neighbours (no bone)


def fill_missing(heads: np.ndarray, tails: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Place the joints without a bone (known[j] False) from their neighbours, parents first.

    heads, tails (..., 22, 3): the head and tail of each joint's bone (anything where
    known is False). A joint between its parent and a placed main child (spine2, neck,
    collars) goes halfway between them; a joint at the end of a chain (head, toes)
    goes to the tail of its parent's bone (a neck bone ends at the head, a foot bone at
    the toes); with neither, it takes its parent's position."""
    out = heads.copy()
    for j in range(SKELETON.num_joints):  # parents come before their children
        if known[j]:
            continue
        parent = SKELETON.parents[j]
        if parent < 0:
            raise ValueError("the pelvis needs a bone: map it in the rig preset")
        child = rig.main_child(j)
        if child is not None and known[child]:
            out[..., j, :] = (out[..., parent, :] + heads[..., child, :]) / 2.0
        elif known[parent]:
            out[..., j, :] = tails[..., parent, :]
        else:
            out[..., j, :] = out[..., parent, :]
    return out


def leg_length(points: np.ndarray) -> float:
    """Mean hip -> knee -> ankle length of both legs (22, 3)."""
    ix = SKELETON.index
    total = 0.0
    for side in ("left", "right"):
        hip, knee, ankle = (points[ix(f"{side}_{n}")] for n in ("hip", "knee", "ankle"))
        total += float(np.linalg.norm(knee - hip) + np.linalg.norm(ankle - knee))
    return total / 2.0


def _bone_indices(armature: bpy.types.Object, mapping: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """For each joint the index of its pose bone (-1: none), and which joints have one."""
    names = [b.name for b in armature.pose.bones]
    index = np.array([names.index(mapping[j]) if mapping.get(j) in names else -1 for j in JOINTS])
    return index, index >= 0


def _to_world(points: np.ndarray, armature: bpy.types.Object) -> np.ndarray:
    world = np.array(armature.matrix_world, dtype=np.float64)
    return points @ world[:3, :3].T + world[:3, 3]


def _read_ends(armature: bpy.types.Object, bones, attrs: tuple[str, str], index: np.ndarray,
               buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space (head, tail) (22, 3) of the joints' bones, read in bulk from `bones` (pose or data bones)."""
    ends = []
    for name in attrs:
        bones.foreach_get(name, buffer)
        ends.append(_to_world(buffer.reshape(-1, 3)[np.maximum(index, 0)].astype(np.float64), armature))
    return ends[0], ends[1]


def rest_joints(armature: bpy.types.Object, mapping: Mapping[str, str]) -> np.ndarray:
    """The rig's rest joints (22, 3), world space, unmapped joints filled."""
    index, known = _bone_indices(armature, mapping)
    bones = armature.data.bones  # pose bones and data bones share their order
    buffer = np.empty(len(bones) * 3, dtype=np.float32)
    return fill_missing(*_read_ends(armature, bones, ("head_local", "tail_local"), index, buffer), known)


def frame_range(action: bpy.types.Action) -> tuple[int, int]:
    """The Action's frames as integers (its manual range when set, else its keys)."""
    start, end = action.frame_range
    return int(round(start)), int(round(end))


def sample_action(armature: bpy.types.Object, action: bpy.types.Action | None = None, *,
                  frame_start: int | None = None, frame_end: int | None = None,
                  preset: str | Mapping[str, str] | None = "auto", normalize: bool = True) -> Sampled:
    """Evaluate `action` (None: the armature's active Action) on the armature at every frame
    of its range and read the 22 joints (see the module docstring).

    Raises ValueError before anything changes when the armature, the Action or the bone
    map cannot be used; the scene frame, the active Action and the pose are restored."""
    rig.check_armature(armature)
    anim = armature.animation_data
    previous = anim.action if anim is not None else None
    action = action or previous
    if action is None:
        raise ValueError(f"Armature {armature.name!r} has no Action to sample: key an animation or pick a version.")
    start, end = frame_range(action)
    start = start if frame_start is None else int(frame_start)
    end = end if frame_end is None else int(frame_end)
    if end < start + 1:
        raise ValueError(f"Action {action.name!r} spans frames {start}..{end}: it needs at least two frames.")
    if end - start + 1 > MAX_FRAMES:
        raise ValueError(f"Action {action.name!r} has {end - start + 1} frames (more than {MAX_FRAMES}): "
                         "set a shorter frame range on it (Action > Manual Frame Range).")
    mapping = dict(retarget.bone_map(armature, preset).mapping)  # ValueError naming what is missing
    index, known = _bone_indices(armature, mapping)
    scene = bpy.context.scene
    frame, subframe = scene.frame_current, scene.frame_subframe
    buffer = np.empty(len(armature.pose.bones) * 3, dtype=np.float32)
    heads = np.empty((end - start + 1, len(JOINTS), 3))
    tails = np.empty_like(heads)
    try:
        if action != previous:
            compat.assign_action(armature, action)
        for k, f in enumerate(range(start, end + 1)):
            scene.frame_set(f)
            heads[k], tails[k] = _read_ends(armature, armature.pose.bones, ("head", "tail"), index, buffer)
    finally:
        if action != previous:
            compat.assign_action(armature, previous)
        scene.frame_set(frame, subframe=subframe)
    joints = fill_missing(heads, tails, known)
    scale = 1.0
    if normalize:
        length = leg_length(rest_joints(armature, mapping))
        if length <= 1e-6:
            raise ValueError(f"Armature {armature.name!r} has legs of zero length in its rest pose: "
                             "check the rig preset's hip, knee and ankle bones.")
        scale = leg_length(rig.default_rest_joints()) / length
    return Sampled(joints * scale, pose.scene_fps(scene), start, end, scale, mapping,
                   tuple(j for j, ok in zip(JOINTS, known) if not ok))
