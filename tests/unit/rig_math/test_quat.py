"""Quaternion helpers: products, matrices, swings, slerp and continuity against independent facts."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.rig_math.quat import (quat_angle, quat_between, quat_conj, quat_continuity, quat_from_axis_angle,
                                         quat_from_matrix, quat_inv, quat_mul, quat_normalize, quat_rotate,
                                         quat_slerp, quat_to_axis_angle, quat_to_matrix)


def _random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    return quat_normalize(rng.normal(size=(n, 4)))


def _rodrigues(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix from the textbook formula, independent of the module."""
    k = axis / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def test_axis_angle_matches_rodrigues_and_right_hand_rule():
    m = quat_to_matrix(quat_from_axis_angle([0.0, 0.0, 1.0], np.pi / 2))
    np.testing.assert_allclose(m @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)  # +X turns to +Y about +Z
    rng = np.random.default_rng(1)
    for _ in range(20):
        axis, angle = rng.normal(size=3), rng.uniform(-np.pi, np.pi)
        np.testing.assert_allclose(quat_to_matrix(quat_from_axis_angle(axis, angle)), _rodrigues(axis, angle),
                                   atol=1e-12)


def test_product_order_matches_matrix_product_and_rotate():
    rng = np.random.default_rng(2)
    a, b = _random_quats(rng, 50), _random_quats(rng, 50)
    v = rng.normal(size=(50, 3))
    np.testing.assert_allclose(quat_to_matrix(quat_mul(a, b)), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12)
    np.testing.assert_allclose(quat_rotate(a, v), np.einsum("nij,nj->ni", quat_to_matrix(a), v), atol=1e-12)
    np.testing.assert_allclose(quat_mul(a, quat_conj(a)), np.tile([1.0, 0, 0, 0], (50, 1)), atol=1e-12)
    scaled = 3.0 * a
    np.testing.assert_allclose(quat_mul(scaled, quat_inv(scaled)), np.tile([1.0, 0, 0, 0], (50, 1)), atol=1e-12)


def test_matrix_round_trip_including_half_turns():
    rng = np.random.default_rng(3)
    q = _random_quats(rng, 200)
    # Half-turns about the axes and diagonals: the trace is -1, where naive formulas divide by zero.
    half = quat_from_axis_angle(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 1]], float), np.pi)
    q = np.concatenate([q, half])
    back = quat_from_matrix(quat_to_matrix(q))
    assert np.all(back[:, 0] >= 0)
    np.testing.assert_allclose(np.abs(np.sum(back * q, axis=-1)), 1.0, atol=1e-12)
    # Broadcasting over two leading axes.
    assert quat_from_matrix(quat_to_matrix(q.reshape(41, 5, 4))).shape == (41, 5, 4)


def test_axis_angle_round_trip():
    rng = np.random.default_rng(4)
    axis = rng.normal(size=(30, 3))
    angle = rng.uniform(0.0, np.pi, 30)
    got_axis, got_angle = quat_to_axis_angle(quat_from_axis_angle(axis, angle))
    np.testing.assert_allclose(got_angle, angle, atol=1e-12)
    np.testing.assert_allclose(got_axis, axis / np.linalg.norm(axis, axis=-1, keepdims=True), atol=1e-10)


def test_between_is_the_shortest_arc_and_stable_when_antiparallel():
    rng = np.random.default_rng(5)
    u, v = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    q = quat_between(u, v)
    un, vn = u / np.linalg.norm(u, axis=-1, keepdims=True), v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(quat_rotate(q, un), vn, atol=1e-12)
    np.testing.assert_allclose(quat_angle(q), np.arccos(np.clip(np.sum(un * vn, -1), -1, 1)), atol=1e-7)
    # Antiparallel, including axis-aligned inputs: a finite half-turn that does the job.
    for d in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.3, -0.4, 0.5]):
        d = np.asarray(d)
        q = quat_between(d, -d)
        assert np.all(np.isfinite(q))
        np.testing.assert_allclose(quat_angle(q), np.pi, atol=1e-9)
        np.testing.assert_allclose(quat_rotate(q, d), -d, atol=1e-12)
    # Almost antiparallel stays accurate.
    d = np.array([0.0, 1.0, 0.0])
    e = np.array([1e-9, -1.0, 0.0])
    np.testing.assert_allclose(quat_rotate(quat_between(d, e), d), e / np.linalg.norm(e), atol=1e-6)


def test_slerp_constant_speed_and_shorter_arc():
    a = quat_from_axis_angle([0, 1.0, 0], 0.2)
    b = quat_from_axis_angle([0, 1.0, 0], 1.4)
    t = np.linspace(0, 1, 7)
    out = quat_slerp(a, b, t)
    np.testing.assert_allclose(quat_angle(out), 0.2 + 1.2 * t, atol=1e-12)
    # b given with the opposite sign: still the short way round.
    np.testing.assert_allclose(quat_angle(quat_slerp(a, -b, 0.5)), 0.8, atol=1e-12)
    np.testing.assert_allclose(quat_slerp(a, a, 0.3), a, atol=1e-12)


def test_continuity_removes_sign_flips_only():
    angles = np.linspace(0, 4 * np.pi, 81)  # two full turns: w changes sign along the way
    q = quat_from_axis_angle([0.0, 0.0, 1.0], angles)
    rng = np.random.default_rng(6)
    flipped = q * rng.choice([-1.0, 1.0], size=(81, 1))
    fixed = quat_continuity(flipped)
    assert np.all(np.sum(fixed[1:] * fixed[:-1], axis=-1) > 0)
    np.testing.assert_allclose(np.abs(np.sum(fixed * q, -1)), 1.0, atol=1e-12)  # same rotations
    # Along axis 1 of (joints, time, 4).
    stack = np.stack([flipped, -flipped])
    fixed2 = quat_continuity(stack, axis=1)
    assert np.all(np.sum(fixed2[:, 1:] * fixed2[:, :-1], axis=-1) > 0)


def test_angle_between_is_precise_for_small_angles():
    a = quat_from_axis_angle([1.0, 2.0, 3.0], 0.7)
    b = quat_mul(a, quat_from_axis_angle([0.0, 1.0, 0.0], 1e-7))
    assert quat_angle(a, b) == pytest.approx(1e-7, rel=1e-6)
    assert quat_angle(a, -a) == pytest.approx(0.0, abs=1e-12)
