"""BVH export and the minimal reader: round trips, Euler angles and real files."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.motion.bvh import BVH_NAMES, bvh_positions, euler_zxy_from_matrix, read_bvh, write_bvh
from model_backend.rig_math.quat import quat_from_axis_angle, quat_normalize, quat_to_matrix
from model_backend.rig_math.rootmotion import rest_hip_height
from model_backend.rig_math.skeleton import HUMANML3D
from model_backend.rig_math.solver import forward_kinematics, solve, t_pose_offsets

S = HUMANML3D


def _rz(a):
    return quat_to_matrix(quat_from_axis_angle([0.0, 0.0, 1.0], a))


def _rx(a):
    return quat_to_matrix(quat_from_axis_angle([1.0, 0.0, 0.0], a))


def _ry(a):
    return quat_to_matrix(quat_from_axis_angle([0.0, 1.0, 0.0], a))


def test_euler_zxy_round_trip_including_gimbal_lock():
    rng = np.random.default_rng(0)
    m = quat_to_matrix(quat_normalize(rng.normal(size=(500, 4))))
    zxy = euler_zxy_from_matrix(m)
    np.testing.assert_allclose(_rz(zxy[:, 0]) @ _rx(zxy[:, 1]) @ _ry(zxy[:, 2]), m, atol=1e-10)
    assert np.all(np.abs(zxy[:, 1]) <= np.pi / 2 + 1e-12)
    locked = _rz(0.3) @ _rx(np.pi / 2) @ _ry(-0.4)
    a = euler_zxy_from_matrix(locked)
    np.testing.assert_allclose(_rz(a[0]) @ _rx(a[1]) @ _ry(a[2]), locked, atol=1e-9)


def _by_skeleton_order(data) -> list[int]:
    return [data.names.index(BVH_NAMES[n]) for n in S.joint_names]


def test_write_read_round_trip_of_random_rotations(tmp_path):
    rng = np.random.default_rng(1)
    rest = t_pose_offsets(S)
    frames = 50
    axis = rng.normal(size=(frames, S.num_joints, 3))
    angle = np.linspace(0, 1, frames)[:, None] * rng.uniform(0.5, 3.0, S.num_joints)  # up to 172 degrees
    q = quat_from_axis_angle(axis, angle)
    root = rng.normal(size=(frames, 3)) * 0.3 + [0, 0.9, 0]
    joints = forward_kinematics(q, root, rest, S.parents)

    class Motion:  # a SolvedMotion-like object: local_quats, root_pos, rest_offsets
        local_quats, root_pos, rest_offsets = q, root, rest

    path = write_bvh(tmp_path / "random.bvh", Motion, fps=30.0)
    data = read_bvh(path)
    assert data.fps == pytest.approx(30.0)
    assert data.values.shape == (frames, 3 + 3 * S.num_joints)
    got = bvh_positions(data)[:, _by_skeleton_order(data)]
    assert np.abs(got - joints).max() < 1e-3  # metres: within 1 mm (6 decimals in the file)
    # Euler channels are continuous (unwrapped): no 360-degree jumps between frames.
    assert np.abs(np.diff(data.values[:, 3:], axis=0)).max() < 180.0


def test_solved_real_clip_round_trips_with_the_expected_hierarchy(tmp_path, humanml3d_dir):
    joints = np.load(humanml3d_dir / "012314_joints.npy").astype(np.float64)
    motion = solve(joints, S)
    data = read_bvh(write_bvh(tmp_path / "clip.bvh", motion, fps=S.fps))
    order = _by_skeleton_order(data)
    got = bvh_positions(data)[:, order]
    err_mm = np.linalg.norm(got - joints, axis=-1) * 1000
    print(f"012314 BVH round trip: mean {err_mm.mean():.4f} mm, max {err_mm.max():.4f} mm")
    assert err_mm.max() < 1.0
    # Same tree, names and rest offsets; rotation channels ZXY; root rest at the hip height.
    assert [data.parents[j] for j in order][1:] == [order[p] for p in S.parents[1:]]
    assert set(data.names) == set(BVH_NAMES.values())
    np.testing.assert_allclose(data.offsets[order][1:], motion.rest_offsets[1:], atol=1e-6)
    assert data.channels[0] == ("Xposition", "Yposition", "Zposition", "Zrotation", "Xrotation", "Yrotation")
    assert all(c == ("Zrotation", "Xrotation", "Yrotation") for c in data.channels[1:])
    assert data.offsets[0][1] == pytest.approx(rest_hip_height(motion.rest_offsets, S), abs=1e-6)
    assert (tmp_path / "clip.bvh").read_text().count("End Site") == 5  # head, hands, toes


def test_bad_motion_leaves_no_file(tmp_path):
    class Broken:
        local_quats = np.full((4, S.num_joints, 4), np.nan)
        root_pos = np.zeros((4, 3))
        rest_offsets = t_pose_offsets(S)

    with pytest.raises(ValueError, match="NaN"):
        write_bvh(tmp_path / "bad.bvh", Broken, fps=20.0)
    with pytest.raises(ValueError, match="fps"):
        Broken.local_quats = np.tile([1.0, 0, 0, 0], (4, S.num_joints, 1))
        write_bvh(tmp_path / "bad.bvh", Broken, fps=0.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, joints, frames", [
    ("smpl22_template.bvh", 22, 720), ("mixamo_rig_30fps.bvh", None, 69), ("mocapbank_19joint_30fps.bvh", 19, 455)])
def test_reader_parses_real_files_rigidly(bvh_dir, name, joints, frames):
    data = read_bvh(bvh_dir / name)
    assert len(data.values) == frames
    if joints is not None:
        assert len(data.names) == joints
    pos = bvh_positions(data)
    assert np.all(np.isfinite(pos))
    # Forward kinematics keeps every bone at its offset's length in every frame.
    kids = [j for j, p in enumerate(data.parents) if p >= 0]
    length = np.linalg.norm(pos[:, kids] - pos[:, [data.parents[j] for j in kids]], axis=-1)
    np.testing.assert_allclose(length, np.broadcast_to(np.linalg.norm(data.offsets[kids], axis=-1), length.shape),
                               rtol=1e-9, atol=1e-9)
    assert np.ptp(pos[:, 0], axis=0).max() > 0  # the root moves: position channels were read
