"""Quaternions -> Euler angles in any of Blender's six rotation orders, continuous in time.

So bones the animator set to an Euler mode keep it: their keys go on rotation_euler
in the bone's own order. Blender's order "XYZ" applies X first: R = Rz Ry Rx.
Pure numpy.
"""
from __future__ import annotations

import numpy as np

from ..core import quat

ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")


def matrix_to_euler(m: np.ndarray, order: str) -> np.ndarray:
    """Euler angles (..., 3) (x, y, z, radians) of rotation matrices (..., 3, 3) in `order`."""
    if order not in ORDERS:
        raise ValueError(f"unknown rotation order {order!r}; use one of {', '.join(ORDERS)}")
    a, b, c = ("XYZ".index(axis) for axis in order)  # applied first, second, third: R = R_c R_b R_a
    sign = 1.0 if (b - a) % 3 == 1 else -1.0  # +1 for the cyclic orders
    second = np.arcsin(np.clip(-sign * m[..., c, a], -1.0, 1.0))
    first = np.arctan2(sign * m[..., c, b], m[..., c, c])
    third = np.arctan2(sign * m[..., b, a], m[..., a, a])
    locked = np.abs(m[..., c, a]) > 1.0 - 1e-9  # gimbal lock: put the whole turn on the third axis
    if np.any(locked):
        first = np.where(locked, 0.0, first)
        third = np.where(locked, np.arctan2(-sign * m[..., a, b], m[..., b, b]), third)
    out = np.empty(m.shape[:-2] + (3,))
    out[..., a], out[..., b], out[..., c] = first, second, third
    return out


def _wrap_near(angles: np.ndarray, near: np.ndarray) -> np.ndarray:
    return angles + 2.0 * np.pi * np.round((near - angles) / (2.0 * np.pi))


def euler_continuity(euler: np.ndarray, order: str) -> np.ndarray:
    """Euler angles (T, ..., 3) made continuous along axis 0: each frame takes, of its two
    equivalent triples and their 2 pi shifts, the one nearest the previous frame. (Unwrapping
    the 2 pi jumps is enough unless the middle angle passes +-90 degrees.)"""
    unwrapped = np.unwrap(euler, axis=0)
    if len(euler) < 2 or np.abs(np.diff(unwrapped, axis=0)).max() < 0.5 * np.pi:
        return unwrapped
    a, b, c = ("XYZ".index(axis) for axis in order)
    out = euler.copy()
    for t in range(1, len(out)):
        prev = out[t - 1]
        one = _wrap_near(out[t], prev)
        other = out[t].copy()  # the same rotation: (first + pi, pi - second, third + pi)
        other[..., a] += np.pi
        other[..., b] = np.pi - other[..., b]
        other[..., c] += np.pi
        other = _wrap_near(other, prev)
        closer = np.sum((other - prev) ** 2, axis=-1) < np.sum((one - prev) ** 2, axis=-1)
        out[t] = np.where(closer[..., None], other, one)
    return out


def quat_to_euler(q: np.ndarray, order: str) -> np.ndarray:
    """Quaternions (T, ..., 4) (w first) -> continuous Euler angles (T, ..., 3) in `order`."""
    return euler_continuity(matrix_to_euler(quat.quat_to_matrix(q), order), order)
