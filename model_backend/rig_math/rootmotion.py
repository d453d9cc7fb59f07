"""Root translation for a target rig: hip-height scale, floor offset, and three root modes (numpy only).

Everything is in dataset axes (HumanML3D: Y up, facing +Z, metres); convert
with `skeleton.to_blender` at the Blender boundary (yaw about +Y becomes yaw
about +Z there, with the same sign).

Modes:
- "root_motion": the hips carry the whole translation (scaled, floored).
- "in_place": the ground trajectory (the hips' x-z path smoothed over about
  half a second) is removed from the hips; the walk's own sway stays.
- "root_bone": a separate root bone on the floor carries the ground trajectory
  and the smoothed facing yaw; the hips carry the rest, in the root bone's
  frame: world hips = root + R_y(root_yaw) @ hips. The retargeter must then
  also express the hips' rotation in the root bone's frame:
  R_hips_local = R_y(root_yaw)^-1 @ R_hips_world.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import HUMANML3D, Skeleton, as_joints

__all__ = ["RootMotion", "MODES", "rest_hip_height", "floor_offset", "facing_yaw", "root_motion"]

MODES = ("root_motion", "in_place", "root_bone")
TRAJECTORY_SIGMA_S = 0.25  # seconds: Gaussian smoothing of the ground trajectory and yaw


@dataclass(frozen=True)
class RootMotion:
    """Root channels in target units, dataset axes.

    hips      (T, 3) translation of the hips joint: world position, or (mode
              "root_bone") position in the root bone's frame
    root      (T, 3) root bone position on the floor (zeros unless "root_bone")
    root_yaw  (T,) root bone yaw about +Y in radians (zeros unless "root_bone")
    scale     target / source rest hip height, applied on all three axes
    floor     height added after scaling so the lowest foot touches y = 0
    mode      one of MODES
    """

    hips: np.ndarray
    root: np.ndarray
    root_yaw: np.ndarray
    scale: float
    floor: float
    mode: str

    def world_hips(self) -> np.ndarray:
        """(T, 3) world position of the hips, whatever the mode."""
        return self.root + _rotate_y(self.root_yaw, self.hips)


def _rotate_y(angle: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (T, 3) about +Y by angle (T,), right-handed (+Z turns toward +X)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[:, 0] + s * v[:, 2], v[:, 1], -s * v[:, 0] + c * v[:, 2]], axis=-1)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 (radius 3 sigma, at most T-1 frames).

    The ends are extended by point reflection (2 x_0 - x_k), so steady motion
    (a straight walk at constant speed) passes through exactly, ends included.
    """
    radius = min(int(3.0 * sigma + 0.5), len(x) - 1)
    if sigma <= 0 or radius < 1:
        return x.copy()
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.concatenate([2 * x[:1] - x[radius:0:-1], x, 2 * x[-1:] - x[-2:-radius - 2:-1]])
    windows = np.lib.stride_tricks.sliding_window_view(pad, len(k), axis=0)  # (T, ..., K)
    return windows @ k


def rest_hip_height(rest_offsets: np.ndarray, skeleton: Skeleton = HUMANML3D) -> float:
    """Height of the hips (root joint) above the lowest joint of a rest pose given as offsets (J, 3)."""
    off = np.asarray(rest_offsets, dtype=np.float64)
    pos = np.zeros_like(off)
    for j, p in enumerate(skeleton.parents):
        if p >= 0:
            pos[j] = pos[p] + off[j]
    height = float(pos[0, 1] - pos[:, 1].min())
    if height <= 0:
        raise ValueError("the rest pose's hips are not above its feet: give a standing rest pose (Y up)")
    return height


def floor_offset(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> float:
    """Height to add so the lowest foot joint (ankles and toes) over the clip sits at y = 0."""
    j = np.asarray(joints, dtype=np.float64)
    return 0.0 - float(j[:, list(skeleton.foot_joints), 1].min())  # 0.0 - x: never -0.0


def facing_yaw(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Per-frame facing yaw (T,) in radians about +Y, unwrapped; 0 faces +Z.

    From the right-to-left hip and shoulder lines, as HumanML3D defines facing.
    """
    j = np.asarray(joints, dtype=np.float64)
    r_hip, l_hip, r_sh, l_sh = skeleton.face_joints
    across = j[:, r_hip] - j[:, l_hip] + j[:, r_sh] - j[:, l_sh]
    forward = np.cross([0.0, 1.0, 0.0], across)
    if np.any(np.hypot(forward[:, 0], forward[:, 2]) < 1e-9):
        raise ValueError("cannot find the facing: hips and shoulders collapse to a vertical line")
    return np.unwrap(np.arctan2(forward[:, 0], forward[:, 2]))


def root_motion(joints: np.ndarray, skeleton: Skeleton = HUMANML3D, mode: str = "root_motion",
                target_hip_height: float | None = None, source_hip_height: float | None = None,
                fps: float | None = None) -> RootMotion:
    """Root channels for a clip (T, J, 3) retargeted to a rig whose rest hips stand `target_hip_height` high.

    scale = target_hip_height / source_hip_height (1 when no target is given);
    the source height defaults to the T-pose hip height with the clip's bone
    lengths. Heights are scaled, then offset so the lowest foot touches y = 0.
    """
    if mode not in MODES:
        raise ValueError(f"unknown root mode {mode!r}: use one of {', '.join(MODES)}")
    j = as_joints(joints, skeleton)
    scale = 1.0
    if target_hip_height is not None:
        if source_hip_height is None:
            from .solver import rest_offsets_for  # the solver's rest pose defines the source's hip height
            source_hip_height = rest_hip_height(rest_offsets_for(j, skeleton), skeleton)
        if not (target_hip_height > 0 and source_hip_height > 0):
            raise ValueError(f"hip heights must be positive, got target {target_hip_height} "
                             f"and source {source_hip_height}")
        scale = float(target_hip_height) / float(source_hip_height)
    floor = scale * floor_offset(j, skeleton)
    hips = scale * j[:, 0]
    hips[:, 1] += floor
    zeros = np.zeros(len(j))
    if mode == "root_motion":
        return RootMotion(hips, np.zeros_like(hips), zeros, scale, floor, mode)
    sigma = TRAJECTORY_SIGMA_S * (skeleton.fps if fps is None else fps)
    ground = _gaussian(hips, sigma)
    ground[:, 1] = 0.0
    if mode == "in_place":
        return RootMotion(hips - ground, np.zeros_like(hips), zeros, scale, floor, mode)
    yaw = _gaussian(facing_yaw(j, skeleton), sigma)
    return RootMotion(_rotate_y(-yaw, hips - ground), ground, yaw, scale, floor, mode)
