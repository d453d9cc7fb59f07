"""HumanML3D motion features <-> joint positions (numpy only: imports inside Blender).

Feature layout per frame (J joints, F = 4 + 3(J-1) + 6(J-1) + 3J + 4):
[0] root yaw velocity (half the yaw increment, rad/frame), [1:3] root xz velocity
in the heading frame, [3] root height, then J-1 root-relative positions in the
heading frame (y absolute), J-1 6D rotations, J local joint velocities, and 4 foot
contacts in the order of `Skeleton.foot_joints`.

`features_to_joints` is HumanML3D's recovery (`recover_from_ric`).
`joints_to_features` is this project's implementation of HumanML3D's feature
extraction (`process_file`), with these documented differences:
- no "uniform skeleton" retargeting to the dataset's reference bone lengths (the
  input's own bone lengths are kept, so the round trip is exact);
- the yaw velocity is the wrapped yaw increment; upstream takes arcsin of a
  quaternion component, which flips sign on the rare frames where the heading
  crosses the -Z direction;
- otherwise the same: floor at the lowest joint, origin at the first frame's root,
  facing +Z from the first frame's hips and shoulders; per-frame heading from a
  Gaussian-smoothed (sigma 20 frames) shoulder/hip direction with the first frame
  fixed to identity; 6D rotations from the same swing-only inverse kinematics
  (rest directions below, arm chains restarting from the heading), including the
  upstream per-frame facing whose hip term is reversed (shoulders minus hips);
  contacts from the per-frame squared displacement below a threshold.
"""
from __future__ import annotations

import numpy as np

from ..rig_math.quat import quat_conj, quat_mul
from ..rig_math.skeleton import HUMANML3D, Skeleton, as_joints, check_finite

__all__ = ["features_to_joints", "joints_to_features", "canonicalize", "contacts_from_features", "resample"]

# Unit bone directions in the datasets' rest pose (child joint's offset from its parent).
_REST_DIRECTIONS = {
    "HumanML3D": (
        (0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0),
        (0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1),
        (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0),
    ),
    "KIT-ML": (
        (0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0),
        (-1, 0, 0), (0, -1, 0), (0, -1, 0), (1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
        (-1, 0, 0), (0, -1, 0), (0, -1, 0), (0, 0, 1), (0, 0, 1),
    ),
}
# Contact when the squared per-frame displacement is below this (dataset units squared).
_CONTACT_THRESHOLD = {"HumanML3D": 0.002, "KIT-ML": 0.05}
_FACING_SIGMA = 20.0  # frames; the upstream smoothing of the per-frame heading
_EPS = 1e-12


# ---------------------------------------------------------------- validation

def _as_features(features: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != skeleton.feature_size or f.shape[0] < 1:
        raise ValueError(f"{skeleton.name} features must have shape (frames >= 1, {skeleton.feature_size}), "
                         f"got {np.shape(features)}")
    check_finite("features", f)
    return f


def _layout(skeleton: Skeleton) -> dict[str, slice]:
    """Channel ranges of the feature vector."""
    n = skeleton.num_joints
    ric = slice(4, 4 + 3 * (n - 1))
    rot = slice(ric.stop, ric.stop + 6 * (n - 1))
    vel = slice(rot.stop, rot.stop + 3 * n)
    contact = slice(vel.stop, vel.stop + 4)
    assert contact.stop == skeleton.feature_size, "skeleton feature_size does not match its joint count"
    return {"ric": ric, "rot": rot, "vel": vel, "contact": contact}


# ---------------------------------------------------------------- rotations

def _rot_y(angle: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) about +Y by angle (broadcast over the leading axes), right-handed."""
    c, s = np.cos(angle), np.sin(angle)
    x, z = v[..., 0], v[..., 2]
    return np.stack([x * c + z * s, v[..., 1], -x * s + z * c], axis=-1)


def _heading(forward: np.ndarray) -> np.ndarray:
    """Yaw that turns a horizontal forward vector to +Z (the heading-frame rotation)."""
    return -np.arctan2(forward[..., 0], forward[..., 2])


def _qbetween(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest-arc unit quaternion (w, x, y, z) turning direction u onto direction v."""
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), _EPS)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)
    q = np.concatenate([1.0 + np.sum(u * v, axis=-1, keepdims=True), np.cross(u, v)], axis=-1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    # Opposite directions: any half-turn about an axis perpendicular to u.
    opposite = norm[..., 0] < 1e-9
    if np.any(opposite):
        axis = np.cross(u[opposite], [1.0, 0.0, 0.0])
        small = np.linalg.norm(axis, axis=-1) < 1e-6
        axis[small] = np.cross(u[opposite][small], [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        q[opposite] = np.concatenate([np.zeros((len(axis), 1)), axis], axis=-1)
        norm[opposite] = 1.0
    return q / norm


def _yaw_quat(angle: np.ndarray) -> np.ndarray:
    half = 0.5 * angle
    zero = np.zeros_like(half)
    return np.stack([np.cos(half), zero, np.sin(half), zero], axis=-1)


def _quat_to_6d(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) -> the first two columns of the rotation matrix (..., 6)."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    col0 = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)], axis=-1)
    col1 = np.stack([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)], axis=-1)
    return np.concatenate([col0, col1], axis=-1)


# ---------------------------------------------------------------- recovery

def features_to_joints(features: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Raw (de-normalised) features (T, F) -> joint positions (T, J, 3) float32.

    HumanML3D's `recover_from_ric`: dataset units (metres for HumanML3D), Y up,
    facing +Z at the first frame, computed in float64.
    """
    f = _as_features(features, skeleton)
    n = skeleton.num_joints
    # Yaw before frame t: twice the sum of the stored half increments.
    yaw = 2.0 * np.concatenate([[0.0], np.cumsum(f[:-1, 0])])
    step = np.zeros((len(f), 3))
    step[1:, [0, 2]] = f[:-1, 1:3]
    root = np.cumsum(_rot_y(-yaw, step), axis=0)
    root[:, 1] = f[:, 3]
    local = f[:, _layout(skeleton)["ric"]].reshape(len(f), n - 1, 3)
    others = _rot_y(-yaw[:, None], local)
    others[..., 0] += root[:, None, 0]
    others[..., 2] += root[:, None, 2]
    return np.concatenate([root[:, None], others], axis=1).astype(np.float32)


def contacts_from_features(features: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """The 4 foot-contact channels (T, 4) clipped to 0..1, in `skeleton.foot_joints` order."""
    f = _as_features(features, skeleton)
    return np.clip(f[:, _layout(skeleton)["contact"]], 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- extraction

def _across(frames: np.ndarray, a: int, b: int, c: int, d: int) -> np.ndarray:
    """(joint a - joint b) + (joint c - joint d), normalised."""
    v = frames[..., a, :] - frames[..., b, :] + frames[..., c, :] - frames[..., d, :]
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def _forward(across: np.ndarray) -> np.ndarray:
    """Horizontal forward = up x across (not normalised: zero when the facing is undefined)."""
    return np.cross(np.array([0.0, 1.0, 0.0]), across)


def canonicalize(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Put a motion (T, J, 3) on the floor, at the origin and facing +Z (float64).

    Floor: the lowest joint over all frames goes to y = 0. Origin: the first
    frame's root goes to x = z = 0. Facing: the first frame's right-to-left hip
    and shoulder lines, summed, give `across`; forward = up x across turns to +Z.
    """
    j = as_joints(joints, skeleton).copy()
    j[..., 1] -= j[..., 1].min()
    j[..., [0, 2]] -= j[0, 0, [0, 2]]
    r_hip, l_hip, r_sh, l_sh = skeleton.face_joints
    forward = _forward(_across(j[0], r_hip, l_hip, r_sh, l_sh))
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("cannot find the facing of the first frame: its hips and shoulders "
                         "do not span a horizontal line")
    return _rot_y(_heading(forward), j)


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0, edges extended (radius 4 sigma, like scipy's 'nearest')."""
    radius = int(4.0 * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    w /= w.sum()
    padded = np.concatenate([np.repeat(x[:1], radius, 0), x, np.repeat(x[-1:], radius, 0)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(k), axis=0)  # (T, C, K)
    return windows @ w


def _frame_headings(j: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Per-frame heading yaw (T,), upstream style: smoothed, first frame fixed to 0.

    Upstream's inverse kinematics reads the facing indices as (left hip, right hip,
    right shoulder, left shoulder), so its hip term points the other way; the
    shoulders are wider, so the sum still points right-to-left. Kept as is: the
    VQ-VAE was trained on features made this way.
    """
    a, b, c, d = skeleton.face_joints
    forward = _gaussian_smooth(_forward(_across(j, b, a, c, d)), _FACING_SIGMA)
    if np.any(np.linalg.norm(forward, axis=-1) < 1e-9):
        raise ValueError("cannot find the facing of some frames: hips and shoulders collapse to a point")
    yaw = _heading(forward)
    yaw[0] = 0.0
    return yaw


def _rotations_6d(j: np.ndarray, yaw: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Swing-only IK as upstream: per joint, its rotation relative to its chain parent, in 6D.

    Each joint's global rotation is the shortest arc from its rest direction to its
    bone. A joint continues its parent's chain when it is the parent's first child
    and the parent is not the root; otherwise its chain restarts from the heading.
    """
    rest = np.asarray(_REST_DIRECTIONS[skeleton.name], dtype=np.float64)
    parents = skeleton.parents
    heading = _yaw_quat(yaw)
    swing = np.zeros(j.shape[:2] + (4,))
    local = np.zeros_like(swing)
    for joint in range(1, skeleton.num_joints):
        p = parents[joint]
        swing[:, joint] = _qbetween(np.broadcast_to(rest[joint], j[:, joint].shape), j[:, joint] - j[:, p])
        continues = parents[p] >= 0 and skeleton.children(p)[0] == joint
        base = swing[:, p] if continues else heading
        local[:, joint] = quat_mul(quat_conj(base), swing[:, joint])
    return _quat_to_6d(local[:, 1:]).reshape(len(j), -1)


def joints_to_features(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Joint positions (T, J, 3) in dataset axes and units -> raw features (T-1, F) float32.

    The motion is canonicalised first (`canonicalize`), so
    `features_to_joints(joints_to_features(J))` equals `canonicalize(J)[:-1]`.
    """
    j = canonicalize(as_joints(joints, skeleton, min_frames=2), skeleton)
    yaw = _frame_headings(j, skeleton)
    disp = j[1:] - j[:-1]  # (T-1, J, 3)

    root_step = _rot_y(yaw[1:], disp[:, 0])
    # Half the wrapped yaw increment (upstream: arcsin of the relative quaternion's y).
    turn = np.angle(np.exp(1j * (yaw[1:] - yaw[:-1]))) / 2.0
    ric = j[:, 1:].copy()
    ric[..., [0, 2]] -= j[:, :1, [0, 2]]
    ric = _rot_y(yaw[:, None], ric)
    vel = _rot_y(yaw[:-1, None], disp)

    feet = list(skeleton.foot_joints)
    contacts = (np.sum(disp[:, feet] ** 2, axis=-1) < _CONTACT_THRESHOLD[skeleton.name]).astype(np.float64)

    out = np.concatenate([
        turn[:, None], root_step[:, [0, 2]], j[:-1, 0, 1:2],
        ric[:-1].reshape(len(disp), -1),
        _rotations_6d(j, yaw, skeleton)[:-1],
        vel.reshape(len(disp), -1),
        contacts,
    ], axis=1)
    assert out.shape[1] == skeleton.feature_size
    return out.astype(np.float32)


# ---------------------------------------------------------------- time

def resample(joints: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Linearly resample (T, ...) frames from src_fps to dst_fps, keeping the first and last frame.

    The output has round((T-1) * dst/src) + 1 frames spread evenly over the same
    time span (so the rate is dst_fps to within half a frame over the clip).
    """
    x = np.asarray(joints)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"resample needs at least one frame, got shape {x.shape}")
    if not (np.isfinite(src_fps) and np.isfinite(dst_fps) and src_fps > 0 and dst_fps > 0):
        raise ValueError(f"frame rates must be positive numbers, got {src_fps} and {dst_fps}")
    check_finite("joints", x)
    n_out = int(round((x.shape[0] - 1) * dst_fps / src_fps)) + 1
    if n_out == x.shape[0]:
        return x.copy()
    t = np.linspace(0.0, x.shape[0] - 1, n_out)
    i0 = np.minimum(np.floor(t).astype(int), x.shape[0] - 1)
    i1 = np.minimum(i0 + 1, x.shape[0] - 1)
    w = (t - i0).reshape((-1,) + (1,) * (x.ndim - 1))
    return ((1.0 - w) * x[i0] + w * x[i1]).astype(x.dtype if x.dtype.kind == "f" else np.float64)
