"""Any Action -> the 22 joints (sampling.py): evaluated in Blender, read off the bones, scaled to
human size; the scene, the playing Action and the pose are left as they were."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.rig import pose, armature as rig, sampling

MIXAMO = {"pelvis": "Hips", "left_hip": "LeftUpLeg", "right_hip": "RightUpLeg", "spine1": "Spine",
          "left_knee": "LeftLeg", "right_knee": "RightLeg", "left_ankle": "LeftFoot", "right_ankle": "RightFoot",
          "spine3": "Spine2", "neck": "Neck", "head": "Head", "left_shoulder": "LeftArm",
          "right_shoulder": "RightArm", "left_elbow": "LeftForeArm", "right_elbow": "RightForeArm",
          "left_wrist": "LeftHand", "right_wrist": "RightHand"}  # no Spine1 (spine2), collars or toes
PARENT = {"pelvis": None, "left_hip": "pelvis", "right_hip": "pelvis", "spine1": "pelvis", "left_knee": "left_hip",
          "right_knee": "right_hip", "left_ankle": "left_knee", "right_ankle": "right_knee", "spine3": "spine1",
          "neck": "spine3", "head": "neck", "left_shoulder": "spine3", "right_shoulder": "spine3",
          "left_elbow": "left_shoulder", "right_elbow": "right_shoulder", "left_wrist": "left_elbow",
          "right_wrist": "right_elbow"}
TAIL = {"pelvis": "spine1", "spine1": "spine3", "spine3": "neck", "neck": "head", "left_hip": "left_knee",
        "right_hip": "right_knee", "left_knee": "left_ankle", "right_knee": "right_ankle", "left_ankle": "left_foot",
        "right_ankle": "right_foot", "left_shoulder": "left_elbow", "right_shoulder": "right_elbow",
        "left_elbow": "left_wrist", "right_elbow": "right_wrist"}


def mixamo_rig(units: float, object_scale: float) -> bpy.types.Object:
    """A Mixamo-named rig on the default rest joints, in `units` per metre, the object scaled by object_scale."""
    rest = rig.default_rest_joints() * units
    ix = rig.SKELETON.index
    data = bpy.data.armatures.new("mixamo")
    obj = bpy.data.objects.new("mixamo", data)
    bpy.context.collection.objects.link(obj)
    obj.scale = (object_scale,) * 3
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    made = {}
    for joint, name in MIXAMO.items():
        bone = data.edit_bones.new(f"mixamorig:{name}")
        bone.head = rest[ix(joint)]
        bone.tail = rest[ix(TAIL[joint])] if joint in TAIL else rest[ix(joint)] + np.array([0, 0, 0.1 * units])
        if PARENT[joint]:
            bone.parent = made[PARENT[joint]]
        made[joint] = bone
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def still_action(armature, bone: str, frames=(1, 5)) -> bpy.types.Action:
    """An Action that keys one bone in its rest pose on two frames (the rig stands still)."""
    action = compat.new_action("still")
    compat.assign_action(armature, action)
    for f in frames:
        armature.pose.bones[bone].keyframe_insert("location", frame=f)
    return action


def test_a_generated_version_samples_back_to_its_bone_directions(default_rig, clip_blender, direction_errors):
    scene = bpy.context.scene
    scene.frame_set(42)
    version = actions.write_version(default_rig, clip_blender, fps=20.0, prompt="clip")
    out = sampling.sample_action(default_rig)
    source = pose.resample(clip_blender, 20.0, scene.render.fps / scene.render.fps_base)  # keys are at 24 fps
    assert out.joints.shape == source.shape and out.fps == 24.0 and out.filled == ()
    assert (out.frame_start, out.frame_end) == (1, len(source))
    assert out.scale == pytest.approx(1.0, abs=1e-6)  # the default rig is the reference size
    errors = direction_errors(out.joints, source)
    aimed = [rig.SKELETON.index(n) - 1 for n in rig.JOINT_NAMES[1:]
             if rig.main_child(rig.SKELETON.parents[rig.SKELETON.index(n)]) == rig.SKELETON.index(n)]
    assert errors[:, aimed].max() < 0.05  # every bone aimed at its child: exact
    assert errors.mean() < 2.0
    # The pelvis path is the clip's, scaled to the rig (plus the floor offset).
    info = actions.version_info(version)
    drift = out.joints[:, 0, :2] - source[:, 0, :2] * info["scale"]
    assert np.abs(drift - drift[0]).max() < 1e-3
    assert scene.frame_current == 42 and default_rig.animation_data.action == version


def test_hand_keyed_euler_rotation(default_rig):
    scene = bpy.context.scene
    bone = default_rig.pose.bones["left_elbow"]
    bone.rotation_mode = "XYZ"
    hand = compat.new_action("hand")
    compat.assign_action(default_rig, hand)
    for frame, angle in ((1, 0.0), (11, np.pi / 2)):
        bone.rotation_euler = (angle, 0.0, 0.0)
        bone.keyframe_insert("rotation_euler", frame=frame)
    out = sampling.sample_action(default_rig)
    assert out.joints.shape == (11, 22, 3)
    rest = rig.default_rest_joints()
    elbow, wrist = rig.SKELETON.index("left_elbow"), rig.SKELETON.index("left_wrist")
    np.testing.assert_allclose(out.joints[0], rest, atol=1e-5)
    # Frame 11: the forearm turned 90 degrees about the elbow bone's own X axis.
    axis = np.array(default_rig.data.bones["left_elbow"].matrix_local)[:3, 0]
    forearm = rest[wrist] - rest[elbow]
    turned = np.cross(axis, forearm) + axis * np.dot(axis, forearm)  # Rodrigues at 90 degrees
    np.testing.assert_allclose(out.joints[10, wrist], rest[elbow] + turned, atol=1e-5)
    np.testing.assert_allclose(np.delete(out.joints[10], [wrist], axis=0), np.delete(rest, [wrist], axis=0),
                               atol=1e-5)  # nothing else moved
    halfway = out.joints[5, wrist] - out.joints[5, elbow]  # frame 6: the F-Curve's midpoint, 45 degrees
    cos = np.dot(halfway, forearm) / np.linalg.norm(halfway) / np.linalg.norm(forearm)
    assert np.degrees(np.arccos(cos)) == pytest.approx(45.0, abs=0.01)
    assert scene.frame_current == 1


def test_sampling_another_action_gives_back_the_one_that_plays(default_rig):
    joints = np.repeat(rig.default_rest_joints()[None], 8, axis=0)
    playing = actions.write_version(default_rig, joints, prompt="stand")
    modes = {b.name: b.rotation_mode for b in default_rig.pose.bones}
    other = compat.new_action("raise_arm")
    compat.assign_action(default_rig, other)
    bone = default_rig.pose.bones["left_shoulder"]
    for frame, angle in ((1, 0.0), (4, 1.0)):
        bone.rotation_quaternion = (np.cos(angle / 2), 0.0, 0.0, np.sin(angle / 2))
        bone.keyframe_insert("rotation_quaternion", frame=frame)
    compat.assign_action(default_rig, playing)
    out = sampling.sample_action(default_rig, other)
    assert out.joints.shape == (4, 22, 3)
    wrist = rig.SKELETON.index("left_wrist")
    assert np.linalg.norm(out.joints[3, wrist] - out.joints[0, wrist]) > 0.2  # the raised arm, not the still take
    assert default_rig.animation_data.action == playing
    assert {b.name: b.rotation_mode for b in default_rig.pose.bones} == modes


@pytest.mark.parametrize("units, object_scale", [(100.0, 0.01), (2.0, 1.0)])
def test_preset_rig_units_and_missing_joints(fresh_scene, units, object_scale):
    arm = mixamo_rig(units, object_scale)
    still_action(arm, "mixamorig:Hips")
    out = sampling.sample_action(arm)
    assert out.mapping["pelvis"] == "mixamorig:Hips" and out.mapping["left_wrist"] == "mixamorig:LeftHand"
    assert set(out.filled) == {"spine2", "left_collar", "right_collar", "left_foot", "right_foot"}
    assert out.scale == pytest.approx(1.0 / (units * object_scale), rel=1e-5)  # back to the default rig's size
    rest = rig.default_rest_joints()
    ix = rig.SKELETON.index
    mapped = [ix(j) for j in MIXAMO]
    np.testing.assert_allclose(out.joints[:, mapped], np.broadcast_to(rest[mapped], (5, len(mapped), 3)), atol=1e-4)
    # Filled: toes at the foot bones' tails, spine2 and collars halfway along their segments.
    for toe in ("left_foot", "right_foot"):
        np.testing.assert_allclose(out.joints[0, ix(toe)], rest[ix(toe)], atol=1e-4)
    np.testing.assert_allclose(out.joints[0, ix("spine2")], (rest[ix("spine1")] + rest[ix("spine3")]) / 2, atol=1e-4)
    np.testing.assert_allclose(out.joints[0, ix("left_collar")],
                               (rest[ix("spine3")] + rest[ix("left_shoulder")]) / 2, atol=1e-4)


def test_refusals_change_nothing(default_rig, fresh_scene):
    with pytest.raises(ValueError, match="has no Action to sample"):
        sampling.sample_action(default_rig)
    one = still_action(default_rig, "pelvis", frames=(3,))
    with pytest.raises(ValueError, match="at least two frames"):
        sampling.sample_action(default_rig, one)
    data = bpy.data.armatures.new("blob")
    blob = bpy.data.objects.new("blob", data)
    bpy.context.collection.objects.link(blob)
    bpy.context.view_layer.objects.active = blob
    bpy.ops.object.mode_set(mode="EDIT")
    for name in ("a", "b"):
        data.edit_bones.new(name).tail = (0, 0, 1)
    bpy.ops.object.mode_set(mode="OBJECT")
    still_action(blob, "a")
    with pytest.raises(ValueError, match="cannot retarget onto it"):
        sampling.sample_action(blob)
    assert blob.animation_data.action.name == "still.001"
