"""Quality measures (published values on the real clip, exact values on synthetic motion) and smoothing."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.rig_math.metrics import (bone_direction_error_deg, bone_length_drift, foot_skating_ratio,
                                            mean_jerk, position_error_mm, twist_jitter)
from model_backend.rig_math.quat import quat_from_axis_angle, quat_to_matrix
from model_backend.rig_math.skeleton import HUMANML3D
from model_backend.rig_math.smoothing import savgol, savgol_matrix
from model_backend.rig_math.solver import forward_kinematics, t_pose_offsets

S = HUMANML3D


@pytest.fixture(scope="module")
def clip(humanml3d_dir) -> np.ndarray:
    return np.load(humanml3d_dir / "012314_joints.npy").astype(np.float64)


def test_real_clip_matches_the_published_figures(clip):
    # motion-math section 4: skating about 0.136 (floor y = 0, HumanML3D's), jerk about 113 m/s^3.
    assert foot_skating_ratio(clip) == pytest.approx(0.136, abs=0.002)
    assert mean_jerk(clip, fps=20.0) == pytest.approx(113.2, abs=0.5)
    # Released HumanML3D joints share one reference skeleton: bone lengths are constant.
    assert bone_length_drift(clip)[1] < 1e-5
    # Skating is floor-sensitive: with the floor 5 cm lower nothing is "low" any more.
    assert foot_skating_ratio(clip, floor=-0.05) == 0.0


def _feet_track(frames: int, speed: float, height: float) -> np.ndarray:
    j = np.zeros((frames, S.num_joints, 3))
    x = np.arange(frames) * speed / 20.0
    for foot in (10, 11):
        j[:, foot, 0] = x
        j[:, foot, 1] = height
    return j


def test_skating_counts_low_fast_feet_only():
    assert foot_skating_ratio(_feet_track(41, 1.0, 0.01)) == pytest.approx(1.0)  # sliding at 1 m/s
    assert foot_skating_ratio(_feet_track(41, 0.3, 0.01)) == 0.0  # too slow
    assert foot_skating_ratio(_feet_track(41, 1.0, 0.08)) == 0.0  # in the air
    # The 5-frame average (zeros past the ends) must also exceed the threshold: 0.6 m/s fails at the edges.
    edge = foot_skating_ratio(_feet_track(41, 0.6, 0.01))
    assert edge == pytest.approx(36 / 40)  # 2 pairs lost at each end


def test_jerk_of_a_cubic_is_exact():
    t = np.arange(30) / 20.0
    j = np.zeros((30, 2, 3))
    j[:, 0, 0] = t ** 3  # third derivative 6 m/s^3
    j[:, 1, 2] = 2 * t ** 3  # 12 m/s^3
    assert mean_jerk(j, fps=20.0) == pytest.approx(9.0, rel=1e-9)
    assert mean_jerk(j[:3], fps=20.0) == 0.0


def test_position_and_direction_errors():
    rest = t_pose_offsets(S)
    q = np.tile([1.0, 0, 0, 0], (2, S.num_joints, 1))
    a = forward_kinematics(q, np.zeros((2, 3)), rest, S.parents)
    q2 = q.copy()
    q2[:, S.index("left_elbow")] = quat_from_axis_angle([0.0, 1.0, 0.0], np.radians(10.0))
    b = forward_kinematics(q2, np.zeros((2, 3)), rest, S.parents)
    mean_deg, max_deg = bone_direction_error_deg(a, b)
    assert max_deg == pytest.approx(10.0, abs=1e-9)
    assert mean_deg == pytest.approx(10.0 / 21, abs=1e-9)  # one bone of 21
    wrist_move = 2 * rest[S.index("left_wrist"), 0] * np.sin(np.radians(5.0)) * 1000
    mean_mm, max_mm = position_error_mm(a, b)
    assert max_mm == pytest.approx(wrist_move, rel=1e-9) and mean_mm == pytest.approx(wrist_move / 22, rel=1e-9)
    with pytest.raises(ValueError):
        position_error_mm(a, b[:1])


def test_twist_jitter_separates_twist_from_swing_and_counts_flips():
    frames = 20
    spin = quat_to_matrix(quat_from_axis_angle([0.0, 1.0, 0.0], np.radians(3.0) * np.arange(frames)))
    swing = quat_to_matrix(quat_from_axis_angle([1.0, 0.0, 0.0], np.radians(4.0) * np.arange(frames)))
    frames_ = np.stack([spin, swing], axis=1)  # bone 0 twists about its Y axis, bone 1 only swings
    mean, flips = twist_jitter(frames_)
    np.testing.assert_allclose(mean, [3.0, 0.0], atol=1e-9)
    assert flips == 0
    flipped = frames_.copy()
    flipped[10:, 0] = flipped[10:, 0] @ quat_to_matrix(quat_from_axis_angle([0.0, 1.0, 0.0], np.pi))
    assert twist_jitter(flipped)[1] == 1


def test_bone_length_drift():
    rest = t_pose_offsets(S)
    j = forward_kinematics(np.tile([1.0, 0, 0, 0], (4, S.num_joints, 1)), np.zeros((4, 3)), rest, S.parents)
    assert bone_length_drift(j) == pytest.approx((0.0, 0.0), abs=1e-12)
    head = S.index("head")
    j[1, head, 1] += 0.01  # the head moves 1 cm up in one frame: its bone grows
    grown = np.linalg.norm(rest[head] + [0.0, 0.01, 0.0]) - np.linalg.norm(rest[head])
    std_mean, worst = bone_length_drift(j)
    assert worst == pytest.approx(0.75 * grown, abs=1e-12)  # the growth minus its share of the 4-frame mean
    assert std_mean > 0


# ---------------------------------------------------------------- smoothing

def test_savgol_kernel_matches_the_textbook_coefficients():
    np.testing.assert_allclose(savgol_matrix(5, 2)[2], np.array([-3, 12, 17, 12, -3]) / 35, atol=1e-12)
    np.testing.assert_allclose(savgol_matrix(7, 2)[3], np.array([-2, 3, 6, 7, 6, 3, -2]) / 21, atol=1e-12)


def test_savgol_keeps_polynomials_up_to_its_order_including_the_edges():
    t = np.linspace(-1, 1, 60)
    poly = np.stack([1 + t - 2 * t ** 2 + 0.5 * t ** 3 + t ** 4 - 0.3 * t ** 5, t], axis=-1)
    np.testing.assert_allclose(savgol(poly, 11, 5), poly, atol=1e-10)
    # Along another axis, on a (J, T, 3) layout.
    stacked = np.broadcast_to(poly[None, :, :1], (3, 60, 3))
    np.testing.assert_allclose(savgol(stacked, 11, 5, axis=1), stacked, atol=1e-10)


def test_savgol_lowers_noise_and_jerk_on_a_real_clip(clip):
    rng = np.random.default_rng(0)
    noisy = clip + rng.normal(scale=0.005, size=clip.shape)  # 5 mm jitter
    smooth = savgol(noisy)
    assert np.abs(smooth - clip).mean() < 0.9 * np.abs(noisy - clip).mean()
    assert mean_jerk(smooth) < 0.3 * mean_jerk(noisy)
    assert noisy.shape == smooth.shape and not np.shares_memory(noisy, smooth)


def test_savgol_short_clips_and_bad_arguments():
    x = np.arange(7.0) ** 2
    np.testing.assert_allclose(savgol(x, 11, 5), x, atol=1e-10)  # shrinks to a 7-frame window
    np.testing.assert_array_equal(savgol(np.ones(3), 11, 5), np.ones(3))
    with pytest.raises(ValueError, match="odd"):
        savgol(x, 10, 3)
    with pytest.raises(ValueError, match="order"):
        savgol(x, 5, 5)
    with pytest.raises(ValueError, match="NaN"):
        savgol(np.array([0.0, np.nan, 1.0, 2.0]), 3, 1)
