"""Joint positions -> pose channels (bone quaternions + root location) for any humanoid armature.

Two steps, so the costly one can run off Blender's main thread:
- `plan_channels` (main thread, reads the rig through bpy once): check the
  armature, find the bone map (a rig preset, detected from the bone names unless
  one is given), the retarget plan, the scene's frame rate and start frame;
- `solve_channels` (pure numpy, no bpy: safe in a worker thread), vectorised over
  frames: validate the joints (shape, NaN/inf), optional Savitzky-Golay smoothing
  and foot locking at the source frame rate, linear resampling to the plan's
  frame rate, then solve and retarget (retarget.py): bone rotations from
  directions, root translation scaled by hip heights, the rig's feet on the floor.
`joints_to_channels` does both. Nothing in the scene changes here: anim/actions.py
writes the channels as keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import bpy
import numpy as np

from . import retarget, armature as rig
from ..core import footlock, quat, skeleton
from ..core import smoothing as savitzky_golay

ROOT_MODES = retarget.ROOT_MODES

# One rotation-to-quaternion conversion and one continuity rule in the project (model_backend.rig_math.quat).
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
    foot_lock: bool = False     # the options the channels were solved with
    smoothing: bool = False
    properties: dict[str, dict[str, float]] = field(default_factory=dict)  # bone -> {custom property: value}
    ik_legs: bool = False       # IK leg controls keyed (feet pinned during contacts)
    contacts: np.ndarray | None = None  # (N, 4) foot contact flags the IK feet were pinned in

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


def check_contacts(contacts: np.ndarray | None, frames: int) -> None:
    """ValueError unless contacts is None or (frames, 4) contact channels, one row per joints' frame."""
    if contacts is not None and np.shape(contacts) != (frames, 4):
        raise ValueError(f"contacts must have shape ({frames}, 4) like the joints' frames, got {np.shape(contacts)}")


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


def prepare_source(joints: np.ndarray, fps: float, *, foot_lock: bool = False, smooth: bool = False,
                   contacts: np.ndarray | None = None) -> np.ndarray:
    """Optional smoothing (Savitzky-Golay, window 11, order 5), then foot locking, at the source rate.

    joints (T, 22, 3) Blender axes; contacts (T, 4) the feature's contact channels or None."""
    out = savitzky_golay.savgol(joints, axis=0) if smooth else joints
    if foot_lock:
        hml = footlock.lock_feet(skeleton.from_blender(out), skeleton.HUMANML3D, contacts=contacts, fps=fps)
        out = skeleton.to_blender(hml)
    return out


@dataclass(frozen=True)
class ChannelPlan:
    """What solving joints onto one armature needs, read from the scene once (plan_channels).

    Plain data (no bpy objects), so a worker thread can use it while the main thread runs."""

    armature: str               # the armature object's name when planned
    plan: retarget.Plan         # rest data, bone map and everything per rig
    preset: str                 # rig preset id used ("custom" for a hand-made map)
    mapping: dict[str, str]     # joint -> bone
    root_mode: str
    fps: float                  # frames per second of the keys
    frame_start: int            # the first key's frame
    ik_legs: bool = False       # the plan keys the preset's IK leg controls

    @property
    def root_bone(self) -> str:
        """The hips bone (whose location carries the root motion)."""
        return self.plan.rig.bones[self.plan.pelvis]


def plan_channels(armature: bpy.types.Object, *, preset: str | Mapping[str, str] | None = "auto",
                  root_mode: str | None = None, root_motion: bool = True, dst_fps: float | None = None,
                  frame_start: int | None = None, ik_legs: bool = False) -> ChannelPlan:
    """Read the armature (main thread) and plan how joints go onto it.

    preset: "auto" (detect from bone names), a preset id, or {joint: bone}. root_mode:
    "root_motion", "in_place" or "root_bone" (None: from root_motion). Keys land on
    integer frames at dst_fps (None: the scene's fps) from frame_start (None: the
    scene's start). ik_legs: also key the preset's IK leg controls (feet at the ankles, pinned
    during foot contacts, poles from the knees) with the legs switched to IK. ValueError naming
    the problem and the fix when the armature cannot take motion."""
    rig.check_armature(armature)
    mode = root_mode or ("root_motion" if root_motion else "in_place")
    if mode not in ROOT_MODES:
        raise ValueError(f"unknown root mode {mode!r}: use one of {', '.join(ROOT_MODES)}")
    found = retarget.bone_map(armature, preset)
    plan = retarget.plan_for(armature, found, ik_legs)
    fps = float(dst_fps) if dst_fps is not None else scene_fps()
    if not fps > 0:
        raise ValueError(f"fps must be positive, got dst_fps={fps}")
    start = bpy.context.scene.frame_start if frame_start is None else int(frame_start)
    return ChannelPlan(armature.name, plan, found.preset, dict(found.mapping), mode, fps, start, bool(ik_legs))


def solve_channels(plan: ChannelPlan, joints_blender: np.ndarray, *, src_fps: float = 20.0,
                   foot_lock: bool = False, smoothing: bool = False, contacts: np.ndarray | None = None,
                   scale: float | None = None) -> PoseChannels:
    """Pose channels that put the planned armature's bones along the joints' directions.

    Pure numpy (no bpy): safe in a worker thread. joints_blender: (T, 22, 3) HumanML3D
    joints in Blender axes (metres, Z up, facing -Y), relative to the armature object's
    origin and turned with it (an object rotated to stand a Y-up rig upright still gets
    Z up; its scale is covered by the hip-height ratio), at src_fps, resampled to the
    plan's fps. foot_lock pins the feet during contacts (contacts: the (T, 4) contact
    channels, optional); smoothing filters the positions; scale: root translation
    scale (None: rig hip height / source hip height). ValueError for bad input."""
    src = check_joints(joints_blender, rig.SKELETON.num_joints)
    if not src_fps > 0:
        raise ValueError(f"fps must be positive, got src_fps={src_fps}")
    check_contacts(contacts, len(src))
    retarget.check_bone_lengths(src, plan.plan)  # before smoothing could blur a broken frame away
    source = prepare_source(src, float(src_fps), foot_lock=foot_lock, smooth=smoothing, contacts=contacts)
    joints = resample(source, float(src_fps), plan.fps)
    if contacts is not None:  # nearest source frame for each key
        rows = np.minimum(np.round(np.arange(len(joints)) * float(src_fps) / plan.fps).astype(int), len(src) - 1)
        contacts = np.asarray(contacts)[rows]
    result = retarget.retarget(plan.plan, joints, fps=plan.fps, root_mode=plan.root_mode, scale=scale,
                               contacts=contacts)
    hips = plan.root_bone
    return PoseChannels(
        frames=plan.frame_start + np.arange(len(joints), dtype=np.float64), bone_names=result.bone_names,
        quaternions=result.quaternions, root_bone=hips, location=result.locations[hips], fps=plan.fps,
        scale=result.scale, locations=result.locations, preset=plan.preset, root_mode=plan.root_mode,
        mapping=dict(plan.mapping), foot_lock=bool(foot_lock), smoothing=bool(smoothing),
        properties={b: dict(v) for b, v in (plan.plan.properties or {}).items()}, ik_legs=plan.ik_legs,
        contacts=result.contacts)


def joints_to_channels(armature: bpy.types.Object, joints_blender: np.ndarray, *, src_fps: float = 20.0,
                       dst_fps: float | None = None, root_motion: bool = True, frame_start: int | None = None,
                       scale: float | None = None, preset: str | Mapping[str, str] | None = "auto",
                       root_mode: str | None = None, foot_lock: bool = False, smoothing: bool = False,
                       contacts: np.ndarray | None = None, ik_legs: bool = False) -> PoseChannels:
    """plan_channels then solve_channels, on the calling (main) thread: see both for the
    arguments. Raises ValueError before any change when something is wrong."""
    plan = plan_channels(armature, preset=preset, root_mode=root_mode, root_motion=root_motion, dst_fps=dst_fps,
                         frame_start=frame_start, ik_legs=ik_legs)
    return solve_channels(plan, joints_blender, src_fps=src_fps, foot_lock=foot_lock, smoothing=smoothing,
                          contacts=contacts, scale=scale)
