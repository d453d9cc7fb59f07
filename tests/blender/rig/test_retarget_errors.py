"""Bad input to retargeting: each case gives a clear message and changes nothing in the file."""
from __future__ import annotations

import bpy
import mathutils
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.rig import pose, armature as rig
from irg_blender_addon.ui import generate as generate_ui
from irg_blender_addon.ui import retarget as retarget_ops


def snapshot(obj) -> dict:
    """Everything retargeting could touch: Actions and their keys, the active one, rotation modes, range.
    (Bone channels are not compared: with an active Action, evaluation rewrites them.)"""
    pose_bones = obj.pose.bones if obj is not None and obj.type == "ARMATURE" and obj.pose else []
    anim = getattr(obj, "animation_data", None)
    return {
        "actions": sorted(a.name for a in bpy.data.actions),
        "active": anim.action.name if anim is not None and anim.action is not None else None,
        "modes": {b.name: b.rotation_mode for b in pose_bones},
        "keys": {a.name: sum(len(fc.keyframe_points) for fc in compat.action_fcurves(a)) for a in bpy.data.actions},
        "frame_end": bpy.context.scene.frame_end,
        "rig_id": obj.get("irg_rig_id") if obj is not None else None,
    }


@pytest.fixture()
def keyed_rig(default_rig, clip_blender):
    """The default rig with one version, its left knee in Euler mode (a write would switch it)."""
    actions.write_version(default_rig, clip_blender[:30], fps=20.0, prompt="walk")
    default_rig.pose.bones["left_knee"].rotation_mode = "XYZ"
    return default_rig


def refused(obj, joints, match, **options) -> None:
    """write_version raises ValueError matching `match`, and nothing changes."""
    before = snapshot(obj)
    with pytest.raises(ValueError, match=match):
        actions.write_version(obj, joints, fps=20.0, prompt="walk", **options)
    assert snapshot(obj) == before


def test_nan_and_infinite_joints(keyed_rig, clip_blender):
    for value, frame in ((np.nan, 7), (np.inf, 12), (-np.inf, 0)):
        bad = clip_blender[:30].copy()
        bad[frame, 4, 1] = value
        refused(keyed_rig, bad, rf"NaN or infinite values \(frames \[{frame}\]\)")
    refused(keyed_rig, clip_blender[:30, :21], r"shape \(T, 22, 3\)")
    refused(keyed_rig, clip_blender[:0], r"shape \(T, 22, 3\)")


def test_zero_length_bones_in_the_motion(keyed_rig, clip_blender):
    bad = clip_blender[:30].copy()
    bad[5:9, rig.SKELETON.index("left_knee")] = bad[5:9, rig.SKELETON.index("left_hip")]
    refused(keyed_rig, bad, r"joints left_hip and left_knee coincide \(a zero-length bone\) in frames \[5, 6, 7, 8\]")
    # Smoothing would blur the broken frames away: they are refused before it.
    refused(keyed_rig, bad, "left_hip and left_knee coincide", smoothing=True)


def test_zero_length_bones_in_the_rig(fresh_scene, clip_blender):
    arm = rig.create_default_rig(bpy.context, name="Flat")
    bpy.ops.object.mode_set(mode="EDIT")
    ankle = arm.data.edit_bones["left_ankle"]
    # Ten micrometres: "zero" for a rig (Blender 4.5 deletes bones of no length at all, 5.0 keeps a few
    # micrometres); with the toes unmapped nothing says where the foot points.
    ankle.tail = ankle.head + mathutils.Vector((0.0, 0.0, 1e-5))
    bpy.ops.object.mode_set(mode="OBJECT")
    assert arm.data.bones["left_ankle"].length < 2e-5
    mapping = {j: j for j in rig.JOINT_NAMES if j not in ("left_foot", "right_foot")}
    refused(arm, clip_blender[:10], r"zero-length bone in its rest pose: bone 'left_ankle' \(left_ankle\) has zero "
                                    "length", preset=mapping)
    # Two mapped bones starting at one point: the bone between them has no direction.
    other = rig.create_default_rig(bpy.context, name="Squashed")
    bpy.ops.object.mode_set(mode="EDIT")
    bones = other.data.edit_bones
    bones["spine3"].head = bones["spine2"].head + mathutils.Vector((0.0, 0.0, 1e-5))  # spine2's tail follows
    bpy.ops.object.mode_set(mode="OBJECT")
    refused(other, clip_blender[:10], r"the heads of bones 'spine2' \(spine2\) and 'spine3' \(spine3\) coincide")


def test_rig_with_no_recognisable_bones(fresh_scene, clip_blender):
    data = bpy.data.armatures.new("Props")
    obj = bpy.data.objects.new("Props", data)
    bpy.context.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    for k in range(5):
        bone = data.edit_bones.new(f"Bone.{k:03d}")
        bone.head, bone.tail = (k, 0, 0), (k, 0, 1)
    bpy.ops.object.mode_set(mode="OBJECT")
    refused(obj, clip_blender[:10], r"cannot retarget onto it\. No rig preset matches this armature's 5 bones\. "
                                    r".*Fix: pick another preset or map the joints by hand")
    empty = bpy.data.objects.new("Empty rig", bpy.data.armatures.new("Empty rig"))
    bpy.context.collection.objects.link(empty)
    refused(empty, clip_blender[:10], "No rig preset matches")


def test_non_armature_objects(fresh_scene, clip_blender):
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    bpy.context.collection.objects.link(mesh)
    for obj in (mesh, None):
        before = sorted(a.name for a in bpy.data.actions)
        with pytest.raises(ValueError, match="Expected an armature object, got"):
            actions.write_version(obj, clip_blender[:10], fps=20.0, prompt="walk")
        with pytest.raises(ValueError, match="Expected an armature object"):
            pose.joints_to_channels(obj, clip_blender[:10])
        assert sorted(a.name for a in bpy.data.actions) == before
    assert mesh.animation_data is None


def test_rig_in_edit_mode(keyed_rig, clip_blender):
    bpy.ops.object.mode_set(mode="EDIT")
    before = snapshot(keyed_rig)
    with pytest.raises(ValueError, match="is in Edit Mode: switch to Object or Pose Mode first"):
        actions.write_version(keyed_rig, clip_blender[:10], fps=20.0, prompt="walk")
    with pytest.raises(ValueError, match="Edit Mode"):
        actions.apply_version(keyed_rig.animation_data.action, keyed_rig)
    assert snapshot(keyed_rig) == before and keyed_rig.mode == "EDIT"


def test_bad_options(keyed_rig, clip_blender):
    joints = clip_blender[:20]
    refused(keyed_rig, joints, "Unknown rig preset 'nope': use 'auto' or one of .*mixamo", preset="nope")
    refused(keyed_rig, joints, "Armature 'IRG_SMPL': cannot retarget onto it.*Unmapped required joints: pelvis",
            preset="mixamo")
    refused(keyed_rig, joints, "unknown root mode 'sideways'", root_mode="sideways")
    refused(keyed_rig, joints, "has no root bone above its hips bone: use the root motion or in place mode",
            root_mode="root_bone")
    refused(keyed_rig, joints, r"left_knee -> 'knee\.L': the armature has no bone of that name",
            preset={**{j: j for j in rig.JOINT_NAMES}, "left_knee": "knee.L"})
    refused(keyed_rig, joints, r"contacts must have shape \(20, 4\)", foot_lock=True, contacts=np.zeros((19, 4)))


def test_applying_something_that_is_not_a_version(keyed_rig, clip_blender):
    plain = bpy.data.actions.new("hand keyed")
    before = snapshot(keyed_rig)
    with pytest.raises(ValueError, match="'hand keyed' holds no source motion"):
        actions.apply_version(plain, keyed_rig)
    with pytest.raises(TypeError, match="unknown option"):
        actions.apply_version(keyed_rig.animation_data.action, keyed_rig, speed=2)
    assert snapshot(keyed_rig) == before
    generate_ui.register()  # the Retarget panel is a sub-panel of Generate
    retarget_ops.register()
    try:
        with pytest.raises(RuntimeError, match="'hand keyed' holds no source motion"):  # the operator reports it
            bpy.ops.irg.apply_version(version=plain.name)
        assert snapshot(keyed_rig) == before
        bpy.context.view_layer.objects.active = None
        for obj in bpy.context.view_layer.objects:
            obj.select_set(False)
        assert not bpy.ops.irg.apply_version.poll()  # no armature selected: the button is greyed out
    finally:
        retarget_ops.unregister()
        generate_ui.unregister()
