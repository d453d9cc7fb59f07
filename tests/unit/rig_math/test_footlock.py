"""Foot contacts, two-bone IK and foot locking on synthetic legs and real HumanML3D clips."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.rig_math.footlock import (SOFT_START, blend_weights, contact_runs, detect_contacts, lock_feet,
                                             two_bone_ik)
from model_backend.rig_math.metrics import foot_skating_ratio, mean_jerk
from model_backend.rig_math.skeleton import HUMANML3D

S = HUMANML3D
LEGS = [1, 2, 4, 5, 7, 8, 10, 11]


def _chain(rng: np.random.Generator, n: int):
    root = rng.normal(size=(n, 3))
    mid = root + rng.normal(size=(n, 3)) * 0.3
    end = mid + rng.normal(size=(n, 3)) * 0.3
    return root, mid, end


def test_two_bone_ik_reaches_keeps_lengths_and_the_knee_plane():
    rng = np.random.default_rng(0)
    root, mid, end = _chain(rng, 200)
    a = np.linalg.norm(mid - root, axis=-1)
    b = np.linalg.norm(end - mid, axis=-1)
    # Targets at 30-90 % of the reach, in random directions.
    d = rng.normal(size=(200, 3))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    reach = np.maximum(np.abs(a - b) + 0.01, (a + b) * rng.uniform(0.3, 0.9, 200))
    ok = reach < SOFT_START * (a + b)
    target = root + d * reach[:, None]
    new_mid, new_end = two_bone_ik(root, mid, end, target)
    np.testing.assert_allclose(new_end[ok], target[ok], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(new_mid - root, axis=-1), a, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(new_end - new_mid, axis=-1), b, atol=1e-9)
    # The knee stays in the plane of root, target and the original knee, on the original knee's side.
    normal = np.cross(target - root, mid - root)
    assert np.abs(np.sum((new_mid - root) * normal, axis=-1)).max() < 1e-9
    # The original pose is a fixed point (for chains within the soft zone).
    same_mid, same_end = two_bone_ik(root, mid, end, end)
    inside = np.linalg.norm(end - root, axis=-1) < SOFT_START * (a + b)
    np.testing.assert_allclose(same_mid[inside], mid[inside], atol=1e-9)
    np.testing.assert_allclose(same_end[inside], end[inside], atol=1e-9)


def test_two_bone_ik_out_of_reach_is_smooth_and_never_straight():
    root = np.zeros((50, 3))
    mid = np.tile([0.0, -0.4, 0.05], (50, 1))
    end = np.tile([0.0, -0.8, 0.0], (50, 1))
    a, b = np.linalg.norm(mid[0]), np.linalg.norm(end[0] - mid[0])
    dist = np.linspace(0.7, 1.2, 50) * (a + b)
    target = np.stack([np.zeros(50), -dist, np.zeros(50)], axis=-1)
    _, new_end = two_bone_ik(root, mid, end, target)
    got = np.linalg.norm(new_end, axis=-1)
    assert np.all(got < a + b) and np.all(np.diff(got) > 0)
    assert np.abs(np.diff(got, 2)).max() < 0.01 * (a + b)  # no kink at the soft start or at full reach
    np.testing.assert_allclose(new_end[:, [0, 2]], 0.0, atol=1e-12)  # along the root->target line


def test_blend_weights_and_runs():
    w = blend_weights(10, 15, 30, blend=5)
    assert np.all(w[10:15] == 1.0) and w[:4].max() == 0.0 and w[21:].max() == 0.0
    s = np.arange(1, 6) / 6
    np.testing.assert_allclose(w[15:20], 2 * s ** 3 - 3 * s ** 2 + 1)
    np.testing.assert_allclose(w[9:4:-1], w[15:20])  # symmetric ease in and out
    assert contact_runs(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], bool)) == [(0, 2), (4, 5), (6, 9)]
    assert contact_runs(np.zeros(4, bool)) == []


def _standing(frames: int = 40) -> np.ndarray:
    """A still T-pose standing on the floor, from the solver's default rest pose."""
    from model_backend.rig_math.solver import forward_kinematics, t_pose_offsets
    rest = t_pose_offsets(S)
    q = np.tile([1.0, 0.0, 0.0, 0.0], (frames, S.num_joints, 1))
    j = forward_kinematics(q, np.tile([0.0, 1.0, 0.0], (frames, 1)), rest, S.parents)
    j[..., 1] -= j[..., 1].min()
    return j


def test_contacts_need_low_slow_feet_and_the_channel():
    j = _standing()
    left_toe = S.foot_joints[1]
    j[20:, left_toe, 1] += 0.08  # the left toe lifts 8 cm
    j[:, S.foot_joints[3], 0] += np.arange(40) * 0.05  # the right toe slides at 1 m/s
    flags = detect_contacts(j, S)
    assert flags[:, 0].all() and flags[:, 2].all()  # both ankles planted
    assert flags[:20, 1].all() and not flags[20:, 1].any()
    assert not flags[:, 3].any()
    channels = np.ones((40, 4))
    channels[:10, 0] = 0.2
    with_channels = detect_contacts(j, S, contacts=channels)
    assert not with_channels[:10, 0].any() and with_channels[10:, 0].all()
    with pytest.raises(ValueError, match="contacts"):
        detect_contacts(j, S, contacts=np.ones((39, 4)))


def test_a_sliding_planted_foot_is_pinned():
    j = _standing(60)
    drift = np.linspace(0.0, 0.03, 60)  # 3 cm of slow slide under the left foot (0.02 m/s)
    leg = [S.index(n) for n in ("left_knee", "left_ankle", "left_foot")]
    j[:, leg, 2] += drift[:, None]
    out = lock_feet(j, S)
    for joint in (S.index("left_ankle"), S.index("left_foot")):
        np.testing.assert_allclose(out[:, joint, [0, 2]], out[:1, joint, [0, 2]].repeat(60, 0), atol=2e-3)
    # Bones keep their lengths; nothing above the legs moves.
    par = np.asarray(S.parents)
    np.testing.assert_allclose(np.linalg.norm(out[:, 1:] - out[:, par[1:]], axis=-1),
                               np.linalg.norm(j[:, 1:] - j[:, par[1:]], axis=-1), atol=1e-9)
    untouched = [k for k in range(S.num_joints) if k not in LEGS]
    assert np.array_equal(out[:, untouched], j[:, untouched])


@pytest.mark.parametrize("name", ["012314", "momask_000612", "motion_agent_example"])
def test_real_clips_skate_less_without_more_jerk(humanml3d_dir, name):
    from model_backend.motion.features import contacts_from_features, features_to_joints
    feats = np.load(humanml3d_dir / f"{name}_features.npy")
    joints = features_to_joints(feats).astype(np.float64)
    out = lock_feet(joints, S, contacts=contacts_from_features(feats))
    before, after = foot_skating_ratio(joints), foot_skating_ratio(out)
    jerk_before, jerk_after = mean_jerk(joints), mean_jerk(out)
    print(f"{name}: skating {before:.3f} -> {after:.3f}, jerk {jerk_before:.1f} -> {jerk_after:.1f} m/s^3")
    assert after < before or before == after == 0.0
    assert jerk_after <= 1.10 * jerk_before
    par = np.asarray(S.parents)
    np.testing.assert_allclose(np.linalg.norm(out[:, 1:] - out[:, par[1:]], axis=-1),
                               np.linalg.norm(joints[:, 1:] - joints[:, par[1:]], axis=-1), atol=1e-6)
    # Planted feet move far less than before.
    flags = detect_contacts(joints, S, contacts=contacts_from_features(feats))
    for channel, joint in enumerate(S.foot_joints):
        still = flags[1:, channel] & flags[:-1, channel]
        if still.sum() < 5:
            continue
        speed = lambda p: np.linalg.norm(np.diff(p[:, joint, [0, 2]], axis=0), axis=-1)[still]  # noqa: E731
        assert speed(out).mean() < 0.5 * speed(joints).mean()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        lock_feet(np.zeros((5, 21, 3)), S)
    j = _standing(5)
    j[2, 3, 0] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        lock_feet(j, S)


# ---------------------------------------------------------------- root and floor (model_backend.rig_math.rootmotion)

def _rotate_y(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] + s * v[..., 2], v[..., 1], -s * v[..., 0] + c * v[..., 2]], axis=-1)


def test_root_scale_floor_and_modes(humanml3d_dir):
    from model_backend.rig_math.rootmotion import facing_yaw, rest_hip_height, root_motion
    from model_backend.rig_math.solver import rest_offsets_for
    joints = np.load(humanml3d_dir / "012314_joints.npy").astype(np.float64)
    joints[..., 1] += 0.1  # floating 10 cm: the floor offset must bring it down
    source = rest_hip_height(rest_offsets_for(joints, S), S)
    plain = root_motion(joints, S, target_hip_height=2.0 * source)
    assert plain.scale == pytest.approx(2.0)
    assert plain.floor == pytest.approx(-0.2)
    np.testing.assert_allclose(plain.hips, 2.0 * joints[:, 0] + [0.0, -0.2, 0.0], atol=1e-12)
    feet = 2.0 * joints[:, list(S.foot_joints), 1] + plain.floor
    assert feet.min() == pytest.approx(0.0, abs=1e-12)
    assert root_motion(joints, S).scale == 1.0

    in_place = root_motion(joints, S, mode="in_place", target_hip_height=2.0 * source)
    np.testing.assert_allclose(in_place.hips[:, 1], plain.hips[:, 1])
    # Walking on at a steady 1.3 m/s changes nothing in place: the trajectory goes, the sway stays.
    walking = joints + (np.arange(len(joints)) / S.fps * 1.3)[:, None, None] * np.array([0.6, 0.0, 0.8])
    walked = root_motion(walking, S, mode="in_place", target_hip_height=2.0 * source)
    np.testing.assert_allclose(walked.hips, in_place.hips, atol=1e-9)
    assert np.abs(in_place.hips[:, [0, 2]]).max() > 0.01  # the sway is kept, not zeroed

    bone = root_motion(joints, S, mode="root_bone", target_hip_height=2.0 * source)
    np.testing.assert_allclose(bone.world_hips(), plain.hips, atol=1e-12)
    assert np.all(bone.root[:, 1] == 0.0)
    # The root turns with the body: the smoothed facing, within the smoothing's lag.
    assert np.abs(bone.root_yaw - facing_yaw(joints, S)).mean() < np.radians(10)

    # Turning the whole clip by a constant yaw turns the root bone by the same angle.
    turned = root_motion(_rotate_y(joints, 0.7), S, mode="root_bone")
    np.testing.assert_allclose(turned.root_yaw - root_motion(joints, S, mode="root_bone").root_yaw, 0.7, atol=1e-9)


def test_root_bad_mode_and_heights():
    from model_backend.rig_math.rootmotion import root_motion
    j = _standing(4)
    with pytest.raises(ValueError, match="root mode"):
        root_motion(j, S, mode="sideways")
    with pytest.raises(ValueError, match="positive"):
        root_motion(j, S, target_hip_height=-1.0)
