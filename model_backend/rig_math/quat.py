"""Quaternion and rotation-matrix helpers (numpy only: imports inside Blender).

Conventions, used everywhere in the project:
- quaternions are (w, x, y, z), unit length, Hamilton product;
- a quaternion q rotates a column vector v as q v q^-1, and `quat_to_matrix(q)`
  is the matrix R with R @ v equal to that;
- `quat_mul(a, b)` applies b first, then a (like the matrix product A @ B);
- every function broadcasts over leading axes: quaternions (..., 4),
  vectors (..., 3), matrices (..., 3, 3).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "quat_normalize", "quat_mul", "quat_conj", "quat_inv", "quat_rotate",
    "quat_to_matrix", "quat_from_matrix", "quat_from_axis_angle", "quat_to_axis_angle",
    "quat_between", "quat_slerp", "quat_continuity", "quat_angle", "IDENTITY",
]

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])
_EPS = 1e-12


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (zero quaternions become the identity rather than NaN)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.sqrt(np.einsum("...i,...i->...", q, q))[..., None]
    if np.all(n > _EPS):
        return q / n
    return np.where(n > _EPS, q / np.maximum(n, _EPS), IDENTITY)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (rotation b, then a)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quat_conj(q: np.ndarray) -> np.ndarray:
    """Conjugate (w, -x, -y, -z): the inverse of a unit quaternion."""
    return np.asarray(q, dtype=np.float64) * np.array([1.0, -1.0, -1.0, -1.0])


def quat_inv(q: np.ndarray) -> np.ndarray:
    """Inverse of any non-zero quaternion (conjugate over squared norm)."""
    q = np.asarray(q, dtype=np.float64)
    return quat_conj(q) / np.maximum(np.sum(q * q, axis=-1, keepdims=True), _EPS)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4)."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    w, u = q[..., :1], q[..., 1:]
    # v' = v + 2w (u x v) + 2 u x (u x v): no matrix built, exact for unit q.
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) -> rotation matrices (..., 3, 3)."""
    w, x, y, z = np.moveaxis(quat_normalize(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) with w >= 0.

    Robust for every angle: each matrix uses the formula that divides by the
    largest of |w|, |x|, |y|, |z| (Shepperd's method), so half-turns are exact.
    """
    m = np.asarray(m, dtype=np.float64)
    shape = m.shape[:-2]
    f = m.reshape(-1, 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = f.T
    # 4 * component^2 for w, x, y, z; the largest is computed directly, the rest from it.
    sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22])
    best = np.argmax(sq, axis=0)
    q = np.empty((len(f), 4))
    for case, (a, b, c, d) in enumerate((
            (None, m21 - m12, m02 - m20, m10 - m01),
            (m21 - m12, None, m01 + m10, m02 + m20),
            (m02 - m20, m01 + m10, None, m12 + m21),
            (m10 - m01, m02 + m20, m12 + m21, None))):
        sel = best == case
        if not np.any(sel):
            continue
        s = 2.0 * np.sqrt(np.maximum(sq[case, sel], 1e-300))  # 4 |component|
        for k, v in enumerate((a, b, c, d)):
            q[sel, k] = s / 4.0 if v is None else v[sel] / s
    q = quat_normalize(q).reshape(shape + (4,))
    return np.where(q[..., :1] < 0, -q, q)


def quat_from_axis_angle(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotation of `angle` radians about `axis` (..., 3; normalised here)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), _EPS)
    half = 0.5 * np.asarray(angle, dtype=np.float64)[..., None]
    return np.concatenate([np.cos(half) * np.ones(axis.shape[:-1] + (1,)), np.sin(half) * axis], axis=-1)


def quat_to_axis_angle(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternions -> (unit axis (..., 3), angle (...) in [0, pi]); identity gives axis +X."""
    q = quat_normalize(q)
    q = np.where(q[..., :1] < 0, -q, q)
    s = np.linalg.norm(q[..., 1:], axis=-1)
    angle = 2.0 * np.arctan2(s, q[..., 0])
    axis = np.where(s[..., None] > _EPS, q[..., 1:] / np.maximum(s, _EPS)[..., None], [1.0, 0.0, 0.0])
    return axis, angle


def _any_perpendicular(u: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to each unit vector u (crossing with its least-aligned axis)."""
    basis = np.eye(3)[np.argmin(np.abs(u), axis=-1)]
    p = np.cross(u, basis)
    return p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), _EPS)


def quat_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest-arc (swing) rotation turning direction u onto direction v.

    Stable for antiparallel inputs: there the half-turn axis is a vector
    perpendicular to u chosen from u alone, so it is deterministic and smooth in u.
    """
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), _EPS)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)
    u, v = np.broadcast_arrays(u, v)
    q = np.concatenate([1.0 + np.sum(u * v, axis=-1, keepdims=True), np.cross(u, v)], axis=-1)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    half_turn = np.concatenate([np.zeros(u.shape[:-1] + (1,)), _any_perpendicular(u)], axis=-1)
    return np.where(n > 1e-7, q / np.maximum(n, _EPS), half_turn)


def quat_slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation from a (t=0) to b (t=1) along the shorter arc."""
    a = quat_normalize(a)
    b = quat_normalize(b)
    t = np.asarray(t, dtype=np.float64)[..., None]
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0, -b, b)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin = np.sin(theta)
    near = sin < 1e-6  # almost equal: linear interpolation is exact to rounding
    wa = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / np.where(near, 1.0, sin))
    wb = np.where(near, t, np.sin(t * theta) / np.where(near, 1.0, sin))
    return quat_normalize(wa * a + wb * b)


def quat_continuity(q: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along `axis` (time) so that dot(q_t, q_{t-1}) >= 0 for every t.

    q and -q are the same rotation; interpolation and filtering need the
    consistent hemisphere. Vectorised: a frame is flipped when an odd number of
    sign changes precede it.
    """
    q = np.moveaxis(np.asarray(q, dtype=np.float64), axis, 0)
    if q.shape[0] < 2:
        return np.moveaxis(q.copy(), 0, axis)
    change = np.sum(q[1:] * q[:-1], axis=-1) < 0
    flips = np.concatenate([np.zeros((1,) + change.shape[1:], dtype=int), np.cumsum(change, axis=0)]) % 2
    out = np.where(flips[..., None] == 1, -q, q)
    return np.moveaxis(out, 0, axis)


def quat_angle(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Rotation angle (radians, 0..pi) of a, or of the rotation from a to b."""
    r = quat_normalize(a) if b is None else quat_mul(quat_conj(quat_normalize(a)), quat_normalize(b))
    # atan2 keeps full precision for tiny angles, where arccos(w) does not.
    return 2.0 * np.arctan2(np.linalg.norm(r[..., 1:], axis=-1), np.abs(r[..., 0]))
