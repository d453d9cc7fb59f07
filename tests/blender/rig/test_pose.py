"""plan_channels + solve_channels (joints_to_channels): channels that put the bones on the joints, validation."""
from __future__ import annotations

import threading

import bpy
import mathutils
import numpy as np
import pytest

from irg_blender_addon.rig import pose, armature as rig


def apply_frame(armature: bpy.types.Object, channels: pose.PoseChannels, k: int) -> np.ndarray:
    """Set the channels of frame index k directly on the pose bones; the evaluated heads (22, 3)."""
    for name in channels.bone_names:
        armature.pose.bones[name].rotation_quaternion = channels.rotation(name)[k]
    armature.pose.bones[channels.root_bone].location = channels.location[k]
    bpy.context.view_layer.update()
    return np.array([armature.pose.bones[n].head for n in rig.JOINT_NAMES], dtype=np.float64)


def test_rigid_motion_of_the_rest_pose_is_reproduced_exactly(default_rig, rigid_motion):
    rest = rig.rest_joint_positions(default_rig)
    joints = rigid_motion(rest, frames=40, turns=0.5)
    ch = pose.joints_to_channels(default_rig, joints, src_fps=20.0, dst_fps=20.0, frame_start=1)
    assert ch.quaternions.shape == (40, 22, 4) and ch.location.shape == (40, 3)
    np.testing.assert_array_equal(ch.frames, np.arange(1, 41))
    assert ch.scale == pytest.approx(1.0) and ch.root_bone == "pelvis"
    np.testing.assert_allclose(np.linalg.norm(ch.quaternions, axis=-1), 1.0, atol=1e-9)
    for k in (0, 13, 39):
        np.testing.assert_allclose(apply_frame(default_rig, ch, k), joints[k], atol=2e-5)
    # Only the pelvis turns (about the vertical): every other channel stays the identity.
    others = np.delete(ch.quaternions, 0, axis=1)
    np.testing.assert_allclose(others, np.broadcast_to([1.0, 0, 0, 0], others.shape), atol=1e-6)


def test_posed_limbs_and_full_turns_keep_quaternions_continuous(default_rig, rigid_motion):
    rest = rig.rest_joint_positions(default_rig)
    joints = rigid_motion(rest, frames=60, turns=2.0)  # two full turns: q passes through -q
    knee, ankle, foot = (rig.SKELETON.index(n) for n in ("left_knee", "left_ankle", "left_foot"))
    bend = mathutils.Matrix.Rotation(np.radians(70), 3, "X")  # bend the left knee backwards
    pivot = joints[:, knee]
    for j in (ankle, foot):
        joints[:, j] = pivot + (joints[:, j] - pivot) @ np.array(bend).T
    ch = pose.joints_to_channels(default_rig, joints, src_fps=20.0, dst_fps=20.0)
    dots = np.sum(ch.quaternions[1:] * ch.quaternions[:-1], axis=-1)
    assert dots.min() > 0.9  # no sign flips (a flip would give about -1)
    for k in (0, 29, 59):
        np.testing.assert_allclose(apply_frame(default_rig, ch, k), joints[k], atol=2e-5)
    shin_rest, shin = rest[ankle] - rest[knee], joints[0, ankle] - joints[0, knee]
    bent = np.degrees(np.arccos(shin_rest @ shin / np.linalg.norm(shin_rest) / np.linalg.norm(shin)))
    assert 65 < bent < 70  # the shin is tilted in the rest pose: a bit less than 70 degrees of swing
    knee_angle = 2 * np.degrees(np.arccos(min(1.0, abs(ch.rotation("left_knee")[0, 0]))))
    # The knee's bend plane now also sets the thigh's twist (the solver's hinge rule), so the knee's
    # channel is close to, not exactly, the shortest arc.
    assert knee_angle == pytest.approx(bent, abs=3.0)


def test_real_clip_bone_directions_and_root(default_rig, clip_blender, direction_errors):
    ch = pose.joints_to_channels(default_rig, clip_blender, src_fps=20.0, dst_fps=20.0)
    # The clip's legs are longer than the rig's: the root is scaled by the leg length ratio.
    assert 0.9 < ch.scale < 1.0
    errors, drops = [], []
    for k in range(0, len(clip_blender), 8):
        heads = apply_frame(default_rig, ch, k)
        np.testing.assert_allclose(heads[0, :2], clip_blender[k, 0, :2] * ch.scale, atol=1e-4)
        drops.append(heads[0, 2] - clip_blender[k, 0, 2] * ch.scale)  # the floor offset, ground-corrected
        errors.append(direction_errors(heads, clip_blender[k]))
    errors = np.array(errors)
    # One floor offset, plus the ground correction (retarget.ground_correction): the default rig's leg
    # proportions differ from the clip's, which moves its lowest foot by under 1 cm on this real walk.
    assert np.ptp(drops) < 0.012 and abs(drops[0]) < 0.05
    assert errors.mean() < 2.0 and errors.max() < 10.0
    aimed = [rig.SKELETON.index(n) - 1 for n in ("left_knee", "left_elbow", "neck", "right_ankle")]
    assert errors[:, aimed].max() < 0.05  # bones aimed at their child: exact directions
    # Feet stay near the floor once the root is scaled.
    assert -0.03 < min(apply_frame(default_rig, ch, k)[[10, 11], 2].min() for k in range(0, 170, 17)) < 0.03


def test_in_place_removes_the_ground_path_and_keeps_the_height(default_rig, clip_blender):
    moving = pose.joints_to_channels(default_rig, clip_blender, src_fps=20.0, dst_fps=20.0)
    ch = pose.joints_to_channels(default_rig, clip_blender, src_fps=20.0, dst_fps=20.0, root_motion=False)
    assert ch.root_mode == "in_place"
    far = 0.0
    for k in range(0, 170, 13):
        heads, travelled = apply_frame(default_rig, ch, k), apply_frame(default_rig, moving, k)
        assert np.abs(heads[0, :2]).max() < 0.2 and heads[0, 2] == pytest.approx(travelled[0, 2], abs=1e-5)
        far = max(far, np.abs(travelled[0, :2]).max())
    assert far > 1.0  # the clip walks more than a metre away


@pytest.mark.parametrize("dst_fps, frames", [(24.0, 203), (30.0, 254), (20.0, 170), (12.5, 106)])
def test_resampling_keeps_the_duration_on_integer_frames(default_rig, clip_blender, dst_fps, frames):
    bpy.context.scene.frame_start = 10
    ch = pose.joints_to_channels(default_rig, clip_blender, src_fps=20.0, dst_fps=dst_fps)
    assert len(ch.frames) == frames and ch.fps == dst_fps
    np.testing.assert_array_equal(ch.frames, 10 + np.arange(frames))
    source_seconds, seconds = (len(clip_blender) - 1) / 20.0, (frames - 1) / dst_fps
    assert 0 <= source_seconds - seconds < 1 / dst_fps
    k = frames // 3  # the root follows the linearly interpolated source
    t = k / dst_fps * 20.0
    lo = int(t)
    expected = clip_blender[lo, 0] * (1 - (t - lo)) + clip_blender[lo + 1, 0] * (t - lo)
    np.testing.assert_allclose(apply_frame(default_rig, ch, k)[0, :2], expected[:2] * ch.scale, atol=1e-4)


def test_scene_fps_is_the_default_target(default_rig, clip_blender):
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.001  # 29.97 fps
    ch = pose.joints_to_channels(default_rig, clip_blender[:41], src_fps=20.0)
    assert ch.fps == pytest.approx(30 / 1.001) and len(ch.frames) == int(2.0 * 30 / 1.001) + 1


def test_matrix_to_quat_matches_mathutils():
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(200, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats[:4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # 180-degree turns
    mats = np.array([np.array(mathutils.Quaternion(q).to_matrix()) for q in quats])
    ours = pose.matrix_to_quat(mats)
    np.testing.assert_allclose(np.abs(np.sum(ours * quats, axis=1)), 1.0, atol=1e-9)
    assert (ours[:, 0] >= 0).all()


def test_invalid_input_raises_before_anything(default_rig):
    good = np.repeat(rig.rest_joint_positions(default_rig)[None], 4, axis=0)
    for bad, match in ((good[:, :21], r"shape \(T, 22, 3\)"), (good[0], r"shape \(T, 22, 3\)"),
                       (good[:0], r"shape \(T, 22, 3\)")):
        with pytest.raises(ValueError, match=match):
            pose.joints_to_channels(default_rig, bad)
    nan, inf = good.copy(), good.copy()
    nan[2, 5, 1], inf[3, 0, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values \(frames \[2\]\)"):
        pose.joints_to_channels(default_rig, nan)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(frames \[3\]\)"):
        pose.joints_to_channels(default_rig, inf)
    with pytest.raises(ValueError, match="fps must be positive"):
        pose.joints_to_channels(default_rig, good, src_fps=0.0)
    default_rig.data.bones["left_wrist"].name = "hand.L"
    default_rig.data.bones["head"].name = "Head"
    with pytest.raises(ValueError, match=r"Unmapped required joints: left_wrist \(bone 'left_wrist' not found\)"):
        pose.joints_to_channels(default_rig, good)
    with pytest.raises(ValueError, match="Expected an armature object"):
        pose.joints_to_channels(bpy.data.objects.new("Empty", None), good)


def test_plan_then_solve_in_a_worker_equals_joints_to_channels(default_rig, clip_blender):
    scene = bpy.context.scene
    scene.render.fps, scene.frame_start = 24, 5
    joints = clip_blender[:60]
    options = {"foot_lock": True, "smoothing": True}
    expected = pose.joints_to_channels(default_rig, joints, src_fps=20.0, root_mode="in_place", **options)
    plan = pose.plan_channels(default_rig, root_mode="in_place")
    assert (plan.fps, plan.frame_start, plan.root_mode, plan.preset) == (24.0, 5, "in_place", expected.preset)
    bpy.data.objects.remove(default_rig)  # the solve reads nothing from the scene
    solved = []
    worker = threading.Thread(target=lambda: solved.append(pose.solve_channels(plan, joints, src_fps=20.0,
                                                                               **options)))
    worker.start()
    worker.join(60)
    ch = solved[0]
    assert ch.bone_names == expected.bone_names and (ch.root_mode, ch.foot_lock, ch.smoothing) == (
        "in_place", True, True)
    np.testing.assert_array_equal(ch.frames, expected.frames)
    assert ch.frames[0] == 5 and len(ch.frames) == int(59 * 24 / 20) + 1
    np.testing.assert_array_equal(ch.quaternions, expected.quaternions)
    np.testing.assert_array_equal(ch.location, expected.location)
    plain = pose.solve_channels(plan, joints, src_fps=20.0)  # the options change the result
    assert np.abs(plain.quaternions - ch.quaternions).max() > 1e-3


def test_plan_refuses_bad_options_and_solve_bad_joints(default_rig):
    with pytest.raises(ValueError, match="unknown root mode 'sideways'"):
        pose.plan_channels(default_rig, root_mode="sideways")
    with pytest.raises(ValueError, match="Unknown rig preset 'nope'"):
        pose.plan_channels(default_rig, preset="nope")
    plan = pose.plan_channels(default_rig)
    good = np.repeat(rig.rest_joint_positions(default_rig)[None], 4, axis=0)
    with pytest.raises(ValueError, match=r"contacts must have shape \(4, 4\)"):
        pose.solve_channels(plan, good, contacts=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"shape \(T, 22, 3\)"):
        pose.solve_channels(plan, good[:, :21])
