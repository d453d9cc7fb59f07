"""Rotation solver: ground truth through FK, real HumanML3D clips, and the bone-frame contract."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.rig_math.metrics import bone_direction_error_deg, position_error_mm, twist_jitter
from model_backend.rig_math.quat import quat_angle, quat_from_axis_angle, quat_from_matrix, quat_mul
from model_backend.rig_math.skeleton import HUMANML3D, KIT_ML, to_blender
from model_backend.rig_math.solver import (bone_directions, forward_kinematics, front_reference, joint_rules,
                                           local_to_world, rest_frames, solve, t_pose_offsets)

S = HUMANML3D
RULES = joint_rules(S)
HINGE = [j for j, r in enumerate(RULES) if r.kind in ("hinge_upper", "hinge_lower")]
FULLY_OBSERVED = [j for j, r in enumerate(RULES) if r.kind == "kabsch"]  # pelvis, spine3


def _smooth(rng: np.random.Generator, frames: int, n: int, amp: float) -> np.ndarray:
    """n smooth random signals (frames, n) in [-amp, amp]: sums of 3 sinusoids of 0.1-0.8 Hz at 20 fps."""
    t = np.arange(frames)[:, None, None] / 20.0
    f, ph, a = rng.uniform(0.1, 0.8, (1, n, 3)), rng.uniform(0, 2 * np.pi, (1, n, 3)), rng.uniform(0.3, 1, (1, n, 3))
    return amp * (a * np.sin(2 * np.pi * f * t + ph)).sum(-1) / a.sum(-1)


def _random_motion(seed: int, frames: int = 120):
    """Plausible random rotations on the HumanML3D T-pose: ball joints with twist, hinged knees and elbows.

    Returns (local quats, root positions, rest offsets, hinge angle per hinge joint).
    """
    rng = np.random.default_rng(seed)
    rest = t_pose_offsets(S)
    frames_rest = rest_frames(rest, S)
    q = np.zeros((frames, S.num_joints, 4))
    q[..., 0] = 1.0
    bends = {}
    for j, rule in enumerate(RULES):
        if rule.kind == "hinge_lower":
            # Flexion (anatomy, not the solver's rule): knees bend backward (-Z), elbows forward (+Z).
            toward = np.array([0.0, 0.0, -1.0 if S.joint_names[j].endswith("knee") else 1.0])
            axis = np.cross(rest[S.children(j)[0]], toward)
            bends[j] = 1.2 + 1.2 * _smooth(rng, frames, 1, 1.0)[:, 0]  # 0..2.4 rad, straight at times
            q[:, j] = quat_from_axis_angle(axis, bends[j])
        elif j == 0:
            yaw = quat_from_axis_angle([0.0, 1.0, 0.0], _smooth(rng, frames, 1, 3.0)[:, 0])
            tilt = _smooth(rng, frames, 3, 0.4)
            q[:, j] = quat_mul(yaw, quat_from_axis_angle(tilt, np.linalg.norm(tilt, axis=-1)))
        else:
            amp = {"hinge_upper": 0.9, "spine": 0.35, "kabsch": 0.35, "parent": 0.25, "foot": 0.4, "leaf": 0.5}
            v = _smooth(rng, frames, 3, amp[rule.kind])
            if rule.kind == "hinge_upper":  # hips and shoulders also twist about the limb (+-69 degrees)
                v = v + frames_rest[j][:, 1] * _smooth(rng, frames, 1, 1.2)
            q[:, j] = quat_from_axis_angle(v, np.linalg.norm(v, axis=-1))
    root = np.cumsum(np.concatenate([np.zeros((1, 3)), _smooth(rng, frames - 1, 3, 0.05)]), axis=0) + [0, 0.9, 0]
    return q, root, rest, bends


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_rotations_are_recovered(seed):
    q, root, rest, bends = _random_motion(seed)
    joints = forward_kinematics(q, root, rest, S.parents)
    motion = solve(joints, S, rest=rest)
    assert joints[:, S.index("left_ankle"), 1].mean() < joints[:, S.index("left_knee"), 1].mean()  # sane legs

    # Positions back (acceptance: within 1 mm; exact up to rounding in fact).
    assert position_error_mm(motion.positions(), joints)[1] < 1e-6

    # Bone rotations (swing and twist) where the bend plane is defined.
    truth = quat_from_matrix(local_to_world(q, S.parents))
    solved = quat_from_matrix(motion.world_rotations())
    err = np.degrees(quat_angle(truth, solved))
    bent_frames = 0
    for j in HINGE:
        bent = np.degrees(bends[RULES[j].chain[1]]) >= 15.0
        bent_frames += int(bent.sum())
        assert err[bent, j].max() < 2.0, f"{S.joint_names[j]} twist off by {err[bent, j].max():.2f} deg"
    assert bent_frames > 0.8 * len(HINGE) * len(q)  # the test really covers bent limbs
    assert err[:, FULLY_OBSERVED].max() < 1e-6  # pelvis and spine3: three children each

    # No flips: continuous quaternions, and no bone turns much faster than the truth does.
    lq = motion.local_quats
    assert np.all(np.sum(lq[1:] * lq[:-1], axis=-1) > 0)
    step = np.degrees(quat_angle(lq[1:], lq[:-1])).max(axis=0)
    true_step = np.degrees(quat_angle(q[1:], q[:-1])).max(axis=0)
    assert np.all(step[HINGE + FULLY_OBSERVED] < true_step[HINGE + FULLY_OBSERVED] + 5.0)
    assert step.max() < 30.0  # feet follow their own rule, but smoothly
    assert twist_jitter(motion.world_frames)[1] == 0


def test_straight_limbs_take_the_parent_twist_without_nan():
    q, root, rest, _ = _random_motion(3, frames=40)
    for j, rule in enumerate(RULES):
        if rule.kind == "hinge_lower":
            q[:, j] = [1.0, 0.0, 0.0, 0.0]  # knees and elbows locked straight for the whole clip
    joints = forward_kinematics(q, root, rest, S.parents)
    motion = solve(joints, S, rest=rest)
    assert np.all(np.isfinite(motion.local_quats))
    assert position_error_mm(motion.positions(), joints)[1] < 1e-6
    # No bend plane anywhere: the lower limb keeps the upper bone's frame (identity local rotation).
    for j, rule in enumerate(RULES):
        if rule.kind == "hinge_lower":
            assert np.degrees(quat_angle(motion.local_quats[:, j])).max() < 1e-6


def test_rest_pose_solves_to_identity():
    rest = t_pose_offsets(S)
    identity = np.tile([1.0, 0.0, 0.0, 0.0], (3, S.num_joints, 1))
    joints = forward_kinematics(identity, np.zeros((3, 3)), rest, S.parents)
    motion = solve(joints, S, rest=rest)
    assert np.degrees(quat_angle(motion.local_quats)).max() < 1e-6
    # Rest fronts: forward for the body, up for the feet; aims along the bones.
    aim, front = bone_directions(joints, S, rest=rest)
    np.testing.assert_allclose(np.sum(aim * front, axis=-1), 0.0, atol=1e-12)
    ref = front_reference(S)
    assert np.all(np.sum(front[0] * ref, axis=-1) > 0.3)
    np.testing.assert_allclose(aim[0, S.index("left_shoulder")], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(front[0, S.index("left_ankle")], [0.0, 0.91, 0.42] / np.hypot(0.91, 0.42), atol=1e-9)


def _clip_joints(humanml3d_dir, name: str) -> np.ndarray:
    if name == "012314_joints":
        return np.load(humanml3d_dir / "012314_joints.npy").astype(np.float64)
    motion = pytest.importorskip("model_backend.motion.features", reason="model_backend.motion.features not written")
    if not hasattr(motion, "features_to_joints"):
        pytest.skip("model_backend.motion.features.features_to_joints not available yet")
    return motion.features_to_joints(np.load(humanml3d_dir / f"{name}.npy")).astype(np.float64)


@pytest.mark.parametrize("name", ["012314_joints", "momask_000612_features", "motion_agent_example_features"])
def test_real_clips_bone_directions(humanml3d_dir, name):
    joints = _clip_joints(humanml3d_dir, name)
    motion = solve(joints, S)
    mean_deg, max_deg = bone_direction_error_deg(motion.positions(), joints)
    mean_mm, max_mm = position_error_mm(motion.positions(), joints)
    print(f"{name}: bone direction error mean {mean_deg:.2e} deg, max {max_deg:.2e} deg; "
          f"position error mean {mean_mm:.2e} mm, max {max_mm:.2e} mm")
    assert mean_deg < 1.0 and max_deg < 1.0
    assert max_mm < 1.0
    assert np.all(np.sum(motion.local_quats[1:] * motion.local_quats[:-1], axis=-1) >= 0)
    # Knees bend backward: the thighs' fronts agree with the pelvis's (no half-turn of twist).
    front = motion.world_frames[..., 2]
    for thigh in (S.index("left_hip"), S.index("right_hip")):
        assert np.mean(np.sum(front[:, thigh] * front[:, 0], axis=-1)) > 0.5


def test_frames_follow_the_documented_retargeting_contract():
    """An A-pose target rig with rolled bones, posed by M_b = C F_j B_b^T R_b, lands on the joints."""
    q, root, rest, _ = _random_motion(4, frames=30)
    joints = forward_kinematics(q, root, rest, S.parents)
    frames = solve(joints, S, rest=rest).world_frames
    c = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # HumanML3D -> Blender axes
    target = to_blender(joints)
    forward_b, up_b = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    feet = set(np.nonzero(front_reference(S)[:, 1] > 0.5)[0])
    rng = np.random.default_rng(5)
    for j in range(1, S.num_joints):
        kids = S.children(j)
        if len(kids) != 1:
            continue
        # Target rest: the bone tilted 30 degrees toward -Z (A-pose-like) and rolled at random.
        aim_b = to_blender(rest[kids[0]])
        aim_b = aim_b / np.linalg.norm(aim_b) + np.array([0.0, 0.0, -0.5])
        aim_b /= np.linalg.norm(aim_b)
        ref = up_b if j in feet else forward_b
        z_b = ref - (ref @ aim_b) * aim_b
        z_b /= np.linalg.norm(z_b)
        b = np.stack([np.cross(aim_b, z_b), aim_b, z_b], axis=-1)
        roll = rng.uniform(-np.pi, np.pi)
        rolled = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
        r_b = b @ rolled  # any rest matrix whose Y is the bone
        m = c @ frames[:, j] @ b.T @ r_b
        bone = target[:, kids[0]] - target[:, j]
        np.testing.assert_allclose(m[:, :, 1], bone / np.linalg.norm(bone, axis=-1, keepdims=True), atol=1e-9)
        # The bone's rest front lands on the solved front, whatever its roll.
        np.testing.assert_allclose(m @ r_b.T @ z_b, (c @ frames[:, j, :, 2].T).T, atol=1e-9)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="shape"):
        solve(np.zeros((10, 21, 3)), S)
    bad = np.zeros((5, 22, 3))
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        solve(bad, S)
    with pytest.raises(ValueError, match="rest"):
        solve(np.random.default_rng(0).normal(size=(4, 21, 3)), KIT_ML)
    with pytest.raises(ValueError, match="shape"):
        solve(np.random.default_rng(0).normal(size=(4, 22, 3)), S, rest=np.zeros((21, 3)))
