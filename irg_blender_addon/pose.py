"""Joint positions -> pose channels (bone quaternions + root location) for any humanoid armature.

`joints_to_channels` is the one entry point the add-on uses. The chain, all
vectorised over frames:
1. validate the joints (shape, NaN/inf) and the armature, find the bone map
   (a rig preset, detected from the bone names unless one is given);
2. optional Savitzky-Golay smoothing and foot locking, on the source joints at
   their own frame rate;
3. linear resampling to the scene's frame rate;
4. solve and retarget (retarget.py): bone rotations from directions, root
   translation scaled by hip heights, the rig's feet on the floor.
Nothing in the scene changes here: actions.py writes the channels as keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import bpy
import numpy as np

from . import retarget, rig
from .core import footlock, quat, skeleton
from .core import smoothing as savitzky_golay

ROOT_MODES = retarget.ROOT_MODES

# One rotation-to-quaternion conversion and one continuity rule in the project (model_backend.quat).
matrix_to_quat = quat.quat_from_matrix


@dataclass
class PoseChannels:
    """Keyable channels: per-frame bone quaternions (w, x, y, z) and the root's location."""

    frames: np.ndarray          # (N,) scene frame numbers
    bone_names: tuple[str, ...]
    quaternions: np.ndarray     # (N, B, 4) `rotation_quaternion` of each bone, w first
    root_bone: str              # the hips bone
    location: np.ndarray        # (N, 3) the hips bone's `location` channel
    fps: float                  # frames per second of `frames`
    scale: float                # root translation scale applied (rig / source hip height)
    locations: dict[str, np.ndarray] = field(default_factory=dict)  # every keyed location (hips, root bone)
    preset: str = ""            # rig preset id ("custom" for a hand-made map)
    root_mode: str = "root_motion"
    mapping: dict[str, str] = field(default_factory=dict)  # joint -> bone

    def rotation(self, bone: str) -> np.ndarray:
        """(N, 4) quaternions of one bone."""
        return self.quaternions[:, self.bone_names.index(bone)]


def check_joints(joints: np.ndarray, num_joints: int = 22) -> np.ndarray:
    """joints as float64 (T, J, 3); ValueError for a wrong shape or NaN/inf values."""
    arr = np.asarray(joints, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (num_joints, 3) or arr.shape[0] < 1:
        raise ValueError(f"joints must have shape (T, {num_joints}, 3) with T >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = sorted(set(np.nonzero(~np.isfinite(arr))[0].tolist()))
        raise ValueError(f"joints contain NaN or infinite values (frames {bad[:5]}{'...' if len(bad) > 5 else ''})")
    return arr


def resample(joints: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Linear resampling (T, J, 3) at src_fps -> (N, J, 3) at dst_fps, same start, N = floor(duration * dst) + 1."""
    if not (src_fps > 0 and dst_fps > 0):
        raise ValueError(f"fps must be positive, got src_fps={src_fps}, dst_fps={dst_fps}")
    count = len(joints)
    if count == 1 or src_fps == dst_fps:
        return joints.copy()
    n = int(np.floor((count - 1) * dst_fps / src_fps + 1e-6)) + 1
    pos = np.minimum(np.arange(n) * (src_fps / dst_fps), count - 1)
    lo = np.minimum(np.floor(pos).astype(int), count - 2)
    w = (pos - lo)[:, None, None]
    return joints[lo] * (1.0 - w) + joints[lo + 1] * w


def scene_fps(scene=None) -> float:
    """The scene's frame rate (render.fps / render.fps_base)."""
    scene = scene or bpy.context.scene
    return scene.render.fps / scene.render.fps_base


def quat_continuity(q: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 so consecutive quaternions have a non-negative dot product."""
    return quat.quat_continuity(q, axis=0)


def prepare_source(joints: np.ndarray, fps: float, *, foot_lock: bool = False, smooth: bool = False,
                   contacts: np.ndarray | None = None) -> np.ndarray:
    """Optional smoothing (Savitzky-Golay, window 11, order 5), then foot locking, at the source rate.

    joints (T, 22, 3) Blender axes; contacts (T, 4) the feature's contact channels or None."""
    out = savitzky_golay.savgol(joints, axis=0) if smooth else joints
    if foot_lock:
        hml = footlock.lock_feet(skeleton.from_blender(out), skeleton.HUMANML3D, contacts=contacts, fps=fps)
        out = skeleton.to_blender(hml)
    return out


def joints_to_channels(armature: bpy.types.Object, joints_blender: np.ndarray, *, src_fps: float = 20.0,
                       dst_fps: float | None = None, root_motion: bool = True, frame_start: int | None = None,
                       scale: float | None = None, preset: str | Mapping[str, str] | None = "auto",
                       root_mode: str | None = None, foot_lock: bool = False, smoothing: bool = False,
                       contacts: np.ndarray | None = None) -> PoseChannels:
    """Pose channels that put the armature's bones along the given joints' directions.

    joints_blender: (T, 22, 3) HumanML3D joints in Blender axes (metres, Z up, facing -Y),
    relative to the armature object's origin and turned with it (an object rotated to
    stand a Y-up rig upright still gets Z up; its scale is covered by the hip-height
    ratio), at src_fps. Time is resampled to dst_fps (None: the scene's fps) so keys land
    on integer frames from frame_start (None: the scene's start). preset: "auto" (detect
    from bone names), a preset id, or {joint: bone}. root_mode: "root_motion", "in_place"
    or "root_bone" (None: from root_motion). scale: root translation scale (None: rig hip
    height / source hip height). foot_lock pins the feet during contacts (contacts: the
    (T, 4) contact channels, optional); smoothing filters the positions. Raises
    ValueError before any change when something is wrong."""
    rig.check_armature(armature)
    mode = root_mode or ("root_motion" if root_motion else "in_place")
    if mode not in ROOT_MODES:
        raise ValueError(f"unknown root mode {mode!r}: use one of {', '.join(ROOT_MODES)}")
    src = check_joints(joints_blender, rig.SKELETON.num_joints)
    if not src_fps > 0:
        raise ValueError(f"fps must be positive, got src_fps={src_fps}")
    if contacts is not None and np.shape(contacts) != (len(src), 4):
        raise ValueError(f"contacts must have shape ({len(src)}, 4) like the joints' frames, got {np.shape(contacts)}")
    found = retarget.bone_map(armature, preset)
    plan = retarget.make_plan(retarget.read_rest(armature), found.mapping, found.root_bone)
    retarget.check_bone_lengths(src, plan)  # before smoothing could blur a broken frame away
    dst_fps = float(dst_fps) if dst_fps is not None else scene_fps()
    source = prepare_source(src, float(src_fps), foot_lock=foot_lock, smooth=smoothing, contacts=contacts)
    joints = resample(source, float(src_fps), dst_fps)
    frame_start = bpy.context.scene.frame_start if frame_start is None else int(frame_start)
    result = retarget.retarget(plan, joints, fps=dst_fps, root_mode=mode, scale=scale)
    hips = plan.rig.bones[plan.pelvis]
    return PoseChannels(
        frames=frame_start + np.arange(len(joints), dtype=np.float64), bone_names=result.bone_names,
        quaternions=result.quaternions, root_bone=hips, location=result.locations[hips], fps=dst_fps,
        scale=result.scale, locations=result.locations, preset=found.preset, root_mode=mode,
        mapping=dict(found.mapping))
