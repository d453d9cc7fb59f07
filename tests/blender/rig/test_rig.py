"""The default rig: names, hierarchy, proportions, axes, rolls; finding the target armature."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from irg_blender_addon.rig import armature as rig
from irg_blender_addon.core import skeleton


def axes(bone: bpy.types.Bone) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bone's rest X, Y, Z axes in armature space."""
    m = np.array(bone.matrix_local)[:3, :3]
    return m[:, 0], m[:, 1], m[:, 2]


def test_default_rig_has_the_22_joint_bones_in_the_skeleton_hierarchy(default_rig):
    bones = default_rig.data.bones
    assert default_rig.type == "ARMATURE" and default_rig.name == "IRG_SMPL"
    assert len(bones) == 22 and sorted(b.name for b in bones) == sorted(skeleton.HUMANML3D.joint_names)
    for name, parent in zip(skeleton.HUMANML3D.joint_names, skeleton.HUMANML3D.parents):
        expected = skeleton.HUMANML3D.joint_names[parent] if parent >= 0 else None
        assert (bones[name].parent.name if bones[name].parent else None) == expected
    assert bones["spine1"].use_connect and not bones["left_hip"].use_connect  # pelvis aims at spine1
    assert bones["neck"].use_connect and not bones["left_collar"].use_connect  # spine3 aims at the neck
    assert all(pb.rotation_mode == "QUATERNION" for pb in default_rig.pose.bones)
    # Active, selected, back in Object Mode; a second rig gets its own name.
    assert bpy.context.view_layer.objects.active == default_rig and default_rig.select_get()
    assert default_rig.mode == "OBJECT"
    second = rig.create_default_rig(bpy.context)
    assert second.name == "IRG_SMPL.001" and not default_rig.select_get() and second.select_get()


def test_proportions_feet_on_floor_facing_minus_y(default_rig):
    j = rig.rest_joint_positions(default_rig)
    ix = skeleton.HUMANML3D.index
    assert j.shape == (22, 3)
    np.testing.assert_allclose(j, rig.default_rest_joints(), atol=1e-6)
    assert j[:, 2].min() == pytest.approx(0.0, abs=1e-6)  # lowest joint (toes) on the floor
    assert j[ix("left_foot"), 2] < 0.01 and j[ix("right_foot"), 2] < 0.01
    assert 0.04 < j[ix("left_ankle"), 2] < 0.09
    assert 0.85 < j[ix("pelvis"), 2] < 1.0 and 1.4 < j[ix("head"), 2] < 1.6  # SMPL neutral, ~1.7 m tall
    np.testing.assert_allclose(j[ix("pelvis"), :2], 0.0, atol=1e-9)
    assert j[ix("left_hip"), 0] > 0.05 and j[ix("right_hip"), 0] < -0.05  # character's left is +X
    assert j[ix("left_wrist"), 0] > 0.6  # T-pose: arms out along X
    assert j[ix("left_foot"), 1] < j[ix("left_ankle"), 1] - 0.1  # toes point to -Y: facing -Y
    for n in skeleton.HUMANML3D.joint_names:  # symmetric
        if n.startswith("left_"):
            np.testing.assert_allclose(j[ix(n)] * [-1, 1, 1], j[ix("right_" + n[5:])], atol=1e-9)
    # Bone lengths within 15% of the HumanML3D skeleton (upper arm 0.26, forearm 0.27, shin 0.43 m).
    lengths = {n: default_rig.data.bones[n].length for n in ("left_shoulder", "left_elbow", "left_knee")}
    assert lengths["left_shoulder"] == pytest.approx(0.26, rel=0.15)
    assert lengths["left_elbow"] == pytest.approx(0.27, rel=0.15)
    assert lengths["left_knee"] == pytest.approx(0.43, rel=0.15)


def test_bones_aim_at_their_main_child_and_leaves_are_sensible(default_rig):
    j = rig.rest_joint_positions(default_rig)
    bones = default_rig.data.bones
    for b, name in enumerate(rig.JOINT_NAMES):
        child = rig.main_child(b)
        if child is not None:
            np.testing.assert_allclose(bones[name].tail_local, j[child], atol=1e-5)
    assert rig.main_child(0) == skeleton.HUMANML3D.index("spine1")
    assert rig.main_child(9) == skeleton.HUMANML3D.index("neck")
    _, head_y, _ = axes(bones["head"])
    assert head_y[2] > 0.99 and 0.1 < bones["head"].length < 0.25
    _, toe_y, _ = axes(bones["left_foot"])
    assert toe_y[1] < -0.99 and 0.03 < bones["left_foot"].length < 0.1  # toes forward, flat
    _, hand_y, _ = axes(bones["left_wrist"])
    _, forearm_y, _ = axes(bones["left_elbow"])
    assert hand_y @ forearm_y > 0.999 and 0.05 < bones["left_wrist"].length < 0.15


def test_rolls_point_z_to_the_front_so_limbs_bend_about_local_x(default_rig):
    front, up = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    for bone in default_rig.data.bones:
        x, y, z = axes(bone)
        ref = up if bone.name in rig.UP_FRONT_JOINTS else front
        ref = ref - (ref @ y) * y
        assert z @ (ref / np.linalg.norm(ref)) > 0.999, bone.name
    for name in ("left_hip", "left_knee", "right_hip", "right_knee", "spine1", "spine2", "neck"):
        assert abs(axes(default_rig.data.bones[name])[0][0]) > 0.99, name  # local X = world X: sagittal bends
    for name in ("left_shoulder", "left_elbow", "right_shoulder", "right_elbow"):
        assert abs(axes(default_rig.data.bones[name])[0][2]) > 0.99, name  # T-pose arms: elbow bends forward


def test_knee_bend_about_local_x_moves_the_ankle_backwards(default_rig):
    knee = default_rig.pose.bones["left_knee"]
    ankle_before = np.array(default_rig.pose.bones["left_ankle"].head)
    knee.rotation_quaternion = (np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0)  # +90 deg about local X
    bpy.context.view_layer.update()
    ankle = np.array(default_rig.pose.bones["left_ankle"].head)
    assert abs(ankle[0] - ankle_before[0]) < 0.05  # stays in the leg's sagittal plane
    assert abs(ankle[1] - ankle_before[1]) > 0.3  # swings to the front or back by ~ the shin length


def test_find_target_and_ensure_armature(fresh_scene):
    ctx = bpy.context
    assert rig.find_target_armature(ctx) is None
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    ctx.collection.objects.link(mesh)
    ctx.view_layer.objects.active = mesh
    assert rig.find_target_armature(ctx) is None
    made = rig.ensure_armature(ctx)  # nothing to target: a new default rig
    assert made.type == "ARMATURE" and len(made.data.bones) == 22
    assert rig.ensure_armature(ctx) == made and len(bpy.data.armatures) == 1  # now it is the target
    other = rig.create_default_rig(ctx, name="Other")
    ctx.view_layer.objects.active = mesh
    made.select_set(False)
    assert rig.find_target_armature(ctx) == other  # a mesh is active: the selected armature
    ctx.view_layer.objects.active = made
    assert rig.find_target_armature(ctx) == made  # the active armature wins over a selected one
    for obj in ctx.view_layer.objects:
        obj.select_set(False)
    ctx.view_layer.objects.active = None
    assert rig.find_target_armature(ctx) is None


def test_create_leaves_other_edit_modes_and_rejects_excluded_collections(fresh_scene):
    ctx = bpy.context
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    ctx.collection.objects.link(mesh)
    ctx.view_layer.objects.active = mesh
    bpy.ops.object.mode_set(mode="EDIT")
    assert mesh.mode == "EDIT"
    made = rig.create_default_rig(ctx, name="Rig")
    assert mesh.mode == "OBJECT" and made.mode == "OBJECT" and len(made.data.bones) == 22

    hidden = bpy.data.collections.new("Hidden")
    ctx.scene.collection.children.link(hidden)
    ctx.view_layer.layer_collection.children["Hidden"].exclude = True
    before = (len(bpy.data.objects), len(bpy.data.armatures))
    with pytest.raises(ValueError, match="'Hidden' is not in the view layer"):
        rig.create_default_rig(ctx, collection=hidden)
    assert (len(bpy.data.objects), len(bpy.data.armatures)) == before


def test_rest_joints_validate_the_object(default_rig):
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    with pytest.raises(ValueError, match=r"Expected an armature object, got 'Cube' \(MESH\)"):
        rig.rest_joint_positions(mesh)
    with pytest.raises(ValueError, match="got nothing"):
        rig.rest_joint_positions(None)
    default_rig.data.bones["left_wrist"].name = "hand.L"
    with pytest.raises(ValueError, match="no bones named left_wrist:"):
        rig.rest_joint_positions(default_rig)
    default_rig.data.bones["hand.L"].name = "left_wrist"
    bpy.ops.object.mode_set(mode="EDIT")
    with pytest.raises(ValueError, match="is in Edit Mode: switch to Object or Pose Mode"):
        rig.rest_joint_positions(default_rig)
    bpy.ops.object.mode_set(mode="OBJECT")
    assert rig.rest_joint_positions(default_rig).shape == (22, 3)
