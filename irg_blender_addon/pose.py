"""Joint positions -> pose channels (bone quaternions + root location) for an armature.

`joints_to_channels` is the one entry point the add-on uses; the full solver
(twist from bend planes, retargeting by bone maps, foot contacts) will replace
its internals later without changing its signature.

Method now (rigs whose bones carry the 22 HumanML3D joint names, like the
default rig): rotation matrices in armature space, parents first.
- pelvis and spine3 (several children) get a full frame: aim at the main child
  (spine1 / neck) and the hip / collar line as the side vector, so turning and
  twisting of the body carry over;
- every other bone with a child swings, relative to its posed parent, from its
  rest aim to the posed aim (no twist of its own: it inherits the parent's);
- leaf bones (head, hands, toes) keep their rest pose relative to the parent.
Local channel of bone b with parent p: L_b = R_b^-1 R_p M_p^-1 M_b (R rest, M
posed, 3x3 armature-space rotations). The root moves to the source pelvis
position times `scale` (rig leg length / source leg length).
"""
from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from . import rig

FRAME_JOINTS = {"pelvis": ("left_hip", "right_hip"), "spine3": ("left_collar", "right_collar")}
ROOT = "pelvis"
_EPS = 1e-9


@dataclass
class PoseChannels:
    """Keyable channels: per-frame bone quaternions (w, x, y, z) and the root bone's location."""

    frames: np.ndarray          # (N,) scene frame numbers
    bone_names: tuple[str, ...]
    quaternions: np.ndarray     # (N, B, 4) `rotation_quaternion` of each bone, w first
    root_bone: str
    location: np.ndarray        # (N, 3) the root bone's `location` channel
    fps: float                  # frames per second of `frames`
    scale: float                # root translation scale applied (rig / source leg length)

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


# -- rotation helpers (numpy, broadcast over leading axes) ---------------------------------

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def _frame(aim: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Rotation with columns [x, y, z]: y along aim, x the side vector made perpendicular."""
    y = _unit(aim)
    x = _unit(side - np.sum(side * y, axis=-1, keepdims=True) * y)
    return np.stack([x, y, np.cross(x, y)], axis=-1)


def _swing(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vectors u to v (..., 3, 3); 180 degrees about a perpendicular if opposite."""
    u, v = np.broadcast_arrays(u, v)
    k = np.cross(u, v)
    c = np.sum(u * v, axis=-1)
    kx = np.zeros(u.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    eye = np.eye(3)
    opposite = c < -1.0 + 1e-8
    rot = eye + kx + kx @ kx / np.where(opposite, 1.0, 1.0 + c)[..., None, None]
    if opposite.any():
        helper = np.where(np.abs(u[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        p = _unit(np.cross(u, helper))
        half_turn = 2.0 * p[..., :, None] * p[..., None, :] - eye
        rot = np.where(opposite[..., None, None], half_turn, rot)
    return rot


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), w first and w >= 0."""
    m = np.asarray(m, dtype=np.float64)

    def r(i: int, j: int) -> np.ndarray:
        return m[..., i, j]

    diag = np.stack([1 + r(0, 0) + r(1, 1) + r(2, 2), 1 + r(0, 0) - r(1, 1) - r(2, 2),
                     1 - r(0, 0) + r(1, 1) - r(2, 2), 1 - r(0, 0) - r(1, 1) + r(2, 2)], -1)  # 4 w^2, 4 x^2, ...
    wx, wy, wz = r(2, 1) - r(1, 2), r(0, 2) - r(2, 0), r(1, 0) - r(0, 1)  # 4 w x, 4 w y, 4 w z
    xy, xz, yz = r(0, 1) + r(1, 0), r(0, 2) + r(2, 0), r(1, 2) + r(2, 1)  # 4 x y, 4 x z, 4 y z
    rows = np.stack([np.stack([diag[..., 0], wx, wy, wz], -1), np.stack([wx, diag[..., 1], xy, xz], -1),
                     np.stack([wy, xy, diag[..., 2], yz], -1), np.stack([wz, xz, yz, diag[..., 3]], -1)], -2)
    # Row i is 4 q_i q: use the row of the largest component (Shepperd's method, stable everywhere).
    best = np.argmax(diag, axis=-1)
    q = _unit(np.take_along_axis(rows, best[..., None, None], axis=-2)[..., 0, :])
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def quat_continuity(q: np.ndarray) -> np.ndarray:
    """Flip signs along axis 0 so consecutive quaternions have a non-negative dot product."""
    if len(q) < 2:
        return q
    dots = np.sum(q[1:] * q[:-1], axis=-1)
    flips = np.concatenate([np.ones((1,) + dots.shape[1:]), np.cumprod(np.where(dots < 0, -1.0, 1.0), axis=0)])
    return q * flips[..., None]


# -- the solve --------------------------------------------------------------------------------

def _rest(armature: bpy.types.Object, names: tuple[str, ...]):
    """Rest rotations (B, 3, 3), rest heads (B, 3) and each bone's parent index among `names` (-1: none)."""
    bones = armature.data.bones
    rot = np.array([np.array(bones[n].matrix_local)[:3, :3] for n in names])
    heads = np.array([bones[n].head_local for n in names], dtype=np.float64)
    parents = []
    for n in names:
        parent = bones[n].parent
        while parent is not None and parent.name not in names:  # unanimated bones in between
            parent = parent.parent
        parents.append(names.index(parent.name) if parent is not None else -1)
    return rot, heads, parents


def _solve_order(parents: list[int]) -> list[int]:
    depth = []
    for b in range(len(parents)):
        d, p = 0, parents[b]
        while p >= 0:
            d, p = d + 1, parents[p]
        depth.append(d)
    return sorted(range(len(parents)), key=lambda b: depth[b])


def _leg_length(joints: np.ndarray) -> np.ndarray:
    """Mean of both legs' hip->knee->ankle length, per frame."""
    ix = rig.SKELETON.index
    total = 0.0
    for side in ("left", "right"):
        hip, knee, ankle = (joints[..., ix(f"{side}_{n}"), :] for n in ("hip", "knee", "ankle"))
        total = total + np.linalg.norm(knee - hip, axis=-1) + np.linalg.norm(ankle - knee, axis=-1)
    return total / 2.0


def joints_to_channels(armature: bpy.types.Object, joints_blender: np.ndarray, *, src_fps: float = 20.0,
                       dst_fps: float | None = None, root_motion: bool = True, frame_start: int | None = None,
                       scale: float | None = None) -> PoseChannels:
    """Pose channels that put the armature's bones along the given joints.

    joints_blender: (T, 22, 3) HumanML3D joints in Blender axes (metres, Z up, facing -Y),
    in the armature's object space. Time is resampled from src_fps to dst_fps (None: the
    scene's fps) so keys land on integer frames from frame_start (None: the scene's start).
    root_motion False keeps the root above its rest position (in place). scale None: rig leg
    length / source leg length. Raises ValueError (bad joints, fps, armature) before any change."""
    rig.check_armature(armature)
    missing = rig.missing_bones(armature)
    if missing:
        raise ValueError(f"Armature {armature.name!r} has no bones named {', '.join(missing)}: retargeting onto "
                         "other rigs is not supported yet; use the default IRG rig (or name the bones like it).")
    src = check_joints(joints_blender, rig.SKELETON.num_joints)
    dst_fps = float(dst_fps) if dst_fps is not None else scene_fps()
    joints = resample(src, float(src_fps), dst_fps)
    frame_start = bpy.context.scene.frame_start if frame_start is None else int(frame_start)

    names = rig.JOINT_NAMES
    rest_rot, rest_heads, parents = _rest(armature, names)
    rest_joints = rest_heads  # the joints' bones start at the joints
    count = len(joints)
    posed = np.empty((count, len(names), 3, 3))
    local = np.empty_like(posed)
    for b in _solve_order(parents):
        p = parents[b]
        # Posed rotation with an identity channel: M_p R_p^-1 R_b (R_b for a root).
        carried = rest_rot[b] if p < 0 else posed[:, p] @ rest_rot[p].T @ rest_rot[b]
        world = _bone_world(b, joints, rest_joints, rest_rot[b], carried)
        posed[:, b] = world
        local[:, b] = np.swapaxes(carried, -1, -2) @ world if p >= 0 else rest_rot[b].T @ world

    root = names.index(ROOT)
    if scale is None:
        source_leg = float(np.median(_leg_length(src)))
        scale = float(_leg_length(rest_joints)) / source_leg if source_leg > 1e-3 else 1.0
    target = joints[:, root] * scale
    if not root_motion:
        target[:, :2] = rest_joints[root, :2]
    location = (target - rest_heads[root]) @ rest_rot[root]  # R^T (target - head), row vectors
    return PoseChannels(
        frames=frame_start + np.arange(count, dtype=np.float64), bone_names=names,
        quaternions=quat_continuity(matrix_to_quat(local)), root_bone=ROOT,
        location=location, fps=dst_fps, scale=float(scale))


def _bone_world(b: int, joints: np.ndarray, rest_joints: np.ndarray, rest_rot: np.ndarray,
                carried: np.ndarray) -> np.ndarray:
    """Posed armature-space rotation (N, 3, 3) of the bone of joint b."""
    name = rig.JOINT_NAMES[b]
    child = rig.main_child(b)
    if child is None:
        return np.broadcast_to(carried, (len(joints), 3, 3)).copy()
    aim = joints[:, child] - joints[:, b]
    rest_aim = rest_joints[child] - rest_joints[b]
    if name in FRAME_JOINTS:
        left, right = (rig.SKELETON.index(n) for n in FRAME_JOINTS[name])
        now = _frame(aim, joints[:, left] - joints[:, right])
        rest = _frame(rest_aim, rest_joints[left] - rest_joints[right])
        return now @ rest.T @ rest_rot
    carried = np.broadcast_to(carried, (len(joints), 3, 3))
    u = _unit(rest_rot.T @ rest_aim)                                # rest aim in the bone's frame
    v = _unit(np.einsum("nji,nj->ni", carried, _unit(aim)))         # posed aim in the same frame
    return carried @ _swing(u, v)
