"""Motion quality measures that need no trained evaluator (numpy only).

All positions are (T, J, 3) in HumanML3D axes (metres, Y up) unless a function
says otherwise; the floor is y = 0 unless given (HumanML3D's canonical floor:
its processing puts the lowest joint of the clip at y = 0).
"""
from __future__ import annotations

import numpy as np

from .quat import quat_from_matrix
from .skeleton import HUMANML3D, Skeleton

__all__ = [
    "position_error_mm", "bone_direction_error_deg", "twist_jitter", "foot_skating_ratio",
    "mean_jerk", "bone_length_drift",
]


def _positions(x: np.ndarray, name: str = "joints") -> np.ndarray:
    p = np.asarray(x, dtype=np.float64)
    if p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (frames, joints, 3), got {p.shape}")
    return p


def position_error_mm(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(mean, max) per-joint Euclidean distance in millimetres between two (T, J, 3) motions in metres."""
    a, b = _positions(pred, "pred"), _positions(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"pred {a.shape} and target {b.shape} must have the same shape")
    d = np.linalg.norm(a - b, axis=-1) * 1000.0
    return float(d.mean()), float(d.max())


def bone_direction_error_deg(pred: np.ndarray, target: np.ndarray,
                             parents: tuple[int, ...] = HUMANML3D.parents) -> tuple[float, float]:
    """(mean, max) angle in degrees between corresponding bones (parent -> joint) of two motions.

    Independent of bone lengths, so it compares rigs of different proportions.
    """
    a, b = _positions(pred, "pred"), _positions(target, "target")
    if a.shape != b.shape or a.shape[1] != len(parents):
        raise ValueError(f"pred {a.shape} and target {b.shape} must match and have {len(parents)} joints")
    idx = np.arange(1, len(parents))
    par = np.asarray(parents)[idx]
    u, v = a[:, idx] - a[:, par], b[:, idx] - b[:, par]
    # atan2 of |u x v| and u . v: accurate for tiny angles too.
    ang = np.degrees(np.arctan2(np.linalg.norm(np.cross(u, v), axis=-1), np.sum(u * v, axis=-1)))
    return float(ang.mean()), float(ang.max())


def twist_jitter(world_frames: np.ndarray, flip_deg: float = 90.0) -> tuple[np.ndarray, int]:
    """Frame-to-frame turn of each bone about its own axis.

    world_frames: (T, J, 3, 3) bone frames whose column 1 (Y) is the bone axis, as
    `solver.SolvedMotion.world_frames`. The change between frames, seen from the
    bone, is split into swing and twist about Y; returns (mean |twist| per bone in
    degrees per frame (J,), number of steps above `flip_deg` over all bones: flips).
    """
    f = np.asarray(world_frames, dtype=np.float64)
    if f.ndim != 4 or f.shape[-2:] != (3, 3):
        raise ValueError(f"world_frames must have shape (frames, joints, 3, 3), got {f.shape}")
    if f.shape[0] < 2:
        return np.zeros(f.shape[1]), 0
    rel = np.swapaxes(f[:-1], -1, -2) @ f[1:]
    q = quat_from_matrix(rel)
    twist = np.degrees(np.abs(2.0 * np.arctan2(q[..., 2], q[..., 0])))
    twist = np.where(twist > 180.0, 360.0 - twist, twist)
    return twist.mean(axis=0), int(np.count_nonzero(twist > flip_deg))


def _moving_average(x: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average along axis 0 with zeros beyond the ends (scipy uniform_filter1d 'constant')."""
    pad = np.zeros((size,) + x.shape[1:])
    c = np.cumsum(np.concatenate([pad, x, pad]), axis=0)
    lo = size // 2
    start = np.arange(len(x)) + size - lo  # window [i - lo, i - lo + size) in padded indexing
    return (c[start + size - 1] - c[start - 1]) / size


def foot_skating_ratio(joints: np.ndarray, fps: float = HUMANML3D.fps, feet: tuple[int, ...] = (10, 11),
                       height: float = 0.05, speed: float = 0.5, window: int = 5, floor: float = 0.0) -> float:
    """Share of the T-1 frame pairs in which a foot skates (GMD / OmniControl definition).

    A foot joint (default HumanML3D's toes 10 and 11) skates between two frames
    when both are below `height` above `floor` (metres, Y up) and its horizontal
    speed and the centred `window`-frame average of that speed (zeros past the
    ends) both exceed `speed` m/s; a pair counts when either foot skates.
    Floor-sensitive: y = 0 is HumanML3D's floor (the clip's lowest joint).
    """
    p = _positions(joints)
    if len(p) < 2:
        return 0.0
    f = p[:, list(feet)]
    vel = np.linalg.norm(np.diff(f[..., [0, 2]], axis=0), axis=-1) * fps  # (T-1, feet)
    avg = _moving_average(vel, window)
    low = f[..., 1] - floor < height
    skate = low[:-1] & low[1:] & (vel > speed) & (avg > speed)
    return float(np.mean(np.any(skate, axis=1)))


def mean_jerk(joints: np.ndarray, fps: float = HUMANML3D.fps) -> float:
    """Mean over joints and frames of the third finite difference's norm times fps^3 (m/s^3)."""
    p = _positions(joints)
    if len(p) < 4:
        return 0.0
    return float(np.linalg.norm(np.diff(p, n=3, axis=0), axis=-1).mean() * fps ** 3)


def bone_length_drift(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> tuple[float, float]:
    """Bone length constancy: (mean over bones of the length's std, largest |length - its mean|), metres."""
    p = _positions(joints)
    idx = np.arange(1, skeleton.num_joints)
    lengths = np.linalg.norm(p[:, idx] - p[:, np.asarray(skeleton.parents)[idx]], axis=-1)
    return float(lengths.std(axis=0).mean()), float(np.abs(lengths - lengths.mean(axis=0)).max())
